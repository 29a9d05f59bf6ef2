//! TransformerLens' weight processing, applied to a [`Transformer`] before export so a
//! model's numbers can be compared with what `HookedTransformer.from_pretrained` gives by
//! default: `fold_ln`, `center_writing_weights`, `center_unembed`, `fold_value_biases`.
//!
//! Each step changes weights, never what the model computes (centring the unembedding
//! shifts every logit of a position by one constant, which no probability sees). A folded
//! norm keeps its place in the graph with unit weight and zero bias, so its hooks read
//! what TransformerLens' `LNPre`/`RMSNormPre` hooks read.

use std::fmt;

use ndarray::{Array1, Array2, ArrayD, Axis, Ix1, Ix2};
use serde::{Deserialize, Serialize};

use crate::model::{Normalization, Transformer, TransformerConfig, weight_names};

/// One of TransformerLens' processing steps, by its keyword argument's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    FoldLn,
    CenterWritingWeights,
    CenterUnembed,
    FoldValueBiases,
}

impl Step {
    /// What `from_pretrained` applies by default, in the order it applies them.
    pub const TRANSFORMER_LENS: [Step; 4] = [
        Step::FoldLn,
        Step::CenterWritingWeights,
        Step::CenterUnembed,
        Step::FoldValueBiases,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::FoldLn => "fold_ln",
            Step::CenterWritingWeights => "center_writing_weights",
            Step::CenterUnembed => "center_unembed",
            Step::FoldValueBiases => "fold_value_biases",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    #[error("cannot {step}: the model has no `{name}` (this is a bug in qexp's reader)")]
    Missing { step: Step, name: String },
    #[error(
        "cannot fold_ln into a gated MLP behind a LayerNorm with a bias: the gate would need a bias qexp's graph does not have"
    )]
    GatedLayerNormBias,
}

/// Applies `steps` in TransformerLens' order (whatever order they are given in) and
/// returns the steps that applied: `center_writing_weights` is skipped for RMSNorm models,
/// as TransformerLens skips it, since an RMSNorm does not remove the mean its centring
/// relies on.
pub fn process(t: &mut Transformer, steps: &[Step]) -> Result<Vec<Step>, ProcessingError> {
    let mut applied = Vec::new();
    let layer_norm = t.config.normalization == Normalization::LayerNorm;
    for step in Step::TRANSFORMER_LENS {
        if !steps.contains(&step) {
            continue;
        }
        match step {
            Step::FoldLn => fold_ln(t)?,
            Step::CenterWritingWeights if !layer_norm => continue,
            Step::CenterWritingWeights => center_writing_weights(t)?,
            Step::CenterUnembed => center_unembed(t)?,
            Step::FoldValueBiases => fold_value_biases(t)?,
        }
        applied.push(step);
    }
    Ok(applied)
}

fn matrix(t: &Transformer, step: Step, name: &str) -> Result<Array2<f32>, ProcessingError> {
    t.weights
        .get(name)
        .and_then(|w| w.clone().into_dimensionality::<Ix2>().ok())
        .ok_or_else(|| ProcessingError::Missing {
            step,
            name: name.to_owned(),
        })
}

fn vector(t: &Transformer, step: Step, name: &str) -> Result<Array1<f32>, ProcessingError> {
    t.weights
        .get(name)
        .and_then(|w| w.clone().into_dimensionality::<Ix1>().ok())
        .ok_or_else(|| ProcessingError::Missing {
            step,
            name: name.to_owned(),
        })
}

/// A bias the model may not have yet: zeros of `width` when absent.
fn bias_or_zeros(t: &Transformer, name: &str, width: usize) -> Array1<f32> {
    t.weights
        .get(name)
        .and_then(|w| w.clone().into_dimensionality::<Ix1>().ok())
        .unwrap_or_else(|| Array1::zeros(width))
}

fn put(t: &mut Transformer, name: &str, array: ArrayD<f32>) {
    t.weights.insert(name.to_owned(), array);
}

/// Gives the model an unembedding of its own before a step changes the embedding or the
/// unembedding apart: a tied `W_U` is `W_E` transposed.
fn untie(t: &mut Transformer) {
    if !t.config.tied_embeddings {
        return;
    }
    if let Some(w_e) = t.weights.get(weight_names::W_E) {
        let w_u = w_e
            .clone()
            .into_dimensionality::<Ix2>()
            .expect("W_E is a matrix")
            .reversed_axes()
            .as_standard_layout()
            .into_owned();
        put(t, weight_names::W_U, w_u.into_dyn());
        t.config.tied_embeddings = false;
    }
}

/// Folds a norm's weight (and a LayerNorm's bias) into the matrices that read its output:
/// `W' = diag(w) W`, `b' = b + ln_b W`, then for LayerNorm `W'` is centred over its input
/// axis (the norm's output already has zero mean, so that changes nothing computed).
/// The norm is left as unit weight and zero bias.
struct Fold<'a> {
    norm: &'a str,
    readers: Vec<(String, Option<String>)>,
}

