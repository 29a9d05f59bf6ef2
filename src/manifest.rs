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
    #[error("{} was written by a qexp with model format {found}; this qexp reads format {FORMAT_VERSION}: export the model again", path.display())]
    Version {
        path: std::path::PathBuf,
        found: u32,
    },
}

impl Manifest {
    pub fn read(model_dir: &Path) -> Result<Self, ManifestError> {
        let path = model_dir.join(MANIFEST_FILE);
        if !path.exists() {
            return Err(ManifestError::Missing {
                dir: model_dir.to_owned(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ManifestError::Unreadable {
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
}
