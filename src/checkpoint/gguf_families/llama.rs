//! The Llama layout: `llama` (SmolLM2, TinyLlama, Llama 2/3, Mistral, ...), `qwen2`
//! (Qwen2/2.5: q/k/v biases) and `qwen3` (per-head q/k RMSNorm, heads wider than
//! `d_model / heads`), which llama.cpp stores under the same tensor names, each under its
//! own metadata prefix. Only `llama` has its q/k rows permuted.

use ndarray::Array2;

use super::{
    Family, GgufTensors, Meta, Put, Tensors, outer_names, read_model, read_norm, transposed,
};
use crate::checkpoint::CheckpointError;
use crate::model::{Architecture, BiasLayout, Mlp, Normalization, TransformerConfig, Weights};

pub(super) fn family(meta: &Meta<'_>) -> Result<Family, CheckpointError> {
    let architecture = match meta.arch {
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        _ => Architecture::Llama,
    };
    let base = meta.base_config(architecture, Normalization::RmsNorm, Mlp::GatedSilu, true)?;
    let config = TransformerConfig {
        bias: BiasLayout {
            qkv: architecture == Architecture::Qwen2,
            ..base.bias
        },
        qk_norm: architecture == Architecture::Qwen3,
        ..base
    };
    Ok(Family {
        config,
        // Every Llama-family download says whether it adds BOS; a file that does not
        // gets llama.cpp's default for byte-level vocabularies: nothing added.
        prepend_bos: false,
        read_weights,
    })
}

fn read_weights(
    t: &GgufTensors<'_>,
    config: &TransformerConfig,
) -> Result<Weights, CheckpointError> {
    read_model(t, config, outer_names(config), |layer, put| {
        read_norm(t, config, layer, "attn_norm", "ln1", put)?;
        read_norm(t, config, layer, "ffn_norm", "ln2", put)?;
        read_layer(t, config, layer, put)
    })
}

/// One layer's attention and MLP weights under llama.cpp's Llama names (`attn_q`, ...,
/// `ffn_down`), with the biases and q/k norms `config` says the model has; Gemma-2
/// shares the layout and reads its own norms around it.
pub(super) fn read_layer(
    t: &GgufTensors<'_>,
    config: &TransformerConfig,
    layer: usize,
    put: &mut Put<'_>,
) -> Result<(), CheckpointError> {
    let d = config.d_model;
    let q_width = config.n_heads * config.d_head;
    let kv_width = config.n_kv_heads * config.d_head;
    let gguf = |suffix: &str| format!("blk.{layer}.{suffix}");
    let q = t.matrix(&gguf("attn_q.weight"), q_width, d)?;
    let k = t.matrix(&gguf("attn_k.weight"), kv_width, d)?;
    // llama.cpp permutes Llama's q/k rows for its adjacent-pair rotary; the others keep
    // the rotate-half layout (its NEOX rope type), rows and biases as trained.
    let (q, k) = if config.architecture == Architecture::Llama {
        (
            undo_rope_permutation(q, config.n_heads),
            undo_rope_permutation(k, config.n_kv_heads),
        )
    } else {
        (q, k)
    };
    put("attn.W_Q", transposed(q));
    put("attn.W_K", transposed(k));
    put("attn.W_V", t.linear(&gguf("attn_v.weight"), kv_width, d)?);
    if config.bias.qkv {
        for (name, width) in [("q", q_width), ("k", kv_width), ("v", kv_width)] {
            put(
                &format!("attn.b_{}", name.to_uppercase()),
                t.read(&gguf(&format!("attn_{name}.bias")), &[width])?,
            );
        }
    }
    put(
        "attn.W_O",
        t.linear(&gguf("attn_output.weight"), d, q_width)?,
    );
    if config.qk_norm {
        let width = [config.d_head];
        put(
            "attn.q_norm.w",
            t.read(&gguf("attn_q_norm.weight"), &width)?,
        );
        put(
            "attn.k_norm.w",
            t.read(&gguf("attn_k_norm.weight"), &width)?,
        );
    }
    put(
        "mlp.W_gate",
        t.linear(&gguf("ffn_gate.weight"), config.d_mlp, d)?,
    );
    put(
        "mlp.W_in",
        t.linear(&gguf("ffn_up.weight"), config.d_mlp, d)?,
    );
    put(
        "mlp.W_out",
        t.linear(&gguf("ffn_down.weight"), d, config.d_mlp)?,
    );
    Ok(())
}

/// llama.cpp's converter interleaves the two rotary halves of every head's q and k rows
/// (so ggml can rotate adjacent pairs). The graph uses HF's rotate-half layout, so put
/// row `2i + j` of each head back at `j * d_head/2 + i`.
fn undo_rope_permutation(rows: Array2<f32>, n_heads: usize) -> Array2<f32> {
    let (out, d_in) = rows.dim();
    let d_head = out / n_heads;
    let half = d_head / 2;
    let mut unpermuted = Array2::zeros((out, d_in));
    for head in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let from = head * d_head + 2 * i + j;
                let to = head * d_head + j * half + i;
                unpermuted.row_mut(to).assign(&rows.row(from));
            }
        }
    }
    unpermuted
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    #[test]
    fn rope_permutation_is_undone_per_head() {
        // Two heads of size 4: GGUF rows [a0 b0 a1 b1] become HF rows [a0 a1 b0 b1].
        let gguf = Array2::from_shape_fn((8, 1), |(r, _)| r as f32);
        let hf = undo_rope_permutation(gguf, 2);
        let column: Vec<f32> = hf.index_axis(Axis(1), 0).to_vec();
        assert_eq!(column, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }
}
