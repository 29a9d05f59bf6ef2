//! Training sparse autoencoders on activations: ReLU with an L1 penalty weighted by
//! decoder norms (SAELens' standard training SAE), or TopK; Adam with linear warm-up;
//! dead features tracked over a window and resampled towards badly reconstructed inputs;
//! optional activation normalization (folded into the weights at the end); checkpoints
//! that a later run resumes from. Deterministic: every random choice comes from the seed
//! and the step, so a resumed run ends with the same SAE as an uninterrupted one.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayD, ArrayView2, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, StandardNormal};

use super::{Architecture, Sae, tensors};

mod checkpoint;
mod optimizer;
#[cfg(test)]
mod tests;

use checkpoint::{latest_checkpoint, read_checkpoint, write_checkpoint};
use optimizer::{Adam, gradients, keep_top_k, resample};

const DECODER_INIT_NORM: f32 = 0.1;
/// Steps without firing after which a feature counts as dead (SAELens' default window).
const DEAD_WINDOW: usize = 1000;
const STATE_TENSORS: &str = "trainer_state.safetensors";
const STATE_JSON: &str = "trainer_state.json";

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
    /// Scale inputs so their mean norm is `sqrt(d_in)` while training (SAELens'
    /// `expected_average_only_in`); the factor is folded into the saved weights.
    pub normalize_activations: bool,
    /// Re-initialize dead features from badly reconstructed inputs during the first 3/4
    /// of training.
    pub resample_dead: bool,
}

/// Where and how often to write checkpoints, and whether to start from the last one.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    pub dir: PathBuf,
    pub every: usize,
    pub resume: bool,
    /// What the activations were made from (model weights, hook, dataset), in words a
    /// mismatch can be explained with: a checkpoint resumes only on the same inputs.
    pub inputs: String,
}

/// Live numbers for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    pub mse: f64,
    pub l0: f64,
    pub explained_variance: f64,
    pub dead_fraction: f64,
}

/// How training went, for the report (and a pin's record of it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub tokens: usize,
    /// Over the last 10% of steps.
    pub mse: f64,
    pub l0: f64,
    pub explained_variance: f64,
    /// Features that did not fire on any of the last 10% of training tokens.
    pub dead_fraction: f64,
    pub resampled: usize,
    /// The step training started from (0, or the checkpoint it resumed); this run's
    /// business, not a pin's.
    #[serde(skip)]
    pub resumed_from: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error("no activations to train on")]
    Empty,
    #[error("{0} SAEs cannot be trained yet (standard and topk can)")]
    Architecture(&'static str),
    #[error(
        "training diverged at step {step} (a non-finite loss); lower `lr` or `l1_coefficient`{}",
        checkpoint.as_ref().map(|c| format!("; the last good checkpoint is {}", c.display())).unwrap_or_default()
    )]
    Diverged {
        step: usize,
        checkpoint: Option<PathBuf>,
    },
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
}

/// Everything training carries from step to step: what a checkpoint holds.
struct State {
    w_enc: Array2<f32>,
    b_enc: Array1<f32>,
    w_dec: Array2<f32>,
    b_dec: Array1<f32>,
    adam_w_enc: Adam<ndarray::Ix2>,
    adam_b_enc: Adam<ndarray::Ix1>,
    adam_w_dec: Adam<ndarray::Ix2>,
    adam_b_dec: Adam<ndarray::Ix1>,
    /// The next step to run.
    step: usize,
    /// The step each feature last fired at (as f32 in checkpoints; exact below 2^24).
    last_fired: Vec<usize>,
    fired_in_tail: Vec<bool>,
    tail: [f64; 4],
    resampled: usize,
}

