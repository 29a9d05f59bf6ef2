//! How far a reported number may move before it counts as a change. ONNX Runtime's CPU
//! kernels differ by instruction set (and by thread count and batch shape), so the same
//! experiment on another machine computes logits that differ by a few 1e-6; printed with
//! six decimals, that changes thousands of cells. Each column gets a tolerance by the
//! quantity it holds, known from its name; a rerun keeps the old value of every number
//! within it ([`settle`]), and `qexp diff` reports only what moved beyond it.

use super::{Cell, Table};

/// `|a - b| <= absolute + relative * max(|a|, |b|)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub absolute: f64,
    pub relative: f64,
}

impl Tolerance {
    /// Probabilities and shares in [0, 1]: attention, next-token probabilities, feature
    /// densities, fractions, explained variance.
    pub const PROBABILITY: Tolerance = Tolerance {
        absolute: 1e-5,
        relative: 0.0,
    };
    /// Numbers on the scale of logits: losses, logits, KL divergences, logit attributions
    /// and effects, composition and attention scores.
    pub const LOGIT: Tolerance = Tolerance {
        absolute: 1e-4,
        relative: 1e-5,
    };
    /// Activations and everything else: SAE activations, norms, errors, L0, quantiles.
    pub const ACTIVATION: Tolerance = Tolerance {
        absolute: 1e-4,
        relative: 1e-4,
    };

    pub fn agrees(&self, a: f64, b: f64) -> bool {
        if a.is_nan() || b.is_nan() {
            return a.is_nan() && b.is_nan();
        }
        (a - b).abs() <= self.absolute + self.relative * a.abs().max(b.abs())
    }

    /// The tolerance of a column, by the words of its name (`ablated_loss` is a loss,
    /// `reconstructed_attn` an attention probability).
    pub fn of_column(name: &str) -> Tolerance {
        let words: Vec<&str> = name.split('_').collect();
        let has = |w: &str| words.contains(&w);
        if has("prob")
            || has("attn")
            || has("density")
            || has("fraction")
            || name == "explained_variance"
        {
            Tolerance::PROBABILITY
        } else if has("loss")
            || has("logit")
            || has("logits")
            || has("kl")
            || has("divergence")
            || has("attribution")
            || has("effect")
            || has("score")
            || has("contribution")
            || has("recovered")
        {
            Tolerance::LOGIT
        } else {
            Tolerance::ACTIVATION
        }
    }
}

/// An activation as rankings compare it: rounded to four decimals, so two activations
/// that differ only by kernel noise (two prompts that begin with the same tokens, on
/// another CPU) count as tied, and the tie goes to the earlier prompt and position.
pub fn ranked(activation: f32) -> i64 {
    (f64::from(activation) * 1e4).round() as i64
}

/// A table as an earlier report wrote it: its header and cell texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Gives every number of `table` that agrees with the earlier report's within its
/// column's tolerance the earlier report's value, so a rerun that differs only by kernel
/// noise writes the same text, and every later step (sorts, top-k, feature choices) sees
/// the same numbers. Rows are matched by their other cells (ids, tokens, text), so a
/// table whose rows were reordered or cut still finds its earlier rows; rows with equal
/// keys are matched in order. Numbers that moved beyond tolerance, and all text, stay as
/// computed. Returns how many cells print differently for it.
pub fn settle(table: &mut Table, earlier: &Written) -> usize {
    let Some(first) = table.rows.first() else {
        return 0;
    };
    let shared: Vec<(usize, usize)> = table
        .columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, earlier.columns.iter().position(|e| e == c)?)))
        .collect();
    let is_value = |cell: &Cell| matches!(cell, Cell::Number(_) | Cell::NumberList(_));
    // (column in `table`, column in `earlier`) pairs: numbers to settle, cells to match by.
    type Pairs = Vec<(usize, usize)>;
    let (values, keys): (Pairs, Pairs) = shared
        .into_iter()
        .partition(|&(i, _)| first.get(i).is_some_and(is_value));
    let mut earlier_rows: std::collections::HashMap<
        Vec<String>,
        std::collections::VecDeque<usize>,
    > = std::collections::HashMap::new();
    for (index, row) in earlier.rows.iter().enumerate() {
        let key = keys
            .iter()
            .map(|&(_, e)| row.get(e).cloned().unwrap_or_default())
            .collect();
        earlier_rows.entry(key).or_default().push_back(index);
    }
    let mut settled = 0;
    for row in &mut table.rows {
        let key: Vec<String> = keys
            .iter()
            .map(|&(i, _)| row.get(i).map(Cell::csv_text).unwrap_or_default())
            .collect();
        let Some(index) = earlier_rows.get_mut(&key).and_then(|rows| rows.pop_front()) else {
            continue;
        };
        for &(i, e) in &values {
            let (Some(cell), Some(text)) = (row.get_mut(i), earlier.rows[index].get(e)) else {
                continue;
            };
            if settle_cell(cell, text, Tolerance::of_column(&table.columns[i])) {
                settled += 1;
            }
        }
    }
    settled
}

