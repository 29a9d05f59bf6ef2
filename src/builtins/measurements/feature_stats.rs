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
use crate::shard::Part;

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
        let prompts = s.prompt_lengths(&self.dataset)?.len();
        Ok(self.pool(s, name, 0..prompts)?.table(name, &self.columns()))
    }

    fn shards_over(&self) -> Option<&str> {
        Some(&self.dataset)
    }

    fn run_share(
        &self,
        s: &mut Session,
        name: &str,
        share: std::ops::Range<usize>,
    ) -> Result<Part, Failure> {
        Ok(Part::rows(self.pool(s, name, share)?.into_part(name)))
    }

    fn merge(&self, name: &str, parts: Vec<Part>) -> Result<Table, Failure> {
        let mut pooled: Option<Pool> = None;
        for part in parts {
            let pool = Pool::from_part(&part.table)
                .ok_or_else(|| format!("`{name}`: a shard's part is not feature statistics"))?;
            pooled = Some(match pooled {
                Some(mut all) => {
                    all.absorb(pool).map_err(|e| format!("`{name}`: {e}"))?;
                    all
                }
                None => pool,
            });
        }
        let pooled = pooled.ok_or_else(|| format!("`{name}`: no shard made a part of it"))?;
        Ok(pooled.table(name, &self.columns()))
    }
}

