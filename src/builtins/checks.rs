//! Checks, the last stage of an `expect` claim: whether the rows of a table meet a
//! condition (all, any, or a share of them), and the numbers behind that verdict.

use super::args::{Args, BindError};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::plan::{Call, ColumnExpr, Value};
use crate::results::{Cell, Table};

use super::table_ops::eval;

/// Plots and tables a claim's summary shows beside it.
const SHOW: crate::builtins::Param = opt("show", Type::ListOf(&Type::Shown));

pub const ALL: Builtin = Builtin {
    name: "all",
    produces: Produces::Check,
    summary: "the claim holds when every row meets the condition (and there is a row)",
    params: &[req("where", Type::ColumnExpr), SHOW],
};

pub const ANY: Builtin = Builtin {
    name: "any",
    produces: Produces::Check,
    summary: "the claim holds when at least one row meets the condition",
    params: &[req("where", Type::ColumnExpr), SHOW],
};

pub const SHARE: Builtin = Builtin {
    name: "share",
    produces: Produces::Check,
    summary: "the claim holds when the share of rows meeting the condition is within bounds",
    params: &[
        req("where", Type::ColumnExpr),
        opt("at_least", Type::Number).within(0.0, 1.0),
        opt("at_most", Type::Number).within(0.0, 1.0),
        SHOW,
    ],
};

/// How many of a table's rows must meet the condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantifier {
    All,
    Any,
    Share {
        at_least: Option<f64>,
        at_most: Option<f64>,
    },
}

/// A check, its arguments typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub quantifier: Quantifier,
    pub condition: ColumnExpr,
    /// Plots and tables to show beside the claim in the report's summary.
    pub show: Vec<String>,
}

/// What a check found on a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub holds: bool,
    /// Rows checked, and how many of them meet the condition.
    pub rows: usize,
    pub meeting: usize,
    /// The verdict in words, with its numbers: "86 of 86 rows (100.0%); at least 80% asked".
    pub detail: String,
    /// Per row, whether it meets the condition.
    pub meets: Vec<bool>,
}

impl Check {
    pub fn bind(call: &Call) -> Result<Self, BindError> {
        let args = Args::new(call);
        let error = |argument: &str, problem: &str| BindError {
            function: call.function.to_owned(),
            argument: argument.to_owned(),
            problem: problem.to_owned(),
        };
        let condition = match call.args.get("where") {
            Some(Value::Expr(condition)) => condition.clone(),
            _ => return Err(error("where", "is missing or not an expression")),
        };
        let quantifier = match call.function {
            "all" => Quantifier::All,
            "any" => Quantifier::Any,
            "share" => {
                let at_least = args.opt_number("at_least")?;
                let at_most = args.opt_number("at_most")?;
                match (at_least, at_most) {
                    (None, None) => {
                        return Err(error(
                            "at_least",
                            "or `at_most` is needed: `share(cond, at_least = 0.8)`",
                        ));
                    }
                    (Some(low), Some(high)) if low > high => {
                        return Err(error("at_least", "is above `at_most`: no share meets both"));
                    }
                    _ => Quantifier::Share { at_least, at_most },
                }
            }
            other => return Err(error("", &format!("`{other}` is not a check"))),
        };
        Ok(Check {
            quantifier,
            condition,
            show: args.names("show")?,
        })
    }

