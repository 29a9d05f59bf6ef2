//! An on-disk store of training activations, written in shards and read memory-mapped,
//! so training an SAE holds its weights and a batch in memory, not its whole dataset.
//!
//! Layout of a store folder (one per SAE):
//! - `shard-0002-of-0004.f32`: that shard's rows, `d_in` little-endian f32 each, in
//!   dataset order; `shard-0002-of-0004.json`: its [`ShardRecord`], written after the
//!   rows (a shard without it did not finish).
//! - `activations.f32` and `activations.json` ([`Record`]): every shard's rows in shard
//!   order, made from the shard files the first time training reads the store (the
//!   shard files are then removed).
//!
//! The JSON files name the inputs ([`Inputs`]); a store made from other inputs is
//! refused, not read.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

const FORMAT: u32 = 1;

/// What the activations are of: a store made from anything else is not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub hook: String,
    pub head: Option<usize>,
    pub d_in: usize,
    pub model_weights_sha256: String,
    pub dataset_token_ids_sha256: String,
    /// The dataset's first this many tokens (or all, if fewer).
    pub tokens: usize,
}

/// One shard's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub format: u32,
    pub shard: usize,
    pub count: usize,
    /// Its first row's index among all rows, and how many it holds.
    pub first_row: usize,
    pub rows: usize,
    pub inputs: Inputs,
}

/// The whole store, once its shards are joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub rows: usize,
    pub inputs: Inputs,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} ({what})", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("no harvested activations in {}: run `qexp sae harvest EXPERIMENT NAME --shard I/N` for each I first", folder.display())]
    Empty { folder: PathBuf },
    #[error("harvest shard{} {} of {count} missing from {}", if missing.len() > 1 { "s" } else { "" }, crate::shard::numbers(missing), folder.display())]
    Missing {
        folder: PathBuf,
        count: usize,
        missing: Vec<usize>,
    },
    #[error("{} was harvested from other inputs ({what}); harvest it again", path.display())]
    Stale { path: PathBuf, what: String },
    #[error("{} is not a harvest this qexp can read ({problem})", path.display())]
    Corrupt { path: PathBuf, problem: String },
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { path, what, source }
}

fn shard_stem(shard: usize, count: usize) -> String {
    format!("shard-{shard:04}-of-{count:04}")
}

/// A shard being written: rows go straight to a file beside the store (memory does
/// not grow with the share), which [`ShardWriter::finish`] renames in and records.
pub struct ShardWriter {
    folder: PathBuf,
    shard: usize,
    count: usize,
    inputs: Inputs,
    rows: usize,
    out: BufWriter<tempfile::NamedTempFile>,
}

impl ShardWriter {
    /// Starts shard `shard` (from 1) of `count` in `folder`.
    pub fn new(
        folder: &Path,
        shard: usize,
        count: usize,
        inputs: &Inputs,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(folder).map_err(io(folder, "making the store"))?;
        let staged = tempfile::Builder::new()
            .prefix(".harvest-")
            .tempfile_in(folder)
            .map_err(io(folder, "writing a shard"))?;
        Ok(Self {
            folder: folder.to_owned(),
            shard,
            count,
            inputs: inputs.clone(),
            rows: 0,
            out: BufWriter::new(staged),
        })
    }

    /// Appends rows (`d_in` wide).
    pub fn append(&mut self, rows: ArrayView2<'_, f32>) -> Result<(), StoreError> {
        for value in rows.iter() {
            self.out
                .write_all(&value.to_le_bytes())
                .map_err(io(&self.folder, "writing a shard"))?;
        }
        self.rows += rows.nrows();
        Ok(())
    }

    /// Puts the shard's rows in place, then its record (`first_row`: the index of its
    /// first row among all), so only a finished shard counts.
    pub fn finish(self, first_row: usize) -> Result<usize, StoreError> {
        let stem = shard_stem(self.shard, self.count);
        let data = self.folder.join(format!("{stem}.f32"));
        let staged = self
            .out
            .into_inner()
            .map_err(|e| io(&data, "writing a shard")(e.into_error()))?;
        crate::output::put_in_place(staged, &data).map_err(io(&data, "writing a shard"))?;
        let record = ShardRecord {
            format: FORMAT,
            shard: self.shard,
            count: self.count,
            first_row,
            rows: self.rows,
            inputs: self.inputs,
        };
        let json = self.folder.join(format!("{stem}.json"));
        write_record(&json, &record, "writing a shard's record")?;
        Ok(self.rows)
    }
}

