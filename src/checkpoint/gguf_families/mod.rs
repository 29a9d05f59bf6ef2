//! Models from GGUF files, one module per family as llama.cpp's converter stores it:
//! `llama` (SmolLM2, TinyLlama, Llama 2/3, Mistral), `qwen2` and `qwen3` (`llama.rs`),
//! `gpt2`, `gptneox` (Pythia) and `gemma2`.
//!
//! This module owns what the families share: reading metadata under the file's
//! architecture prefix, reading tensors with their shapes checked, and turning llama.cpp's
//! `[out, in]` matrices into the `[in, out]` the graph multiplies by. Each family turns
//! the metadata into a [`TransformerConfig`] and its tensors into [`Weights`], the same
//! config and weights its Hugging Face reader makes from the same model.

mod gemma2;
mod gpt2;
mod gpt_neox;
mod llama;

use ndarray::ArrayD;

use super::gguf::{GgufFile, Value};
use super::{
    Checkpoint, CheckpointError, OuterNames, Put, Tensors, expect_shape, gguf_tokenizer,
    read_model, transposed,
};
use crate::model::{
    Architecture, BiasLayout, Mlp, Normalization, Positional, Transformer, TransformerConfig,
    Weights,
};

/// The architectures qexp reads, for the message that refuses the others.
const SUPPORTED: &str = "gemma2, gpt2, gptneox, llama, qwen2, qwen3";

/// What a family makes of a file's metadata.
struct Family {
    config: TransformerConfig,
    /// Whether prompts start with BOS when the file does not say
    /// (`tokenizer.ggml.add_bos_token`): TransformerLens' default for the family, or
    /// llama.cpp's for the Llama family's byte-level vocabularies (none).
    prepend_bos: bool,
    read_weights: fn(&GgufTensors<'_>, &TransformerConfig) -> Result<Weights, CheckpointError>,
}

pub(super) fn load(file: &GgufFile) -> Result<Checkpoint, CheckpointError> {
    let arch = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let meta = Meta { file, arch };
    let family = match arch {
        "llama" | "qwen2" | "qwen3" => llama::family(&meta)?,
        "gpt2" => gpt2::family(&meta)?,
        "gptneox" => gpt_neox::family(&meta)?,
        "gemma2" => gemma2::family(&meta)?,
        other => {
            return Err(CheckpointError::Unsupported {
                path: file.path().to_owned(),
                what: format!(
                    "architecture `{other}`; qexp reads GGUF files of {SUPPORTED}, and \
                     Hugging Face folders of GPT-2, GPT-NeoX, GPT-Neo, Llama, Mistral, Qwen \
                     and Gemma-2"
                ),
            });
        }
    };
    let weights = (family.read_weights)(&GgufTensors { file }, &family.config)?;
    let (tokenizer, special_tokens) = gguf_tokenizer::build(file, family.prepend_bos)?;
    let name = file
        .get("general.name")
        .and_then(Value::as_str)
        .unwrap_or(arch);
    let quant = dominant_type(file);
    Ok(Checkpoint {
        transformer: Transformer {
            config: family.config,
            weights,
        },
        tokenizer,
        special_tokens,
        description: format!("{name} (GGUF, weights mostly {quant})"),
    })
}

/// Metadata keys under the architecture's prefix (`gpt2.block_count`).
struct Meta<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl Meta<'_> {
    fn value(&self, key: &str) -> Option<&Value> {
        self.file.get(&format!("{}.{key}", self.arch))
    }

    fn int(&self, key: &str) -> Result<usize, CheckpointError> {
        self.optional_int(key)
            .ok_or_else(|| CheckpointError::MissingMetadata {
                path: self.file.path().to_owned(),
                key: format!("{}.{key}", self.arch),
            })
    }

    fn optional_int(&self, key: &str) -> Option<usize> {
        self.value(key)
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
    }

