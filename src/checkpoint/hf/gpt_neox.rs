//! GPT-NeoX (`GPTNeoXForCausalLM`: Pythia, GPT-NeoX-20B): LayerNorm, rotary embedding on
//! the first quarter of each head (`rotary_pct`), attention and MLP in parallel on the
//! block's input, the exact GELU, and q, k and v fused per head in `query_key_value`.

use ndarray::{Array1, Array2, Ix1, Ix2};
use serde::Deserialize;

use super::{ConfigFile, Family, Reader, Rope};
use crate::checkpoint::{CheckpointError, OuterNames, Tensors, read_model};
use crate::model::{
    Architecture, BiasLayout, Mlp, Normalization, Positional, TransformerConfig, Weights,
};

/// The fields of GPT-NeoX's `config.json` that shape the graph.
#[derive(Debug, Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_activation")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f32,
    #[serde(default = "default_true")]
    use_parallel_residual: bool,
    #[serde(default = "default_true")]
    attention_bias: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(flatten)]
    rope: Rope,
}

fn default_activation() -> String {
    "gelu".into()
}
fn default_eps() -> f32 {
    1e-5
}
fn default_true() -> bool {
    true
}

pub(super) fn family(file: &ConfigFile<'_>) -> Result<Family, CheckpointError> {
    let hf: HfConfig = file.parse()?;
    let d_head = file.head_width(hf.hidden_size, hf.num_attention_heads)?;
    let mlp = match hf.hidden_act.as_str() {
        "gelu" => Mlp::Gelu,
        "gelu_new" | "gelu_fast" => Mlp::GeluNew,
        other => {
            return Err(file.unsupported(format!(
                "activation `{other}`; qexp's GPT-NeoX export implements `gelu` and `gelu_fast`"
            )));
        }
    };
    if !hf.attention_bias {
        return Err(file.unsupported(
            "`attention_bias: false`; qexp's GPT-NeoX export expects q/k/v and output biases"
                .into(),
        ));
    }
    let base = hf.rope.base();
    let scaling = hf.rope.scaling(file)?;
    let fraction = hf.rope.fraction();
    // As transformers computes it: `int(head_size * rotary_pct)`.
    let rotary_dim = (d_head as f32 * fraction) as usize;
    if rotary_dim == 0 || rotary_dim % 2 == 1 || rotary_dim > d_head {
        return Err(file.corrupt(format!(
            "a rotary fraction of {fraction} turns {rotary_dim} of {d_head} dimensions; \
             it must be an even number, at least 2"
        )));
    }
    let config = TransformerConfig {
        architecture: Architecture::GptNeox,
        n_layers: hf.num_hidden_layers,
        d_model: hf.hidden_size,
        n_heads: hf.num_attention_heads,
        n_kv_heads: hf.num_attention_heads,
        d_head,
        d_mlp: hf.intermediate_size,
        d_vocab: hf.vocab_size,
        n_ctx: hf.max_position_embeddings,
        normalization: Normalization::LayerNorm,
        norm_eps: hf.layer_norm_eps,
        positional: Positional::Rotary {
            base,
            rotary_dim: (rotary_dim < d_head).then_some(rotary_dim),
            scaling,
        },
        mlp,
        attn_scale: 1.0 / (d_head as f32).sqrt(),
        attention_windows: vec![None; hf.num_hidden_layers],
        bias: BiasLayout::ALL_BUT_UNEMBED,
        tied_embeddings: hf.tie_word_embeddings,
        qk_norm: false,
        parallel_attn_mlp: hf.use_parallel_residual,
        embed_scale: None,
        post_norms: false,
        attn_softcap: None,
        final_softcap: None,
    };
    Ok(Family {
        config,
        label: "HF GPT-NeoX",
        bos: file.token_id("bos_token_id"),
        eos: file.token_id("eos_token_id"),
        // TransformerLens does not prepend BOS to GPT-NeoX (Pythia) prompts by default.
        prepend_bos: false,
        read_weights,
    })
}

fn read_weights(r: &Reader<'_>, config: &TransformerConfig) -> Result<Weights, CheckpointError> {
    let d = config.d_model;
    read_model(
        r,
        config,
        OuterNames {
            embedding: "gpt_neox.embed_in.weight",
            positions: None,
            final_norm: "gpt_neox.final_layer_norm",
            // Pythia's checkpoints call it `embed_out`; transformers 5 saves `lm_head`.
            unembedding: r.either(&["embed_out.weight", "lm_head.weight"]),
        },
        |layer, put| {
            let hf = |suffix: &str| format!("gpt_neox.layers.{layer}.{suffix}");
            put("ln1.w", r.read(&hf("input_layernorm.weight"), &[d])?);
            put("ln1.b", r.read(&hf("input_layernorm.bias"), &[d])?);
            put(
                "ln2.w",
                r.read(&hf("post_attention_layernorm.weight"), &[d])?,
            );
            put("ln2.b", r.read(&hf("post_attention_layernorm.bias"), &[d])?);

            let fused = r
                .read(&hf("attention.query_key_value.weight"), &[3 * d, d])?
                .into_dimensionality::<Ix2>()
                .expect("two dimensions checked");
            let fused_bias = r
                .read(&hf("attention.query_key_value.bias"), &[3 * d])?
                .into_dimensionality::<Ix1>()
                .expect("one dimension checked");
            for (part, which) in ["Q", "K", "V"].into_iter().enumerate() {
                let (w, b) = unfuse(&fused, &fused_bias, part, config.n_heads, config.d_head);
                put(&format!("attn.W_{which}"), w.into_dyn());
                put(&format!("attn.b_{which}"), b.into_dyn());
            }
            put("attn.W_O", r.linear(&hf("attention.dense.weight"), d, d)?);
            put("attn.b_O", r.read(&hf("attention.dense.bias"), &[d])?);
            put(
                "mlp.W_in",
                r.linear(&hf("mlp.dense_h_to_4h.weight"), config.d_mlp, d)?,
            );
            put(
                "mlp.b_in",
                r.read(&hf("mlp.dense_h_to_4h.bias"), &[config.d_mlp])?,
            );
            put(
                "mlp.W_out",
                r.linear(&hf("mlp.dense_4h_to_h.weight"), d, config.d_mlp)?,
            );
            put("mlp.b_out", r.read(&hf("mlp.dense_4h_to_h.bias"), &[d])?);
            Ok(())
        },
    )
}

/// One of q, k, v (`part` 0, 1, 2) out of `query_key_value`, whose output rows run head by
/// head, each head holding its q, k and v rows in turn: `[in, heads * d_head]` and its bias.
fn unfuse(
    fused: &Array2<f32>,
    bias: &Array1<f32>,
    part: usize,
    n_heads: usize,
    d_head: usize,
) -> (Array2<f32>, Array1<f32>) {
    let row = |column: usize| {
        let (head, i) = (column / d_head, column % d_head);
        head * 3 * d_head + part * d_head + i
    };
    let width = n_heads * d_head;
    let w = Array2::from_shape_fn((fused.ncols(), width), |(input, column)| {
        fused[[row(column), input]]
    });
    let b = Array1::from_shape_fn(width, |column| bias[row(column)]);
    (w, b)
}
