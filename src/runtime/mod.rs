//! Running exported models through ONNX Runtime: the library, sessions per compiled
//! graph, batching, and the text-level operations built on a forward pass (per-token
//! loss, generation).

mod batch;
mod hooked;
mod library;
mod shared;
mod text;
mod weights;

pub use batch::Batch;
pub use hooked::{Forward, HookedModel};
pub use library::{Device, LIBRARY_ENV, Runtime};
pub use text::{
    GenerationGraph, NextTokenLogits, Sampling, argmax, kl_divergence, log_softmax_row,
    log_sum_exp, per_next_token, token_losses, token_rank,
};
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
    #[error(
        "a prompt of {prompt} tokens plus {new} new ones would not fit the model's context of {n_ctx}; generate fewer tokens"
    )]
    TooLongToGenerate {
        prompt: usize,
        new: usize,
        n_ctx: usize,
    },
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
            message: one_line(&e.to_string()),
        }
    }
}

/// ONNX Runtime's messages can span lines and carry terminal colour codes: one plain line.
fn one_line(message: &str) -> String {
    let mut plain = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence: `ESC [ ... letter`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let joined = plain
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    match joined.char_indices().nth(400) {
        Some((cut, _)) => format!("{}...", &joined[..cut]),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runtime_messages_become_one_plain_line() {
        assert_eq!(
            super::one_line("\u{1b}[1;31m2026 [E:onnxruntime] bad\u{1b}[m\n  at file.cc\n"),
            "2026 [E:onnxruntime] bad | at file.cc"
        );
    }
}
