//! Sparse autoencoders in SAELens' folder layout: `cfg.json` (6.x with `metadata`, or the
//! pre-6.0 flat form) and `sae_weights.safetensors` (`W_enc [d_in, d_sae]`, `b_enc`,
//! `W_dec [d_sae, d_in]`, `b_dec`, and `threshold` for JumpReLU); and Gemma Scope's
//! `params.npz` (`gemma_scope.rs`).

mod gemma_scope;
pub mod pin;
mod save;
pub mod store;
pub(crate) mod tensors;
pub mod train;

pub use save::save;

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayView2, Axis, Ix1, Ix2};
use serde::Deserialize;

use crate::hooks::HookRef;

/// What the checker knows about an SAE without loading its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaeShape {
    pub d_in: usize,
    pub d_sae: usize,
    pub hook: Option<HookRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// ReLU of the pre-activation.
    Standard,
    /// ReLU of the `k` largest pre-activations, zero elsewhere.
    TopK { k: usize },
    /// The pre-activation where it exceeds the feature's threshold, zero elsewhere.
    JumpRelu,
}

/// SAELens' run-time input normalization (`normalize_activations`): the input is
/// normalized before encoding and the reconstruction mapped back with the same token's
/// statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalization {
    #[default]
    None,
    /// Scale each token to norm `sqrt(d_in)`; divide the output by the same factor.
    ConstantNormRescale,
    /// Subtract the token's mean, divide by its standard deviation (unbiased) + 1e-5;
    /// the output is multiplied by the standard deviation and the mean added back.
    LayerNorm,
}

/// Epsilon of SAELens' run-time layer norm.
pub const LAYER_NORM_EPS: f32 = 1e-5;

#[derive(Debug, Clone)]
pub struct Sae {
    pub d_in: usize,
    pub d_sae: usize,
    pub architecture: Architecture,
    pub apply_b_dec_to_input: bool,
    pub normalization: Normalization,
    pub hook: Option<HookRef>,
    pub w_enc: Array2<f32>,
    pub b_enc: Array1<f32>,
    pub w_dec: Array2<f32>,
    pub b_dec: Array1<f32>,
    pub threshold: Option<Array1<f32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error("{} is not an SAELens SAE: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
struct Config {
    d_in: usize,
    d_sae: usize,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default = "default_true")]
    apply_b_dec_to_input: bool,
    #[serde(default)]
    normalize_activations: Option<String>,
    #[serde(default)]
    reshape_activations: Option<String>,
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    activation_fn_str: Option<String>,
    #[serde(default)]
    activation_fn_kwargs: Option<serde_json::Value>,
    #[serde(default)]
    hook_name: Option<String>,
    #[serde(default)]
    hook_head_index: Option<usize>,
    /// Pre-6.0 SAELens names.
    #[serde(default)]
    hook_point: Option<String>,
    #[serde(default)]
    hook_point_head_index: Option<usize>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    hook_name: Option<String>,
    #[serde(default)]
    hook_head_index: Option<usize>,
}

fn default_true() -> bool {
    true
}

impl Config {
    fn read(dir: &Path) -> Result<Self, SaeError> {
        let path = dir.join("cfg.json");
        let text = crate::files::read_to_string(&path).map_err(|e| SaeError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| SaeError::Invalid {
            path,
            message: e.to_string(),
        })
    }

    fn hook(&self) -> Option<HookRef> {
        let metadata = self.metadata.as_ref();
        let name = metadata
            .and_then(|m| m.hook_name.clone())
            .or_else(|| self.hook_name.clone())
            .or_else(|| self.hook_point.clone())?;
        Some(HookRef {
            name,
            head: metadata
                .and_then(|m| m.hook_head_index)
                .or(self.hook_head_index)
                .or(self.hook_point_head_index),
            head_from: None,
            pos: None,
        })
    }

    fn architecture(&self, path: &Path) -> Result<Architecture, SaeError> {
        let invalid = |message: String| SaeError::Invalid {
            path: path.to_owned(),
            message,
        };
        let k_from_kwargs = || {
            self.activation_fn_kwargs
                .as_ref()
                .and_then(|kw| kw.get("k"))
                .and_then(serde_json::Value::as_u64)
                .map(|k| k as usize)
        };
        match (
            self.architecture.as_deref(),
            self.activation_fn_str.as_deref(),
        ) {
            (Some("standard") | None, None | Some("relu")) => Ok(Architecture::Standard),
            (Some("topk"), _) | (None, Some("topk")) => {
                let k = self
                    .k
                    .or_else(k_from_kwargs)
                    .ok_or_else(|| invalid("a TopK SAE's config has no `k`".into()))?;
                Ok(Architecture::TopK { k })
            }
            (Some("jumprelu"), _) => Ok(Architecture::JumpRelu),
            (architecture, activation) => Err(invalid(format!(
                "architecture {architecture:?} with activation {activation:?}; qexp reads standard (ReLU), topk and jumprelu SAEs"
            ))),
        }
    }
}