/// Every row of a store, memory-mapped.
pub struct Mapped {
    map: memmap2::Mmap,
    rows: usize,
    d_in: usize,
}

impl Mapped {
    pub fn view(&self) -> ArrayView2<'_, f32> {
        let values = self.rows * self.d_in;
        // The map starts on a page boundary, so f32-aligned, and holds exactly `values`
        // little-endian f32 (checked when opened; qexp builds only for little-endian).
        let data: &[f32] =
            unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<f32>(), values) };
        ArrayView2::from_shape((self.rows, self.d_in), data).expect("the shape was checked")
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("the activation store maps little-endian f32 files directly");

/// Opens the store in `folder` made from `inputs`, joining its shards into one file
/// first if that was not done yet.
pub fn open(folder: &Path, inputs: &Inputs) -> Result<Mapped, StoreError> {
    let record_path = folder.join("activations.json");
    let joined = record_path.is_file()
        && read_json::<Record>(&record_path).is_ok_and(|r| r.inputs == *inputs);
    // Shards of a new harvest replace a store joined from other inputs.
    if !joined && (has_shards(folder) || !record_path.is_file()) {
        join_shards(folder, inputs)?;
    }
    let record: Record = read_json(&record_path)?;
    if record.format != FORMAT {
        return Err(StoreError::Corrupt {
            path: record_path,
            problem: format!("format {}", record.format),
        });
    }
    if let Some(what) = differences(&record.inputs, inputs) {
        return Err(StoreError::Stale {
            path: folder.to_owned(),
            what,
        });
    }
    let data = folder.join("activations.f32");
    let file = crate::files::open(&data).map_err(io(&data, "opening"))?;
    let expected = (record.rows * inputs.d_in * 4) as u64;
    let length = file.metadata().map_err(io(&data, "opening"))?.len();
    if length != expected {
        return Err(StoreError::Corrupt {
            path: data,
            problem: format!("{length} bytes where {expected} were written"),
        });
    }
    if record.rows == 0 {
        return Err(StoreError::Empty {
            folder: folder.to_owned(),
        });
    }
    // The file is qexp's own and is not changed while mapped (a new harvest writes new
    // files and renames them in).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&data, "mapping"))?;
    Ok(Mapped {
        map,
        rows: record.rows,
        d_in: inputs.d_in,
    })
}

fn write_record(
    path: &Path,
    record: &impl Serialize,
    what: &'static str,
) -> Result<(), StoreError> {
    let text = serde_json::to_string_pretty(record).expect("a record serializes") + "\n";
    std::fs::write(path, text).map_err(io(path, what))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let text = crate::files::read_to_string(path).map_err(io(path, "reading"))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        problem: e.to_string(),
    })
}

fn differences(stored: &Inputs, wanted: &Inputs) -> Option<String> {
    let mut what = Vec::new();
    if stored.hook != wanted.hook || stored.head != wanted.head || stored.d_in != wanted.d_in {
        what.push("another hook");
    }
    if stored.model_weights_sha256 != wanted.model_weights_sha256 {
        what.push("other model weights");
    }
    if stored.dataset_token_ids_sha256 != wanted.dataset_token_ids_sha256 {
        what.push("another dataset");
    }
    if stored.tokens != wanted.tokens {
        what.push("another token count");
    }
    (!what.is_empty()).then(|| what.join(", "))
}

/// The shard records in `folder`, with their paths.
fn shard_records(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("shard-") && n.ends_with(".json"))
        })
        .collect()
}

fn has_shards(folder: &Path) -> bool {
    !shard_records(folder).is_empty()
}

