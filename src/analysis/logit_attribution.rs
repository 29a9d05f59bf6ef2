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
