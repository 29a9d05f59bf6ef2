//! Llama-family models from GGUF: `llama` (SmolLM2, TinyLlama, Llama 2/3, Mistral, ...)
//! and `qwen2` (Qwen2/2.5), which llama.cpp stores with the same tensor names plus q/k/v
//! biases, under its own metadata prefix, and without permuting q/k rows.

use ndarray::{Array2, ArrayD, Ix2};

use super::gguf::{GgufFile, Value};
use super::{Checkpoint, CheckpointError, expect_shape, gguf_tokenizer};
use crate::model::{
    Architecture, BiasLayout, Mlp, Normalization, Positional, Transformer, TransformerConfig,
    Weights, weight_names,
};

pub(super) fn load(file: &GgufFile) -> Result<Checkpoint, CheckpointError> {
    let path = file.path();
    let arch = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    if !matches!(arch, "llama" | "qwen2") {
        return Err(CheckpointError::Unsupported {
            path: path.to_owned(),
            what: format!(
                "architecture `{arch}`; qexp exports `llama` and `qwen2` GGUF files and Hugging Face folders of GPT-2, GPT-NeoX, GPT-Neo, Llama, Mistral, Qwen and Gemma-2"
            ),
        });
    }
    let config = read_config(file, arch)?;
    let weights = read_weights(file, &config)?;
    let (tokenizer, special_tokens) = gguf_tokenizer::build(file)?;
    let name = file
        .get("general.name")
        .and_then(Value::as_str)
        .unwrap_or("llama");
    let quant = dominant_type(file);
    Ok(Checkpoint {
        transformer: Transformer { config, weights },
        tokenizer,
        special_tokens,
        description: format!("{name} (GGUF, weights mostly {quant})"),
    })
}

fn read_config(file: &GgufFile, arch: &str) -> Result<TransformerConfig, CheckpointError> {
    // Every model key is under the architecture's prefix: `llama.block_count`.
    let int = |key: &str| -> Result<usize, CheckpointError> {
        let key = format!("{arch}.{key}");
        file.get(&key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| CheckpointError::MissingMetadata {
                path: file.path().to_owned(),
                key,
            })
    };
    let float = |key: &str, default: f64| {
        file.get(&format!("{arch}.{key}"))
            .and_then(Value::as_f64)
            .unwrap_or(default)
    };

    let n_layers = int("block_count")?;
    let d_model = int("embedding_length")?;
    let n_heads = int("attention.head_count")?;
    let n_kv_heads = int("attention.head_count_kv").unwrap_or(n_heads);
    let corrupt = |what: String| CheckpointError::Corrupt {
        path: file.path().to_owned(),
        what,
    };
    if n_heads == 0 || d_model % n_heads != 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(corrupt(format!(
            "{n_heads} heads and {n_kv_heads} kv heads do not divide d_model {d_model}"
        )));
    }
    let d_head = d_model / n_heads;
    if d_head % 2 != 0 {
        return Err(corrupt(format!(
            "rotary embedding needs an even head size, got {d_head}"
        )));
    }
    let d_vocab = file
        .tensors
        .get("token_embd.weight")
        .and_then(|t| t.dims.get(1))
        .map(|&v| v as usize)
        .ok_or_else(|| CheckpointError::MissingTensor {
            path: file.path().to_owned(),
            name: "token_embd.weight".into(),
        })?;
    let qwen = arch == "qwen2";
    Ok(TransformerConfig {
        architecture: if qwen {
            Architecture::Qwen2
        } else {
            Architecture::Llama
        },
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        d_head,
        d_mlp: int("feed_forward_length")?,
        d_vocab,
        n_ctx: int("context_length")?,
        normalization: Normalization::RmsNorm,
        norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5) as f32,
        positional: Positional::Rotary {
            base: float("rope.freq_base", 10_000.0) as f32,
            rotary_dim: None,
            scaling: None,
        },
        mlp: Mlp::GatedSilu,
        attn_scale: 1.0 / (d_head as f32).sqrt(),
        attention_windows: vec![None; n_layers],
        bias: BiasLayout {
            qkv: qwen,
            attn_out: false,
            mlp: false,
            unembed: false,
        },
        tied_embeddings: !file.tensors.contains_key("output.weight"),
        qk_norm: false,
        parallel_attn_mlp: false,
        embed_scale: None,
        post_norms: false,
        attn_softcap: None,
        final_softcap: None,
    })
}

