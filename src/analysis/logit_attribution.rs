//! Direct logit attribution: what one component's write to the residual stream does to
//! the logits on its own, through the final norm frozen at the clean run's scale (as
//! TransformerLens' `cache.apply_ln_to_stack` does) and the unembedding.

use ndarray::{Array1, ArrayView1, ArrayView2};

use crate::model::Normalization;

/// The unembedding: `[d_model, vocab]`, or the token embedding `[vocab, d_model]` when tied.
pub enum Unembed<'a> {
    Matrix(ArrayView2<'a, f32>),
    TiedEmbedding(ArrayView2<'a, f32>),
}

/// Logits contributed directly by `component` (a `d_model` vector at one position), with
/// the final norm's `scale` at that position and its weight `ln_w`. Summed over every
/// component of the residual stream this gives the model's logits (no unembedding bias).
pub fn direct_logits(
    component: ArrayView1<'_, f32>,
    scale: f32,
    ln_w: ArrayView1<'_, f32>,
    normalization: Normalization,
    unembed: &Unembed<'_>,
) -> Array1<f64> {
    let centred: Array1<f64> = match normalization {
        Normalization::LayerNorm => {
            let mean = component.mean().unwrap_or(0.0);
            component.mapv(|x| f64::from(x - mean))
        }
        Normalization::RmsNorm => component.mapv(f64::from),
    };
    let x: Array1<f64> = &centred / f64::from(scale) * &ln_w.mapv(f64::from);
    match unembed {
        Unembed::Matrix(w_u) => w_u.t().mapv(f64::from).dot(&x),
        Unembed::TiedEmbedding(w_e) => w_e.mapv(f64::from).dot(&x),
    }
}

/// What reading a residual-stream vector as logits needs, owned: the final norm's kind
/// and weight, and the unembedding.
pub struct Readout {
    pub normalization: Normalization,
    pub ln_w: ndarray::Array1<f32>,
    /// `[d_model, vocab]`, or the token embedding `[vocab, d_model]` when `tied`.
    pub unembed: ndarray::Array2<f32>,
    pub tied: bool,
}

impl Readout {
    /// [`direct_logits`] of `component` at a position whose final-norm scale is `scale`.
    pub fn logits(&self, component: ArrayView1<'_, f32>, scale: f32) -> Array1<f64> {
        let unembed = if self.tied {
            Unembed::TiedEmbedding(self.unembed.view())
        } else {
            Unembed::Matrix(self.unembed.view())
        };
        direct_logits(
            component,
            scale,
            self.ln_w.view(),
            self.normalization,
            &unembed,
        )
    }
}
