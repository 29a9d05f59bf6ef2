//! Runs split across machines: `qexp run EXP --shard I/N` makes its share of every step
//! that splits over a dataset's prompts and writes it as a partial; `qexp merge EXP`
//! stacks the partials into those steps' tables and runs the rest of the experiment.
//!
//! Which steps split is decided from the plan alone ([`roles`]), so every shard and
//! the merge agree on it without talking to each other; which prompts a shard takes
//! ([`share`]) depends only on the dataset's token counts.

pub mod partial;
pub mod roles;

use std::fmt;
use std::str::FromStr;

pub use partial::{Inputs, Part, Partial, RowInputs, ShardError};
pub use roles::{Role, describe, roles, trained_saes_for_shards};

/// One of `count` shards, numbered from 0 here and from 1 where users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wrong = || format!("`{text}` is not a shard: write I/N, e.g. 2/8 for the second of 8");
        let (i, n) = text.split_once('/').ok_or_else(wrong)?;
        let (i, n): (usize, usize) = (
            i.trim().parse().map_err(|_| wrong())?,
            n.trim().parse().map_err(|_| wrong())?,
        );
        if n == 0 || i == 0 || i > n {
            return Err(format!(
                "shard {text}: I counts from 1 to N (N at least 1), e.g. 1/{}",
                n.max(1)
            ));
        }
        if n > MAX_SHARDS {
            return Err(format!("shard {text}: at most {MAX_SHARDS} shards"));
        }
        Ok(Self {
            index: i - 1,
            count: n,
        })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// Shard (or other) numbers as a list for a message: `1, 3, 4`.
pub fn numbers(numbers: &[usize]) -> String {
    numbers
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// More shards than this would mostly be empty for any dataset qexp reads in memory.
pub const MAX_SHARDS: usize = 10_000;

/// The prompts of a dataset (their token counts given) that `shard` computes: a
/// contiguous run, cut at the prompt boundaries nearest to each shard's equal share of
/// the tokens, so shards take about the same time whatever the prompts' lengths. Every
/// prompt belongs to exactly one shard; with more shards than prompts some are empty.
pub fn share(lengths: &[usize], shard: Shard) -> std::ops::Range<usize> {
    let total: u128 = lengths.iter().map(|&len| len as u128).sum();
    let count = shard.count as u128;
    // The boundary (a prompt index) whose token count before it is nearest to k/N of
    // the total, the earlier on a tie; compared times N, so in whole numbers.
    let cut = |k: usize| -> usize {
        let target = total * k as u128;
        let mut before = 0u128;
        let mut best = (target, 0usize);
        for (prompt, &len) in lengths.iter().enumerate() {
            before += len as u128;
            let distance = (before * count).abs_diff(target);
            if distance < best.0 {
                best = (distance, prompt + 1);
            }
        }
        best.1
    };
    let (start, end) = (cut(shard.index), cut(shard.index + 1));
    // Cuts never go backwards (targets grow and so do the sums), but the last shard
    // always ends at the last prompt.
    let end = if shard.index + 1 == shard.count {
        lengths.len()
    } else {
        end
    };
    start.min(end)..end
}

/// A table from shards' parts, in shard order: their rows stacked, then each column
/// that compares a row with the whole dataset's mean input filled in.
pub fn stack(name: &str, parts: Vec<Part>) -> Result<crate::results::Table, String> {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return Err(format!("`{name}`: no shard made a part of it"));
    };
    let mut table = first.table;
    table.name = name.to_owned();
    let mut whole = first.whole_dataset;
    for part in parts {
        if part.table.columns != table.columns {
            return Err(format!(
                "`{name}`: the shards' parts have different columns; run every shard with the same qexp"
            ));
        }
        table.rows.extend(part.table.rows);
        whole = match (whole, part.whole_dataset) {
            (Some(mut all), Some(more)) if all.column == more.column => {
                if all.sum.is_empty() {
                    all.sum = more.sum;
                } else if !more.sum.is_empty() {
                    if more.sum.len() != all.sum.len() {
                        return Err(format!("`{name}`: the shards' inputs differ in width"));
                    }
                    all.sum.iter_mut().zip(&more.sum).for_each(|(a, b)| *a += b);
                }
                all.count += more.count;
                all.inputs.extend(more.inputs);
                all.squared_errors.extend(more.squared_errors);
                Some(all)
            }
            (None, None) => None,
            _ => {
                return Err(format!(
                    "`{name}`: the shards' parts disagree on the columns they leave to the merge"
                ));
            }
        };
    }
    if let Some(inputs) = whole {
        fill_explained_variance(&mut table, &inputs)
            .map_err(|problem| format!("`{name}`: {problem}"))?;
    }
    Ok(table)
}

/// Each row's explained variance: one minus its squared error over its input's squared
/// distance from the mean input of every token.
fn fill_explained_variance(
    table: &mut crate::results::Table,
    inputs: &RowInputs,
) -> Result<(), String> {
    let column = table
        .column(&inputs.column)
        .ok_or_else(|| format!("no column `{}` to fill in", inputs.column))?;
    if inputs.inputs.len() != table.rows.len() || inputs.squared_errors.len() != table.rows.len() {
        return Err("its rows and their inputs do not line up".to_owned());
    }
    let mean: Vec<f64> = inputs
        .sum
        .iter()
        .map(|s| s / inputs.count.max(1) as f64)
        .collect();
    for ((row, x), squared_error) in table
        .rows
        .iter_mut()
        .zip(&inputs.inputs)
        .zip(&inputs.squared_errors)
    {
        let variance: f64 = x
            .iter()
            .zip(&mean)
            .map(|(&a, &m)| (f64::from(a) - m).powi(2))
            .sum();
        row[column] =
            crate::results::Cell::Number(1.0 - squared_error / variance.max(f64::MIN_POSITIVE));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(text: &str) -> Shard {
        text.parse().unwrap()
    }

    #[test]
    fn shards_are_written_from_one() {
        assert_eq!(shard("1/3"), Shard { index: 0, count: 3 });
        assert_eq!(shard("3/3").to_string(), "3/3");
        for wrong in ["0/3", "4/3", "1/0", "a/b", "3", "-1/2"] {
            assert!(wrong.parse::<Shard>().is_err(), "{wrong}");
        }
    }

    #[test]
    fn every_prompt_is_in_exactly_one_shard() {
        let lengths = [5, 1, 1, 9, 2, 2, 2];
        for count in 1..=9 {
            let mut next = 0;
            for index in 0..count {
                let range = share(&lengths, Shard { index, count });
                assert_eq!(range.start, next, "{index}/{count}");
                next = range.end;
            }
            assert_eq!(next, lengths.len(), "{count} shards");
        }
    }

    #[test]
    fn shares_balance_tokens_not_prompts() {
        // 10 tokens in the first prompt, 10 in the other five.
        let lengths = [10, 2, 2, 2, 2, 2];
        assert_eq!(share(&lengths, shard("1/2")), 0..1);
        assert_eq!(share(&lengths, shard("2/2")), 1..6);
        // A long last prompt is a shard of its own rather than leaving one empty.
        let lengths = [18, 9, 9, 3, 11, 7, 34];
        let shares: Vec<_> = (1..=3)
            .map(|i| share(&lengths, shard(&format!("{i}/3"))))
            .collect();
        assert_eq!(shares, [0..2, 2..6, 6..7]);
    }
}
