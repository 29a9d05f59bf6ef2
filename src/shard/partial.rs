//! A shard's partial results: one JSON file per shard in the experiment's shard folder
//! (`<reports>/<experiment>.shards/shard-0002-of-0003.json`), written atomically so a
//! killed shard leaves no half file, and read back by `qexp merge`.
//!
//! Numbers are stored exactly (JSON floats that read back to the same bits), so a
//! merged table holds the numbers the shards computed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Shard;
use crate::output::{Kind, Scope};
use crate::results::{Cell, Table};

/// The format of a partial file; a merge refuses others.
const FORMAT: u32 = 1;

/// The share of one step's table a shard made, with what the merge needs to finish it.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub table: Table,
    /// Columns that need the whole dataset (an explained variance against the mean
    /// input over every token): the inputs behind each row, finished in the merge.
    pub whole_dataset: Option<RowInputs>,
    /// A step that makes no table (dashboards): what it collected, as it stores it.
    pub state: Option<serde_json::Value>,
}

impl Part {
    /// A part that is rows alone.
    pub fn rows(table: Table) -> Self {
        Part {
            table,
            whole_dataset: None,
            state: None,
        }
    }
}

/// What a per-row column that compares against a dataset-wide mean needs from a share.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RowInputs {
    /// The column to fill in.
    pub column: String,
    /// The sum of every input of the share (rows without a table row included) and
    /// how many there were.
    pub sum: Vec<f64>,
    pub count: usize,
    /// Per table row, its input and its squared reconstruction error.
    pub inputs: Vec<Vec<f32>>,
    pub squared_errors: Vec<f64>,
}

/// Everything one shard wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    pub shard: Shard,
    /// What the shard ran: its experiment's text, model and dataset files, hashed. A
    /// merge refuses shards made from anything else.
    pub inputs: Inputs,
    /// The tokens the shard ran through the model.
    pub tokens_run: usize,
    /// The weights (SHA-256) of each SAE the shard read, by name.
    pub saes_sha256: BTreeMap<String, String>,
    /// The `let` values without measured numbers the shard computed, as text.
    pub values: BTreeMap<String, String>,
    /// The sharded steps' parts, by table name.
    pub parts: BTreeMap<String, Part>,
}

/// The hashes that tie a partial to one version of an experiment and its inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub experiment_sha256: String,
    pub weights_sha256: String,
    pub datasets_sha256: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a partial this qexp can read ({problem}); run that shard again", path.display())]
    Corrupt { path: PathBuf, problem: String },
    #[error("no shards in {}: run `qexp run EXPERIMENT --shard I/N` for each I first", folder.display())]
    None { folder: PathBuf },
    #[error("{} holds shards of {counts} runs; remove the old ones, or name the count with --shards N", folder.display())]
    Counts { folder: PathBuf, counts: String },
    #[error("shard{} {} of {count} missing from {}: run `qexp run EXPERIMENT --shard I/{count}` for {}", if missing.len() > 1 { "s" } else { "" }, super::numbers(missing), folder.display(), if missing.len() > 1 { "each" } else { "it" })]
    Missing {
        folder: PathBuf,
        count: usize,
        missing: Vec<usize>,
    },
    #[error("shard {shard} was made from {what} than this merge reads; run it again")]
    Stale { shard: Shard, what: String },
}

/// Where an experiment's shards go unless told otherwise: beside its report folder.
pub fn default_folder(reports: &Path, experiment: &str) -> PathBuf {
    reports.join(format!("{experiment}.shards"))
}

fn file_name(shard: Shard) -> String {
    format!("shard-{:04}-of-{:04}.json", shard.index + 1, shard.count)
}

/// Writes `partial` into `folder` (made and marked as a shard folder if new; git
/// ignores its contents), replacing that shard's earlier file in one rename.
pub fn write(folder: &Path, partial: &Partial, scope: &Scope) -> Result<PathBuf, ShardError> {
    prepare_folder(folder, scope)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ShardError::Write { path, source }
    };
    let file = Stored::from(partial);
    let text = serde_json::to_string(&file).map_err(|e| ShardError::Write {
        path: folder.to_owned(),
        source: std::io::Error::other(e),
    })?;
    let target = folder.join(file_name(partial.shard));
    let mut staged = tempfile::Builder::new()
        .prefix(".shard-")
        .tempfile_in(folder)
        .map_err(io(folder))?;
    std::io::Write::write_all(&mut staged, text.as_bytes()).map_err(io(&target))?;
    crate::output::put_in_place(staged, &target).map_err(io(&target))?;
    Ok(target)
}

