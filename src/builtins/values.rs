//! Values computed at run time and bound with `let`: `row` (a prompt's text),
//! `values` (whole numbers from a column), `best_head` (the head in a table's best row).

use crate::builtins::args::Args;
use crate::builtins::{Builtin, Produces, Type, opt, req};
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

pub fn compute(s: &mut Session, call: &Call) -> Result<Value, Failure> {
    match call.function {
        "best_head" => {
            let column = |key: &str, default: &str| match call.args.get(key) {
                Some(Value::Column(c)) => c.clone(),
                _ => default.to_owned(),
            };
            let args = Args::new(call);
            let table = args.name("table").map_err(|e| e.to_string())?;
            let table = &table;
            let table = s.table(table)?;
            let index = |c: &str| {
                table
                    .column(c)
                    .ok_or_else(|| format!("table `{}` has no column `{c}`", table.name))
            };
            let (by, layer, head) = (
                index(&column("by", "score"))?,
                index(&column("layer", "layer"))?,
                index(&column("head", "head"))?,
            );
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
        "values" => {
            let args = Args::new(call);
            let table = args.name("table").map_err(|e| e.to_string())?;
            let column = args.column("column").map_err(|e| e.to_string())?;
            let (table, column) = (&table, &column);
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
        "row" => {
            let args = Args::new(call);
            let dataset = args.name("dataset").map_err(|e| e.to_string())?;
            let dataset = &dataset;
            let sequences = s.dataset(dataset)?;
            let index = args
                .opt_int("index")
                .map_err(|e| e.to_string())?
                .unwrap_or(0);
            let tokens = sequences.get(index as usize).ok_or_else(|| {
                format!(
                    "dataset `{dataset}` has {} prompts; there is no prompt {index}",
                    sequences.len()
                )
            })?;
            let tokens = match args.opt_int("until").map_err(|e| e.to_string())? {
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
        other => Err(format!("`{other}` does not compute a value")),
    }
}