    /// Checks the rows of `table`. A claim about no rows never holds: an `all` over an
    /// empty table is true only in logic, and in research it means the filter before it
    /// found nothing to check.
    pub fn evaluate(&self, table: &Table) -> Verdict {
        let meets: Vec<bool> = table
            .rows
            .iter()
            .map(|row| matches!(eval(&self.condition, &table.columns, row), Cell::Bool(true)))
            .collect();
        let rows = meets.len();
        let meeting = meets.iter().filter(|m| **m).count();
        let share = if rows == 0 {
            0.0
        } else {
            meeting as f64 / rows as f64
        };
        let counted = match rows {
            0 => "no rows to check".to_owned(),
            1 => format!("{meeting} of 1 row"),
            _ => format!("{meeting} of {rows} rows ({:.1}%)", 100.0 * share),
        };
        let (holds, asked) = match self.quantifier {
            Quantifier::All => (rows > 0 && meeting == rows, "all asked".to_owned()),
            Quantifier::Any => (meeting > 0, "at least one asked".to_owned()),
            Quantifier::Share { at_least, at_most } => {
                let low = at_least.is_none_or(|low| share >= low);
                let high = at_most.is_none_or(|high| share <= high);
                let asked = match (at_least, at_most) {
                    (Some(low), Some(high)) => {
                        format!("{} to {} asked", percent(low), percent(high))
                    }
                    (Some(low), None) => format!("at least {} asked", percent(low)),
                    (None, Some(high)) => format!("at most {} asked", percent(high)),
                    (None, None) => "a bound asked".to_owned(),
                };
                (rows > 0 && low && high, asked)
            }
        };
        Verdict {
            holds,
            rows,
            meeting,
            detail: format!("{counted}; {asked}"),
            meets,
        }
    }
}

/// `0.8` as "80%", `0.125` as "12.5%".
fn percent(share: f64) -> String {
    let text = format!("{:.1}", 100.0 * share);
    format!("{}%", text.trim_end_matches(".0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::ast::BinaryOp;

    fn losses(values: &[f64]) -> Table {
        Table {
            name: "t".into(),
            columns: vec!["loss".into()],
            rows: values.iter().map(|&x| vec![Cell::Number(x)]).collect(),
        }
    }

    fn below(quantifier: Quantifier, limit: f64) -> Check {
        Check {
            quantifier,
            condition: ColumnExpr::Binary(
                BinaryOp::Lt,
                Box::new(ColumnExpr::Column("loss".into())),
                Box::new(ColumnExpr::Number(limit)),
            ),
            show: Vec::new(),
        }
    }

    #[test]
    fn all_holds_only_when_every_row_meets_it() {
        let verdict = below(Quantifier::All, 5.0).evaluate(&losses(&[1.0, 2.0, 6.0]));
        assert!(!verdict.holds);
        assert_eq!(verdict.meets, [true, true, false]);
        assert_eq!(verdict.detail, "2 of 3 rows (66.7%); all asked");
        assert!(
            below(Quantifier::All, 7.0)
                .evaluate(&losses(&[1.0, 6.0]))
                .holds
        );
    }

    #[test]
    fn a_claim_about_no_rows_fails() {
        let verdict = below(Quantifier::All, 5.0).evaluate(&losses(&[]));
        assert!(!verdict.holds);
        assert_eq!(verdict.detail, "no rows to check; all asked");
    }

    #[test]
    fn any_needs_one_row() {
        assert!(
            below(Quantifier::Any, 2.0)
                .evaluate(&losses(&[9.0, 1.0]))
                .holds
        );
        assert!(
            !below(Quantifier::Any, 0.5)
                .evaluate(&losses(&[9.0, 1.0]))
                .holds
        );
    }

    #[test]
    fn share_compares_with_its_bounds() {
        let table = losses(&[1.0, 2.0, 3.0, 9.0]);
        let share = |at_least, at_most| Quantifier::Share { at_least, at_most };
        let verdict = below(share(Some(0.75), None), 5.0).evaluate(&table);
        assert!(verdict.holds);
        assert_eq!(verdict.detail, "3 of 4 rows (75.0%); at least 75% asked");
        assert!(!below(share(Some(0.8), None), 5.0).evaluate(&table).holds);
        assert!(!below(share(None, Some(0.5)), 5.0).evaluate(&table).holds);
        let verdict = below(share(Some(0.125), Some(0.5)), 2.5).evaluate(&table);
        assert!(verdict.holds);
        assert_eq!(verdict.detail, "2 of 4 rows (50.0%); 12.5% to 50% asked");
    }
}
