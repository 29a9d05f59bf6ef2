//! Gemma-2 (`gemma2`): the Llama layout with Gemma's refinements (see the Hugging Face
//! reader): a scaled embedding, norms before and after attention and MLP, GeGLU,
//! soft-capped scores and logits, sliding-window layers. llama.cpp's converter stores
//! each RMSNorm weight with Gemma's `+ 1` already added, and always ties the unembedding.
//!
//! Two things Hugging Face's config says and a GGUF file does not are derived as
//! llama.cpp derives them: scores are scaled by `1/sqrt(head width)`, except in the
//! 46-layer 27B model, whose `query_pre_attn_scalar` is `d_model / heads`; and layers
//! alternate sliding window and global attention, sliding first, unless the file gives a
//! `attention.sliding_window_pattern`.

use super::{Family, GgufTensors, Meta, outer_names, read_model, read_norm};
use crate::checkpoint::CheckpointError;
use crate::model::{Architecture, Mlp, Normalization, TransformerConfig, Weights};

/// llama.cpp's window when the file gives none: Gemma-2's.
const DEFAULT_WINDOW: usize = 4096;
/// Layers of Gemma-2 27B, the one size that scales scores by `d_model / heads`.
const LAYERS_OF_27B: usize = 46;

pub(super) fn family(meta: &Meta<'_>) -> Result<Family, CheckpointError> {
    let base = meta.base_config(
        Architecture::Gemma2,
        Normalization::RmsNorm,
        Mlp::GatedGeluTanh,
        true,
    )?;
    let (n_layers, d_model) = (base.n_layers, base.d_model);
    let query_scalar = if n_layers == LAYERS_OF_27B {
        (d_model / base.n_heads) as f32
    } else {
        base.d_head as f32
    };
    let window = meta
        .optional_int("attention.sliding_window")
        .unwrap_or(DEFAULT_WINDOW);
    let attention_windows = sliding_layers(meta, n_layers)?
        .into_iter()
        .map(|sliding| sliding.then_some(window))
        .collect();
    let config = TransformerConfig {
        norm_eps: meta
            .float("attention.layer_norm_rms_epsilon")
            .unwrap_or(1e-6),
        attn_scale: 1.0 / query_scalar.sqrt(),
        attention_windows,
        tied_embeddings: true,
        embed_scale: Some((d_model as f32).sqrt()),
        post_norms: true,
        attn_softcap: meta.float("attn_logit_softcapping"),
        final_softcap: meta.float("final_logit_softcapping"),
        ..base
    };
    Ok(Family {
        config,
        prepend_bos: true,
        read_weights,
    })
}

/// Which layers attend through the sliding window: the file's
/// `attention.sliding_window_pattern` (one flag per layer, or every `n`th layer global),
/// else every other layer, the first sliding.
fn sliding_layers(meta: &Meta<'_>, n_layers: usize) -> Result<Vec<bool>, CheckpointError> {
    use crate::checkpoint::GgufValue;
    let key = "attention.sliding_window_pattern";
    if let Some(GgufValue::Array(flags)) = meta.value(key) {
        if flags.len() != n_layers {
            return Err(meta.corrupt(format!(
                "`{key}` has {} flags for {n_layers} layers",
                flags.len()
            )));
        }
        return flags
            .iter()
            .map(|flag| match flag {
                GgufValue::Bool(b) => Ok(*b),
                other => Err(meta.corrupt(format!("`{key}` holds {other:?}, not a flag"))),
            })
            .collect();
    }
    let every = meta.optional_int(key).unwrap_or(2);
    Ok((0..n_layers)
        .map(|layer| every == 0 || layer % every < every - 1)
        .collect())
}

fn read_weights(
    t: &GgufTensors<'_>,
    config: &TransformerConfig,
) -> Result<Weights, CheckpointError> {
    read_model(t, config, outer_names(config), |layer, put| {
        read_norm(t, config, layer, "attn_norm", "ln1", put)?;
        read_norm(t, config, layer, "post_attention_norm", "ln1_post", put)?;
        read_norm(t, config, layer, "ffn_norm", "ln2", put)?;
        read_norm(t, config, layer, "post_ffw_norm", "ln2_post", put)?;
        super::llama::read_layer(t, config, layer, put)
    })
}
