//! The architecture-neutral description of a decoder-only transformer.
//!
//! Checkpoint readers (GGUF, HF safetensors) turn their files into a [`Transformer`]; the
//! exporter turns a [`Transformer`] into a hooked ONNX graph. Nothing here knows about
//! either file format, so a new source format only has to fill these structs.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

/// The checkpoint family a model came from; decides nothing by itself (the fields of
/// [`TransformerConfig`] do), but is recorded so users know what they are looking at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    GptNeo,
    Gpt2,
    GptNeox,
    Gemma2,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// Subtract the mean, divide by the RMS, then scale and shift (`w`, `b`).
    LayerNorm,
    /// Divide by the RMS, then scale (`w`); no centring, no bias.
    RmsNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Positional {
    /// A learned position embedding added to the token embedding (`pos_embed.W_pos`).
    Learned,
    /// Rotary embedding applied to q and k in HF's rotate-half layout, over the first
    /// `rotary_dim` dimensions of each head (all of them when absent; GPT-NeoX rotates a
    /// quarter and passes the rest through).
    Rotary {
        base: f32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rotary_dim: Option<usize>,
        /// A change of the frequencies for longer contexts (Llama 3.1's `llama3`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scaling: Option<RopeScaling>,
    },
}

/// Hugging Face's `rope_type`s that change the rotary frequencies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// Llama 3.1's: wavelengths longer than `original / low_freq_factor` divided by
    /// `factor`, shorter than `original / high_freq_factor` kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// The scaled inverse frequency, as transformers' `modeling_rope_utils` computes it.
    pub fn apply(&self, inv_freq: f64) -> f64 {
        match *self {
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
                if wavelen < old / high_freq_factor {
                    inv_freq
                } else if wavelen > old / low_freq_factor {
                    inv_freq / factor
                } else {
                    let smooth =
                        (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
                }
            }
        }
    }
}

impl Positional {
    /// How many of each head's `d_head` dimensions the rotary embedding turns (none for
    /// learned positions).
    pub fn rotary_dim(&self, d_head: usize) -> usize {
        match *self {
            Positional::Learned => 0,
            Positional::Rotary { rotary_dim, .. } => rotary_dim.unwrap_or(d_head),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mlp {
    /// `W_out(silu(x W_gate) * (x W_in))`, no biases (Llama).
    GatedSilu,
    /// `W_out(gelu_tanh(x W_in + b_in)) + b_out` (GPT-2 / GPT-Neo's `gelu_new`).
    GeluNew,
    /// `W_out(gelu(x W_in + b_in)) + b_out` with the exact, erf-based GELU (Pythia).
    Gelu,
    /// `W_out(gelu_tanh(x W_gate) * (x W_in))`, no biases (Gemma's GeGLU).
    GatedGeluTanh,
}

/// Every number the graph builder needs to lay out the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    /// Key/value heads; smaller than `n_heads` under grouped-query attention.
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub d_vocab: usize,
    /// The longest sequence the model was trained on.
    pub n_ctx: usize,
    pub normalization: Normalization,
    pub norm_eps: f32,
    pub positional: Positional,
    pub mlp: Mlp,
    /// Multiplies q·k before the softmax: `1/sqrt(d_head)` for Llama, `1` for GPT-Neo.
    pub attn_scale: f32,
    /// Per layer: `None` for global attention, `Some(w)` for local attention over the
    /// last `w` positions (the query's own position included).
    pub attention_windows: Vec<Option<usize>>,
    /// Whether q/k/v/o and the MLP carry biases (GPT-Neo: out-proj and MLP only).
    pub bias: BiasLayout,
    /// The unembedding is the transposed token embedding.
    pub tied_embeddings: bool,
    /// An RMSNorm over each head's query and key before the rotary embedding (Qwen3's
    /// `q_norm`/`k_norm`, TransformerLens' `use_qk_norm`). Absent from older manifests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// Attention and MLP both read the block's input and add to it together (GPT-NeoX's
    /// `use_parallel_residual`, TransformerLens' `parallel_attn_mlp`): no `hook_resid_mid`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel_attn_mlp: bool,
    /// Multiplies the token embedding before `hook_embed` (Gemma's `sqrt(d_model)`);
    /// `embed.W_E` itself stays unscaled, so a tied unembedding reads it as the model does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_scale: Option<f32>,
    /// A second norm on each sublayer's output before it joins the stream (Gemma-2's
    /// post-attention and post-feedforward norms; TransformerLens' `ln1_post`/`ln2_post`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_norms: bool,
    /// Attention scores become `cap * tanh(scores / cap)` before the mask (Gemma-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_softcap: Option<f32>,
    /// Logits become `cap * tanh(logits / cap)` (Gemma-2). Measurements that read
    /// components' direct effects on the logits read them before this cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_softcap: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BiasLayout {
    pub qkv: bool,
    pub attn_out: bool,
    pub mlp: bool,
    pub unembed: bool,
}

impl BiasLayout {
    /// No biases (Llama, Mistral, Gemma).
    pub const NONE: BiasLayout = BiasLayout {
        qkv: false,
        attn_out: false,
        mlp: false,
        unembed: false,
    };

    /// A bias on every projection but the unembedding (GPT-2, GPT-NeoX).
    pub const ALL_BUT_UNEMBED: BiasLayout = BiasLayout {
        qkv: true,
        attn_out: true,
        mlp: true,
        unembed: false,
    };
}

impl TransformerConfig {
    /// How many query heads share one key/value head.
    pub fn gqa_group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// Weights by their TransformerLens-style names (`blocks.0.attn.W_Q`, ...), each laid out
/// for `x @ W` (input dimension first), as the ONNX graph multiplies them.
pub type Weights = BTreeMap<String, ArrayD<f32>>;

/// A transformer ready to export: its shape and its weights.
#[derive(Debug, Clone)]
pub struct Transformer {
    pub config: TransformerConfig,
    pub weights: Weights,
}

impl Transformer {
    pub fn parameter_count(&self) -> usize {
        self.weights.values().map(|w| w.len()).sum()
    }
}

/// The names under which readers must store weights; one place, so the readers and the
/// graph builder cannot drift apart.
pub mod weight_names {
    pub const W_E: &str = "embed.W_E";
    pub const W_POS: &str = "pos_embed.W_pos";
    pub const W_U: &str = "unembed.W_U";
    pub const B_U: &str = "unembed.b_U";
    pub const LN_FINAL_W: &str = "ln_final.w";
    pub const LN_FINAL_B: &str = "ln_final.b";

    pub fn block(layer: usize, name: &str) -> String {
        format!("blocks.{layer}.{name}")
    }
}

/// How the exported weights are stored in `model.onnx.data`. The runtime widens 16-bit
/// weights to f32 once, when it loads them, so this halves the files, not the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightStorage {
    #[default]
    Float32,
    Float16,
    Bfloat16,
}

impl WeightStorage {
    pub fn is_float32(&self) -> bool {
        *self == WeightStorage::Float32
    }

    /// The value of 16-bit little-endian `bytes` (for `Float32`, of 4 bytes).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            WeightStorage::Float32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            WeightStorage::Float16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            WeightStorage::Bfloat16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    /// `values` as stored.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            WeightStorage::Float32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            WeightStorage::Float16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            WeightStorage::Bfloat16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}
