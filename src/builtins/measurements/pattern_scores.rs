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
        let sequences = s.dataset(&self.dataset)?;
        let config = &s.model.manifest.config;
        let (n_layers, n_heads) = (config.n_layers, config.n_heads);
        let hooks = hooks::every_block(Some(n_layers), hooks::PATTERN);
        let wanted: Vec<&str> = hooks.iter().map(String::as_str).collect();
        let mut sums = vec![Sums::default(); n_layers * n_heads];
        for prompts in length_sorted_chunks(&sequences, s.batch_size()) {
            let batch = s.batch_of(&sequences, &prompts)?;
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
        let mean = |(total, count): (f64, usize)| {
            if count == 0 {
                // No query position the pattern applies to: no evidence either way.
                Cell::Str(String::new())
            } else {
                Cell::Number(total / count as f64)
            }
        };
        let mut table = table(name, &self.columns());
        for layer in 0..n_layers {
            for head in 0..n_heads {
                let sum = sums[layer * n_heads + head];
                table.rows.push(vec![
                    Cell::Integer(layer as i64),
                    Cell::Integer(head as i64),
                    mean(sum.induction),
                    mean(sum.previous),
                    mean(sum.duplicate),
                ]);
            }
        }
        Ok(table)
    }
}

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
