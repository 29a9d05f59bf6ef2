//! The arithmetic of one training step: Adam, the loss's gradients (checked against
//! finite differences in the tests), TopK selection, and resampling dead features.

use super::*;

/// Adam's state for one parameter.
pub(super) struct Adam<D: ndarray::Dimension> {
    pub(super) m: ndarray::Array<f32, D>,
    pub(super) v: ndarray::Array<f32, D>,
}

impl<D: ndarray::Dimension> Adam<D> {
    pub(super) fn new(shape: D) -> Self {
        Self {
            m: ndarray::Array::zeros(shape.clone()),
            v: ndarray::Array::zeros(shape),
        }
    }

    pub(super) fn step(
        &mut self,
        param: &mut ndarray::Array<f32, D>,
        grad: &ndarray::Array<f32, D>,
        lr: f32,
        t: i32,
    ) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.m
            .zip_mut_with(grad, |m, &g| *m = B1 * *m + (1.0 - B1) * g);
        self.v
            .zip_mut_with(grad, |v, &g| *v = B2 * *v + (1.0 - B2) * g * g);
        let (c1, c2) = (1.0 - B1.powi(t), 1.0 - B2.powi(t));
        ndarray::Zip::from(param)
            .and(&self.m)
            .and(&self.v)
            .for_each(|p, &m, &v| {
                *p -= lr * (m / c1) / ((v / c2).sqrt() + EPS);
            });
    }
}

pub(super) struct Gradients {
    pub(super) w_enc: Array2<f32>,
    pub(super) b_enc: Array1<f32>,
    pub(super) w_dec: Array2<f32>,
    pub(super) b_dec: Array1<f32>,
}

/// Gradients of `mean_b |recon - x|^2 + l1 * mean_b sum_f acts_f |W_dec[f]|` for one batch
/// (`input = x - b_dec`, `error = recon - x`, `act_sums` the column sums of `acts`).
/// `acts` is consumed: its buffer becomes d(pre-activation).
#[allow(clippy::too_many_arguments)]
pub(super) fn gradients(
    input: &Array2<f32>,
    acts: Array2<f32>,
    act_sums: &Array1<f32>,
    error: &Array2<f32>,
    w_enc: &Array2<f32>,
    w_dec: &Array2<f32>,
    dec_norms: &Array1<f32>,
    l1: f32,
) -> Gradients {
    let b = input.nrows() as f32;
    // d(recon) = 2 e / B.
    let d_recon = error.mapv(|e| 2.0 * e / b);
    let mut d_w_dec = acts.t().dot(&d_recon);
    // The L1 term adds l1 |W_dec[f]| / B to d(acts) and l1 sum_b acts_f W_dec[f] /
    // |W_dec[f]| / B to d(W_dec[f]).
    if l1 > 0.0 {
        for (f, mut row) in d_w_dec.rows_mut().into_iter().enumerate() {
            let scale = l1 * act_sums[f] / b / dec_norms[f].max(1e-12);
            row.scaled_add(scale, &w_dec.row(f));
        }
    }
    let l1_grad = dec_norms.mapv(|n| l1 * n / b);
    let mut d_pre = d_recon.dot(&w_dec.t());
    // Through the ReLU: zero where the feature was off.
    ndarray::Zip::from(&mut d_pre)
        .and(&acts)
        .and_broadcast(&l1_grad.view().insert_axis(Axis(0)))
        .for_each(|d, &a, &g| *d = if a > 0.0 { *d + g } else { 0.0 });
    drop(acts);
    let d_b_enc = d_pre.sum_axis(Axis(0));
    Gradients {
        w_enc: input.t().dot(&d_pre),
        // b_dec enters as `x - b_dec` in the encoder and `+ b_dec` in the decoder.
        b_dec: d_recon.sum_axis(Axis(0)) - w_enc.dot(&d_b_enc),
        b_enc: d_b_enc,
        w_dec: d_w_dec,
    }
}

/// Points each dead feature at an input the SAE reconstructs badly (chosen with
/// probability proportional to its squared error), as Anthropic's resampling does: the
/// decoder row is that input's direction at the initial norm, the encoder column the same
/// direction scaled to a fifth of the live features' mean encoder norm, the bias zero,
/// and Adam's moments for them reset.
pub(super) fn resample(
    state: &mut State,
    dead: &[usize],
    x: &Array2<f32>,
    error: &Array2<f32>,
    seed: u64,
    step: usize,
) {
    let losses: Vec<f64> = error
        .rows()
        .into_iter()
        .map(|r| f64::from(r.dot(&r)))
        .collect();
    let Ok(choose) = rand::distr::weighted::WeightedIndex::new(&losses) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let alive: Vec<usize> = (0..state.w_enc.ncols())
        .filter(|f| !dead.contains(f))
        .collect();
    let alive_norm = if alive.is_empty() {
        1.0
    } else {
        alive
            .iter()
            .map(|&f| state.w_enc.column(f).dot(&state.w_enc.column(f)).sqrt())
            .sum::<f32>()
            / alive.len() as f32
    };
    for &f in dead {
        let row = choose.sample(&mut rng);
        let direction = &x.row(row) - &state.b_dec;
        let norm = direction.dot(&direction).sqrt().max(1e-12);
        let unit = direction / norm;
        state.w_dec.row_mut(f).assign(&(&unit * DECODER_INIT_NORM));
        state
            .w_enc
            .column_mut(f)
            .assign(&(&unit * (alive_norm * 0.2)));
        state.b_enc[f] = 0.0;
        state.adam_w_dec.m.row_mut(f).fill(0.0);
        state.adam_w_dec.v.row_mut(f).fill(0.0);
        state.adam_w_enc.m.column_mut(f).fill(0.0);
        state.adam_w_enc.v.column_mut(f).fill(0.0);
        state.adam_b_enc.m[f] = 0.0;
        state.adam_b_enc.v[f] = 0.0;
        state.last_fired[f] = step + 1;
    }
    state.resampled += dead.len();
}

/// Zeroes all but each row's `k` largest pre-activations (ReLU already applied to `acts`).
pub(super) fn keep_top_k(acts: &mut Array2<f32>, pre: &Array2<f32>, k: usize) {
    for (mut row, pre_row) in acts.rows_mut().into_iter().zip(pre.rows()) {
        let mut order: Vec<usize> = (0..pre_row.len()).collect();
        order.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
            pre_row[b].total_cmp(&pre_row[a])
        });
        let mut keep = vec![false; pre_row.len()];
        for &i in &order[..k] {
            keep[i] = true;
        }
        for (i, a) in row.iter_mut().enumerate() {
            if !keep[i] {
                *a = 0.0;
            }
        }
    }
}
