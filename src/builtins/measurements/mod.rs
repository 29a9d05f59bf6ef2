//! Measurements: the built-ins that make a table from the model (or from weights and
//! other tables). Each lives in one file: its [`Builtin`](super::Builtin) spec, its
//! typed arguments, its columns, the graphs and hooks it reads, and its executor. The
//! [`Measurement`] enum lists them once, so the checker, `qexp plan` and the executor
//! cannot disagree about which exist.

use std::ops::Range;

use super::args::{Args, BindError, Columns};
use crate::plan::{Call, ColumnExpr, Plan};
use crate::results::Table;
use crate::session::{Failure, Session};
use crate::shard::Part;

pub use crate::session::reads::{Graph, Read};

/// The reads of a step, built up by its `reads`.
#[derive(Debug, Default)]
pub struct Reads(pub Vec<Read>);

impl Reads {
    pub fn add(&mut self, graph: Graph, output: impl Into<String>) -> &mut Self {
        let read = Read {
            graph,
            output: output.into(),
        };
        if !self.0.contains(&read) {
            self.0.push(read);
        }
        self
    }

    /// `output` from the clean graph and from each of `variants`.
    pub fn clean_and_variants(&mut self, variants: &[String], output: &str) -> &mut Self {
        self.add(Graph::Clean, output);
        for v in variants {
            self.add(Graph::Variant(v.clone()), output);
        }
        self
    }
}

/// The runs a measurement compares: the clean model's, then each variant's.
pub fn clean_then(variants: &[String]) -> impl Iterator<Item = Option<&str>> {
    std::iter::once(None).chain(variants.iter().map(|v| Some(v.as_str())))
}

/// What every measurement provides.
pub trait Measure: Sized {
    /// Its typed arguments, from a checked call.
    fn bind(args: &Args) -> Result<Self, BindError>;
    /// The columns of the table it makes.
    fn columns(&self) -> Columns;
    /// The graphs it runs and the outputs it reads from each.
    fn reads(&self, plan: &Plan) -> Reads;
    /// Makes its table, named `name`.
    fn run(&self, session: &mut Session, name: &str) -> Result<Table, Failure>;

    /// Told the `filter` its table goes through next, a measurement may skip computing
    /// rows the filter would drop (the filter still runs after it).
    fn narrow(&mut self, _filter: &ColumnExpr) {}

    /// The dataset whose prompts its rows split over, for a measurement that
    /// `qexp run --shard` may split (it then provides [`Measure::run_share`]).
    fn shards_over(&self) -> Option<&str> {
        None
    }

    /// Its rows for the prompts at `prompts` of its dataset (a shard's share), with
    /// what [`Measure::merge`] needs to finish them.
    fn run_share(
        &self,
        _session: &mut Session,
        name: &str,
        _prompts: Range<usize>,
    ) -> Result<Part, Failure> {
        Err(format!("`{name}` does not split over shards"))
    }

    /// Its table from every shard's part, in shard order: the parts' rows stacked,
    /// columns that need the whole dataset finished.
    fn merge(&self, name: &str, parts: Vec<Part>) -> Result<Table, Failure> {
        crate::shard::stack(name, parts)
    }
}

macro_rules! measurements {
    ($($module:ident => $ty:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// A measurement with its typed arguments.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Measurement {
            $($ty($module::$ty),)*
        }

        impl Measurement {
            /// Every measurement's name, in the order of [`super::BUILTINS`].
            pub fn names() -> Vec<&'static str> {
                vec![$($module::SPEC.name),*]
            }

            pub fn bind(call: &Call) -> Result<Self, BindError> {
                let args = Args::new(call);
                $(if call.function == $module::SPEC.name {
                    return Ok(Self::$ty($module::$ty::bind(&args)?));
                })*
                Err(BindError {
                    function: call.function.to_owned(),
                    argument: String::new(),
                    problem: "is not a measurement".to_owned(),
                })
            }

            pub fn columns(&self) -> Columns {
                match self {
                    $(Self::$ty(m) => m.columns(),)*
                }
            }

            pub fn reads(&self, plan: &Plan) -> Reads {
                match self {
                    $(Self::$ty(m) => m.reads(plan),)*
                }
            }

            pub fn run(&self, session: &mut Session, name: &str) -> Result<Table, Failure> {
                match self {
                    $(Self::$ty(m) => m.run(session, name),)*
                }
            }

            pub fn narrow(&mut self, filter: &ColumnExpr) {
                match self {
                    $(Self::$ty(m) => m.narrow(filter),)*
                }
            }

            pub fn shards_over(&self) -> Option<&str> {
                match self {
                    $(Self::$ty(m) => m.shards_over(),)*
                }
            }

            pub fn run_share(
                &self,
                session: &mut Session,
                name: &str,
                prompts: Range<usize>,
            ) -> Result<Part, Failure> {
                match self {
                    $(Self::$ty(m) => m.run_share(session, name, prompts),)*
                }
            }

            pub fn merge(&self, name: &str, parts: Vec<Part>) -> Result<Table, Failure> {
                match self {
                    $(Self::$ty(m) => m.merge(name, parts),)*
                }
            }
        }
    };
}

measurements! {
    sanity_check => SanityCheck,
    generate => Generate,
    composition_scores => CompositionScores,
    per_token => PerToken,
    test_prompt => TestPrompt,
    attention => Attention,
    direct_logit_attribution => DirectLogitAttribution,
    feature_activations => FeatureActivations,
    feature_attribution => FeatureAttribution,
    feature_attribution_at => FeatureAttributionAt,
    feature_cooccurrence => FeatureCooccurrence,
    sae_metrics => SaeMetrics,
    feature_stats => FeatureStats,
    pattern_scores => PatternScores,
    logit_lens => LogitLens,
    logit_attribution => LogitAttribution,
    activation_patching => ActivationPatching,
    logit_diff => LogitDiff,
    activations => Activations,
}

pub(crate) mod attribution;

/// A splitting measurement's whole table: its share of every prompt of its dataset,
/// finished as the merge finishes shards' parts, so both paths are one.
pub(crate) fn run_every_prompt<M: Measure>(
    measurement: &M,
    session: &mut Session,
    name: &str,
) -> Result<Table, Failure> {
    let dataset = measurement
        .shards_over()
        .ok_or_else(|| format!("`{name}` does not split over prompts"))?;
    let prompts = session.prompt_lengths(dataset)?.len();
    let part = measurement.run_share(session, name, 0..prompts)?;
    measurement.merge(name, vec![part])
}

/// An empty table with `columns`' names: executors start from their own `columns()`, so
/// what `qexp plan` promises is what they make.
pub fn table(name: &str, columns: &Columns) -> Table {
    Table {
        name: name.to_owned(),
        columns: columns.iter().map(|(c, _)| c.clone()).collect(),
        rows: Vec::new(),
    }
}
