//! Values computed at run time and bound with `let`: `row` (a prompt's text),
//! `values` (whole numbers from a column), `best_head` (the head in a table's best row),
//! and steering vectors: `activation_difference` (ActAdd) and `vector_file`.

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

/// A steering vector: a list of numbers the width of the hook it is added to.
pub const VECTOR: Type = Type::ListOf(&Type::Number);

pub const ACTIVATION_DIFFERENCE: Builtin = Builtin {
    name: "activation_difference",
    produces: Produces::Value(VECTOR),
    summary: "a hook's value on one prompt minus on another, at the last token or averaged over positions: an ActAdd steering vector",
    params: &[
        req("positive", Type::Str).non_empty(),
        req("negative", Type::Str).non_empty(),
        req("hook", Type::Hook),
        opt("pos", Type::Position),
    ],
};

pub const VECTOR_FILE: Builtin = Builtin {
    name: "vector_file",
    produces: Produces::Value(VECTOR),
    summary: "a vector from a .npy file or a safetensors file (its one tensor, or `tensor`)",
    params: &[
        req("path", Type::Str).non_empty(),
        opt("tensor", Type::Str).non_empty(),
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
    /// `hook` on `positive` minus on `negative`: at `pos` of each (the last token by
    /// default), or the mean over each prompt's positions with `pos = all`.
    ActivationDifference {
        positive: crate::builtins::args::Text,
        negative: crate::builtins::args::Text,
        hook: crate::hooks::HookRef,
        pos: Option<i64>,
    },
    /// A 1-D tensor of a `.npy` or safetensors file.
    VectorFile {
        path: crate::builtins::args::Text,
        tensor: Option<crate::builtins::args::Text>,
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
            "activation_difference" => ValueCall::ActivationDifference {
                positive: args.text("positive")?,
                negative: args.text("negative")?,
                hook: args.hook("hook")?,
                pos: if args.is_all("pos") {
                    None
                } else {
                    Some(args.position("pos")?.unwrap_or(-1))
                },
            },
            "vector_file" => ValueCall::VectorFile {
                path: args.text("path")?,
                tensor: args.opt_text("tensor")?,
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
            ValueCall::ActivationDifference {
                positive,
                negative,
                hook,
                pos,
            } => {
                let positive = positive.resolve(&s.values)?;
                let negative = negative.resolve(&s.values)?;
                let target = s.target(hook)?;
                let read =
                    |s: &mut Session, prompt: &str| -> Result<ndarray::Array1<f64>, Failure> {
                        let tokens = s.prompt_tokens(prompt)?;
                        let batch = s.model.batch(&[&tokens]).map_err(Session::runtime)?;
                        let mut forward = s.forward(None, &batch, &[&hook.name])?;
                        let value = forward.hooks.remove(&hook.name).expect("asked for");
                        vector_at(value, target.head, *pos, &tokens, &hook.name)
                    };
                let difference = read(s, &positive)? - read(s, &negative)?;
                Ok(Value::List(
                    difference.iter().map(|&x| Value::Number(x)).collect(),
                ))
            }
            ValueCall::VectorFile { path, tensor } => {
                let path = s.root.join(path.resolve(&s.values)?);
                let tensor = match tensor {
                    Some(tensor) => Some(tensor.resolve(&s.values)?),
                    None => None,
                };
                let vector = read_vector(&path, tensor.as_deref())?;
                Ok(Value::List(vector.into_iter().map(Value::Number).collect()))
            }
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

/// The vector at one position (negative from the end) of a `[1, pos, ...]` hook value, or
/// its mean over positions (`pos` absent), for one head where the hook has heads.
fn vector_at(
    value: ndarray::ArrayD<f32>,
    head: Option<usize>,
    pos: Option<i64>,
    tokens: &[u32],
    hook: &str,
) -> Result<ndarray::Array1<f64>, Failure> {
    use ndarray::Axis;
    let per_position = match (value.ndim(), head) {
        (3, _) => value.index_axis(Axis(0), 0).to_owned(),
        (4, Some(head)) => value
            .index_axis(Axis(0), 0)
            .index_axis(Axis(1), head)
            .to_owned(),
        (4, None) => {
            return Err(format!(
                "`{hook}` has a value per head: choose one, `{hook}[head = 0]`"
            ));
        }
        _ => {
            return Err(format!(
                "`{hook}` is not laid out by position: take the difference of a residual-stream, attention or MLP output hook"
            ));
        }
    };
    let per_position = per_position
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|e| e.to_string())?
        .mapv(f64::from);
    Ok(match pos {
        Some(pos) => per_position
            .row(crate::session::position(tokens, Some(pos))?)
            .to_owned(),
        None => per_position
            .mean_axis(Axis(0))
            .ok_or("an empty prompt has no positions")?,
    })
}

/// A 1-D vector from a `.npy` file (float32 or float64) or a safetensors file (the tensor
/// named, or its only one).
pub fn read_vector(path: &std::path::Path, tensor: Option<&str>) -> Result<Vec<f64>, Failure> {
    let shown = path.display();
    crate::files::ensure_regular(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let is_npy = path.extension().is_some_and(|e| e == "npy");
    if is_npy {
        if tensor.is_some() {
            return Err(format!(
                "{shown} is a .npy file: it holds one array, so give no `tensor`"
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        use ndarray_npy::ReadNpyExt;
        if let Ok(v) = ndarray::Array1::<f32>::read_npy(&file) {
            return Ok(v.iter().map(|&x| f64::from(x)).collect());
        }
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        return ndarray::Array1::<f64>::read_npy(file)
            .map(|v| v.to_vec())
            .map_err(|e| format!("{shown} is not a 1-D float32 or float64 .npy array: {e}"));
    }
    let tensors =
        crate::sae::tensors::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let names = || {
        tensors
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (name, values) = match tensor {
        Some(name) => tensors
            .get_key_value(name)
            .ok_or_else(|| format!("{shown} has no tensor `{name}`; it has {}", names()))?,
        None if tensors.len() == 1 => tensors.iter().next().expect("one"),
        None => {
            return Err(format!(
                "{shown} holds {} tensors ({}): name one with `tensor = \"...\"`",
                tensors.len(),
                names()
            ));
        }
    };
    if values.ndim() != 1 {
        return Err(format!(
            "tensor `{name}` of {shown} has shape {:?}, not a vector",
            values.shape()
        ));
    }
    Ok(values.iter().map(|&x| f64::from(x)).collect())
}
