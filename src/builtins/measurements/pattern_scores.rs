//! `pattern_scores(dataset)`: for every head, how much of its attention follows three
//! standard patterns over a dataset's prompts (TransformerLens' induction,
//! previous-token and duplicate-token scores, defined on the token ids so they hold on
//! any text, not only on repeated random tokens).

use crate::builtins::args::{Args, BindError, Columns, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, req};
use crate::hooks;
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, Session, length_sorted_chunks};
use crate::shard::Part;

pub const SPEC: Builtin = Builtin {
    name: "pattern_scores",
    produces: Produces::Table,
    summary: "every head's induction, previous-token and duplicate-token scores over a dataset",
    params: &[req("dataset", Type::Dataset)],
};

#[derive(Debug, Clone, PartialEq)]
pub struct PatternScores {
    pub dataset: String,
}

/// Running sums of one head's three scores: attention summed over the query positions
/// each pattern applies to, and how many there were.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    induction: (f64, usize),
    previous: (f64, usize),
    duplicate: (f64, usize),
}

/// Where each pattern points from each query position of one prompt: the keys whose
/// attention the score adds up, or none when the pattern does not apply there.
struct Targets {
    /// `q - 1`, for every `q > 0`.
    previous: Vec<Option<usize>>,
    /// Every earlier `p` with the same token.
    duplicate: Vec<Vec<usize>>,
    /// `p + 1` for every earlier `p < q - 1` with the same token: the token that followed
    /// this one last time.
    induction: Vec<Vec<usize>>,
}

impl Targets {
    fn of(tokens: &[u32]) -> Self {
        let n = tokens.len();
        let mut duplicate = vec![Vec::new(); n];
        let mut induction = vec![Vec::new(); n];
        for q in 0..n {
            for p in 0..q {
                if tokens[p] == tokens[q] {
                    duplicate[q].push(p);
                    if p + 1 < q {
                        induction[q].push(p + 1);
                    }
                }
            }
        }
        Self {
            previous: (0..n).map(|q| q.checked_sub(1)).collect(),
            duplicate,
            induction,
        }
    }
}

