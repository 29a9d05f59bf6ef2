//! Runs a checked plan on its model and collects the results. The only stage besides
//! the report that touches ONNX Runtime and the file system.

use std::time::Instant;

pub use crate::results::{
    Cell, Dashboards, Example, FeatureDashboard, Plot, PlotKind, QuantileBand, Results, SaeRecord,
    Section, Table, WINDOW,
};
pub use crate::session::{check_save_paths, checkpoints_dir};

use crate::builtins::args::Args;
use crate::builtins::dashboards::FeatureDashboards;
use crate::builtins::measurements::{Measurement, Read};
use crate::builtins::plots::PlotCall;
use crate::builtins::table_ops::TableOp;
use crate::builtins::values::ValueCall;
use crate::plan::{Plan, Step, TableSource, Value};
use crate::runtime::{HookedModel, Runtime, RuntimeError};
use crate::session::Session;
use crate::syntax::ast::TextKind;

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("while loading the model {path}")]
    Load { path: String, source: RuntimeError },
    #[error("`{step}` came out with a non-finite number; the model or its input is broken")]
    NotFinite { step: String },
    #[error("`{step}`: {message}")]
    Invalid { step: String, message: String },
}

fn describe(step: &Step) -> String {
    match step {
        Step::Text { kind, .. } => kind.keyword().to_owned(),
        Step::Compute { name, call } => format!("let {name} = {}", call.function),
        Step::Table { name, .. } => format!("table {name}"),
        Step::Plot { name, call } => format!("plot {name} = {}", call.function),
        Step::Dashboards { name, .. } => format!("dashboards {name}"),
    }
}

/// How a run treats what earlier runs left behind.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Train every SAE again, even where its pin was trained from the same inputs.
    pub retrain: bool,
    /// The tables of the report this run replaces, by name: numbers within tolerance of
    /// them keep their earlier value (see `results::tolerance::settle`).
    pub earlier: std::collections::BTreeMap<String, crate::results::tolerance::Written>,
}

/// Runs `plan`; whatever it saves (trained SAEs) must be a place `scope` allows.
pub fn execute(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
) -> Result<Results, ExecuteError> {
    execute_with(plan, runtime, scope, Options::default())
}

/// [`execute`] with `options`.
pub fn execute_with(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
    options: Options,
) -> Result<Results, ExecuteError> {
    run(plan, runtime, scope, options).map(|(results, _)| results)
}

/// What one step read: the graphs it ran and the outputs it took from each.
#[derive(Debug, Clone)]
pub struct StepReads {
    pub step: String,
    pub reads: Vec<Read>,
}

/// [`execute`], also returning what each step read from which graph (preparations
/// such as means, patch sources and SAE training aside), in the order of the plan.
pub fn execute_traced(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
) -> Result<(Results, Vec<StepReads>), ExecuteError> {
    run(plan, runtime, scope, Options::default())
}

fn run(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
    options: Options,
) -> Result<(Results, Vec<StepReads>), ExecuteError> {
    let mut model =
        HookedModel::load(runtime, &plan.model.path).map_err(|source| ExecuteError::Load {
            path: plan.model.path.display().to_string(),
            source,
        })?;
    let model_source = model.manifest.source.clone();
    let weights_sha256 = model.manifest.weights_sha256.clone();
    let root = std::env::current_dir().unwrap_or_default();
    let mut session = Session::new(plan, &mut model, root, scope.clone());
    session.retrain = options.retrain;
    session.earlier = options.earlier;
    let mut traces = Vec::new();
    let mut sections = Vec::new();
    let mut seconds = Vec::new();
    for step in &plan.steps {
        let started = Instant::now();
        let label = describe(step);
        let section = run_step(&mut session, step).map_err(|message| ExecuteError::Invalid {
            step: label.clone(),
            message,
        })?;
        traces.push(StepReads {
            step: label.clone(),
            reads: session.take_reads(),
        });
        push_pending(&mut session, &mut sections, &mut seconds);
        if let Section::Table(table) = &section {
            let finite = table.rows.iter().flatten().all(|c| match c {
                Cell::Number(x) => x.is_finite(),
                Cell::NumberList(xs) => xs.iter().all(|x| x.is_finite()),
                _ => true,
            });
            if !finite {
                return Err(ExecuteError::NotFinite { step: label });
            }
        }
        sections.push(section);
        seconds.push(started.elapsed().as_secs_f64());
    }
    // An SAE trained to be saved is made even when no step reads it.
    for sae in &plan.saes {
        if sae.value.args.contains_key("save") {
            session
                .ensure_sae(&sae.name)
                .map_err(|message| ExecuteError::Invalid {
                    step: format!("sae {}", sae.name),
                    message,
                })?;
            push_pending(&mut session, &mut sections, &mut seconds);
        }
    }
    let saes = session.sae_records();
    drop(session);
    let results = Results {
        tokens_run: model.tokens_run(),
        threads: runtime.kernel_threads(),
        sections,
        seconds,
        model_source,
        weights_sha256,
        saes,
    };
    Ok((results, traces))
}

/// Shows the tables a step made along the way (an SAE's training summary) before the
/// step's own section, settled like any table.
fn push_pending(
    session: &mut Session<'_, '_, '_>,
    sections: &mut Vec<Section>,
    seconds: &mut Vec<f64>,
) {
    for mut table in std::mem::take(&mut session.pending) {
        session.settle(&mut table);
        sections.push(Section::Table(table));
        seconds.push(0.0);
    }
}

fn run_step(session: &mut Session<'_, '_, '_>, step: &Step) -> Result<Section, String> {
    Ok(match step {
        Step::Text { kind, text } => Section::Text {
            style: match kind {
                TextKind::Title => "title",
                TextKind::Section => "section",
                TextKind::Paragraph => "paragraph",
            }
            .to_owned(),
            text: text.clone(),
        },
        Step::Table {
            name, source, ops, ..
        } => {
            let mut table = match source {
                TableSource::Call(call) => {
                    let mut measurement = Measurement::bind(call).map_err(|e| e.to_string())?;
                    if let Some(Ok(TableOp::Filter(filter))) = ops.first().map(TableOp::bind) {
                        measurement.narrow(&filter);
                    }
                    let mut table = measurement.run(session, name)?;
                    // Before the table's own sorts and cuts, so they order the earlier
                    // numbers where only noise moved them.
                    session.settle(&mut table);
                    table
                }
                TableSource::Table(t) => {
                    let mut table = session.table(t)?.clone();
                    table.name = name.clone();
                    table
                }
            };
            for op in ops {
                table = TableOp::bind(op).map_err(|e| e.to_string())?.apply(table)?;
            }
            session.settle(&mut table);
            session.tables.insert(name.clone(), table.clone());
            Section::Table(table)
        }
        Step::Compute { name, call } => {
            let value = ValueCall::bind(call)
                .map_err(|e| e.to_string())?
                .compute(session)?;
            let shown = match &value {
                Value::Str(s) => format!("{s:?}"),
                other => other.to_string(),
            };
            session.values.insert(name.clone(), value);
            Section::Value {
                name: name.clone(),
                value: shown,
            }
        }
        Step::Plot { name, call } => {
            let plot = PlotCall::bind(call).map_err(|e| e.to_string())?;
            Section::Plot(plot.run(name, session.table(&plot.table)?)?)
        }
        Step::Dashboards { name, call } => {
            let dashboards =
                FeatureDashboards::bind(&Args::new(call)).map_err(|e| e.to_string())?;
            Section::Dashboards(dashboards.run(session, name)?)
        }
    })
}
