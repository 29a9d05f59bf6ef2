//! The Llama family from Hugging Face folders: Llama, Mistral, Qwen2 and Qwen3 share one
//! layout (RMSNorm, rotary q/k in the rotate-half layout, a gated SiLU MLP, grouped-query
//! attention) and differ in options: Qwen2's q/k/v biases, Qwen3's per-head q/k RMSNorm,
//! Mistral's sliding window, Llama's optional attention biases.

use serde::Deserialize;

use super::{ConfigFile, Family, Reader, Rope};
use crate::checkpoint::{CheckpointError, OuterNames, Put, Tensors, read_model};
use crate::model::{Architecture, BiasLayout, Mlp, Normalization, TransformerConfig, Weights};

/// The fields of the family's `config.json` that shape the graph.
#[derive(Debug, Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    /// Qwen3 and some Mistral releases set a head width other than `hidden / heads`.
    head_dim: Option<usize>,
    #[serde(default = "default_activation")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f32,
    #[serde(flatten)]
    rope: Rope,
    #[serde(default)]
    tie_word_embeddings: bool,
    /// Llama's biases on q, k, v and o (Qwen2 has q/k/v biases whatever this says).
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    /// Mistral: every layer attends to the last `sliding_window` positions.
    sliding_window: Option<usize>,
    /// Qwen2/Qwen3 carry a `sliding_window` they use only when this is set.
    #[serde(default)]
    use_sliding_window: bool,
}

fn default_activation() -> String {
    "silu".into()
}
fn default_eps() -> f32 {
    1e-6
}

pub(super) fn family(file: &ConfigFile<'_>, model_type: &str) -> Result<Family, CheckpointError> {
    let hf: HfConfig = file.parse()?;
    let (architecture, label) = match model_type {
        "mistral" => (Architecture::Mistral, "HF Mistral"),
        "qwen2" => (Architecture::Qwen2, "HF Qwen2"),
        "qwen3" => (Architecture::Qwen3, "HF Qwen3"),
        _ => (Architecture::Llama, "HF Llama"),
    };
    if hf.hidden_act != "silu" {
        return Err(file.unsupported(format!(
            "activation `{}`; qexp's {label} export implements `silu`",
            hf.hidden_act
        )));
    }
    if hf.mlp_bias {
        return Err(file.unsupported("`mlp_bias`: MLP biases in a Llama-family model".into()));
    }
    let positional = hf.rope.positional(file)?;
    let n_heads = hf.num_attention_heads;
    let (n_kv_heads, d_head) =
        file.grouped_heads(hf.hidden_size, n_heads, hf.num_key_value_heads, hf.head_dim)?;
    let window = match architecture {
        Architecture::Mistral => hf.sliding_window,
        _ if hf.use_sliding_window => {
            return Err(file.unsupported(
                "`use_sliding_window`: Qwen's per-layer sliding window is not implemented".into(),
            ));
        }
        _ => None,
    };
    let qkv_bias = architecture == Architecture::Qwen2 || hf.attention_bias;
    let config = TransformerConfig {
        architecture,
        n_layers: hf.num_hidden_layers,
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
        mlp: Mlp::GatedSilu,
        attn_scale: 1.0 / (d_head as f32).sqrt(),
        attention_windows: vec![window; hf.num_hidden_layers],
        bias: BiasLayout {
            qkv: qkv_bias,
            // Llama's `attention_bias` covers o_proj too; Qwen's q/k/v biases do not.
            attn_out: architecture != Architecture::Qwen2 && hf.attention_bias,
            mlp: false,
            unembed: false,
        },
        tied_embeddings: hf.tie_word_embeddings,
        qk_norm: architecture == Architecture::Qwen3,
        parallel_attn_mlp: false,
        embed_scale: None,
        post_norms: false,
        attn_softcap: None,
        final_softcap: None,
    };
    Ok(Family {
        config,
        label,
        bos: file.token_id("bos_token_id"),
        eos: file.token_id("eos_token_id"),
        // Llama and Mistral tokenizers put BOS first, as TransformerLens does; Qwen's
        // tokenizers add nothing, and its BOS id is only a document separator.
        prepend_bos: !matches!(architecture, Architecture::Qwen2 | Architecture::Qwen3),
        read_weights,
    })
}

/// The Llama layout's names for the weights around the layers (Gemma-2's too).
pub(super) const OUTER_NAMES: OuterNames<'static> = OuterNames {
    embedding: "model.embed_tokens.weight",
    positions: None,
    final_norm: "model.norm",
    unembedding: "lm_head.weight",
};

fn read_weights(r: &Reader<'_>, config: &TransformerConfig) -> Result<Weights, CheckpointError> {
    let d = config.d_model;
    read_model(r, config, OUTER_NAMES, |layer, put| {
        let hf = |suffix: &str| format!("model.layers.{layer}.{suffix}");
        put("ln1.w", r.read(&hf("input_layernorm.weight"), &[d])?);
        put(
            "ln2.w",
            r.read(&hf("post_attention_layernorm.weight"), &[d])?,
        );
        read_layer(r, config, layer, put)?;
        Ok(())
    })
}

/// One layer's attention and MLP weights under the Llama layout's names
/// (`self_attn.q_proj`, ..., `mlp.down_proj`), with the biases and q/k norms `config`
/// says the model has; Gemma-2 shares the layout and reads its own norms around it.
pub(super) fn read_layer(
    r: &Reader<'_>,
    config: &TransformerConfig,
    layer: usize,
    put: &mut Put<'_>,
) -> Result<(), CheckpointError> {
    let d = config.d_model;
    let q_width = config.n_heads * config.d_head;
    let kv_width = config.n_kv_heads * config.d_head;
    let hf = |suffix: &str| format!("model.layers.{layer}.{suffix}");
    let projections = [
        ("Q", "q", q_width),
        ("K", "k", kv_width),
        ("V", "v", kv_width),
    ];
    for (ours, theirs, width) in projections {
        put(
            &format!("attn.W_{ours}"),
            r.linear(&hf(&format!("self_attn.{theirs}_proj.weight")), width, d)?,
        );
        if config.bias.qkv {
            put(
                &format!("attn.b_{ours}"),
                r.read(&hf(&format!("self_attn.{theirs}_proj.bias")), &[width])?,
            );
        }
    }
    put(
        "attn.W_O",
        r.linear(&hf("self_attn.o_proj.weight"), d, q_width)?,
    );
    if config.bias.attn_out {
        put("attn.b_O", r.read(&hf("self_attn.o_proj.bias"), &[d])?);
    }
    if config.qk_norm {
        let width = [config.d_head];
        put(
            "attn.q_norm.w",
            r.read(&hf("self_attn.q_norm.weight"), &width)?,
        );
        put(
            "attn.k_norm.w",
            r.read(&hf("self_attn.k_norm.weight"), &width)?,
        );
    }
    put(
        "mlp.W_gate",
        r.linear(&hf("mlp.gate_proj.weight"), config.d_mlp, d)?,
    );
    put(
        "mlp.W_in",
        r.linear(&hf("mlp.up_proj.weight"), config.d_mlp, d)?,
    );
    put(
        "mlp.W_out",
        r.linear(&hf("mlp.down_proj.weight"), d, config.d_mlp)?,
    );
    Ok(())
}
