//! Direct logit attribution: what one component's write to the residual stream does to
//! the logits on its own, through the final norm frozen at the clean run's scale (as
//! TransformerLens' `cache.apply_ln_to_stack` does) and the unembedding.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

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
    let x = normalized(component, scale, ln_w, normalization);
    // Products in f64 without a widened copy of the unembedding (hundreds of MB for a
    // 50k vocabulary), which would be made again for every component.
    match unembed {
        Unembed::Matrix(w_u) => {
            let mut logits = Array1::<f64>::zeros(w_u.ncols());
            for (x_d, row) in x.iter().zip(w_u.rows()) {
                for (logit, &w) in logits.iter_mut().zip(row) {
                    *logit += x_d * f64::from(w);
                }
            }
            logits
        }
        Unembed::TiedEmbedding(w_e) => w_e.rows().into_iter().map(|row| dot(row, &x)).collect(),
    }
}

/// [`direct_logits`] of one token only.
pub fn direct_logit(
    component: ArrayView1<'_, f32>,
    scale: f32,
    ln_w: ArrayView1<'_, f32>,
    normalization: Normalization,
    unembed: &Unembed<'_>,
    token: usize,
) -> f64 {
    let x = normalized(component, scale, ln_w, normalization);
    match unembed {
        Unembed::Matrix(w_u) => dot(w_u.column(token), &x),
        Unembed::TiedEmbedding(w_e) => dot(w_e.row(token), &x),
    }
}

/// The component as the final norm leaves it: centred for a LayerNorm, divided by the
/// frozen scale, times the norm's weight.
fn normalized(
    component: ArrayView1<'_, f32>,
    scale: f32,
    ln_w: ArrayView1<'_, f32>,
    normalization: Normalization,
) -> Array1<f64> {
    let centred: Array1<f64> = match normalization {
        Normalization::LayerNorm => {
            let mean = component.mean().unwrap_or(0.0);
            component.mapv(|x| f64::from(x - mean))
        }
        Normalization::RmsNorm => component.mapv(f64::from),
    };
    &centred / f64::from(scale) * &ln_w.mapv(f64::from)
}

fn dot(weights: ArrayView1<'_, f32>, x: &Array1<f64>) -> f64 {
    weights.iter().zip(x).map(|(&w, x)| f64::from(w) * x).sum()
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
    fn unembed(&self) -> Unembed<'_> {
        if self.tied {
            Unembed::TiedEmbedding(self.unembed.view())
        } else {
            Unembed::Matrix(self.unembed.view())
        }
    }

    /// [`direct_logits`] of many vectors at once (`[n, d_model]`, each with its own
    /// final-norm scale), in f32 through one matrix product: what ranking every token of
    /// a dataset needs, where one f64 product per token would take seconds.
    pub fn logits_f32(&self, rows: ArrayView2<'_, f32>, scales: &[f32]) -> Array2<f32> {
        let mut normed = Array2::<f32>::zeros(rows.raw_dim());
        for ((mut out, row), &scale) in normed.rows_mut().into_iter().zip(rows.rows()).zip(scales) {
            let x = normalized(row, scale, self.ln_w.view(), self.normalization);
            out.assign(&x.mapv(|v| v as f32));
        }
        if self.tied {
            normed.dot(&self.unembed.t())
        } else {
            normed.dot(&self.unembed)
        }
    }

    /// [`direct_logit`]: `token`'s logit alone.
    pub fn logit(&self, component: ArrayView1<'_, f32>, scale: f32, token: usize) -> f64 {
        direct_logit(
            component,
            scale,
            self.ln_w.view(),
            self.normalization,
            &self.unembed(),
            token,
        )
    }

    /// [`direct_logits`] of `component` at a position whose final-norm scale is `scale`.
    pub fn logits(&self, component: ArrayView1<'_, f32>, scale: f32) -> Array1<f64> {
        direct_logits(
            component,
            scale,
            self.ln_w.view(),
            self.normalization,
            &self.unembed(),
        )
    }
}
