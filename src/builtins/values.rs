//! Values computed at run time and bound with `let`: `row` (a prompt's text),
//! `values` (whole numbers from a column), `best_head` (the head in a table's best row).

use crate::builtins::args::{Args, BindError};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::plan::{Call, Value};
use crate::results::Cell;
use crate::session::{Failure, Session};

pub const ROW: Builtin = Builtin {
    name: "row",
    produces: Produces::Value(Type::Str),
    summary: "the text of one prompt of a dataset, optionally cut after a token position",
    params: &[
        req("dataset", Type::Dataset),
        req("index", Type::Integer).within(-1e9, 1e9),
        opt("until", Type::Integer).within(-1e9, 1e9),
    ],
};

pub const VALUES: Builtin = Builtin {
    name: "values",
    produces: Produces::Value(Type::ListOf(&Type::Integer)),
    summary: "the whole numbers in one column of a table, in row order (e.g. the top features)",
    params: &[req("table", Type::Table), req("column", Type::Column)],
};

pub const BEST_HEAD: Builtin = Builtin {
    name: "best_head",
    produces: Produces::Value(Type::Head),
    summary: "the head in the row with the largest value of a column",
    params: &[
        req("table", Type::Table),
        req("by", Type::Column),
        opt("layer", Type::Column),
        opt("head", Type::Column),
    ],
};

/// A value-computing call, its arguments typed.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueCall {
    /// The text of prompt `index` of a dataset, cut after token `until`.
    Row {
        dataset: String,
        index: i64,
        until: Option<i64>,
    },
    /// The whole numbers in a column, in row order.
    Values { table: String, column: String },
    /// The head in the row with the largest `by`, from its `layer` and `head` columns.
    BestHead {
        table: String,
        by: String,
        layer: String,
        head: String,
    },
}

impl ValueCall {
    pub fn bind(call: &Call) -> Result<Self, BindError> {
        let args = Args::new(call);
        Ok(match call.function {
            "row" => ValueCall::Row {
                dataset: args.name("dataset")?,
                index: args.opt_int("index")?.unwrap_or(0),
                until: args.opt_int("until")?,
            },
            "values" => ValueCall::Values {
                table: args.name("table")?,
                column: args.column("column")?,
            },
            "best_head" => ValueCall::BestHead {
                table: args.name("table")?,
                by: args.opt_column("by")?.unwrap_or_else(|| "score".into()),
                layer: args.opt_column("layer")?.unwrap_or_else(|| "layer".into()),
                head: args.opt_column("head")?.unwrap_or_else(|| "head".into()),
            },
            other => {
                return Err(BindError {
                    function: other.to_owned(),
                    argument: String::new(),
                    problem: "does not compute a value".to_owned(),
                });
            }
        })
    }

    pub fn compute(&self, s: &mut Session) -> Result<Value, Failure> {
        match self {
            ValueCall::BestHead {
                table,
                by,
                layer,
                head,
            } => {
                let table = s.table(table)?;
                let index = |c: &str| {
                    table
                        .column(c)
                        .ok_or_else(|| format!("table `{}` has no column `{c}`", table.name))
                };
                let (by, layer, head) = (index(by)?, index(layer)?, index(head)?);
                let best = table
                    .rows
                    .iter()
                    .filter(|row| row[by].number().is_some_and(f64::is_finite))
                    .max_by(|a, b| {
                        a[by]
                            .number()
                            .unwrap_or(f64::NAN)
                            .total_cmp(&b[by].number().unwrap_or(f64::NAN))
                    })
                    .ok_or_else(|| format!("table `{}` has no rows", table.name))?;
                match (&best[layer], &best[head]) {
                    (Cell::Integer(l), Cell::Integer(h)) => Ok(Value::Head {
                        layer: *l as usize,
                        head: *h as usize,
                    }),
                    _ => Err("the layer and head columns must hold whole numbers".into()),
                }
            }
            ValueCall::Values { table, column } => {
                let table = s.table(table)?;
                let index = table
                    .column(column)
                    .ok_or_else(|| format!("table `{}` has no column `{column}`", table.name))?;
                table
                    .rows
                    .iter()
                    .map(|row| match &row[index] {
                        Cell::Integer(n) => Ok(Value::Integer(*n)),
                        other => Err(format!(
                            "column `{column}` holds {other:?}, not whole numbers"
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::List)
            }
            ValueCall::Row {
                dataset,
                index,
                until,
            } => {
                let sequences = s.dataset(dataset)?;
                let index = *index;
                let tokens = sequences.get(index as usize).ok_or_else(|| {
                    format!(
                        "dataset `{dataset}` has {} prompts; there is no prompt {index}",
                        sequences.len()
                    )
                })?;
                let tokens = match *until {
                    Some(until) if (until as usize) < tokens.len() => &tokens[..=until as usize],
                    Some(until) => {
                        return Err(format!(
                            "prompt {index} of `{dataset}` has {} tokens; `until = {until}` is past its end",
                            tokens.len()
                        ));
                    }
                    None => &tokens[..],
                };
                // Drop BOS: running the prompt adds it again when the model wants it.
                let skip = usize::from(
                    s.model.manifest.special_tokens.prepend_bos
                        && tokens.first().copied() == s.model.manifest.special_tokens.bos,
                );
                Ok(Value::Str(
                    s.model
                        .to_string(&tokens[skip..])
                        .map_err(Session::runtime)?,
                ))
            }
        }
    }
}