    fn float(&self, key: &str) -> Option<f32> {
        self.value(key).and_then(Value::as_f64).map(|v| v as f32)
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.value(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.file.tensors.contains_key(name)
    }

    /// The vocabulary size, from the embedding's rows.
    fn vocab(&self) -> Result<usize, CheckpointError> {
        self.file
            .tensors
            .get("token_embd.weight")
            .and_then(|t| t.dims.get(1))
            .map(|&v| v as usize)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self.file.path().to_owned(),
                name: "token_embd.weight".into(),
            })
    }

    fn corrupt(&self, what: String) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.file.path().to_owned(),
            what,
        }
    }

    /// The config every family starts from: the sizes the file gives, rotary or learned
    /// positions, the plain pre-norm block without biases; each family sets what differs.
    fn base_config(
        &self,
        architecture: Architecture,
        normalization: Normalization,
        mlp: Mlp,
        rotary: bool,
    ) -> Result<TransformerConfig, CheckpointError> {
        let n_layers = self.int("block_count")?;
        let d_model = self.int("embedding_length")?;
        let (n_heads, n_kv_heads, d_head) = self.heads(d_model, rotary)?;
        let eps_key = match normalization {
            Normalization::RmsNorm => "attention.layer_norm_rms_epsilon",
            Normalization::LayerNorm => "attention.layer_norm_epsilon",
        };
        Ok(TransformerConfig {
            architecture,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            d_head,
            d_mlp: self.int("feed_forward_length")?,
            d_vocab: self.vocab()?,
            n_ctx: self.int("context_length")?,
            normalization,
            norm_eps: self.float(eps_key).unwrap_or(1e-5),
            positional: if rotary {
                Positional::Rotary {
                    base: self.float("rope.freq_base").unwrap_or(10_000.0),
                    rotary_dim: None,
                    scaling: None,
                }
            } else {
                Positional::Learned
            },
            mlp,
            attn_scale: 1.0 / (d_head as f32).sqrt(),
            attention_windows: vec![None; n_layers],
            bias: BiasLayout::NONE,
            tied_embeddings: !self.has_tensor("output.weight"),
            qk_norm: false,
            parallel_attn_mlp: false,
            embed_scale: None,
            post_norms: false,
            attn_softcap: None,
            final_softcap: None,
        })
    }

    /// Query heads, key/value heads and head width: the width is
    /// `attention.key_length` where the file gives it (Qwen3's and Gemma's heads are
    /// not `d_model / heads` wide), else `d_model / heads`. Refuses groups that do not
    /// divide, and an odd width when a rotary turns pairs of it.
    fn heads(
        &self,
        d_model: usize,
        rotary: bool,
    ) -> Result<(usize, usize, usize), CheckpointError> {
        let n_heads = self.int("attention.head_count")?;
        let n_kv = self
            .optional_int("attention.head_count_kv")
            .unwrap_or(n_heads);
        let d_head = match self.optional_int("attention.key_length") {
            Some(width) => width,
            None if n_heads > 0 && d_model.is_multiple_of(n_heads) => d_model / n_heads,
            None => {
                return Err(
                    self.corrupt(format!("{n_heads} heads do not divide d_model {d_model}"))
                );
            }
        };
        if let Some(value_width) = self.optional_int("attention.value_length")
            && value_width != d_head
        {
            return Err(self.corrupt(format!(
                "value heads {value_width} wide and key heads {d_head} wide; qexp's graph \
                 gives both one width"
            )));
        }
        if n_heads == 0 || n_kv == 0 || !n_heads.is_multiple_of(n_kv) || d_head == 0 {
            return Err(self.corrupt(format!(
                "{n_heads} query heads cannot share {n_kv} key/value heads"
            )));
        }
        if rotary && d_head % 2 == 1 {
            return Err(self.corrupt(format!(
                "rotary embedding needs an even head width, got {d_head}"
            )));
        }
        Ok((n_heads, n_kv, d_head))
    }
}

/// Reads tensors by their llama.cpp names, with shapes checked.
struct GgufTensors<'a> {
    file: &'a GgufFile,
}

impl Tensors for GgufTensors<'_> {
    fn read(&self, name: &str, expected: &[usize]) -> Result<ArrayD<f32>, CheckpointError> {
        let (shape, values) = self.file.tensor(name)?;
        expect_shape(self.file.path(), name, &shape, expected)?;
        Ok(ArrayD::from_shape_vec(shape, values).expect("shape checked against the element count"))
    }
}

/// llama.cpp's names for the weights around the layers (positions where `config` learns
/// them).
fn outer_names(config: &TransformerConfig) -> OuterNames<'static> {
    OuterNames {
        embedding: "token_embd.weight",
        positions: (config.positional == Positional::Learned).then_some("position_embd.weight"),
        final_norm: "output_norm",
        unembedding: "output.weight",
    }
}

/// Layer `layer`'s norm `blk.N.{gguf}.weight` (and its bias, under LayerNorm) filed as
/// `{ours}.w` (and `{ours}.b`).
fn read_norm(
    t: &GgufTensors<'_>,
    config: &TransformerConfig,
    layer: usize,
    gguf: &str,
    ours: &str,
    put: &mut Put<'_>,
) -> Result<(), CheckpointError> {
    let d = [config.d_model];
    put(
        &format!("{ours}.w"),
        t.read(&format!("blk.{layer}.{gguf}.weight"), &d)?,
    );
    if config.normalization == Normalization::LayerNorm {
        put(
            &format!("{ours}.b"),
            t.read(&format!("blk.{layer}.{gguf}.bias"), &d)?,
        );
    }
    Ok(())
}

/// The most common tensor type by element count, for a human-readable description.
fn dominant_type(file: &GgufFile) -> String {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for info in file.tensors.values() {
        *counts.entry(format!("{:?}", info.ggml_type)).or_default() += info.element_count();
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(t, _)| t.to_uppercase())
        .unwrap_or_default()
}
