//! GPT-NeoX (`gptneox`: Pythia): parallel attention and MLP, rotary embedding on part of
//! each head, LayerNorm, biases everywhere. llama.cpp's converter regroups the fused
//! q/k/v matrix from Hugging Face's per-head `[q k v]` blocks into `[q | k | v]`.
//!
//! A GGUF file does not say which GELU the MLP uses; Pythia was trained with the exact
//! (erf) GELU, which is what its Hugging Face config names and what qexp computes
//! (llama.cpp computes the tanh approximation).

use super::{Family, Meta};
use crate::checkpoint::CheckpointError;
use crate::model::{Architecture, BiasLayout, Mlp, Normalization, Positional, TransformerConfig};

pub(super) fn family(meta: &Meta<'_>) -> Result<Family, CheckpointError> {
    let base = meta.base_config(
        Architecture::GptNeox,
        Normalization::LayerNorm,
        Mlp::Gelu,
        false,
    )?;
    super::gpt2::fused_heads_fill_the_width(meta, &base)?;
    let d_head = base.d_head;
    let rotary_dim = meta.optional_int("rope.dimension_count").unwrap_or(d_head);
    if rotary_dim == 0 || rotary_dim % 2 == 1 || rotary_dim > d_head {
        return Err(meta.corrupt(format!(
            "a rotary embedding over {rotary_dim} of {d_head} dimensions; it must turn an \
             even number of them, at least 2"
        )));
    }
    let config = TransformerConfig {
        positional: Positional::Rotary {
            base: meta.float("rope.freq_base").unwrap_or(10_000.0),
            rotary_dim: (rotary_dim < d_head).then_some(rotary_dim),
            scaling: None,
        },
        bias: BiasLayout::ALL_BUT_UNEMBED,
        parallel_attn_mlp: meta.bool("use_parallel_residual").unwrap_or(true),
        ..base
    };
    Ok(Family {
        config,
        prepend_bos: false,
        // The same tensors as GPT-2's, less the learned positions (its config has none).
        read_weights: super::gpt2::read_fused_layers,
    })
}
