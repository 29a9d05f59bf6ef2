//! GPT-Neo models from a Hugging Face folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`), e.g. `roneneldan/TinyStories-2Layers-33M` (TransformerLens'
//! `tiny-stories-2L-33M`).

use serde::Deserialize;

use super::{ConfigFile, Family, Reader};
use crate::checkpoint::{CheckpointError, Tensors, read_model};
use crate::model::{
    Architecture, BiasLayout, Mlp, Normalization, Positional, TransformerConfig, Weights,
};

/// The fields of GPT-Neo's `config.json` that shape the graph.
#[derive(Debug, Deserialize)]
struct HfConfig {
    vocab_size: usize,
    max_position_embeddings: usize,
    hidden_size: usize,
    num_layers: usize,
    num_heads: usize,
    intermediate_size: Option<usize>,
    #[serde(default = "default_window")]
    window_size: usize,
    /// `[[["global", "local"], 2]]`: a pattern of layer kinds repeated N times.
    attention_types: Vec<(Vec<String>, usize)>,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f32,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
}

fn default_window() -> usize {
    256
}
fn default_eps() -> f32 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}

pub(super) fn family(file: &ConfigFile<'_>) -> Result<Family, CheckpointError> {
    let hf: HfConfig = file.parse()?;
    Ok(Family {
        config: to_config(&hf, file)?,
        label: "HF GPT-Neo",
        bos: hf.bos_token_id,
        eos: hf.eos_token_id,
        // TransformerLens prepends `<|endoftext|>` to GPT-Neo prompts by default.
        prepend_bos: true,
        read_weights,
    })
}

fn to_config(hf: &HfConfig, file: &ConfigFile<'_>) -> Result<TransformerConfig, CheckpointError> {
    let corrupt = |what: String| file.corrupt(what);
    let d_head = file.head_width(hf.hidden_size, hf.num_heads)?;
    if hf.activation_function != "gelu_new" {
        return Err(file.unsupported(format!(
            "activation `{}`; qexp's GPT-Neo export implements `gelu_new`",
            hf.activation_function
        )));
    }
    let mut attention_windows = Vec::new();
    for (pattern, repeats) in &hf.attention_types {
        for _ in 0..*repeats {
            for kind in pattern {
                attention_windows.push(match kind.as_str() {
                    "global" => None,
                    "local" => Some(hf.window_size),
                    other => return Err(corrupt(format!("unknown attention type `{other}`"))),
                });
            }
        }
    }
    if attention_windows.len() != hf.num_layers {
        return Err(corrupt(format!(
            "attention_types describe {} layers but num_layers is {}",
            attention_windows.len(),
            hf.num_layers
        )));
    }
    Ok(TransformerConfig {
        architecture: Architecture::GptNeo,
        n_layers: hf.num_layers,
        d_model: hf.hidden_size,
        n_heads: hf.num_heads,
        n_kv_heads: hf.num_heads,
        d_head,
        d_mlp: hf.intermediate_size.unwrap_or(4 * hf.hidden_size),
        d_vocab: hf.vocab_size,
        n_ctx: hf.max_position_embeddings,
        normalization: Normalization::LayerNorm,
        norm_eps: hf.layer_norm_epsilon,
        positional: Positional::Learned,
        mlp: Mlp::GeluNew,
        // GPT-Neo famously does not scale its attention scores.
        attn_scale: 1.0,
        attention_windows,
        bias: BiasLayout {
            qkv: false,
            attn_out: true,
            mlp: true,
            unembed: false,
        },
        tied_embeddings: hf.tie_word_embeddings,
        qk_norm: false,
        parallel_attn_mlp: false,
        embed_scale: None,
        post_norms: false,
        attn_softcap: None,
        final_softcap: None,
    })
}

fn read_weights(r: &Reader<'_>, config: &TransformerConfig) -> Result<Weights, CheckpointError> {
    let d = config.d_model;
    read_model(r, config, super::gpt2::OUTER_NAMES, |layer, put| {
        let hf = |suffix: &str| format!("transformer.h.{layer}.{suffix}");
        put("ln1.w", r.read(&hf("ln_1.weight"), &[d])?);
        put("ln1.b", r.read(&hf("ln_1.bias"), &[d])?);
        put("ln2.w", r.read(&hf("ln_2.weight"), &[d])?);
        put("ln2.b", r.read(&hf("ln_2.bias"), &[d])?);
        put(
            "attn.W_Q",
            r.linear(&hf("attn.attention.q_proj.weight"), d, d)?,
        );
        put(
            "attn.W_K",
            r.linear(&hf("attn.attention.k_proj.weight"), d, d)?,
        );
        put(
            "attn.W_V",
            r.linear(&hf("attn.attention.v_proj.weight"), d, d)?,
        );
        put(
            "attn.W_O",
            r.linear(&hf("attn.attention.out_proj.weight"), d, d)?,
        );
        put(
            "attn.b_O",
            r.read(&hf("attn.attention.out_proj.bias"), &[d])?,
        );
        put(
            "mlp.W_in",
            r.linear(&hf("mlp.c_fc.weight"), config.d_mlp, d)?,
        );
        put("mlp.b_in", r.read(&hf("mlp.c_fc.bias"), &[config.d_mlp])?);
        put(
            "mlp.W_out",
            r.linear(&hf("mlp.c_proj.weight"), d, config.d_mlp)?,
        );
        put("mlp.b_out", r.read(&hf("mlp.c_proj.bias"), &[d])?);
        Ok(())
    })
}