/// d_in, d_sae and the hook of the SAE folder `dir` (what the checker needs), or why they
/// cannot be read.
pub fn read_shape(dir: &Path) -> Result<SaeShape, String> {
    if let Some(params) = gemma_scope::params_file(dir) {
        return gemma_scope::read_shape(&params).map_err(|e| e.to_string());
    }
    let config = Config::read(dir).map_err(|e| e.to_string())?;
    Ok(SaeShape {
        d_in: config.d_in,
        d_sae: config.d_sae,
        hook: config.hook(),
    })
}

pub fn load(dir: &Path) -> Result<Sae, SaeError> {
    if let Some(params) = gemma_scope::params_file(dir) {
        return gemma_scope::load(&params);
    }
    let config = Config::read(dir)?;
    let cfg_path = dir.join("cfg.json");
    let invalid = |message: String| SaeError::Invalid {
        path: cfg_path.clone(),
        message,
    };
    let normalization = match config.normalize_activations.as_deref() {
        None | Some("none") => Normalization::None,
        Some("constant_norm_rescale") => Normalization::ConstantNormRescale,
        Some("layer_norm") => Normalization::LayerNorm,
        Some(other) => {
            return Err(invalid(format!(
                "normalize_activations `{other}` is not supported (none, constant_norm_rescale and layer_norm are; SAELens folds `expected_average_only_in` into the weights when it saves)"
            )));
        }
    };
    if let Some(r) = config
        .reshape_activations
        .as_deref()
        .filter(|r| *r != "none")
    {
        return Err(invalid(format!(
            "reshape_activations `{r}` is not supported yet (only `none`)"
        )));
    }
    let architecture = config.architecture(&cfg_path)?;
    let weights_path = dir.join("sae_weights.safetensors");
    let tensors = tensors::read(&weights_path).map_err(|message| SaeError::Invalid {
        path: weights_path.clone(),
        message,
    })?;
    Sae::from_tensors(
        tensors,
        &weights_path,
        Sae {
            d_in: config.d_in,
            d_sae: config.d_sae,
            architecture,
            apply_b_dec_to_input: config.apply_b_dec_to_input,
            normalization,
            hook: config.hook(),
            w_enc: Array2::zeros((0, 0)),
            b_enc: Array1::zeros(0),
            w_dec: Array2::zeros((0, 0)),
            b_dec: Array1::zeros(0),
            threshold: None,
        },
    )
}