impl State {
    fn new(activations: ArrayView2<'_, f32>, scale: f32, config: &TrainConfig) -> Self {
        let d_in = activations.ncols();
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
        // Row-major like every array a checkpoint reads back: the matrix products then take
        // the same path before and after a resume, and so round the same way.
        let w_enc = w_dec.t().as_standard_layout().into_owned();
        let b_enc = Array1::<f32>::zeros(d_sae);
        let b_dec = activations.mean_axis(Axis(0)).expect("n > 0") * scale;
        Self {
            adam_w_enc: Adam::new(w_enc.raw_dim()),
            adam_b_enc: Adam::new(b_enc.raw_dim()),
            adam_w_dec: Adam::new(w_dec.raw_dim()),
            adam_b_dec: Adam::new(b_dec.raw_dim()),
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            step: 0,
            last_fired: vec![0; d_sae],
            fired_in_tail: vec![false; d_sae],
            tail: [0.0; 4],
            resampled: 0,
        }
    }

    /// The SAE these weights make for unscaled inputs: with inputs scaled by `s`,
    /// `W_enc * s`, `W_dec / s` and `b_dec / s` give the same features and the
    /// reconstruction of the unscaled input.
    fn sae(&self, config: &TrainConfig, scale: f32) -> Sae {
        Sae {
            d_in: self.w_enc.nrows(),
            d_sae: config.d_sae,
            architecture: config.architecture,
            apply_b_dec_to_input: true,
            normalization: super::Normalization::None,
            hook: None,
            w_enc: &self.w_enc * scale,
            b_enc: self.b_enc.clone(),
            w_dec: &self.w_dec / scale,
            b_dec: &self.b_dec / scale,
            threshold: None,
        }
    }
}

