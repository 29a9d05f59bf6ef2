//! Checkpoint readers: turn a model file someone already has into a [`Transformer`] and
//! its tokenizer.
//!
//! - a `.gguf` file of GPT-2, GPT-NeoX, Llama, Qwen2, Qwen3 or Gemma-2 (`gguf_families/`
//!   over `gguf.rs`), quantized or not;
//! - a Hugging Face folder with `config.json`, `model.safetensors` (or its shards) and
//!   `tokenizer.json` of GPT-2, GPT-Neo, Llama, Mistral, Qwen2 or Qwen3 (`hf/`).

mod gguf;
mod gguf_families;
mod gguf_tokenizer;
mod hf;
pub mod quant;

use std::path::{Path, PathBuf};

use crate::model::{Normalization, Transformer, TransformerConfig, Weights, weight_names};

pub use gguf::{GgufFile, Value as GgufValue};

/// A checkpoint read into memory.
pub struct Checkpoint {
    pub transformer: Transformer,
    pub tokenizer: tokenizers::Tokenizer,
    pub special_tokens: SpecialTokens,
    /// What the model was read from, for the manifest (`SmolLM2-135M-Instruct (gguf Q4_1)`).
    pub description: String,
}

/// Token ids with a meaning of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Used to fill padded positions; never scored, so any id works, but a real one keeps
    /// the embedding lookup in range.
    pub pad: u32,
    /// Whether the model expects BOS before every prompt (TransformerLens' `prepend_bos`).
    pub prepend_bos: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid checkpoint: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("{} is not supported: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("{} has no tensor `{name}`; is it a complete checkpoint of the architecture it claims?", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{} has no metadata key `{key}`", path.display())]
    MissingMetadata { path: PathBuf, key: String },
    #[error("tensor `{name}` in {} has shape {found:?}, expected {expected:?}", path.display())]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
}

impl Checkpoint {
    /// Reads a checkpoint, choosing the reader by what `path` is: a `.gguf` file or a
    /// folder holding `config.json`.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        if path.is_dir() {
            return hf::load(path);
        }
        if path.extension().is_some_and(|ext| ext == "gguf") {
            let file = GgufFile::open(path)?;
            return gguf_families::load(&file);
        }
        if !path.exists() {
            return Err(CheckpointError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        Err(CheckpointError::Unsupported {
            path: path.to_owned(),
            what: "expected a .gguf file or a Hugging Face folder with config.json and model.safetensors".into(),
        })
    }
}

/// The tokenizer a GGUF file's vocabulary rebuilds to, and its special tokens, without
/// reading any weights (llama.cpp's vocabulary-only files have none). Prompts start
/// with BOS only where the file says so.
pub fn gguf_tokenizer(
    path: &Path,
) -> Result<(tokenizers::Tokenizer, SpecialTokens), CheckpointError> {
    gguf_tokenizer::build(&GgufFile::open(path)?, false)
}

/// A checkpoint's tensors by its own names, shapes checked: what the GGUF and Hugging
/// Face readers provide for [`read_model`] and their families' layer readers.
trait Tensors {
    fn read(&self, name: &str, expected: &[usize])
    -> Result<ndarray::ArrayD<f32>, CheckpointError>;

    /// A `[out, in]` matrix as stored.
    fn matrix(
        &self,
        name: &str,
        out: usize,
        d_in: usize,
    ) -> Result<ndarray::Array2<f32>, CheckpointError> {
        Ok(self
            .read(name, &[out, d_in])?
            .into_dimensionality::<ndarray::Ix2>()
            .expect("two dimensions checked"))
    }

    /// A `[out, in]` linear layer (torch's `Linear`, llama.cpp's tensors), transposed to
    /// `[in, out]` for `x @ W`.
    fn linear(
        &self,
        name: &str,
        out: usize,
        d_in: usize,
    ) -> Result<ndarray::ArrayD<f32>, CheckpointError> {
        Ok(transposed(self.matrix(name, out, d_in)?))
    }
}

/// Files a weight under a layer's name (`attn.W_Q` -> `blocks.3.attn.W_Q`).
type Put<'a> = dyn FnMut(&str, ndarray::ArrayD<f32>) + 'a;

/// A checkpoint's names for the weights around the layers.
struct OuterNames<'a> {
    embedding: &'a str,
    /// Learned positions, where the model has them.
    positions: Option<&'a str>,
    /// The final norm's weight is `{final_norm}.weight`, its bias (under LayerNorm)
    /// `{final_norm}.bias`.
    final_norm: &'a str,
    /// Read only when the config says the unembedding is not the embedding (some tied
    /// checkpoints still store it).
    unembedding: &'a str,
}

/// The weights every family reads the same way (the embedding, learned positions, the
/// final norm, an untied unembedding) under `names`, then each layer's, which `block`
/// reads and files with its `Put`.
fn read_model(
    t: &impl Tensors,
    config: &TransformerConfig,
    names: OuterNames<'_>,
    mut block: impl FnMut(usize, &mut Put<'_>) -> Result<(), CheckpointError>,
) -> Result<Weights, CheckpointError> {
    let d = config.d_model;
    let mut weights = Weights::new();
    weights.insert(
        weight_names::W_E.into(),
        t.read(names.embedding, &[config.d_vocab, d])?,
    );
    if let Some(positions) = names.positions {
        weights.insert(
            weight_names::W_POS.into(),
            t.read(positions, &[config.n_ctx, d])?,
        );
    }
    weights.insert(
        weight_names::LN_FINAL_W.into(),
        t.read(&format!("{}.weight", names.final_norm), &[d])?,
    );
    if config.normalization == Normalization::LayerNorm {
        weights.insert(
            weight_names::LN_FINAL_B.into(),
            t.read(&format!("{}.bias", names.final_norm), &[d])?,
        );
    }
    if !config.tied_embeddings {
        weights.insert(
            weight_names::W_U.into(),
            t.linear(names.unembedding, config.d_vocab, d)?,
        );
    }
    for layer in 0..config.n_layers {
        let mut put = |name: &str, array: ndarray::ArrayD<f32>| {
            weights.insert(weight_names::block(layer, name), array);
        };
        block(layer, &mut put)?;
    }
    Ok(weights)
}

/// A stored `[out, in]` matrix (torch's `Linear`, llama.cpp's tensors) as the `[in, out]`
/// the graph multiplies by (`x @ W`).
fn transposed(m: ndarray::Array2<f32>) -> ndarray::ArrayD<f32> {
    m.reversed_axes()
        .as_standard_layout()
        .into_owned()
        .into_dyn()
}

/// Checks a tensor's shape before it is used; readers call this for every tensor so a
/// checkpoint that lies about its dimensions fails here, not inside ONNX Runtime.
fn expect_shape(
    path: &Path,
    name: &str,
    found: &[usize],
    expected: &[usize],
) -> Result<(), CheckpointError> {
    if found == expected {
        Ok(())
    } else {
        Err(CheckpointError::Shape {
            path: path.to_owned(),
            name: name.to_owned(),
            found: found.to_vec(),
            expected: expected.to_vec(),
        })
    }
}