impl Sae {
    /// `shape` (its sizes, architecture and settings; weights empty) with its weights
    /// taken from `tensors`, each checked against the sizes and for non-finite values.
    fn from_tensors(
        mut tensors: std::collections::BTreeMap<String, ndarray::ArrayD<f32>>,
        path: &Path,
        shape: Sae,
    ) -> Result<Sae, SaeError> {
        let mut read = |name: &str, expected: &[usize]| -> Result<ndarray::ArrayD<f32>, SaeError> {
            let bad = |message: String| SaeError::Invalid {
                path: path.to_owned(),
                message,
            };
            let tensor = tensors
                .remove(name)
                .ok_or_else(|| bad(format!("no tensor `{name}`")))?;
            if tensor.shape() != expected {
                return Err(bad(format!(
                    "`{name}` has shape {:?}, the config says {expected:?}",
                    tensor.shape()
                )));
            }
            // A NaN here would surface much later as a broken forward pass of some
            // variant; name the file and the tensor now.
            if let Some((at, value)) = tensor.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(bad(format!(
                    "`{name}` holds a non-finite value ({value}) at flat index {at}"
                )));
            }
            Ok(tensor)
        };
        let (d_in, d_sae) = (shape.d_in, shape.d_sae);
        let matrix =
            |a: ndarray::ArrayD<f32>| a.into_dimensionality::<Ix2>().expect("two dims checked");
        let vector =
            |a: ndarray::ArrayD<f32>| a.into_dimensionality::<Ix1>().expect("one dim checked");
        Ok(Sae {
            w_enc: matrix(read("W_enc", &[d_in, d_sae])?),
            b_enc: vector(read("b_enc", &[d_sae])?),
            w_dec: matrix(read("W_dec", &[d_sae, d_in])?),
            b_dec: vector(read("b_dec", &[d_in])?),
            threshold: match shape.architecture {
                Architecture::JumpRelu => Some(vector(read("threshold", &[d_sae])?)),
                _ => None,
            },
            ..shape
        })
    }

    /// SHA-256 of its weights as little-endian f32 (W_enc, b_enc, W_dec, b_dec, and the
    /// threshold when it has one): equal for equal weights, whatever file they came from.
    pub fn weights_sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        let tensors = [
            self.w_enc.as_slice_memory_order(),
            self.b_enc.as_slice_memory_order(),
            self.w_dec.as_slice_memory_order(),
            self.b_dec.as_slice_memory_order(),
            self.threshold
                .as_ref()
                .and_then(|t| t.as_slice_memory_order()),
        ];
        for values in tensors.into_iter().flatten() {
            for v in values {
                hash.update(v.to_le_bytes());
            }
        }
        format!("{:x}", hash.finalize())
    }

    /// Feature activations of rows of `x` (`[n, d_in]` -> `[n, d_sae]`), as SAELens'
    /// `encode` computes them.
    pub fn encode(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        let x = self.normalize(x);
        let input = if self.apply_b_dec_to_input {
            &x - &self.b_dec
        } else {
            x
        };
        let mut pre = input.dot(&self.w_enc) + &self.b_enc;
        match self.architecture {
            Architecture::Standard => pre.mapv_inplace(|v| v.max(0.0)),
            Architecture::JumpRelu => {
                let threshold = self
                    .threshold
                    .as_ref()
                    .expect("JumpReLU SAEs load a threshold");
                for mut row in pre.axis_iter_mut(Axis(0)) {
                    row.zip_mut_with(threshold, |v, &t| {
                        *v = if *v > t { v.max(0.0) } else { 0.0 }
                    });
                }
            }
            Architecture::TopK { k } => {
                for mut row in pre.axis_iter_mut(Axis(0)) {
                    let mut order: Vec<usize> = (0..row.len()).collect();
                    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                    let keep: Vec<(usize, f32)> = order
                        .iter()
                        .take(k)
                        .map(|&i| (i, row[i].max(0.0)))
                        .collect();
                    row.fill(0.0);
                    for (i, v) in keep {
                        row[i] = v;
                    }
                }
            }
        }
        pre
    }

    /// `acts @ W_dec + b_dec`: the reconstruction in the SAE's own (normalized) space.
    pub fn decode(&self, acts: ArrayView2<'_, f32>) -> Array2<f32> {
        acts.dot(&self.w_dec) + &self.b_dec
    }

    /// The reconstruction of the rows `x` whose activations are `acts`, in the space of
    /// `x`: the decoded output with `x`'s normalization undone (`decode` when the SAE
    /// normalizes nothing).
    pub fn reconstruct(&self, x: ArrayView2<'_, f32>, acts: ArrayView2<'_, f32>) -> Array2<f32> {
        let mut out = self.decode(acts);
        for (mut row, x) in out.rows_mut().into_iter().zip(x.rows()) {
            let (_, out_scale, shift) = self.row_statistics(x);
            row.mapv_inplace(|v| v * out_scale + shift);
        }
        out
    }

    /// How much a change of the decoded output moves the reconstruction of input row `x`
    /// (1 without run-time normalization).
    pub fn output_scale(&self, x: ndarray::ArrayView1<'_, f32>) -> f32 {
        self.row_statistics(x).1
    }

    /// Rows of `x` normalized as the SAE expects its input.
    fn normalize(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        let mut out = x.to_owned();
        if self.normalization != Normalization::None {
            for mut row in out.rows_mut() {
                let (in_scale, _, shift) = self.row_statistics(row.view());
                row.mapv_inplace(|v| (v - shift) * in_scale);
            }
        }
        out
    }

    /// For one input row: `(in_scale, out_scale, shift)`; the input becomes
    /// `(x - shift) * in_scale` and an output `y` becomes `y * out_scale + shift` (SAELens
    /// divides by `std + eps` on the way in but multiplies by `std` on the way out).
    fn row_statistics(&self, x: ndarray::ArrayView1<'_, f32>) -> (f32, f32, f32) {
        match self.normalization {
            Normalization::None => (1.0, 1.0, 0.0),
            Normalization::ConstantNormRescale => {
                let coefficient = (self.d_in as f32).sqrt() / x.dot(&x).sqrt();
                (coefficient, 1.0 / coefficient, 0.0)
            }
            Normalization::LayerNorm => {
                let n = x.len() as f32;
                let mean = x.sum() / n;
                let variance = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / (n - 1.0);
                let std = variance.sqrt();
                (1.0 / (std + LAYER_NORM_EPS), std, mean)
            }
        }
    }
}
