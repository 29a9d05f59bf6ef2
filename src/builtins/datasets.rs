//! Datasets: the prompts an experiment runs on, from a text file, a JSON-lines file or
//! an inline list; their parameters and typed form (`dataset.rs` reads them).

use super::args::{Args, BindError, Text};
use crate::builtins::spec::{Builtin, MAX_SEED, Produces, STRS, Type, opt, req};
use crate::plan::{Call, Value};

pub const TEXT: Builtin = Builtin {
    name: "text",
    produces: Produces::Dataset,
    summary: "prompts from a text file split on a separator (TinyStories: `<|endoftext|>`)",
    params: &[
        req("path", Type::Str).non_empty(),
        opt("separator", Type::Str).non_empty(),
        opt("shuffle_seed", Type::Integer).within(0.0, MAX_SEED),
        opt("skip", Type::Integer).within(0.0, 1e12),
        opt("take", Type::Integer).within(1.0, 1e12),
        opt("max_tokens", Type::Integer).within(1.0, 1e6),
    ],
};

pub const JSONL: Builtin = Builtin {
    name: "jsonl",
    produces: Produces::Dataset,
    summary: "prompts from a JSON-lines file, one text field per line",
    params: &[
        req("path", Type::Str).non_empty(),
        opt("field", Type::Str).non_empty(),
        opt("shuffle_seed", Type::Integer).within(0.0, MAX_SEED),
        opt("skip", Type::Integer).within(0.0, 1e12),
        opt("take", Type::Integer).within(1.0, 1e12),
        opt("max_tokens", Type::Integer).within(1.0, 1e6),
    ],
};

pub const PROMPTS: Builtin = Builtin {
    name: "prompts",
    produces: Produces::Dataset,
    summary: "an inline list of prompts",
    params: &[
        req("texts", STRS),
        opt("max_tokens", Type::Integer).within(1.0, 1e6),
    ],
};

/// A dataset declaration, its arguments typed.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSource {
    pub kind: DatasetKind,
    /// Shuffle the prompts with this seed before skipping and taking.
    pub shuffle_seed: Option<u64>,
    pub skip: usize,
    pub take: Option<usize>,
    /// Cut each prompt to this many tokens (BOS included).
    pub max_tokens: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DatasetKind {
    /// A text file split on `separator`.
    Text {
        path: String,
        separator: String,
    },
    /// A JSON-lines file, one prompt per line in `field`.
    Jsonl {
        path: String,
        field: String,
    },
    Prompts {
        texts: Vec<String>,
    },
}

impl DatasetSource {
    pub fn bind(call: &Call) -> Result<Self, BindError> {
        let args = Args::new(call);
        let given = |name: &str| -> Result<Option<String>, BindError> {
            match args.opt_text(name)? {
                None => Ok(None),
                Some(Text::Given(text)) => Ok(Some(text)),
                Some(Text::Computed(let_name)) => Err(BindError {
                    function: call.function.to_owned(),
                    argument: name.to_owned(),
                    problem: format!("is `{let_name}`, computed at run time"),
                }),
            }
        };
        let path = || -> Result<String, BindError> {
            given("path")?.ok_or_else(|| BindError {
                function: call.function.to_owned(),
                argument: "path".to_owned(),
                problem: "is missing".to_owned(),
            })
        };
        let kind = match call.function {
            "text" => DatasetKind::Text {
                path: path()?,
                separator: given("separator")?.unwrap_or_else(|| "\n\n".into()),
            },
            "jsonl" => DatasetKind::Jsonl {
                path: path()?,
                field: given("field")?.unwrap_or_else(|| "text".into()),
            },
            _ => DatasetKind::Prompts {
                texts: match call.args.get("texts") {
                    Some(Value::List(items)) => items
                        .iter()
                        .filter_map(|v| match v {
                            Value::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                },
            },
        };
        Ok(Self {
            kind,
            shuffle_seed: args.opt_int("shuffle_seed")?.map(|n| n as u64),
            skip: args.opt_int("skip")?.unwrap_or(0).max(0) as usize,
            take: args.opt_int("take")?.map(|n| n.max(0) as usize),
            max_tokens: args
                .opt_int("max_tokens")?
                .filter(|&n| n > 0)
                .map(|n| n as usize),
        })
    }
}
