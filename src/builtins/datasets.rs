//! Datasets: the prompts an experiment runs on, from a text file split on a separator,
//! a JSON-lines file, or an inline list; optionally shuffled with a seed, skipped and
//! taken. Their parameters, typed form and loading; token limits are applied when the
//! session tokenizes the prompts.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

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

pub const REPEATED_TOKENS: Builtin = Builtin {
    name: "repeated_tokens",
    produces: Produces::Dataset,
    summary: "prompts of random tokens repeated (BOS first where the model expects it), for induction",
    params: &[
        req("length", Type::Integer).within(1.0, 1e5),
        opt("count", Type::Integer).within(1.0, 1e5),
        opt("repeats", Type::Integer).within(1.0, 100.0),
        opt("seed", Type::Integer).within(0.0, MAX_SEED),
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
    /// `count` prompts, each `length` random token ids repeated `repeats` times.
    RepeatedTokens {
        length: usize,
        count: usize,
        repeats: usize,
        seed: u64,
    },
}

impl DatasetKind {
    /// The token ids of a generated dataset (BOS not included), drawn uniformly from the
    /// vocabulary's ids but the special ones, from the seed alone; `None` for datasets
    /// of text.
    pub fn generated(&self, d_vocab: usize, special: &[u32]) -> Option<Vec<Vec<u32>>> {
        let DatasetKind::RepeatedTokens {
            length,
            count,
            repeats,
            seed,
        } = self
        else {
            return None;
        };
        use rand::Rng;
        let mut rng = StdRng::seed_from_u64(*seed);
        let ordinary: Vec<u32> = (0..d_vocab as u32)
            .filter(|t| !special.contains(t))
            .collect();
        Some(
            (0..*count)
                .map(|_| {
                    let once: Vec<u32> = (0..*length)
                        .map(|_| ordinary[rng.random_range(0..ordinary.len())])
                        .collect();
                    once.repeat(*repeats)
                })
                .collect(),
        )
    }
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
            "repeated_tokens" => DatasetKind::RepeatedTokens {
                length: args.opt_int("length")?.unwrap_or(1).max(1) as usize,
                count: args.opt_int("count")?.unwrap_or(1).max(1) as usize,
                repeats: args.opt_int("repeats")?.unwrap_or(2).max(1) as usize,
                seed: args.opt_int("seed")?.unwrap_or(0).max(0) as u64,
            },
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

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("the dataset is empty after skipping and taking; check the file and `skip`/`take`")]
    Empty,
    #[error("the dataset is made of token ids, not text")]
    NotText,
}

/// The prompts of a dataset declaration, in the order they will run.
pub fn load(source: &DatasetSource, root: &Path) -> Result<Vec<String>, DatasetError> {
    let read = |path: &str| {
        crate::files::read_to_string(&root.join(path)).map_err(|e| DatasetError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })
    };
    let mut prompts: Vec<String> = match &source.kind {
        DatasetKind::Text { path, separator } => read(path)?
            .split(separator.as_str())
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        DatasetKind::Jsonl { path, field } => {
            let mut prompts = Vec::new();
            for (i, line) in read(path)?
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let at = |message: String| DatasetError::Line {
                    path: path.clone(),
                    line: i + 1,
                    message,
                };
                let value: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
                let text = value
                    .get(field)
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| at(format!("no string field `{field}`")))?;
                prompts.push(text.to_owned());
            }
            prompts
        }
        DatasetKind::Prompts { texts } => texts.clone(),
        // Token ids, made by the session from the model's vocabulary.
        DatasetKind::RepeatedTokens { .. } => return Err(DatasetError::NotText),
    };
    if let Some(seed) = source.shuffle_seed {
        prompts.shuffle(&mut StdRng::seed_from_u64(seed));
    }
    let take = source.take.unwrap_or(usize::MAX);
    let prompts: Vec<String> = prompts.into_iter().skip(source.skip).take(take).collect();
    if prompts.is_empty() {
        return Err(DatasetError::Empty);
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Call, Value};
    use std::collections::BTreeMap;

    fn call(function: &'static str, args: Vec<(&'static str, Value)>) -> DatasetSource {
        DatasetSource::bind(&Call {
            function,
            args: args.into_iter().collect::<BTreeMap<_, _>>(),
        })
        .unwrap()
    }

    #[test]
    fn repeated_tokens_repeat_random_ids_from_the_seed_alone() {
        let kind = |seed| DatasetKind::RepeatedTokens {
            length: 6,
            count: 3,
            repeats: 3,
            seed,
        };
        let special = [0, 1, 2];
        let prompts = kind(9).generated(50, &special).unwrap();
        assert_eq!(prompts, kind(9).generated(50, &special).unwrap());
        assert_ne!(prompts, kind(10).generated(50, &special).unwrap());
        assert_eq!(prompts.len(), 3);
        for p in &prompts {
            assert_eq!(p.len(), 18);
            assert_eq!(p[..6], p[6..12]);
            assert_eq!(p[..6], p[12..]);
            assert!(
                p.iter().all(|t| *t >= 3 && *t < 50),
                "no special ids: {p:?}"
            );
        }
        let text = DatasetKind::Prompts { texts: vec![] };
        assert_eq!(text.generated(50, &special), None);
    }

    #[test]
    fn text_files_split_on_the_separator_and_shuffle_reproducibly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.txt"),
            "one<|endoftext|>two\n<|endoftext|> three <|endoftext|>\n<|endoftext|>four",
        )
        .unwrap();
        let c = call(
            "text",
            vec![
                ("path", Value::Str("s.txt".into())),
                ("separator", Value::Str("<|endoftext|>".into())),
                ("shuffle_seed", Value::Integer(3)),
            ],
        );
        let first = load(&c, dir.path()).unwrap();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, ["four", "one", "three", "two"]);
        assert_eq!(
            load(&c, dir.path()).unwrap(),
            first,
            "same seed, same order"
        );
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("d.jsonl"),
            "{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
        )
        .unwrap();
        let c = call("jsonl", vec![("path", Value::Str("d.jsonl".into()))]);
        let error = load(&c, dir.path()).unwrap_err().to_string();
        assert_eq!(error, "d.jsonl:2: no string field `text`");
    }

    #[test]
    fn skip_and_take_cut_the_list() {
        let texts = Value::List(
            ["a", "b", "c", "d"]
                .iter()
                .map(|s| Value::Str((*s).into()))
                .collect(),
        );
        let c = call(
            "prompts",
            vec![
                ("texts", texts),
                ("skip", Value::Integer(1)),
                ("take", Value::Integer(2)),
            ],
        );
        assert_eq!(load(&c, Path::new(".")).unwrap(), ["b", "c"]);
    }
}
