//! Training sparse autoencoders on activations: ReLU with an L1 penalty weighted by
//! decoder norms (SAELens' standard training SAE), or TopK; Adam with linear warm-up;
//! dead-feature tracking. Seeded and single-threaded, so a seed gives the same SAE.

use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, StandardNormal};

use super::{Architecture, Sae};

const DECODER_INIT_NORM: f32 = 0.1;

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub d_sae: usize,
    pub architecture: Architecture,
    pub l1_coefficient: f32,
    pub lr: f32,
    pub batch_size: usize,
    /// Activations to train on in total (the buffer is reshuffled and reused as needed).
    pub tokens: usize,
    pub seed: u64,
}

/// How training went, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: usize,
    pub tokens: usize,
    /// Over the last 10% of steps.
    pub mse: f64,
    pub l0: f64,
    pub explained_variance: f64,
    /// Features that did not fire on any of the last 10% of training tokens.
    pub dead_fraction: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error("no activations to train on")]
    Empty,
    #[error("{0} SAEs cannot be trained yet (standard and topk can)")]
    Architecture(&'static str),
    #[error("training diverged at step {step} (a non-finite loss); lower `lr` or `l1_coefficient`")]
    Diverged { step: usize },
}

/// Adam's state for one parameter.
struct Adam<D: ndarray::Dimension> {
    m: ndarray::Array<f32, D>,
    v: ndarray::Array<f32, D>,
}

impl<D: ndarray::Dimension> Adam<D> {
    fn new(shape: D) -> Self {
        Self {
            m: ndarray::Array::zeros(shape.clone()),
            v: ndarray::Array::zeros(shape),
        }
    }

