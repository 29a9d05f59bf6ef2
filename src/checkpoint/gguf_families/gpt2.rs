//! GPT-2 (`gpt2`): learned positions, LayerNorm, `gelu_new`, biases everywhere. llama.cpp
//! stores the `Conv1D` weights transposed to `[out, in]`, q, k and v still fused in one
//! `attn_qkv`, and the unembedding only when it is not the embedding. GPT-NeoX's tensors
//! are these less the positions.

use ndarray::{Axis, s};

use super::{Family, GgufTensors, Meta, Tensors, outer_names, read_model, read_norm, transposed};
use crate::checkpoint::CheckpointError;
use crate::model::{Architecture, BiasLayout, Mlp, Normalization, TransformerConfig, Weights};

pub(super) fn family(meta: &Meta<'_>) -> Result<Family, CheckpointError> {
    let base = meta.base_config(
        Architecture::Gpt2,
        Normalization::LayerNorm,
        Mlp::GeluNew,
        false,
    )?;
    fused_heads_fill_the_width(meta, &base)?;
    let config = TransformerConfig {
        bias: BiasLayout::ALL_BUT_UNEMBED,
        ..base
    };
    Ok(Family {
        config,
        // TransformerLens prepends `<|endoftext|>` to GPT-2 prompts by default.
        prepend_bos: true,
        read_weights: read_fused_layers,
    })
}

/// GPT-2's and GPT-NeoX's fused `attn_qkv` is three `d_model`-wide blocks, so the heads
/// must split `d_model` exactly (a file giving another `attention.key_length` is refused).
pub(super) fn fused_heads_fill_the_width(
    meta: &Meta<'_>,
    config: &TransformerConfig,
) -> Result<(), CheckpointError> {
    if config.n_heads * config.d_head == config.d_model {
        return Ok(());
    }
    Err(meta.corrupt(format!(
        "{} heads of width {} do not fill d_model {}, as a fused q/k/v needs",
        config.n_heads, config.d_head, config.d_model
    )))
}

/// The layout GPT-2 and GPT-NeoX share in GGUF (GPT-2's learned positions besides):
/// LayerNorms with biases, one fused `attn_qkv` with rows `[q | k | v]`, biased linears.
pub(super) fn read_fused_layers(
    t: &GgufTensors<'_>,
    config: &TransformerConfig,
) -> Result<Weights, CheckpointError> {
    let d = config.d_model;
    read_model(t, config, outer_names(config), |layer, put| {
        let gguf = |suffix: &str| format!("blk.{layer}.{suffix}");
        read_norm(t, config, layer, "attn_norm", "ln1", put)?;
        read_norm(t, config, layer, "ffn_norm", "ln2", put)?;
        let qkv = t.matrix(&gguf("attn_qkv.weight"), 3 * d, d)?;
        let qkv_bias = t.read(&gguf("attn_qkv.bias"), &[3 * d])?;
        for (i, part) in ["Q", "K", "V"].into_iter().enumerate() {
            put(
                &format!("attn.W_{part}"),
                transposed(qkv.slice(s![i * d..(i + 1) * d, ..]).to_owned()),
            );
            put(
                &format!("attn.b_{part}"),
                qkv_bias
                    .slice_axis(Axis(0), (i * d..(i + 1) * d).into())
                    .to_owned(),
            );
        }
        put("attn.W_O", t.linear(&gguf("attn_output.weight"), d, d)?);
        put("attn.b_O", t.read(&gguf("attn_output.bias"), &[d])?);
        put(
            "mlp.W_in",
            t.linear(&gguf("ffn_up.weight"), config.d_mlp, d)?,
        );
        put("mlp.b_in", t.read(&gguf("ffn_up.bias"), &[config.d_mlp])?);
        put(
            "mlp.W_out",
            t.linear(&gguf("ffn_down.weight"), d, config.d_mlp)?,
        );
        put("mlp.b_out", t.read(&gguf("ffn_down.bias"), &[d])?);
        Ok(())
    })
}