/// Makes `folder` a shard folder (marked, its contents ignored by git), refusing a
/// folder qexp did not make.
pub fn prepare_folder(folder: &Path, scope: &Scope) -> Result<(), ShardError> {
    scope.check(folder, Kind::Shards)?;
    let io = |source| ShardError::Write {
        path: folder.to_owned(),
        source,
    };
    let ignore = folder.join(".gitignore");
    if crate::output::marked_as(folder, Kind::Shards) && ignore.is_file() {
        // Shards started together find it ready and write nothing another could see
        // half written.
        return Ok(());
    }
    std::fs::create_dir_all(folder).map_err(io)?;
    // The marker arrives whole, in one rename, before anything else is put in the
    // folder: a shard checking it meanwhile sees an empty folder or a marked one.
    let parent = folder
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut marker = tempfile::Builder::new()
        .prefix(".qexp-marker-")
        .tempfile_in(parent)
        .map_err(io)?;
    std::io::Write::write_all(&mut marker, Kind::Shards.marker_text().as_bytes()).map_err(io)?;
    crate::output::put_in_place(marker, &folder.join(crate::output::MARKER_FILE)).map_err(io)?;
    std::fs::write(ignore, "*\n").map_err(io)
}

/// Removes the parts of earlier runs from `folder` (a shard folder), so a new
/// submission's state is read from its own shards only.
pub fn remove_parts(folder: &Path) -> Result<(), ShardError> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("shard-") && name.ends_with(".json") {
            std::fs::remove_file(entry.path()).map_err(|source| ShardError::Write {
                path: entry.path(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Every shard of one run in `folder`, in shard order: all of them, of one count
/// (`count`, or the only count the folder holds), made from `inputs`.
pub fn read_all(
    folder: &Path,
    count: Option<usize>,
    inputs: &Inputs,
) -> Result<Vec<Partial>, ShardError> {
    let read_error = |source| ShardError::Read {
        path: folder.to_owned(),
        source,
    };
    if !folder.is_dir() {
        return Err(ShardError::None {
            folder: folder.to_owned(),
        });
    }
    let mut found: BTreeMap<usize, Vec<(usize, PathBuf)>> = BTreeMap::new();
    for entry in std::fs::read_dir(folder).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some((i, n)) = name
            .strip_prefix("shard-")
            .and_then(|rest| rest.strip_suffix(".json"))
            .and_then(|rest| rest.split_once("-of-"))
            && let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>())
        {
            found.entry(n).or_default().push((i, path));
        }
    }
    let count = match count {
        Some(0) => {
            return Err(ShardError::None {
                folder: folder.to_owned(),
            });
        }
        Some(n) => n,
        None if found.is_empty() => {
            return Err(ShardError::None {
                folder: folder.to_owned(),
            });
        }
        None if found.len() == 1 => *found.keys().next().expect("one count"),
        None => {
            return Err(ShardError::Counts {
                folder: folder.to_owned(),
                counts: super::numbers(&found.keys().copied().collect::<Vec<_>>()),
            });
        }
    };
    let files: BTreeMap<usize, PathBuf> = found
        .remove(&count)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let missing: Vec<usize> = (1..=count).filter(|i| !files.contains_key(i)).collect();
    if !missing.is_empty() {
        return Err(ShardError::Missing {
            folder: folder.to_owned(),
            count,
            missing,
        });
    }
    let mut partials = Vec::with_capacity(count);
    for (i, path) in files {
        let text = crate::files::read_to_string(&path).map_err(|source| ShardError::Read {
            path: path.clone(),
            source,
        })?;
        let corrupt = |problem: String| ShardError::Corrupt {
            path: path.clone(),
            problem,
        };
        let stored: Stored = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let partial = stored.into_partial().map_err(corrupt)?;
        if partial.shard.index + 1 != i || partial.shard.count != count {
            return Err(corrupt(format!("it holds shard {}", partial.shard)));
        }
        if let Some(what) = inputs.differences(&partial.inputs) {
            return Err(ShardError::Stale {
                shard: partial.shard,
                what,
            });
        }
        partials.push(partial);
    }
    Ok(partials)
}

impl Inputs {
    /// In words, what `shard`'s inputs differ in, if anything.
    fn differences(&self, shard: &Inputs) -> Option<String> {
        let mut what = Vec::new();
        if self.experiment_sha256 != shard.experiment_sha256 {
            what.push("another version of the experiment".to_owned());
        }
        if self.weights_sha256 != shard.weights_sha256 {
            what.push("other model weights".to_owned());
        }
        for (name, sha) in &self.datasets_sha256 {
            if shard.datasets_sha256.get(name) != Some(sha) {
                what.push(format!("another file for dataset `{name}`"));
            }
        }
        (!what.is_empty()).then(|| what.join(" and "))
    }
}

/// The file's layout: cells tagged with their kind, so a list with no items or a
/// whole number read back as what was written.
#[derive(Serialize, Deserialize)]
struct Stored {
    format: u32,
    shard: usize,
    count: usize,
    inputs: Inputs,
    tokens_run: usize,
    saes_sha256: BTreeMap<String, String>,
    #[serde(default)]
    values: BTreeMap<String, String>,
    parts: BTreeMap<String, StoredPart>,
}

#[derive(Serialize, Deserialize)]
struct StoredPart {
    columns: Vec<String>,
    rows: Vec<Vec<StoredCell>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    whole_dataset: Option<RowInputs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
enum StoredCell {
    I(i64),
    N(f64),
    S(String),
    B(bool),
    Il(Vec<i64>),
    Nl(Vec<f64>),
}

impl From<&Partial> for Stored {
    fn from(partial: &Partial) -> Self {
        let cell = |c: &Cell| match c {
            Cell::Integer(n) => StoredCell::I(*n),
            Cell::Number(x) => StoredCell::N(*x),
            Cell::Str(s) => StoredCell::S(s.clone()),
            Cell::Bool(b) => StoredCell::B(*b),
            Cell::IntegerList(v) => StoredCell::Il(v.clone()),
            Cell::NumberList(v) => StoredCell::Nl(v.clone()),
        };
        Stored {
            format: FORMAT,
            shard: partial.shard.index + 1,
            count: partial.shard.count,
            inputs: partial.inputs.clone(),
            tokens_run: partial.tokens_run,
            saes_sha256: partial.saes_sha256.clone(),
            values: partial.values.clone(),
            parts: partial
                .parts
                .iter()
                .map(|(name, part)| {
                    (
                        name.clone(),
                        StoredPart {
                            columns: part.table.columns.clone(),
                            rows: part
                                .table
                                .rows
                                .iter()
                                .map(|row| row.iter().map(cell).collect())
                                .collect(),
                            whole_dataset: part.whole_dataset.clone(),
                            state: part.state.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl Stored {
    fn into_partial(self) -> Result<Partial, String> {
        if self.format != FORMAT {
            return Err(format!("format {}, not {FORMAT}", self.format));
        }
        if self.count == 0 || self.shard == 0 || self.shard > self.count {
            return Err(format!("shard {}/{}", self.shard, self.count));
        }
        let cell = |c: StoredCell| match c {
            StoredCell::I(n) => Cell::Integer(n),
            StoredCell::N(x) => Cell::Number(x),
            StoredCell::S(s) => Cell::Str(s),
            StoredCell::B(b) => Cell::Bool(b),
            StoredCell::Il(v) => Cell::IntegerList(v),
            StoredCell::Nl(v) => Cell::NumberList(v),
        };
        let mut parts = BTreeMap::new();
        for (name, part) in self.parts {
            if part.rows.iter().any(|row| row.len() != part.columns.len()) {
                return Err(format!("a row of `{name}` has the wrong number of cells"));
            }
            let table = Table {
                name: name.clone(),
                columns: part.columns,
                rows: part
                    .rows
                    .into_iter()
                    .map(|row| row.into_iter().map(cell).collect())
                    .collect(),
            };
            parts.insert(
                name,
                Part {
                    table,
                    whole_dataset: part.whole_dataset,
                    state: part.state,
                },
            );
        }
        Ok(Partial {
            shard: Shard {
                index: self.shard - 1,
                count: self.count,
            },
            inputs: self.inputs,
            tokens_run: self.tokens_run,
            saes_sha256: self.saes_sha256,
            values: self.values,
            parts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_reads_back_exactly_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let scope = Scope::within(dir.path(), false).unwrap();
        let inputs = Inputs {
            experiment_sha256: "e".into(),
            weights_sha256: "w".into(),
            datasets_sha256: BTreeMap::from([("d".into(), "x".into())]),
        };
        let table = Table {
            name: "t".into(),
            columns: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            rows: vec![vec![
                Cell::Integer(3),
                Cell::Number(0.1 + 0.2),
                Cell::NumberList(Vec::new()),
                Cell::Number(3.0),
            ]],
        };
        let partial = Partial {
            shard: Shard { index: 0, count: 1 },
            inputs: inputs.clone(),
            tokens_run: 7,
            saes_sha256: BTreeMap::new(),
            values: BTreeMap::from([("BEST".to_owned(), "L1H3".to_owned())]),
            parts: BTreeMap::from([(
                "t".to_owned(),
                Part {
                    table,
                    whole_dataset: None,
                    state: None,
                },
            )]),
        };
        let folder = dir.path().join("shards");
        write(&folder, &partial, &scope).unwrap();
        let read = read_all(&folder, None, &inputs).unwrap();
        assert_eq!(read, vec![partial]);
        let other = Inputs {
            weights_sha256: "v".into(),
            ..inputs
        };
        let stale = read_all(&folder, None, &other).unwrap_err().to_string();
        assert!(stale.contains("other model weights"), "{stale}");
    }
}