impl Measure for PatternScores {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            dataset: args.name("dataset")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number};
        columns(&[
            ("layer", Integer),
            ("head", Integer),
            ("induction_score", Number),
            ("previous_token_score", Number),
            ("duplicate_token_score", Number),
        ])
    }

    fn reads(&self, plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        for hook in hooks::every_block(plan.model.n_layers, hooks::PATTERN) {
            reads.add(Graph::Clean, hook);
        }
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        super::run_every_prompt(self, s, name)
    }

    fn shards_over(&self) -> Option<&str> {
        Some(&self.dataset)
    }

    /// A share's part is the running sums, one row per head (`SUM_COLUMNS`); the
    /// merge adds them up and divides.
    fn run_share(
        &self,
        s: &mut Session,
        name: &str,
        share: std::ops::Range<usize>,
    ) -> Result<Part, Failure> {
        let all = s.dataset(&self.dataset)?;
        let sequences = &all[share];
        let config = &s.model.manifest.config;
        let (n_layers, n_heads) = (config.n_layers, config.n_heads);
        let hooks = hooks::every_block(Some(n_layers), hooks::PATTERN);
        let wanted: Vec<&str> = hooks.iter().map(String::as_str).collect();
        let mut sums = vec![Sums::default(); n_layers * n_heads];
        for prompts in length_sorted_chunks(sequences, s.batch_size()) {
            let batch = s.batch_of(sequences, &prompts)?;
            let forward = s.forward(None, &batch, &wanted)?;
            for (row, &prompt) in prompts.iter().enumerate() {
                let targets = Targets::of(&sequences[prompt]);
                for (layer, hook) in hooks.iter().enumerate() {
                    // [batch, head, query, key]
                    let pattern = &forward.hooks[hook];
                    for head in 0..n_heads {
                        let sum = &mut sums[layer * n_heads + head];
                        let at = |q: usize, k: usize| f64::from(pattern[[row, head, q, k]]);
                        for q in 0..targets.previous.len() {
                            if let Some(k) = targets.previous[q] {
                                sum.previous.0 += at(q, k);
                                sum.previous.1 += 1;
                            }
                            if !targets.duplicate[q].is_empty() {
                                sum.duplicate.0 +=
                                    targets.duplicate[q].iter().map(|&k| at(q, k)).sum::<f64>();
                                sum.duplicate.1 += 1;
                            }
                            if !targets.induction[q].is_empty() {
                                sum.induction.0 +=
                                    targets.induction[q].iter().map(|&k| at(q, k)).sum::<f64>();
                                sum.induction.1 += 1;
                            }
                        }
                    }
                }
            }
        }
        let mut table = Table::new(name, &SUM_COLUMNS);
        for (index, sum) in sums.iter().enumerate() {
            let mut row = vec![
                Cell::Integer((index / n_heads) as i64),
                Cell::Integer((index % n_heads) as i64),
            ];
            for (total, count) in [sum.induction, sum.previous, sum.duplicate] {
                row.push(Cell::Number(total));
                row.push(Cell::Integer(count as i64));
            }
            table.rows.push(row);
        }
        Ok(Part::rows(table))
    }

    fn merge(&self, name: &str, parts: Vec<Part>) -> Result<Table, Failure> {
        let mut parts = parts.into_iter();
        let first = parts
            .next()
            .ok_or_else(|| format!("`{name}`: no shard made a part of it"))?;
        let mut sums = first.table;
        for part in parts {
            if part.table.columns != sums.columns || part.table.rows.len() != sums.rows.len() {
                return Err(format!("`{name}`: the shards' parts have other heads"));
            }
            for (total, more) in sums.rows.iter_mut().zip(part.table.rows) {
                for (cell, add) in total.iter_mut().zip(more).skip(2) {
                    *cell = match (&*cell, add) {
                        (Cell::Number(a), Cell::Number(b)) => Cell::Number(a + b),
                        (Cell::Integer(a), Cell::Integer(b)) => Cell::Integer(a + b),
                        _ => return Err(format!("`{name}`: a shard's part is not sums")),
                    };
                }
            }
        }
        let mean = |total: &Cell, count: &Cell| match (total, count) {
            // No query position the pattern applies to: no evidence either way.
            (_, Cell::Integer(0)) => Cell::Str(String::new()),
            (Cell::Number(total), Cell::Integer(count)) => Cell::Number(total / *count as f64),
            _ => Cell::Str(String::new()),
        };
        let mut table = table(name, &self.columns());
        for row in &sums.rows {
            table.rows.push(vec![
                row[0].clone(),
                row[1].clone(),
                mean(&row[2], &row[3]),
                mean(&row[4], &row[5]),
                mean(&row[6], &row[7]),
            ]);
        }
        Ok(table)
    }
}

/// A share's sums per head: each score's attention total and query count.
const SUM_COLUMNS: [&str; 8] = [
    "layer",
    "head",
    "induction_total",
    "induction_count",
    "previous_token_total",
    "previous_token_count",
    "duplicate_token_total",
    "duplicate_token_count",
];

#[cfg(test)]
mod tests {
    use super::Targets;

    #[test]
    fn targets_follow_the_token_ids() {
        // BOS, then "a b c" twice.
        let t = Targets::of(&[0, 1, 2, 3, 1, 2, 3]);
        assert_eq!(t.previous[0], None);
        assert_eq!(t.previous[4], Some(3));
        assert_eq!(t.duplicate[4], [1]);
        assert_eq!(t.induction[4], [2], "after the second `a`, the `b` that followed the first");
        assert_eq!(t.induction[6], [4]);
        assert!(t.induction[3].is_empty() && t.duplicate[3].is_empty());
        // A token repeated at once: its duplicate is the previous token, and it has no
        // induction target (the key would be the query itself).
        let t = Targets::of(&[0, 5, 5]);
        assert_eq!(t.duplicate[2], [1]);
        assert!(t.induction[2].is_empty());
    }
}