fn read_weights(file: &GgufFile, config: &TransformerConfig) -> Result<Weights, CheckpointError> {
    let d = config.d_model;
    let q_width = config.n_heads * config.d_head;
    let kv_width = config.n_kv_heads * config.d_head;
    let mut weights = Weights::new();

    let mut put = |name: String, array: ArrayD<f32>| {
        weights.insert(name, array);
    };
    put(
        weight_names::W_E.into(),
        read(file, "token_embd.weight", &[config.d_vocab, d])?,
    );
    put(
        weight_names::LN_FINAL_W.into(),
        read(file, "output_norm.weight", &[d])?,
    );
    if !config.tied_embeddings {
        put(
            weight_names::W_U.into(),
            linear(file, "output.weight", config.d_vocab, d)?,
        );
    }

    for layer in 0..config.n_layers {
        let gguf = |suffix: &str| format!("blk.{layer}.{suffix}");
        let ours = |name: &str| weight_names::block(layer, name);
        put(ours("ln1.w"), read(file, &gguf("attn_norm.weight"), &[d])?);
        put(ours("ln2.w"), read(file, &gguf("ffn_norm.weight"), &[d])?);

        let q = matrix(file, &gguf("attn_q.weight"), q_width, d)?;
        let k = matrix(file, &gguf("attn_k.weight"), kv_width, d)?;
        // llama.cpp permutes Llama's q/k rows for its adjacent-pair rotary; Qwen2 keeps
        // the rotate-half layout (its NEOX rope type), rows and biases as trained.
        let permuted = config.architecture == Architecture::Llama;
        let (q, k) = if permuted {
            (
                undo_rope_permutation(q, config.n_heads),
                undo_rope_permutation(k, config.n_kv_heads),
            )
        } else {
            (q, k)
        };
        put(ours("attn.W_Q"), q.t().to_owned().into_dyn());
        put(ours("attn.W_K"), k.t().to_owned().into_dyn());
        if config.bias.qkv {
            for (name, width) in [("q", q_width), ("k", kv_width), ("v", kv_width)] {
                put(
                    ours(&format!("attn.b_{}", name.to_uppercase())),
                    read(file, &gguf(&format!("attn_{name}.bias")), &[width])?,
                );
            }
        }
        put(
            ours("attn.W_V"),
            linear(file, &gguf("attn_v.weight"), kv_width, d)?,
        );
        put(
            ours("attn.W_O"),
            linear(file, &gguf("attn_output.weight"), d, q_width)?,
        );

        put(
            ours("mlp.W_gate"),
            linear(file, &gguf("ffn_gate.weight"), config.d_mlp, d)?,
        );
        put(
            ours("mlp.W_in"),
            linear(file, &gguf("ffn_up.weight"), config.d_mlp, d)?,
        );
        put(
            ours("mlp.W_out"),
            linear(file, &gguf("ffn_down.weight"), d, config.d_mlp)?,
        );
    }
    Ok(weights)
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

fn read(file: &GgufFile, name: &str, expected: &[usize]) -> Result<ArrayD<f32>, CheckpointError> {
    let (shape, values) = file.tensor(name)?;
    expect_shape(file.path(), name, &shape, expected)?;
    Ok(ArrayD::from_shape_vec(shape, values).expect("shape checked against the element count"))
}

/// A `[out, in]` matrix as stored.
fn matrix(
    file: &GgufFile,
    name: &str,
    out: usize,
    d_in: usize,
) -> Result<Array2<f32>, CheckpointError> {
    Ok(read(file, name, &[out, d_in])?
        .into_dimensionality::<Ix2>()
        .expect("two dimensions checked"))
}

/// A `[out, in]` linear layer, transposed to `[in, out]` for `x @ W`.
fn linear(
    file: &GgufFile,
    name: &str,
    out: usize,
    d_in: usize,
) -> Result<ArrayD<f32>, CheckpointError> {
    let m = matrix(file, name, out, d_in)?;
    Ok(m.reversed_axes()
        .as_standard_layout()
        .into_owned()
        .into_dyn())
}

/// The most common tensor type by element count, for a human-readable description.
fn dominant_type(file: &GgufFile) -> String {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for info in file.tensors.values() {
        *counts.entry(format!("{:?}", info.ggml_type)).or_default() += info.element_count();
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(t, _)| t.to_uppercase())
        .unwrap_or_default()
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
