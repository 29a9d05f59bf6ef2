//! `manifest.json` of a model folder: what the model is, its dimensions, every hook point
//! with its shape and meaning, and its special tokens. Written by `qexp export`, read by
//! the runtime (and by the checker, to validate hook names without loading the model).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::SpecialTokens;
use crate::model::TransformerConfig;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const GRAPH_FILE: &str = "model.onnx";
pub const DATA_FILE: &str = "model.onnx.data";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Bumped when a model folder written by an older qexp can no longer be read.
pub const FORMAT_VERSION: u32 = 1;

/// Graph input and output names, fixed for every exported model.
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const LOGITS: &str = "logits";

/// Tensors inside the graph that a key/value cache rewires (`compile::kv_cache`): each
/// token's absolute position, and each layer's keys and values as attention reads them
/// (`[batch, pos, kv_head, d_head]`, after any q/k norm and the rotary embedding).
pub const POSITIONS: &str = "positions";

pub fn attention_keys(layer: usize) -> String {
    format!("blocks.{layer}.attn.cache_k")
}

pub fn attention_values(layer: usize) -> String {
    format!("blocks.{layer}.attn.cache_v")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookInfo {
    pub name: String,
    /// Dimension names (`batch`, `pos`, `head`, `query_pos`, `key_pos`) or sizes.
    pub shape: Vec<String>,
    pub meaning: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub exported_by: String,
    /// The checkpoint it came from, in words.
    pub source: String,
    /// SHA-256 of `model.onnx.data`, so reports can name exactly which weights they ran.
    pub weights_sha256: String,
    pub config: TransformerConfig,
    pub special_tokens: SpecialTokens,
    pub parameters: usize,
    /// TransformerLens' weight processing applied at export (`fold_ln`, ...), in the
    /// order applied; absent when the weights are the checkpoint's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processing: Vec<crate::processing::Step>,
    /// How `model.onnx.data` stores the weights (f32 unless exported with `--dtype`).
    #[serde(
        default,
        skip_serializing_if = "crate::model::WeightStorage::is_float32"
    )]
    pub weight_storage: crate::model::WeightStorage,
    pub hooks: Vec<HookInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{} is not a qexp model folder (no {MANIFEST_FILE}); make one with `qexp export`", dir.display())]
    Missing { dir: std::path::PathBuf },
    #[error("cannot read {}: {message}", path.display())]
    Unreadable {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{} has changed since it was exported: its SHA-256 is {found}, manifest.json records {expected}; export the model again (or restore the file)", path.display())]
    WeightsChanged {
        path: std::path::PathBuf,
        expected: String,
        found: String,
    },
    #[error("{} was written by a qexp with model format {found}; this qexp reads format {FORMAT_VERSION}: export the model again", path.display())]
    Version {
        path: std::path::PathBuf,
        found: u32,
    },
}

impl Manifest {
    /// What the weights take in memory once loaded: f32, one copy per process whatever
    /// the number of graphs (sessions share them), plus the transposed copy of a tied
    /// embedding that the unembedding reads.
    pub fn weights_bytes(&self) -> u64 {
        let tied_copy = if self.config.tied_embeddings {
            (self.config.d_vocab * self.config.d_model) as u64 * 4
        } else {
            0
        };
        self.parameters as u64 * 4 + tied_copy
    }

    pub fn read(model_dir: &Path) -> Result<Self, ManifestError> {
        let path = model_dir.join(MANIFEST_FILE);
        if !path.exists() {
            return Err(ManifestError::Missing {
                dir: model_dir.to_owned(),
            });
        }
        let text = crate::files::read_to_string(&path).map_err(|e| ManifestError::Unreadable {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| ManifestError::Unreadable {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(ManifestError::Version {
                path,
                found: manifest.format_version,
            });
        }
        Ok(manifest)
    }

    pub fn hook(&self, name: &str) -> Option<&HookInfo> {
        self.hooks.iter().find(|h| h.name == name)
    }

    /// Checks that `model.onnx.data` holds the weights this manifest was written for.
    /// Hashing 540 MB takes seconds, so a verified file's size and modification time are
    /// remembered beside it and the full hash is taken again only when either changed.
    pub fn verify_weights(&self, model_dir: &Path) -> Result<(), ManifestError> {
        let path = model_dir.join(DATA_FILE);
        let unreadable = |e: std::io::Error| ManifestError::Unreadable {
            path: path.clone(),
            message: e.to_string(),
        };
        let stamp = FileStamp::of(&path).map_err(unreadable)?;
        let record = model_dir.join(VERIFIED_FILE);
        let remembered: Option<Verified> = std::fs::read_to_string(&record)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        if remembered.is_some_and(|v| v.stamp == stamp && v.sha256 == self.weights_sha256) {
            return Ok(());
        }
        let found = sha256_file(&path).map_err(unreadable)?;
        if found != self.weights_sha256 {
            return Err(ManifestError::WeightsChanged {
                path,
                expected: self.weights_sha256.clone(),
                found,
            });
        }
        remember_verified(model_dir, &found);
        Ok(())
    }
}

/// Beside the weights: the size and modification time at which they last hashed right.
const VERIFIED_FILE: &str = ".qexp-weights-verified";

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    bytes: u64,
    modified_ns: u128,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let modified_ns = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(FileStamp {
            bytes: meta.len(),
            modified_ns,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Verified {
    stamp: FileStamp,
    sha256: String,
}

/// Records that `model_dir`'s weights hash to `sha256` as they are now. Best effort: a
/// read-only model folder is verified on every load instead.
pub fn remember_verified(model_dir: &Path, sha256: &str) {
    if let Ok(stamp) = FileStamp::of(&model_dir.join(DATA_FILE)) {
        let record = Verified {
            stamp,
            sha256: sha256.to_owned(),
        };
        let text = serde_json::to_string(&record).expect("record serializes");
        let _ = std::fs::write(model_dir.join(VERIFIED_FILE), text + "\n");
    }
}

/// The SHA-256 of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = crate::files::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// A byte count for people: `540.2 MB`, `1.9 GB`.
pub fn human_bytes(bytes: u64) -> String {
    let mb = bytes as f64 / 1e6;
    if mb >= 1000.0 {
        format!("{:.1} GB", mb / 1000.0)
    } else {
        format!("{mb:.1} MB")
    }
}