impl FeatureStats {
    /// The SAE's activations over the prompts at `share` of the dataset, pooled.
    fn pool(
        &self,
        s: &mut Session,
        name: &str,
        share: std::ops::Range<usize>,
    ) -> Result<Pool, Failure> {
        let dataset = &self.dataset;
        let SaeSplice { sae, target, .. } = s.sae_splice(&self.sae)?;
        let all = s.dataset(dataset)?;
        let first = share.start;
        let sequences = &all[share];
        let bar = crate::session::progress::bar(
            sequences.iter().map(|s| s.len() as u64).sum(),
            "tokens",
            &format!("{name} ="),
        );
        bar.set_message(format!("feature_stats({}, {dataset})", self.sae));
        let mut firing: Vec<Vec<f32>> = vec![Vec::new(); sae.d_sae];
        let mut peaks: Vec<Option<(f32, usize, usize)>> = vec![None; sae.d_sae];
        let mut tokens = 0usize;
        s.for_each_sae_batch(&sae, &target, sequences, |prompts, batch, _inputs, acts| {
            let mut token = 0;
            for (row, &len) in batch.lengths.iter().enumerate() {
                for pos in 0..len {
                    let here = (first + prompts[row], pos);
                    for (f, &a) in acts.row(token).iter().enumerate() {
                        if a > 0.0 {
                            firing[f].push(a);
                            if is_new_peak(a, here, peaks[f].map(|(v, p, at)| (v, (p, at)))) {
                                peaks[f] = Some((a, here.0, here.1));
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
        let mut peak = Vec::with_capacity(peaks.len());
        for found in peaks {
            peak.push(match found {
                Some((value, prompt, pos)) => {
                    let strs = s.str_tokens(&all[prompt])?;
                    let context = context(&strs, pos, 3);
                    Some(Peak {
                        value,
                        at: (prompt, pos),
                        token: strs[pos].clone(),
                        context,
                    })
                }
                None => None,
            });
        }
        Ok(Pool {
            firing,
            peak,
            tokens,
        })
    }
}

/// Whether an activation `a` at `here` (prompt, position) beats the peak so far: the
/// largest activation (to four decimals, so noise does not move it), the earliest on
/// ties, in whatever order batches and shards run.
fn is_new_peak(a: f32, here: (usize, usize), peak: Option<(f32, (usize, usize))>) -> bool {
    peak.is_none_or(|(best, at)| {
        let (a, best) = (ranked(a), ranked(best));
        a > best || (a == best && here < at)
    })
}

/// Where a feature fired most, with that token's text.
#[derive(Debug, Clone)]
struct Peak {
    value: f32,
    at: (usize, usize),
    token: String,
    context: String,
}

/// Per feature, every activation where it fired (the quantiles need them all) and
/// its peak; and how many tokens were seen.
struct Pool {
    firing: Vec<Vec<f32>>,
    peak: Vec<Option<Peak>>,
    tokens: usize,
}

/// A pool as a shard's part: one row per feature.
const PART_COLUMNS: [&str; 8] = [
    "feature",
    "firing_activations",
    "peak_activation",
    "peak_prompt",
    "peak_pos",
    "peak_token",
    "peak_context",
    "share_tokens",
];

impl Pool {
    fn into_part(self, name: &str) -> Table {
        let mut table = Table::new(name, &PART_COLUMNS);
        for (f, (values, peak)) in self.firing.into_iter().zip(self.peak).enumerate() {
            let peak = peak.unwrap_or(Peak {
                value: 0.0,
                at: (0, 0),
                token: String::new(),
                context: String::new(),
            });
            table.rows.push(vec![
                Cell::Integer(f as i64),
                Cell::NumberList(values.into_iter().map(f64::from).collect()),
                Cell::Number(f64::from(peak.value)),
                Cell::Integer(peak.at.0 as i64),
                Cell::Integer(peak.at.1 as i64),
                Cell::Str(peak.token),
                Cell::Str(peak.context),
                Cell::Integer(self.tokens as i64),
            ]);
        }
        table
    }

    fn from_part(table: &Table) -> Option<Self> {
        if table.columns != PART_COLUMNS {
            return None;
        }
        let mut pool = Pool {
            firing: Vec::with_capacity(table.rows.len()),
            peak: Vec::with_capacity(table.rows.len()),
            tokens: 0,
        };
        for row in &table.rows {
            let [
                _,
                Cell::NumberList(values),
                Cell::Number(value),
                Cell::Integer(prompt),
                Cell::Integer(pos),
                Cell::Str(token),
                Cell::Str(context),
                Cell::Integer(tokens),
            ] = row.as_slice()
            else {
                return None;
            };
            pool.tokens = usize::try_from(*tokens).ok()?;
            // Stored from f32, so back to f32 exactly.
            pool.firing.push(values.iter().map(|&v| v as f32).collect());
            pool.peak.push((!values.is_empty()).then(|| Peak {
                value: *value as f32,
                at: (*prompt as usize, *pos as usize),
                token: token.clone(),
                context: context.clone(),
            }));
        }
        Some(pool)
    }

    /// Adds another share's pool to this one.
    fn absorb(&mut self, other: Pool) -> Result<(), String> {
        if other.firing.len() != self.firing.len() {
            return Err("the shards' parts have different numbers of features".to_owned());
        }
        self.tokens += other.tokens;
        for (f, (values, peak)) in other.firing.into_iter().zip(other.peak).enumerate() {
            self.firing[f].extend(values);
            if let Some(peak) = peak {
                let best = self.peak[f].as_ref().map(|p| (p.value, p.at));
                if is_new_peak(peak.value, peak.at, best) {
                    self.peak[f] = Some(peak);
                }
            }
        }
        Ok(())
    }

    fn table(mut self, name: &str, columns: &Columns) -> Table {
        let mut table = table(name, columns);
        for (f, values) in self.firing.iter_mut().enumerate() {
            values.sort_by(f32::total_cmp);
            let quantile = |q: f64| match values.len() {
                0 => 0.0,
                n => f64::from(values[((n - 1) as f64 * q).round() as usize]),
            };
            let (top_token, top_context) = match self.peak[f].take() {
                Some(peak) => (peak.token, peak.context),
                None => (String::new(), String::new()),
            };
            table.rows.push(vec![
                Cell::Integer(f as i64),
                Cell::Number(values.len() as f64 / self.tokens.max(1) as f64),
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
        table
    }
}