/// Trains an SAE on `activations` (`[n, d_in]`, one row per token), writing checkpoints
/// and resuming from the last one when `checkpointing` says so.
pub fn train(
    activations: ArrayView2<'_, f32>,
    config: &TrainConfig,
    checkpointing: Option<&Checkpointing>,
    mut progress: impl FnMut(&Progress),
) -> Result<(Sae, TrainSummary), TrainError> {
    let (n, _) = activations.dim();
    if n == 0 {
        return Err(TrainError::Empty);
    }
    if config.architecture == Architecture::JumpRelu {
        return Err(TrainError::Architecture("JumpReLU"));
    }
    let d_sae = config.d_sae;
    let scale = if config.normalize_activations {
        let mean_norm = activations
            .rows()
            .into_iter()
            .map(|r| f64::from(r.dot(&r)).sqrt())
            .sum::<f64>()
            / n as f64;
        ((activations.ncols() as f64).sqrt() / mean_norm.max(1e-12)) as f32
    } else {
        1.0
    };
    let mut state = match checkpointing.filter(|c| c.resume) {
        Some(c) => match latest_checkpoint(&c.dir) {
            Some(path) => read_checkpoint(&path, config, &c.inputs)?,
            None => State::new(activations, scale, config),
        },
        None => State::new(activations, scale, config),
    };
    let resumed_from = state.step;
    let mut last_checkpoint = None;

    let batch_size = config.batch_size.clamp(1, n);
    let steps = config.tokens.div_ceil(batch_size).max(1);
    let warmup = (steps / 20).max(1);
    let tail_from = steps - (steps / 10).max(1);
    let dead_window = DEAD_WINDOW.min((steps / 10).max(1));
    let batches_per_epoch = n / batch_size;
    let mut epoch_order: Option<(usize, Vec<usize>)> = None;
    let topk = match config.architecture {
        Architecture::TopK { k } => Some(k.min(d_sae)),
        _ => None,
    };
    let l1 = if topk.is_some() {
        0.0
    } else {
        config.l1_coefficient
    };

    while state.step < steps {
        let step = state.step;
        // Each epoch's order comes from the seed and the epoch alone, so resuming at any
        // step sees the same batches.
        let (epoch, offset) = (step / batches_per_epoch, step % batches_per_epoch);
        if epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut StdRng::seed_from_u64(
                config.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
            epoch_order = Some((epoch, order));
        }
        let order = &epoch_order.as_ref().expect("set above").1;
        let rows = &order[offset * batch_size..(offset + 1) * batch_size];
        let x = activations.select(Axis(0), rows) * scale;
        let b = batch_size as f32;
        let State {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            ..
        } = &mut state;

        // Forward. The [batch, d_sae] arrays dominate the time outside the matmuls, so
        // they are made once and updated in place.
        let input = &x - &*b_dec;
        let mut acts = input.dot(&*w_enc);
        let pre = topk.map(|_| acts.clone() + &*b_enc);
        acts.zip_mut_with(&b_enc.view().insert_axis(Axis(0)), |a, &bias| {
            *a = (*a + bias).max(0.0)
        });
        if let (Some(k), Some(pre)) = (topk, &pre) {
            keep_top_k(&mut acts, pre, k);
        }
        let recon = acts.dot(&*w_dec) + &*b_dec;
        let error = &recon - &x;
        let dec_norms: Array1<f32> = w_dec.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
        let act_sums = acts.sum_axis(Axis(0));
        let mse = error.mapv(|e| f64::from(e * e)).sum() / f64::from(b);
        let l1_term = f64::from(l1) * f64::from(act_sums.dot(&dec_norms)) / f64::from(b);
        if !(mse + l1_term).is_finite() {
            return Err(TrainError::Diverged {
                step,
                checkpoint: last_checkpoint,
            });
        }

        let l0 = acts.iter().filter(|&&a| a > 0.0).count() as f64 / f64::from(b);
        let grads = gradients(
            &input, acts, &act_sums, &error, w_enc, w_dec, &dec_norms, l1,
        );

        let lr = config.lr * ((step + 1) as f32 / warmup as f32).min(1.0);
        let t = (step + 1) as i32;
        state.adam_w_enc.step(&mut state.w_enc, &grads.w_enc, lr, t);
        state.adam_b_enc.step(&mut state.b_enc, &grads.b_enc, lr, t);
        state.adam_w_dec.step(&mut state.w_dec, &grads.w_dec, lr, t);
        state.adam_b_dec.step(&mut state.b_dec, &grads.b_dec, lr, t);
        if topk.is_some() {
            for mut row in state.w_dec.rows_mut() {
                let norm = row.dot(&row).sqrt().max(1e-12);
                row /= norm;
            }
        }

        // Activations are non-negative: a feature fired iff its column sums above zero.
        let fired: Vec<bool> = act_sums.iter().map(|&sum| sum > 0.0).collect();
        for (f, &did) in fired.iter().enumerate() {
            if did {
                state.last_fired[f] = step + 1;
            }
        }
        let dead: Vec<usize> = (0..d_sae)
            .filter(|&f| step + 1 - state.last_fired[f] >= dead_window)
            .collect();
        if config.resample_dead
            && (step + 1) % dead_window == 0
            && step < steps * 3 / 4
            && !dead.is_empty()
        {
            resample(&mut state, &dead, &x, &error, config.seed, step);
        }

        let centred = &x - &x.mean_axis(Axis(0)).expect("b > 0");
        let variance = centred.mapv(|v| f64::from(v * v)).sum() / f64::from(b);
        if step >= tail_from {
            for (f, &did) in fired.iter().enumerate() {
                state.fired_in_tail[f] |= did;
            }
            state.tail[0] += mse;
            state.tail[1] += l0;
            state.tail[2] += variance;
            state.tail[3] += 1.0;
        }
        state.step += 1;
        progress(&Progress {
            step: state.step,
            steps,
            mse,
            l0,
            explained_variance: 1.0 - mse / variance.max(f64::MIN_POSITIVE),
            dead_fraction: dead.len() as f64 / d_sae as f64,
        });
        if let Some(c) = checkpointing
            && c.every > 0
            && (state.step % c.every == 0 || state.step == steps)
        {
            last_checkpoint = Some(write_checkpoint(c, &state, config, scale)?);
        }
    }
    let tail = state.tail[3].max(1.0);
    let summary = TrainSummary {
        steps,
        tokens: steps * batch_size,
        mse: state.tail[0] / tail / f64::from(scale * scale),
        l0: state.tail[1] / tail,
        explained_variance: 1.0 - state.tail[0] / state.tail[2].max(f64::MIN_POSITIVE),
        dead_fraction: state.fired_in_tail.iter().filter(|f| !**f).count() as f64 / d_sae as f64,
        resampled: state.resampled,
        resumed_from,
    };
    Ok((state.sae(config, scale), summary))
}
