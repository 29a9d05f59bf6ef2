//! The lock file beside an experiment (`NAME.lock` for `NAME.qexp`, YAML): the model
//! weights, dataset files and SAEs its report was made from, each by hash. `qexp run`
//! writes it with the report; a later run compares what it is about to read with it and
//! says what differs before it starts, so a reviewer knows a changed report came from
//! changed inputs. YAML through serde_yaml_ng: serde_yaml itself is archived, and this
//! maintained fork keeps its API and output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::builtins::datasets::{DatasetKind, DatasetSource};
use crate::builtins::saes::SaeSource;
use crate::output::{OutputError, Scope};
use crate::plan::Plan;

/// How every lock file starts; qexp replaces only files that do.
pub const HEADER: &str = "# qexp lock:";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read the lock file {}: {message}; fix it or delete it (the next run writes a new one)", path.display())]
    Read { path: PathBuf, message: String },
    #[error("cannot write the lock file {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error(transparent)]
    Output(#[from] OutputError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    pub experiment: String,
    pub model: LockedModel,
    /// Datasets read from files, by name.
    #[serde(default)]
    pub datasets: BTreeMap<String, LockedFile>,
    #[serde(default)]
    pub saes: BTreeMap<String, LockedSae>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedModel {
    pub path: String,
    pub weights_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedFile {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedSae {
    /// `load PATH`, `train, pinned at PATH` or `train, not pinned`.
    pub origin: String,
    /// As `Sae::weights_sha256`: over the tensors, not the file.
    pub weights_sha256: String,
}

/// The lock file of the experiment at `experiment`.
pub fn path_for(experiment: &Path) -> PathBuf {
    experiment.with_extension("lock")
}

pub fn read(path: &Path) -> Result<Option<Lock>, LockError> {
    let text = match crate::files::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LockError::Read {
                path: path.to_owned(),
                message: e.to_string(),
            });
        }
    };
    serde_yaml_ng::from_str(&text)
        .map(Some)
        .map_err(|e| LockError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Writes `lock` to `path` (a file qexp wrote before, or a new one), replacing it in one
/// rename so a kill never leaves half a lock.
pub fn write(path: &Path, lock: &Lock, scope: &Scope) -> Result<(), LockError> {
    scope.check_file(path, HEADER)?;
    let failed = |e: std::io::Error| LockError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let text = format!(
        "{HEADER} what the report of `{}` was made from, written by `qexp run`.\n# A run that finds another model, dataset or SAE says so before it starts.\n{}",
        lock.experiment,
        serde_yaml_ng::to_string(lock).expect("locks serialize")
    );
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut staged = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    std::io::Write::write_all(&mut staged, text.as_bytes()).map_err(failed)?;
    staged
        .persist(path)
        .map_err(|e| failed(e.error))
        .and_then(|file| {
            drop(file);
            crate::output::set_default_permissions(path, false).map_err(failed)
        })
}

/// What `plan` reads as far as it can be known before running: the model's weights hash,
/// each dataset file's hash, and each SAE that exists now (loaded ones, and pins of
/// trained ones) by the hash of its weights. Paths are taken from `root`.
pub fn before_run(plan: &Plan, root: &Path, datasets: &BTreeMap<String, LockedFile>) -> Lock {
    let weights_sha256 = crate::manifest::Manifest::read(&root.join(&plan.model.path))
        .map(|m| m.weights_sha256)
        .unwrap_or_else(|_| "(no model folder)".into());
    let mut saes = BTreeMap::new();
    for sae in &plan.saes {
        let origin = origin(&sae.value);
        let folder = match SaeSource::bind(&sae.value) {
            Ok(SaeSource::Load { path, .. }) => Some(path),
            Ok(SaeSource::Train(train)) => train.save.and_then(|save| match save {
                crate::builtins::args::Text::Given(path) => Some(path),
                crate::builtins::args::Text::Computed(_) => None,
            }),
            Err(_) => None,
        };
        if let Some(folder) = folder
            && let Ok(loaded) = crate::sae::load(&root.join(folder))
        {
            saes.insert(
                sae.name.clone(),
                LockedSae {
                    origin,
                    weights_sha256: loaded.weights_sha256(),
                },
            );
        }
    }
    Lock {
        experiment: plan.name.clone(),
        model: LockedModel {
            path: plan.model.path.display().to_string(),
            weights_sha256,
        },
        datasets: datasets.clone(),
        saes,
    }
}

/// The lock of a finished run: the model and SAEs as the run used them, and the
/// `datasets` hashed as it started.
pub fn after_run(
    plan: &Plan,
    results: &crate::results::Results,
    datasets: BTreeMap<String, LockedFile>,
) -> Lock {
    Lock {
        experiment: plan.name.clone(),
        model: LockedModel {
            path: plan.model.path.display().to_string(),
            weights_sha256: results.weights_sha256.clone(),
        },
        datasets,
        saes: results
            .saes
            .iter()
            .filter_map(|record| {
                let declared = plan.saes.iter().find(|s| s.name == record.name)?;
                Some((
                    record.name.clone(),
                    LockedSae {
                        origin: origin(&declared.value),
                        weights_sha256: record.weights_sha256.clone(),
                    },
                ))
            })
            .collect(),
    }
}

/// How an SAE declaration makes its SAE, in words that do not change from run to run.
pub fn origin(call: &crate::plan::Call) -> String {
    match SaeSource::bind(call) {
        Ok(SaeSource::Load { path, .. }) => format!("load {path}"),
        Ok(SaeSource::Train(train)) => match train.save {
            Some(crate::builtins::args::Text::Given(path)) => format!("train, pinned at {path}"),
            Some(crate::builtins::args::Text::Computed(name)) => {
                format!("train, pinned at `{name}`")
            }
            None => "train, not pinned".into(),
        },
        Err(_) => call.function.to_owned(),
    }
}

/// Each file dataset's path and the hash of its bytes (a file that cannot be read is
/// left out: the run itself will say why).
pub fn dataset_files(plan: &Plan, root: &Path) -> BTreeMap<String, LockedFile> {
    use sha2::{Digest, Sha256};
    plan.datasets
        .iter()
        .filter_map(|dataset| {
            let source = DatasetSource::bind(&dataset.value).ok()?;
            let path = match source.kind {
                DatasetKind::Text { path, .. } | DatasetKind::Jsonl { path, .. } => path,
                _ => return None,
            };
            // Only regular files: a FIFO would block here before the run can refuse it.
            let bytes = crate::files::read(&root.join(&path)).ok()?;
            Some((
                dataset.name.clone(),
                LockedFile {
                    path,
                    sha256: format!("{:x}", Sha256::digest(&bytes)),
                },
            ))
        })
        .collect()
}

/// What differs between the `locked` inputs and those found `now`, one sentence each.
/// SAEs not found now (not trained yet) are not compared.
pub fn differences(locked: &Lock, now: &Lock) -> Vec<String> {
    let short = |hash: &str| hash.chars().take(12).collect::<String>();
    let mut found = Vec::new();
    if locked.model.weights_sha256 != now.model.weights_sha256 {
        found.push(format!(
            "the model's weights differ from the lock's (sha256 {} now, {} locked, {})",
            short(&now.model.weights_sha256),
            short(&locked.model.weights_sha256),
            now.model.path
        ));
    }
    for (name, was) in &locked.datasets {
        match now.datasets.get(name) {
            Some(is) if is.sha256 != was.sha256 => found.push(format!(
                "dataset `{name}` ({}) differs from the lock's (sha256 {} now, {} locked)",
                is.path,
                short(&is.sha256),
                short(&was.sha256)
            )),
            None => found.push(format!(
                "dataset `{name}` ({}) is locked but no longer read from a file",
                was.path
            )),
            Some(_) => {}
        }
    }
    for name in now.datasets.keys() {
        if !locked.datasets.contains_key(name) {
            found.push(format!("dataset `{name}` is not in the lock"));
        }
    }
    for (name, is) in &now.saes {
        match locked.saes.get(name) {
            Some(was) if was.weights_sha256 != is.weights_sha256 => found.push(format!(
                "SAE `{name}` ({}) differs from the lock's (weights sha256 {} now, {} locked)",
                is.origin,
                short(&is.weights_sha256),
                short(&was.weights_sha256)
            )),
            None => found.push(format!("SAE `{name}` is not in the lock")),
            Some(_) => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> Lock {
        Lock {
            experiment: "e".into(),
            model: LockedModel {
                path: "models/m".into(),
                weights_sha256: "a".repeat(64),
            },
            datasets: BTreeMap::from([(
                "stories".into(),
                LockedFile {
                    path: "data/s.txt".into(),
                    sha256: "b".repeat(64),
                },
            )]),
            saes: BTreeMap::from([(
                "s".into(),
                LockedSae {
                    origin: "train, pinned at pins/s".into(),
                    weights_sha256: "c".repeat(64),
                },
            )]),
        }
    }

    #[test]
    fn a_lock_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let scope = Scope::within(dir.path(), false).unwrap();
        let path = dir.path().join("e.lock");
        write(&path, &lock(), &scope).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().starts_with(HEADER));
        assert_eq!(read(&path).unwrap(), Some(lock()));
        assert!(differences(&lock(), &lock()).is_empty());
    }

    #[test]
    fn a_file_qexp_did_not_write_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let scope = Scope::within(dir.path(), false).unwrap();
        let path = dir.path().join("e.lock");
        std::fs::write(&path, "my notes\n").unwrap();
        assert!(matches!(
            write(&path, &lock(), &scope),
            Err(LockError::Output(OutputError::NotOurFile { .. }))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "my notes\n");
    }

    #[test]
    fn each_changed_input_is_named() {
        let mut now = lock();
        now.model.weights_sha256 = "d".repeat(64);
        now.datasets.get_mut("stories").unwrap().sha256 = "e".repeat(64);
        now.saes.get_mut("s").unwrap().weights_sha256 = "f".repeat(64);
        let found = differences(&lock(), &now);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("the model's weights differ"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("dataset `stories` (data/s.txt) differs"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("SAE `s` (train, pinned at pins/s) differs"),
            "{found:?}"
        );
        // An SAE not trained yet is not a difference.
        now = lock();
        now.saes.clear();
        assert!(differences(&lock(), &now).is_empty());
    }
}