/// Sets `cell` to the number `text` holds when the two agree within `tolerance` (even
/// when they print alike, so later sorts see exactly the earlier numbers); says whether
/// its text changed.
fn settle_cell(cell: &mut Cell, text: &str, tolerance: Tolerance) -> bool {
    let settled = match cell {
        Cell::Number(x) => match text.parse::<f64>() {
            Ok(old) if tolerance.agrees(*x, old) => Cell::Number(old),
            _ => return false,
        },
        Cell::NumberList(xs) => match parse_list(text) {
            Some(old)
                if old.len() == xs.len()
                    && xs.iter().zip(&old).all(|(x, o)| tolerance.agrees(*x, *o)) =>
            {
                Cell::NumberList(old)
            }
            _ => return false,
        },
        _ => return false,
    };
    let changed = cell.text() != text;
    *cell = settled;
    changed
}

/// `[1.000000, 2.500000]` as written by `Cell::text`.
fn parse_list(text: &str) -> Option<Vec<f64>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner.split(", ").map(|x| x.parse().ok()).collect()
}

/// Whether two written cells of `column` agree: equal text, or numbers (and lists of
/// numbers) within the column's tolerance.
pub fn cells_agree(column: &str, a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let tolerance = Tolerance::of_column(column);
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => tolerance.agrees(x, y),
        _ => match (parse_list(a), parse_list(b)) {
            (Some(xs), Some(ys)) => {
                xs.len() == ys.len() && xs.iter().zip(&ys).all(|(x, y)| tolerance.agrees(*x, *y))
            }
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_take_the_tolerance_of_the_quantity_they_hold() {
        assert_eq!(Tolerance::of_column("prob"), Tolerance::PROBABILITY);
        assert_eq!(
            Tolerance::of_column("reconstructed_attn"),
            Tolerance::PROBABILITY
        );
        assert_eq!(Tolerance::of_column("ablated_loss"), Tolerance::LOGIT);
        assert_eq!(Tolerance::of_column("loss_diff"), Tolerance::LOGIT);
        assert_eq!(Tolerance::of_column("kl_divergence"), Tolerance::LOGIT);
        assert_eq!(Tolerance::of_column("activation"), Tolerance::ACTIVATION);
        assert_eq!(Tolerance::of_column("q_norm"), Tolerance::ACTIVATION);
    }

    #[test]
    fn noise_keeps_the_earlier_text_and_a_real_change_does_not() {
        let mut table = Table::new("t", &["token", "loss", "prob", "acts"]);
        table.rows = vec![
            vec![
                Cell::Str("says".into()),
                Cell::Number(3.2474151),
                Cell::Number(0.25),
                Cell::NumberList(vec![1.0000004, 2.0]),
            ],
            vec![
                Cell::Str("Mom".into()),
                Cell::Number(1.5),
                Cell::Number(0.1),
                Cell::NumberList(vec![3.0]),
            ],
        ];
        let earlier = Written {
            columns: vec!["acts".into(), "loss".into(), "token".into(), "prob".into()],
            rows: vec![
                vec![
                    "[1.000000, 2.000000]".into(),
                    "3.247414".into(),
                    "says".into(),
                    "0.250003".into(),
                ],
                vec![
                    "[3.100000]".into(),
                    "1.600000".into(),
                    "Dad".into(),
                    "0.100000".into(),
                ],
            ],
        };
        assert_eq!(settle(&mut table, &earlier), 2);
        let texts: Vec<Vec<String>> = table
            .rows
            .iter()
            .map(|r| r.iter().map(Cell::text).collect())
            .collect();
        assert_eq!(
            texts,
            [
                ["says", "3.247414", "0.250003", "[1.000000, 2.000000]"],
                ["Mom", "1.500000", "0.100000", "[3.000000]"],
            ]
        );
    }

    #[test]
    fn rows_are_matched_by_their_other_cells_whatever_their_order() {
        let mut table = Table::new("t", &["feature", "score"]);
        table.rows = vec![
            vec![Cell::Integer(7), Cell::Number(0.5000004)],
            vec![Cell::Integer(3), Cell::Number(0.4999996)],
        ];
        let earlier = Written {
            columns: vec!["feature".into(), "score".into()],
            rows: vec![
                vec!["3".into(), "0.500000".into()],
                vec!["7".into(), "0.500001".into()],
            ],
        };
        settle(&mut table, &earlier);
        assert_eq!(table.rows[0][1], Cell::Number(0.500001));
        assert_eq!(table.rows[1][1], Cell::Number(0.5));
    }

    #[test]
    fn written_cells_agree_within_their_columns_tolerance() {
        assert!(cells_agree("loss", "3.247414", "3.247415"));
        assert!(!cells_agree("loss", "3.247414", "3.248414"));
        assert!(cells_agree("attn", "0.500000", "0.500004"));
        assert!(!cells_agree("attn", "0.500000", "0.500040"));
        assert!(cells_agree(
            "acts",
            "[1.000000, 2.000000]",
            "[1.000010, 2.000000]"
        ));
        assert!(!cells_agree("token", "says", "said"));
    }
}
