//! Datasets: the prompts an experiment runs on, from a text file split on a separator,
//! a JSON-lines file, or an inline list; optionally shuffled with a seed, skipped and
//! taken. Token limits are applied when the prompts are tokenized.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::plan::{Call, Value};

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
}

/// The prompts of a dataset declaration, in the order they will run.
pub fn load(call: &Call, root: &Path) -> Result<Vec<String>, DatasetError> {
    let text_arg = |name: &str| match call.args.get(name) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let int_arg = |name: &str| match call.args.get(name) {
        Some(Value::Integer(n)) => Some(*n),
        _ => None,
    };
    let read = |path: &str| {
        crate::files::read_to_string(&root.join(path)).map_err(|e| DatasetError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })
    };
    let mut prompts: Vec<String> = match call.function {
        "text" => {
            let path = text_arg("path").unwrap_or_default();
            let separator = text_arg("separator").unwrap_or_else(|| "\n\n".into());
            read(&path)?
                .split(separator.as_str())
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        }
        "jsonl" => {
            let path = text_arg("path").unwrap_or_default();
            let field = text_arg("field").unwrap_or_else(|| "text".into());
            let mut prompts = Vec::new();
            for (i, line) in read(&path)?
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
                    .get(&field)
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| at(format!("no string field `{field}`")))?;
                prompts.push(text.to_owned());
            }
            prompts
        }
        "prompts" => match call.args.get("texts") {
            Some(Value::List(items)) => items
                .iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
        other => {
            unreachable!("the checker only makes datasets with text, jsonl or prompts, not {other}")
        }
    };
    if let Some(seed) = int_arg("shuffle_seed") {
        prompts.shuffle(&mut StdRng::seed_from_u64(seed as u64));
    }
    let skip = int_arg("skip").unwrap_or(0).max(0) as usize;
    let take = int_arg("take").map_or(usize::MAX, |n| n.max(0) as usize);
    let prompts: Vec<String> = prompts.into_iter().skip(skip).take(take).collect();
    if prompts.is_empty() {
        return Err(DatasetError::Empty);
    }
    Ok(prompts)
}

/// The `max_tokens` limit of a dataset declaration, if any.
pub fn max_tokens(call: &Call) -> Option<usize> {
    match call.args.get("max_tokens") {
        Some(Value::Integer(n)) if *n > 0 => Some(*n as usize),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn call(function: &'static str, args: Vec<(&'static str, Value)>) -> Call {
        Call {
            function,
            args: args.into_iter().collect::<BTreeMap<_, _>>(),
        }
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