fn fold_ln(t: &mut Transformer) -> Result<(), ProcessingError> {
    let step = Step::FoldLn;
    let layer_norm = t.config.normalization == Normalization::LayerNorm;
    let gated = matches!(
        t.config.mlp,
        crate::model::Mlp::GatedSilu | crate::model::Mlp::GatedGeluTanh
    );
    untie(t);
    let mut folds = Vec::new();
    for layer in 0..t.config.n_layers {
        let name = |suffix: &str| weight_names::block(layer, suffix);
        folds.push((
            name("ln1"),
            ["Q", "K", "V"]
                .map(|p| {
                    (
                        name(&format!("attn.W_{p}")),
                        Some(name(&format!("attn.b_{p}"))),
                    )
                })
                .to_vec(),
        ));
        let mut mlp = vec![(name("mlp.W_in"), Some(name("mlp.b_in")))];
        if gated {
            mlp.push((name("mlp.W_gate"), None));
        }
        folds.push((name("ln2"), mlp));
    }
    folds.push((
        "ln_final".to_owned(),
        vec![(
            weight_names::W_U.to_owned(),
            Some(weight_names::B_U.to_owned()),
        )],
    ));
    for (norm, readers) in &folds {
        fold_one(
            t,
            step,
            &Fold {
                norm,
                readers: readers.clone(),
            },
            layer_norm,
        )?;
    }
    if layer_norm {
        // The folded LayerNorm biases now live in these.
        t.config.bias.qkv = true;
        t.config.bias.mlp = true;
        t.config.bias.unembed = true;
    }
    Ok(())
}

fn fold_one(
    t: &mut Transformer,
    step: Step,
    fold: &Fold<'_>,
    layer_norm: bool,
) -> Result<(), ProcessingError> {
    let w_name = format!("{}.w", fold.norm);
    let b_name = format!("{}.b", fold.norm);
    let scale = vector(t, step, &w_name)?;
    let shift = layer_norm.then(|| bias_or_zeros(t, &b_name, scale.len()));
    for (reader, bias) in &fold.readers {
        let mut w = matrix(t, step, reader)?;
        if let Some(shift) = &shift {
            match bias {
                Some(bias) => {
                    let folded = bias_or_zeros(t, bias, w.ncols()) + shift.dot(&w);
                    put(t, bias, folded.into_dyn());
                }
                None if shift.iter().any(|&b| b != 0.0) => {
                    return Err(ProcessingError::GatedLayerNormBias);
                }
                None => {}
            }
        }
        for (mut row, s) in w.axis_iter_mut(Axis(0)).zip(scale.iter()) {
            row *= *s;
        }
        if layer_norm {
            let mean = w.mean_axis(Axis(0)).expect("d_model > 0");
            w -= &mean;
        }
        put(t, reader, w.into_dyn());
    }
    put(t, &w_name, Array1::<f32>::ones(scale.len()).into_dyn());
    if layer_norm {
        put(t, &b_name, Array1::<f32>::zeros(scale.len()).into_dyn());
    }
    Ok(())
}

/// Centres every weight that writes to the residual stream over `d_model` (the next
/// LayerNorm removes that mean anyway): the embeddings, each `W_O` and `W_out` row, and
/// the output biases.
fn center_writing_weights(t: &mut Transformer) -> Result<(), ProcessingError> {
    let step = Step::CenterWritingWeights;
    untie(t);
    let mut writers = vec![weight_names::W_E.to_owned()];
    if t.weights.contains_key(weight_names::W_POS) {
        writers.push(weight_names::W_POS.to_owned());
    }
    let mut biases = Vec::new();
    for layer in 0..t.config.n_layers {
        writers.push(weight_names::block(layer, "attn.W_O"));
        writers.push(weight_names::block(layer, "mlp.W_out"));
        biases.push(weight_names::block(layer, "attn.b_O"));
        biases.push(weight_names::block(layer, "mlp.b_out"));
    }
    for name in writers {
        let mut w = matrix(t, step, &name)?;
        let mean = w.mean_axis(Axis(1)).expect("d_model > 0");
        w -= &mean.insert_axis(Axis(1));
        put(t, &name, w.into_dyn());
    }
    for name in biases {
        if let Some(b) = t.weights.get(&name) {
            let mean = b.mean().unwrap_or(0.0);
            let centred = b - mean;
            put(t, &name, centred);
        }
    }
    Ok(())
}

/// Centres the unembedding over the vocabulary: every logit of a position moves by the
/// same amount, so probabilities, losses and logit differences are unchanged.
fn center_unembed(t: &mut Transformer) -> Result<(), ProcessingError> {
    let step = Step::CenterUnembed;
    untie(t);
    let mut w_u = matrix(t, step, weight_names::W_U)?;
    let mean = w_u.mean_axis(Axis(1)).expect("d_vocab > 0");
    w_u -= &mean.insert_axis(Axis(1));
    put(t, weight_names::W_U, w_u.into_dyn());
    if let Some(b_u) = t.weights.get(weight_names::B_U) {
        let centred = b_u - b_u.mean().unwrap_or(0.0);
        put(t, weight_names::B_U, centred);
    }
    Ok(())
}

/// Moves the value biases into the output bias: the pattern sums to one, so every head
/// adds `b_V[h] W_O[h]` at every position whatever it attends to.
fn fold_value_biases(t: &mut Transformer) -> Result<(), ProcessingError> {
    let step = Step::FoldValueBiases;
    let config: TransformerConfig = t.config.clone();
    if !config.bias.qkv {
        return Ok(());
    }
    let d = config.d_head;
    for layer in 0..config.n_layers {
        let name = |suffix: &str| weight_names::block(layer, suffix);
        let b_v = vector(t, step, &name("attn.b_V"))?;
        let w_o = matrix(t, step, &name("attn.W_O"))?;
        // Under grouped-query attention, query head h reads key/value head h / group.
        let per_head = Array1::from_shape_fn(config.n_heads * d, |i| {
            let (head, j) = (i / d, i % d);
            b_v[(head / config.gqa_group()) * d + j]
        });
        let b_o = bias_or_zeros(t, &name("attn.b_O"), config.d_model) + per_head.dot(&w_o);
        put(t, &name("attn.b_O"), b_o.into_dyn());
        put(
            t,
            &name("attn.b_V"),
            Array1::<f32>::zeros(b_v.len()).into_dyn(),
        );
    }
    t.config.bias.attn_out = true;
    Ok(())
}