    fn step(
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

/// Trains an SAE on `activations` (`[n, d_in]`, one row per token).
pub fn train(
    activations: &Array2<f32>,
    config: &TrainConfig,
    mut progress: impl FnMut(usize, usize, f64, f64),
) -> Result<(Sae, TrainSummary), TrainError> {
    let (n, d_in) = activations.dim();
    if n == 0 {
        return Err(TrainError::Empty);
    }
    if config.architecture == Architecture::JumpRelu {
        return Err(TrainError::Architecture("JumpReLU"));
    }
    let d_sae = config.d_sae;
    let mut rng = StdRng::seed_from_u64(config.seed);

    // Decoder rows random directions of norm 0.1 (SAELens' `decoder_init_norm`), the
    // encoder their transpose, b_dec the data mean: at the start, thousands of active
    // features must not add up to a reconstruction far larger than the data.
    let mut w_dec: Array2<f32> =
        Array2::from_shape_fn((d_sae, d_in), |_| StandardNormal.sample(&mut rng));
    for mut row in w_dec.rows_mut() {
        let norm = row.dot(&row).sqrt().max(1e-12);
        row /= norm / DECODER_INIT_NORM;
    }
    let mut w_enc = w_dec.t().to_owned();
    let mut b_enc = Array1::<f32>::zeros(d_sae);
    let mut b_dec = activations.mean_axis(Axis(0)).expect("n > 0");
    let (mut adam_w_enc, mut adam_b_enc) = (Adam::new(w_enc.raw_dim()), Adam::new(b_enc.raw_dim()));
    let (mut adam_w_dec, mut adam_b_dec) = (Adam::new(w_dec.raw_dim()), Adam::new(b_dec.raw_dim()));

    let batch_size = config.batch_size.clamp(1, n);
    let steps = config.tokens.div_ceil(batch_size).max(1);
    let warmup = (steps / 20).max(1);
    let tail_from = steps - (steps / 10).max(1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut cursor = n;
    let mut fired_in_tail = vec![false; d_sae];
    let (mut tail_mse, mut tail_l0, mut tail_var, mut tail_steps) =
        (0.0f64, 0.0f64, 0.0f64, 0usize);
    let topk = match config.architecture {
        Architecture::TopK { k } => Some(k.min(d_sae)),
        _ => None,
    };
    let l1 = if topk.is_some() {
        0.0
    } else {
        config.l1_coefficient
    };

    for step in 0..steps {
        if cursor + batch_size > n {
            order.shuffle(&mut rng);
            cursor = 0;
        }
        let rows = &order[cursor..cursor + batch_size];
        cursor += batch_size;
        let x = activations.select(Axis(0), rows);
        let b = batch_size as f32;

        // Forward.
        let input = &x - &b_dec;
        let pre = input.dot(&w_enc) + &b_enc;
        let mut acts = pre.mapv(|v| v.max(0.0));
        if let Some(k) = topk {
            keep_top_k(&mut acts, &pre, k);
        }
        let recon = acts.dot(&w_dec) + &b_dec;
        let error = &recon - &x;
        let dec_norms: Array1<f32> = w_dec.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
        let mse = error.mapv(|e| f64::from(e * e)).sum() / f64::from(b);
        let l1_term = f64::from(l1) * (&acts * &dec_norms).mapv(f64::from).sum() / f64::from(b);
        if !(mse + l1_term).is_finite() {
            return Err(TrainError::Diverged { step });
        }

        // Backward: d(recon) = 2 e / B; the L1 term adds l1 * |W_dec[f]| to d(acts) and
        // l1 * sum_b acts_f * W_dec[f] / |W_dec[f]| / B to d(W_dec[f]).
        let d_recon = error.mapv(|e| 2.0 * e / b);
        let mut d_w_dec = acts.t().dot(&d_recon);
        let mut d_acts = d_recon.dot(&w_dec.t());
        if l1 > 0.0 {
            d_acts += &dec_norms.mapv(|n| l1 * n / b);
            let act_sums = acts.sum_axis(Axis(0));
            for (f, mut row) in d_w_dec.rows_mut().into_iter().enumerate() {
                let scale = l1 * act_sums[f] / b / dec_norms[f].max(1e-12);
                row.scaled_add(scale, &w_dec.row(f));
            }
        }
        let d_pre = ndarray::Zip::from(&d_acts)
            .and(&acts)
            .map_collect(|&d, &a| if a > 0.0 { d } else { 0.0 });
        let d_w_enc = input.t().dot(&d_pre);
        let d_b_enc = d_pre.sum_axis(Axis(0));
        let d_b_dec = d_recon.sum_axis(Axis(0)) - d_pre.dot(&w_enc.t()).sum_axis(Axis(0));

        let lr = config.lr * ((step + 1) as f32 / warmup as f32).min(1.0);
        let t = (step + 1) as i32;
        adam_w_enc.step(&mut w_enc, &d_w_enc, lr, t);
        adam_b_enc.step(&mut b_enc, &d_b_enc, lr, t);
        adam_w_dec.step(&mut w_dec, &d_w_dec, lr, t);
        adam_b_dec.step(&mut b_dec, &d_b_dec, lr, t);
        if topk.is_some() {
            for mut row in w_dec.rows_mut() {
                let norm = row.dot(&row).sqrt().max(1e-12);
                row /= norm;
            }
        }

        let l0 = acts.iter().filter(|&&a| a > 0.0).count() as f64 / f64::from(b);
        if step >= tail_from {
            for row in acts.rows() {
                for (f, &a) in row.iter().enumerate() {
                    fired_in_tail[f] |= a > 0.0;
                }
            }
            let centred = &x - &x.mean_axis(Axis(0)).expect("b > 0");
            tail_var += centred.mapv(|v| f64::from(v * v)).sum() / f64::from(b);
            tail_mse += mse;
            tail_l0 += l0;
            tail_steps += 1;
        }
        progress(step + 1, steps, mse, l0);
    }
    let tail = tail_steps.max(1) as f64;
    let summary = TrainSummary {
        steps,
        tokens: steps * batch_size,
        mse: tail_mse / tail,
        l0: tail_l0 / tail,
        explained_variance: 1.0 - tail_mse / tail_var.max(f64::MIN_POSITIVE),
        dead_fraction: fired_in_tail.iter().filter(|f| !**f).count() as f64 / d_sae as f64,
    };
    let sae = Sae {
        d_in,
        d_sae,
        architecture: config.architecture,
        apply_b_dec_to_input: true,
        hook: None,
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        threshold: None,
    };
    Ok((sae, summary))
}

/// Zeroes all but each row's `k` largest pre-activations (ReLU already applied to `acts`).
fn keep_top_k(acts: &mut Array2<f32>, pre: &Array2<f32>, k: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Activations that are sparse combinations of 8 directions in 16 dimensions.
    fn sparse_data(n: usize, seed: u64) -> Array2<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let directions: Array2<f32> =
            Array2::from_shape_fn((8, 16), |_| StandardNormal.sample(&mut rng));
        let mut x = Array2::<f32>::zeros((n, 16));
        for mut row in x.rows_mut() {
            for d in 0..8 {
                let u: f32 = rand::Rng::random(&mut rng);
                if u < 0.2 {
                    row.scaled_add(1.0 + u * 5.0, &directions.row(d));
                }
            }
        }
        x
    }

    fn config(architecture: Architecture) -> TrainConfig {
        TrainConfig {
            d_sae: 32,
            architecture,
            l1_coefficient: 3e-2,
            lr: 1e-2,
            batch_size: 256,
            tokens: 256 * 300,
            seed: 7,
        }
    }

    #[test]
    fn a_standard_sae_learns_to_reconstruct_sparse_data() {
        let x = sparse_data(4096, 1);
        let (sae, summary) = train(&x, &config(Architecture::Standard), |_, _, _, _| {}).unwrap();
        assert!(summary.explained_variance > 0.9, "{summary:?}");
        assert!(summary.l0 < 16.0, "sparse: {summary:?}");
        let recon = sae.decode(sae.encode(x.view()).view());
        let mse = (&recon - &x).mapv(|e| e * e).sum() / x.nrows() as f32;
        assert!(
            (f64::from(mse) - summary.mse).abs() / summary.mse < 0.5,
            "the trained SAE reconstructs as training measured"
        );
    }

    #[test]
    fn topk_keeps_exactly_k_features() {
        let x = sparse_data(2048, 2);
        let (sae, summary) =
            train(&x, &config(Architecture::TopK { k: 4 }), |_, _, _, _| {}).unwrap();
        assert!(summary.l0 <= 4.0 + 1e-9, "{summary:?}");
        assert!(summary.explained_variance > 0.7, "{summary:?}");
        assert!(
            sae.encode(x.view())
                .rows()
                .into_iter()
                .all(|r| r.iter().filter(|&&a| a > 0.0).count() <= 4)
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_sae() {
        let x = sparse_data(1024, 3);
        let mut c = config(Architecture::Standard);
        c.tokens = 256 * 20;
        let (a, _) = train(&x, &c, |_, _, _, _| {}).unwrap();
        let (b, _) = train(&x, &c, |_, _, _, _| {}).unwrap();
        assert_eq!(a.w_enc, b.w_enc);
        c.seed = 8;
        let (other, _) = train(&x, &c, |_, _, _, _| {}).unwrap();
        assert_ne!(a.w_enc, other.w_enc);
    }

    #[test]
    fn divergence_is_reported_not_hidden() {
        let x = sparse_data(512, 4).mapv(|v| v * 1e30);
        let mut c = config(Architecture::Standard);
        c.lr = 1e10;
        assert!(matches!(
            train(&x, &c, |_, _, _, _| {}),
            Err(TrainError::Diverged { .. })
        ));
    }
}
