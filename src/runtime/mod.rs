//! Running exported models through ONNX Runtime: the library, sessions per compiled
//! graph, batching, and the text-level operations built on a forward pass (per-token
//! loss, generation).

mod batch;
mod hooked;
mod library;
mod text;
mod weights;

pub use batch::Batch;
pub use hooked::{Forward, HookedModel};
pub use library::{Device, LIBRARY_ENV, Runtime};
pub use text::{Sampling, kl_divergence, log_softmax_row, per_next_token, token_losses};
pub use weights::read_weight;

use crate::compile::CompileError;
use crate::manifest::ManifestError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{message}")]
    Library { message: String },
    #[error("{message}")]
    Device { message: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("cannot read {}: {message}", path.display())]
    ModelFile {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("the tokenizer failed on the input: {0}")]
    Tokenizer(String),
    #[error(
        "a prompt of {tokens} tokens is longer than the model's context of {n_ctx}; shorten it or set a maximum number of tokens per prompt"
    )]
    TooLong { tokens: usize, n_ctx: usize },
    #[error("an empty prompt has no tokens to run")]
    EmptyPrompt,
    #[error("ONNX Runtime failed while {doing}: {message}")]
    Ort { doing: String, message: String },
}

impl RuntimeError {
    pub(crate) fn ort(doing: impl Into<String>) -> impl FnOnce(ort::Error) -> Self {
        let doing = doing.into();
        move |e| RuntimeError::Ort {
            doing,
            message: e.to_string(),
        }
    }
}
