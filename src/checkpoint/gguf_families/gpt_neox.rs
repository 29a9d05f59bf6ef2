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
    let n_layers = meta.int("block_count")?;
    let d_model = meta.int("embedding_length")?;
    let (n_heads, _, d_head) = meta.heads(d_model, false)?;
    let rotary_dim = meta.optional_int("rope.dimension_count").unwrap_or(d_head);
    if rotary_dim == 0 || rotary_dim % 2 == 1 || rotary_dim > d_head {
        return Err(meta.corrupt(format!(
            "a rotary embedding over {rotary_dim} of {d_head} dimensions; it must turn an \
             even number of them, at least 2"
        )));
    }
    let config = TransformerConfig {
        architecture: Architecture::GptNeox,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: meta.int("feed_forward_length")?,
        d_vocab: meta.vocab()?,
        n_ctx: meta.int("context_length")?,
        normalization: Normalization::LayerNorm,
        norm_eps: meta.float("attention.layer_norm_epsilon").unwrap_or(1e-5),
        positional: Positional::Rotary {
            base: meta.float("rope.freq_base").unwrap_or(10_000.0),
            rotary_dim: (rotary_dim < d_head).then_some(rotary_dim),
            scaling: None,
        },
        mlp: Mlp::Gelu,
        attn_scale: 1.0 / (d_head as f32).sqrt(),
        attention_windows: vec![None; n_layers],
        bias: BiasLayout {
            qkv: true,
            attn_out: true,
            mlp: true,
            unembed: false,
        },
        tied_embeddings: !meta.has_tensor("output.weight"),
        qk_norm: false,
        parallel_attn_mlp: meta.bool("use_parallel_residual").unwrap_or(true),
        embed_scale: None,
        post_norms: false,
        attn_softcap: None,
        final_softcap: None,
    };
    Ok(Family {
        config,
        prepend_bos: false,
        // The same tensors as GPT-2's, less the learned positions.
        read_weights: super::gpt2::read_fused_layers,
    })
}