/// Joins a complete set of shards made from `inputs` into `activations.f32`,
/// streaming (memory stays flat), then removes the shard files. Shards from other
/// inputs (an earlier harvest) are left out.
fn join_shards(folder: &Path, inputs: &Inputs) -> Result<(), StoreError> {
    let mut records: Vec<(ShardRecord, PathBuf)> = Vec::new();
    let mut stale = None;
    for path in shard_records(folder) {
        let record: ShardRecord = read_json(&path)?;
        match differences(&record.inputs, inputs) {
            Some(what) => stale = Some(StoreError::Stale { path, what }),
            None => records.push((record, path)),
        }
    }
    let counts: std::collections::BTreeSet<usize> = records.iter().map(|(r, _)| r.count).collect();
    let count = match counts.len() {
        0 => {
            return Err(stale.unwrap_or(StoreError::Empty {
                folder: folder.to_owned(),
            }));
        }
        1 => *counts.first().expect("one count"),
        _ => {
            return Err(StoreError::Corrupt {
                path: folder.to_owned(),
                problem:
                    "it holds harvests of several shard counts; remove the folder and harvest again"
                        .to_owned(),
            });
        }
    };
    records.sort_by_key(|(r, _)| r.shard);
    let missing: Vec<usize> = (1..=count)
        .filter(|i| !records.iter().any(|(r, _)| r.shard == *i))
        .collect();
    if !missing.is_empty() {
        return Err(StoreError::Missing {
            folder: folder.to_owned(),
            count,
            missing,
        });
    }
    let data = folder.join("activations.f32");
    let mut joined = tempfile::Builder::new()
        .prefix(".harvest-")
        .tempfile_in(folder)
        .map_err(io(folder, "joining the shards"))?;
    let mut rows = 0;
    for (record, json) in &records {
        if record.first_row != rows {
            return Err(StoreError::Corrupt {
                path: json.clone(),
                problem: format!("it starts at row {}, not {rows}", record.first_row),
            });
        }
        let part = json.with_extension("f32");
        let mut file = crate::files::open(&part).map_err(io(&part, "reading a shard"))?;
        let expected = (record.rows * inputs.d_in * 4) as u64;
        let copied = std::io::copy(&mut (&mut file).take(expected + 1), joined.as_file_mut())
            .map_err(io(&part, "joining the shards"))?;
        if copied != expected {
            return Err(StoreError::Corrupt {
                path: part,
                problem: format!("{copied} bytes where {expected} were written"),
            });
        }
        rows += record.rows;
    }
    crate::output::put_in_place(joined, &data).map_err(io(&data, "joining the shards"))?;
    let record = Record {
        format: FORMAT,
        rows,
        inputs: inputs.clone(),
    };
    let record_path = folder.join("activations.json");
    write_record(&record_path, &record, "joining the shards")?;
    for (_, json) in records {
        let _ = std::fs::remove_file(json.with_extension("f32"));
        let _ = std::fs::remove_file(json);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            hook: "blocks.0.hook_resid_post".into(),
            head: None,
            d_in: 2,
            model_weights_sha256: "w".into(),
            dataset_token_ids_sha256: "d".into(),
            tokens: 5,
        }
    }

    #[test]
    fn shards_join_into_one_mapped_matrix_in_shard_order() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = inputs();
        let write = |shard: usize, first_row: usize, rows: &[f32]| {
            let mut writer = ShardWriter::new(dir.path(), shard, 2, &inputs).unwrap();
            let rows = ArrayView2::from_shape((rows.len() / 2, 2), rows).unwrap();
            writer.append(rows).unwrap();
            writer.finish(first_row).unwrap();
        };
        write(2, 2, &[5.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
        let early = open(dir.path(), &inputs).err().unwrap().to_string();
        assert!(early.contains("harvest shard 1 of 2 missing"), "{early}");
        write(1, 0, &[1.0, 2.0, 3.0, 4.0]);
        let mapped = open(dir.path(), &inputs).unwrap();
        assert_eq!(
            mapped.view(),
            ndarray::arr2(&[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0]])
        );
        // Joined once: the shard files are gone and the store opens again.
        assert!(!dir.path().join("shard-0001-of-0002.f32").exists());
        assert_eq!(open(dir.path(), &inputs).unwrap().rows(), 5);
        let other = Inputs {
            tokens: 6,
            ..inputs
        };
        let stale = open(dir.path(), &other).err().unwrap().to_string();
        assert!(stale.contains("another token count"), "{stale}");
        // A new harvest from the other inputs replaces the joined store.
        let mut writer = ShardWriter::new(dir.path(), 1, 1, &other).unwrap();
        writer
            .append(ArrayView2::from_shape((1, 2), &[0.5, 0.25]).unwrap())
            .unwrap();
        writer.finish(0).unwrap();
        assert_eq!(
            open(dir.path(), &other).unwrap().view(),
            ndarray::arr2(&[[0.5, 0.25]])
        );
    }
}
