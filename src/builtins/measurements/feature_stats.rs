//! `feature_stats(sae, dataset)`: per feature over a dataset, how often it fires, how
//! strongly (max, mean over the tokens it fires on, quantiles of those activations), and
//! the token where it fires most with its context. The numbers behind a dashboard.

use crate::builtins::args::{Args, BindError, Columns, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, req};
use crate::plan::{ColumnType, Plan};
use crate::results::tolerance::ranked;
use crate::results::{Cell, Table};
use crate::session::{Failure, SaeSplice, Session, context};

pub const SPEC: Builtin = Builtin {
    name: "feature_stats",
    produces: Produces::Table,
    summary: "per feature: density, max and mean activation, quantiles, where it peaks",
    params: &[req("sae", Type::Sae), req("dataset", Type::Dataset)],
};

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub sae: String,
    pub dataset: String,
}

impl Measure for FeatureStats {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            sae: args.name("sae")?,
            dataset: args.name("dataset")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        columns(&[
            ("feature", Integer),
            ("density", Number),
            ("max_activation", Number),
            ("mean_activation", Number),
            ("q50", Number),
            ("q90", Number),
            ("q99", Number),
            ("top_token", Str),
            ("top_context", Str),
        ])
    }

    fn reads(&self, plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.add(Graph::Clean, plan.sae_hook(&self.sae));
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let dataset = &self.dataset;
        let SaeSplice { sae, target, .. } = s.sae_splice(&self.sae)?;
        let sequences = s.dataset(dataset)?;
        let bar = crate::session::progress::bar(
            sequences.iter().map(|s| s.len() as u64).sum(),
            "tokens",
            &format!("{name} ="),
        );
        bar.set_message(format!("feature_stats({}, {dataset})", self.sae));
        // Firing activations per feature (for the quantiles) and where each peaked.
        let mut firing: Vec<Vec<f32>> = vec![Vec::new(); sae.d_sae];
        let mut peak: Vec<Option<(f32, usize, usize)>> = vec![None; sae.d_sae];
        let mut tokens = 0usize;
        s.for_each_sae_batch(&sae, &target, &sequences, None, |prompts, batch, _inputs, acts| {
            let mut token = 0;
            for (row, &len) in batch.lengths.iter().enumerate() {
                for pos in 0..len {
                    let here = (prompts[row], pos);
                    for (f, &a) in acts.row(token).iter().enumerate() {
                        // The peak is the largest activation (to four decimals, so
                        // noise does not move it), the earliest on ties, in whatever
                        // order the batches run.
                        if a > 0.0 {
                            firing[f].push(a);
                            if peak[f].is_none_or(|(best, prompt, at)| {
                                let (a, best) = (ranked(a), ranked(best));
                                a > best || (a == best && here < (prompt, at))
                            }) {
                                peak[f] = Some((a, here.0, here.1));
                            }
                        }
                    }
                    token += 1;
                }
            }
            tokens += token;
            bar.inc(token as u64);
        })?;
        bar.finish_and_clear();
        let mut table = table(name, &self.columns());
        for (f, values) in firing.iter_mut().enumerate() {
            values.sort_by(f32::total_cmp);
            let quantile = |q: f64| match values.len() {
                0 => 0.0,
                n => f64::from(values[((n - 1) as f64 * q).round() as usize]),
            };
            let (top_token, top_context) = match peak[f] {
                Some((_, prompt, pos)) => {
                    let strs = s.str_tokens(&sequences[prompt])?;
                    (strs[pos].clone(), context(&strs, pos, 3))
                }
                None => (String::new(), String::new()),
            };
            table.rows.push(vec![
                Cell::Integer(f as i64),
                Cell::Number(values.len() as f64 / tokens.max(1) as f64),
                Cell::Number(values.last().map_or(0.0, |&v| f64::from(v))),
                Cell::Number(if values.is_empty() {
                    0.0
                } else {
                    values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64
                }),
                Cell::Number(quantile(0.5)),
                Cell::Number(quantile(0.9)),
                Cell::Number(quantile(0.99)),
                Cell::Str(top_token),
                Cell::Str(top_context),
            ]);
        }
        Ok(table)
    }
}
