//! Gemma-2 (`Gemma2ForCausalLM`): the Llama layout with Gemma's refinements: the
//! embedding scaled by `sqrt(d_model)`, RMSNorm weights stored as `w - 1`, a norm before
//! and after both attention and MLP, a GeGLU MLP, soft-capped attention scores and
//! logits, layers alternating between a sliding window and global attention, and scores
//! scaled by `query_pre_attn_scalar` rather than the head width.

use serde::Deserialize;

use super::{ConfigFile, Family, Reader, Rope};
use crate::checkpoint::{CheckpointError, Tensors, read_model};
use crate::model::{
    Architecture, BiasLayout, Mlp, Normalization, TransformerConfig, Weights, weight_names,
};

/// The fields of Gemma-2's `config.json` that shape the graph.
#[derive(Debug, Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_activation")]
    hidden_activation: String,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f32,
    #[serde(flatten)]
    rope: Rope,
    query_pre_attn_scalar: Option<f32>,
    attn_logit_softcapping: Option<f32>,
    final_logit_softcapping: Option<f32>,
    sliding_window: Option<usize>,
    /// `sliding_attention` or `full_attention` per layer; older configs alternate,
    /// sliding first.
    layer_types: Option<Vec<String>>,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
}

fn default_activation() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_eps() -> f32 {
    1e-6
}
fn default_true() -> bool {
    true
}

pub(super) fn family(file: &ConfigFile<'_>) -> Result<Family, CheckpointError> {
    let hf: HfConfig = file.parse()?;
    if !matches!(
        hf.hidden_activation.as_str(),
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast"
    ) {
        return Err(file.unsupported(format!(
            "activation `{}`; qexp's Gemma-2 export implements the tanh GELU",
            hf.hidden_activation
        )));
    }
    if hf.attention_bias {
        return Err(file.unsupported("`attention_bias` in a Gemma-2 model".into()));
    }
    let positional = hf.rope.positional(file)?;
    let n_heads = hf.num_attention_heads;
    let (n_kv_heads, d_head) =
        file.grouped_heads(hf.hidden_size, n_heads, hf.num_key_value_heads, hf.head_dim)?;
    let n_layers = hf.num_hidden_layers;
    let kinds: Vec<String> = hf.layer_types.clone().unwrap_or_else(|| {
        (0..n_layers)
            .map(|l| {
                if l % 2 == 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
                .into()
            })
            .collect()
    });
    if kinds.len() != n_layers {
        return Err(file.corrupt(format!(
            "layer_types describe {} layers but num_hidden_layers is {n_layers}",
            kinds.len()
        )));
    }
    let attention_windows = kinds
        .iter()
        .map(|kind| match kind.as_str() {
            "sliding_attention" => Ok(hf.sliding_window),
            "full_attention" => Ok(None),
            other => Err(file.corrupt(format!("unknown layer type `{other}`"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let query_scalar = hf.query_pre_attn_scalar.unwrap_or(d_head as f32);
    let config = TransformerConfig {
        architecture: Architecture::Gemma2,
        n_layers,
        d_model: hf.hidden_size,
        n_heads,
        n_kv_heads,
        d_head,
        d_mlp: hf.intermediate_size,
        d_vocab: hf.vocab_size,
        n_ctx: hf.max_position_embeddings,
        normalization: Normalization::RmsNorm,
        norm_eps: hf.rms_norm_eps,
        positional,
        mlp: Mlp::GatedGeluTanh,
        attn_scale: 1.0 / query_scalar.sqrt(),
        attention_windows,
        bias: BiasLayout::NONE,
        tied_embeddings: hf.tie_word_embeddings,
        qk_norm: false,
        parallel_attn_mlp: false,
        embed_scale: Some((hf.hidden_size as f32).sqrt()),
        post_norms: true,
        attn_softcap: hf.attn_logit_softcapping,
        final_softcap: hf.final_logit_softcapping,
    };
    Ok(Family {
        config,
        label: "HF Gemma-2",
        bos: file.token_id("bos_token_id"),
        eos: file.token_id("eos_token_id"),
        prepend_bos: true,
        read_weights,
    })
}

fn read_weights(r: &Reader<'_>, config: &TransformerConfig) -> Result<Weights, CheckpointError> {
    let d = config.d_model;
    // Gemma stores each RMSNorm weight as `w - 1` and multiplies by `1 + w`.
    let norm = |name: &str| r.read(name, &[d]).map(|w| w + 1.0);
    let mut weights = read_model(r, config, super::llama::OUTER_NAMES, |layer, put| {
        let hf = |suffix: &str| format!("model.layers.{layer}.{suffix}");
        put("ln1.w", norm(&hf("input_layernorm.weight"))?);
        put("ln1_post.w", norm(&hf("post_attention_layernorm.weight"))?);
        put("ln2.w", norm(&hf("pre_feedforward_layernorm.weight"))?);
        put(
            "ln2_post.w",
            norm(&hf("post_feedforward_layernorm.weight"))?,
        );
        // The Llama layout's projections: no biases, no q/k norms in Gemma-2.
        super::llama::read_layer(r, config, layer, put)?;
        Ok(())
    })?;
    // Gemma stores its final norm as `w - 1` too.
    *weights
        .get_mut(weight_names::LN_FINAL_W)
        .expect("read_model reads the final norm") += 1.0;
    Ok(weights)
}
