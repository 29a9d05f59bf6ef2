//! GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, `gelu_new`, biases everywhere,
//! a tied unembedding, and `Conv1D` weights that are stored `[in, out]` already, with
//! q, k and v fused into one `c_attn` matrix.

use ndarray::{Axis, Ix2, s};
use serde::Deserialize;

use super::{ConfigFile, Family, Reader};
use crate::checkpoint::{CheckpointError, OuterNames, Tensors, read_model};
use crate::model::{
    Architecture, BiasLayout, Mlp, Normalization, Positional, TransformerConfig, Weights,
};

/// The fields of GPT-2's `config.json` that shape the graph.
#[derive(Debug, Deserialize)]
struct HfConfig {
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f32,
    #[serde(default = "default_true")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
}

fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eps() -> f32 {
    1e-5
}
fn default_true() -> bool {
    true
}

pub(super) fn family(file: &ConfigFile<'_>) -> Result<Family, CheckpointError> {
    let hf: HfConfig = file.parse()?;
    let d_head = file.head_width(hf.n_embd, hf.n_head)?;
    if hf.activation_function != "gelu_new" {
        return Err(file.unsupported(format!(
            "activation `{}`; qexp's GPT-2 export implements `gelu_new`",
            hf.activation_function
        )));
    }
    if hf.scale_attn_by_inverse_layer_idx {
        return Err(file.unsupported(
            "`scale_attn_by_inverse_layer_idx` (Mistral's GPT-2 runs); qexp's GPT-2 export \
             scales scores by 1/sqrt(d_head) only"
                .into(),
        ));
    }
    let config = TransformerConfig {
        architecture: Architecture::Gpt2,
        n_layers: hf.n_layer,
        d_model: hf.n_embd,
        n_heads: hf.n_head,
        n_kv_heads: hf.n_head,
        d_head,
        d_mlp: hf.n_inner.unwrap_or(4 * hf.n_embd),
        d_vocab: hf.vocab_size,
        n_ctx: hf.n_positions,
        normalization: Normalization::LayerNorm,
        norm_eps: hf.layer_norm_epsilon,
        positional: Positional::Learned,
        mlp: Mlp::GeluNew,
        attn_scale: if hf.scale_attn_weights {
            1.0 / (d_head as f32).sqrt()
        } else {
            1.0
        },
        attention_windows: vec![None; hf.n_layer],
        bias: BiasLayout::ALL_BUT_UNEMBED,
        tied_embeddings: hf.tie_word_embeddings,
        qk_norm: false,
        parallel_attn_mlp: false,
        embed_scale: None,
        post_norms: false,
        attn_softcap: None,
        final_softcap: None,
    };
    Ok(Family {
        config,
        label: "HF GPT-2",
        bos: file.token_id("bos_token_id"),
        eos: file.token_id("eos_token_id"),
        // TransformerLens prepends `<|endoftext|>` to GPT-2 prompts by default.
        prepend_bos: true,
        read_weights,
    })
}

/// GPT-2's names for the weights around the layers (GPT-Neo's too).
pub(super) const OUTER_NAMES: OuterNames<'static> = OuterNames {
    embedding: "transformer.wte.weight",
    positions: Some("transformer.wpe.weight"),
    final_norm: "transformer.ln_f",
    unembedding: "lm_head.weight",
};

fn read_weights(r: &Reader<'_>, config: &TransformerConfig) -> Result<Weights, CheckpointError> {
    let d = config.d_model;
    read_model(r, config, OUTER_NAMES, |layer, put| {
        let hf = |suffix: &str| format!("transformer.h.{layer}.{suffix}");
        put("ln1.w", r.read(&hf("ln_1.weight"), &[d])?);
        put("ln1.b", r.read(&hf("ln_1.bias"), &[d])?);
        put("ln2.w", r.read(&hf("ln_2.weight"), &[d])?);
        put("ln2.b", r.read(&hf("ln_2.bias"), &[d])?);

        // Conv1D `c_attn`: columns [q | k | v], each d wide.
        let qkv = r
            .read(&hf("attn.c_attn.weight"), &[d, 3 * d])?
            .into_dimensionality::<Ix2>()
            .expect("two dimensions checked");
        let qkv_bias = r.read(&hf("attn.c_attn.bias"), &[3 * d])?;
        for (i, part) in ["Q", "K", "V"].into_iter().enumerate() {
            let columns = s![.., i * d..(i + 1) * d];
            put(
                &format!("attn.W_{part}"),
                qkv.slice(columns).to_owned().into_dyn(),
            );
            put(
                &format!("attn.b_{part}"),
                qkv_bias
                    .slice_axis(Axis(0), (i * d..(i + 1) * d).into())
                    .to_owned(),
            );
        }
        put("attn.W_O", r.read(&hf("attn.c_proj.weight"), &[d, d])?);
        put("attn.b_O", r.read(&hf("attn.c_proj.bias"), &[d])?);
        put(
            "mlp.W_in",
            r.read(&hf("mlp.c_fc.weight"), &[d, config.d_mlp])?,
        );
        put("mlp.b_in", r.read(&hf("mlp.c_fc.bias"), &[config.d_mlp])?);
        put(
            "mlp.W_out",
            r.read(&hf("mlp.c_proj.weight"), &[config.d_mlp, d])?,
        );
        put("mlp.b_out", r.read(&hf("mlp.c_proj.bias"), &[d])?);
        Ok(())
    })
}
