//! GPT-Neo models from a Hugging Face folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`), e.g. `roneneldan/TinyStories-2Layers-33M` (TransformerLens'
//! `tiny-stories-2L-33M`).

use std::path::Path;

use memmap2::Mmap;
use ndarray::{ArrayD, Ix2};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::{Checkpoint, CheckpointError, SpecialTokens, expect_shape};
use crate::model::{
    Architecture, BiasLayout, Mlp, Normalization, Positional, Transformer, TransformerConfig,
    Weights, weight_names,
};

/// The fields of GPT-Neo's `config.json` that shape the graph.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: String,
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

pub(super) fn load(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let config_path = dir.join("config.json");
    let text =
        crate::files::read_to_string(&config_path).map_err(|source| CheckpointError::Io {
            path: config_path.clone(),
            source,
        })?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
        path: config_path.clone(),
        what: e.to_string(),
    })?;
    if hf.model_type != "gpt_neo" {
        return Err(CheckpointError::Unsupported {
            path: config_path,
            what: format!(
                "model_type `{}`; qexp exports `gpt_neo` HF folders and `llama` GGUF files",
                hf.model_type
            ),
        });
    }
    let config = to_config(&hf, &config_path)?;

    let weights_path = dir.join("model.safetensors");
    let file = crate::files::open(&weights_path).map_err(|source| CheckpointError::Io {
        path: weights_path.clone(),
        source,
    })?;
    // SAFETY: read-only map of a file nobody writes while we read it.
    let map = unsafe { Mmap::map(&file) }.map_err(|source| CheckpointError::Io {
        path: weights_path.clone(),
        source,
    })?;
    let tensors = SafeTensors::deserialize(&map).map_err(|e| CheckpointError::Corrupt {
        path: weights_path.clone(),
        what: e.to_string(),
    })?;
    let weights = read_weights(
        &Reader {
            path: &weights_path,
            tensors: &tensors,
        },
        &config,
    )?;

    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
        CheckpointError::Corrupt {
            path: tokenizer_path.clone(),
            what: format!("cannot read it as a tokenizers JSON file: {e}"),
        }
    })?;
    let eos = hf.eos_token_id;
    Ok(Checkpoint {
        transformer: Transformer { config, weights },
        tokenizer,
        special_tokens: SpecialTokens {
            bos: hf.bos_token_id,
            eos,
            pad: eos.unwrap_or(0),
            // TransformerLens prepends `<|endoftext|>` to GPT-Neo prompts by default.
            prepend_bos: true,
        },
        description: format!(
            "{} (HF GPT-Neo)",
            dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            )
        ),
    })
}

fn to_config(hf: &HfConfig, path: &Path) -> Result<TransformerConfig, CheckpointError> {
    let corrupt = |what: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        what,
    };
    if hf.num_heads == 0 || !hf.hidden_size.is_multiple_of(hf.num_heads) {
        return Err(corrupt(format!(
            "hidden_size {} is not a multiple of num_heads {}",
            hf.hidden_size, hf.num_heads
        )));
    }
    if hf.activation_function != "gelu_new" {
        return Err(CheckpointError::Unsupported {
            path: path.to_owned(),
            what: format!(
                "activation `{}`; qexp's GPT-Neo export implements `gelu_new`",
                hf.activation_function
            ),
        });
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
    let d_head = hf.hidden_size / hf.num_heads;
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
    })
}

struct Reader<'a> {
    path: &'a Path,
    tensors: &'a SafeTensors<'a>,
}

impl Reader<'_> {
    /// Finds a tensor under its `GPTNeoForCausalLM` name or its bare `GPTNeoModel` name.
    fn read(&self, name: &str, expected: &[usize]) -> Result<ArrayD<f32>, CheckpointError> {
        let bare = name.strip_prefix("transformer.").unwrap_or(name);
        let view = self
            .tensors
            .tensor(name)
            .or_else(|_| self.tensors.tensor(bare))
            .map_err(|_| CheckpointError::MissingTensor {
                path: self.path.to_owned(),
                name: name.to_owned(),
            })?;
        expect_shape(self.path, name, view.shape(), expected)?;
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(CheckpointError::Unsupported {
                    path: self.path.to_owned(),
                    what: format!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
                });
            }
        };
        Ok(ArrayD::from_shape_vec(expected.to_vec(), values)
            .expect("safetensors checked the byte length against the shape"))
    }

    /// A torch `Linear` weight `[out, in]`, transposed to `[in, out]`.
    fn linear(&self, name: &str, out: usize, d_in: usize) -> Result<ArrayD<f32>, CheckpointError> {
        let m = self
            .read(name, &[out, d_in])?
            .into_dimensionality::<Ix2>()
            .expect("two dimensions checked");
        Ok(m.reversed_axes()
            .as_standard_layout()
            .into_owned()
            .into_dyn())
    }
}

fn read_weights(r: &Reader<'_>, config: &TransformerConfig) -> Result<Weights, CheckpointError> {
    let d = config.d_model;
    let mut weights = Weights::new();
    weights.insert(
        weight_names::W_E.into(),
        r.read("transformer.wte.weight", &[config.d_vocab, d])?,
    );
    weights.insert(
        weight_names::W_POS.into(),
        r.read("transformer.wpe.weight", &[config.n_ctx, d])?,
    );
    weights.insert(
        weight_names::LN_FINAL_W.into(),
        r.read("transformer.ln_f.weight", &[d])?,
    );
    weights.insert(
        weight_names::LN_FINAL_B.into(),
        r.read("transformer.ln_f.bias", &[d])?,
    );
    if !config.tied_embeddings {
        weights.insert(
            weight_names::W_U.into(),
            r.linear("lm_head.weight", config.d_vocab, d)?,
        );
    }
    for layer in 0..config.n_layers {
        let hf = |suffix: &str| format!("transformer.h.{layer}.{suffix}");
        let mut put = |name: &str, array: ArrayD<f32>| {
            weights.insert(weight_names::block(layer, name), array);
        };
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
    }
    Ok(weights)
}
