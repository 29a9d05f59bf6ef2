//! Training sparse autoencoders on activations: ReLU with an L1 penalty weighted by
//! decoder norms (SAELens' standard training SAE), or TopK; Adam with linear warm-up;
//! dead features tracked over a window and resampled towards badly reconstructed inputs;
//! optional activation normalization (folded into the weights at the end); checkpoints
//! that a later run resumes from. Deterministic: every random choice comes from the seed
//! and the step, so a resumed run ends with the same SAE as an uninterrupted one.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayD, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, StandardNormal};

use super::{Architecture, Sae, tensors};

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
    pub resampled: usize,
    /// The step training started from (0, or the checkpoint it resumed).
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
    fn new(activations: &Array2<f32>, scale: f32, config: &TrainConfig) -> Self {
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
    activations: &Array2<f32>,
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

struct Gradients {
    w_enc: Array2<f32>,
    b_enc: Array1<f32>,
    w_dec: Array2<f32>,
    b_dec: Array1<f32>,
}

/// Gradients of `mean_b |recon - x|^2 + l1 * mean_b sum_f acts_f |W_dec[f]|` for one batch
/// (`input = x - b_dec`, `error = recon - x`, `act_sums` the column sums of `acts`).
/// `acts` is consumed: its buffer becomes d(pre-activation).
#[allow(clippy::too_many_arguments)]
fn gradients(
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
fn resample(
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

/// The newest `step_*` folder under `dir` that finished writing (has its state file).
fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step_"))
                && p.join(STATE_JSON).exists()
        })
        .collect();
    found.sort();
    found.pop()
}

/// Writes `dir/step_<step>`: the SAE as it stands (SAELens layout, loadable on its own)
/// and the trainer's state, built beside its name and swapped in whole; then removes
/// older checkpoints. A state file is still required on resume, so a checkpoint folder
/// from an older qexp that was interrupted mid-write is never resumed from.
fn write_checkpoint(
    checkpointing: &Checkpointing,
    state: &State,
    config: &TrainConfig,
    scale: f32,
) -> Result<PathBuf, TrainError> {
    let dir = &checkpointing.dir;
    let path = dir.join(format!("step_{:09}", state.step));
    let failed = |message: String| TrainError::Checkpoint {
        path: path.clone(),
        message,
    };
    // Older checkpoints are deleted below: only ever inside a folder qexp made for them.
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
        crate::output::mark(dir, crate::output::Kind::Checkpoints)
            .map_err(|e| failed(e.to_string()))?;
    } else if !crate::output::marked_as(dir, crate::output::Kind::Checkpoints) {
        return Err(failed(format!(
            "{} is not a checkpoint folder qexp made; move it away",
            dir.display()
        )));
    }
    // Built whole beside its final name and swapped in at once: a kill leaves either a
    // complete checkpoint or none.
    let staging = crate::output::Staging::new(&path, crate::output::Kind::Sae)
        .map_err(|e| failed(e.to_string()))?;
    super::save::write_into(&state.sae(config, scale), staging.path()).map_err(failed)?;
    let as_f32 = |v: &[usize]| {
        ArrayD::from_shape_vec(vec![v.len()], v.iter().map(|&s| s as f32).collect()).expect("1-d")
    };
    let fired: Vec<usize> = state
        .fired_in_tail
        .iter()
        .map(|&f| usize::from(f))
        .collect();
    tensors::write(
        &staging.path().join(STATE_TENSORS),
        &[
            ("W_enc", state.w_enc.clone().into_dyn()),
            ("b_enc", state.b_enc.clone().into_dyn()),
            ("W_dec", state.w_dec.clone().into_dyn()),
            ("b_dec", state.b_dec.clone().into_dyn()),
            ("adam.W_enc.m", state.adam_w_enc.m.clone().into_dyn()),
            ("adam.W_enc.v", state.adam_w_enc.v.clone().into_dyn()),
            ("adam.b_enc.m", state.adam_b_enc.m.clone().into_dyn()),
            ("adam.b_enc.v", state.adam_b_enc.v.clone().into_dyn()),
            ("adam.W_dec.m", state.adam_w_dec.m.clone().into_dyn()),
            ("adam.W_dec.v", state.adam_w_dec.v.clone().into_dyn()),
            ("adam.b_dec.m", state.adam_b_dec.m.clone().into_dyn()),
            ("adam.b_dec.v", state.adam_b_dec.v.clone().into_dyn()),
            ("last_fired", as_f32(&state.last_fired)),
            ("fired_in_tail", as_f32(&fired)),
        ],
    )
    .map_err(failed)?;
    let json = serde_json::json!({
        "step": state.step,
        "config": format!("{config:?}"),
        "inputs": checkpointing.inputs,
        "tail": state.tail,
        "resampled": state.resampled,
    });
    std::fs::write(staging.path().join(STATE_JSON), json.to_string())
        .map_err(|e| failed(e.to_string()))?;
    staging.commit().map_err(|e| failed(e.to_string()))?;
    for entry in std::fs::read_dir(dir)
        .map_err(|e| failed(e.to_string()))?
        .flatten()
    {
        let older = entry.path();
        if older != path
            && older
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step_"))
        {
            std::fs::remove_dir_all(&older).map_err(|e| failed(e.to_string()))?;
        }
    }
    Ok(path)
}

fn read_checkpoint(path: &Path, config: &TrainConfig, inputs: &str) -> Result<State, TrainError> {
    let failed = |message: String| TrainError::Checkpoint {
        path: path.to_owned(),
        message,
    };
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path.join(STATE_JSON)).map_err(|e| failed(e.to_string()))?,
    )
    .map_err(|e| failed(e.to_string()))?;
    let made_with = json["config"].as_str().unwrap_or_default();
    if made_with != format!("{config:?}") {
        return Err(failed(format!(
            "it was made with other settings ({made_with}); delete it, or train with `resume = false`"
        )));
    }
    let made_from = json["inputs"].as_str().unwrap_or("unknown inputs");
    if made_from != inputs {
        return Err(failed(format!(
            "it was trained on other activations ({made_from}; now {inputs}); delete it, or train with `resume = false`"
        )));
    }
    let mut tensors = tensors::read(&path.join(STATE_TENSORS)).map_err(failed)?;
    let mut take = |name: &str| {
        tensors
            .remove(name)
            .ok_or_else(|| failed(format!("no tensor `{name}`")))
    };
    let matrix = |a: ArrayD<f32>| {
        a.into_dimensionality::<ndarray::Ix2>()
            .map_err(|e| failed(e.to_string()))
    };
    let vector = |a: ArrayD<f32>| {
        a.into_dimensionality::<ndarray::Ix1>()
            .map_err(|e| failed(e.to_string()))
    };
    let steps_of = |a: Array1<f32>| a.iter().map(|&s| s as usize).collect::<Vec<_>>();
    let tail: Vec<f64> = json["tail"]
        .as_array()
        .map(|t| t.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    Ok(State {
        w_enc: matrix(take("W_enc")?)?,
        b_enc: vector(take("b_enc")?)?,
        w_dec: matrix(take("W_dec")?)?,
        b_dec: vector(take("b_dec")?)?,
        adam_w_enc: Adam {
            m: matrix(take("adam.W_enc.m")?)?,
            v: matrix(take("adam.W_enc.v")?)?,
        },
        adam_b_enc: Adam {
            m: vector(take("adam.b_enc.m")?)?,
            v: vector(take("adam.b_enc.v")?)?,
        },
        adam_w_dec: Adam {
            m: matrix(take("adam.W_dec.m")?)?,
            v: matrix(take("adam.W_dec.v")?)?,
        },
        adam_b_dec: Adam {
            m: vector(take("adam.b_dec.m")?)?,
            v: vector(take("adam.b_dec.v")?)?,
        },
        step: json["step"].as_u64().unwrap_or(0) as usize,
        last_fired: steps_of(vector(take("last_fired")?)?),
        fired_in_tail: steps_of(vector(take("fired_in_tail")?)?)
            .into_iter()
            .map(|f| f > 0)
            .collect(),
        tail: [0, 1, 2, 3].map(|i| tail.get(i).copied().unwrap_or(0.0)),
        resampled: json["resampled"].as_u64().unwrap_or(0) as usize,
    })
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
            normalize_activations: false,
            resample_dead: false,
        }
    }

    #[test]
    fn a_standard_sae_learns_to_reconstruct_sparse_data() {
        let x = sparse_data(4096, 1);
        let (sae, summary) = train(&x, &config(Architecture::Standard), None, |_| {}).unwrap();
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
        let (sae, summary) = train(&x, &config(Architecture::TopK { k: 4 }), None, |_| {}).unwrap();
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
        let (a, _) = train(&x, &c, None, |_| {}).unwrap();
        let (b, _) = train(&x, &c, None, |_| {}).unwrap();
        assert_eq!(a.w_enc, b.w_enc);
        c.seed = 8;
        let (other, _) = train(&x, &c, None, |_| {}).unwrap();
        assert_ne!(a.w_enc, other.w_enc);
    }

    #[test]
    fn divergence_is_reported_not_hidden() {
        let x = sparse_data(512, 4).mapv(|v| v * 1e30);
        let mut c = config(Architecture::Standard);
        c.lr = 1e10;
        assert!(matches!(
            train(&x, &c, None, |_| {}),
            Err(TrainError::Diverged {
                checkpoint: None,
                ..
            })
        ));
    }

    #[test]
    fn a_run_resumed_from_a_checkpoint_ends_with_the_same_sae() {
        let x = sparse_data(1024, 5);
        let mut c = config(Architecture::Standard);
        c.tokens = 256 * 40;
        c.resample_dead = true;
        let (uninterrupted, _) = train(&x, &c, None, |_| {}).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let checkpointing = Checkpointing {
            dir: dir.path().join("checkpoints"),
            every: 15,
            resume: true,
            inputs: "data A".into(),
        };
        // Interrupted after step 31: the checkpoint of step 30 is the last one.
        let mid = checkpointing;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train(&x, &c, Some(&mid), |p| {
                if p.step == 31 {
                    panic!("interrupted");
                }
            })
        }));
        assert!(result.is_err());
        let (resumed, summary) = train(&x, &c, Some(&mid), |_| {}).unwrap();
        assert_eq!(summary.resumed_from, 30);
        assert_eq!(resumed.w_enc, uninterrupted.w_enc);
        assert_eq!(resumed.b_dec, uninterrupted.b_dec);

        // Other settings do not resume from it.
        let mut other = c.clone();
        other.lr *= 2.0;
        let refused = train(&x, &other, Some(&mid), |_| {});
        assert!(
            matches!(refused, Err(TrainError::Checkpoint { .. })),
            "{refused:?}"
        );
        // Nor do the same settings on other activations.
        let elsewhere = Checkpointing {
            inputs: "data B".into(),
            ..mid.clone()
        };
        let refused = train(&x, &c, Some(&elsewhere), |_| {});
        assert!(
            matches!(&refused, Err(TrainError::Checkpoint { message, .. }) if message.contains("data A; now data B")),
            "{refused:?}"
        );
    }

    #[test]
    fn resampled_features_fire_on_the_inputs_they_were_pointed_at() {
        let x = sparse_data(256, 6);
        let mut c = config(Architecture::Standard);
        c.d_sae = 16;
        let mut state = State::new(&x, 1.0, &c);
        // Kill features 3 and 7: encoder columns pointing away from everything.
        for f in [3, 7] {
            state.w_enc.column_mut(f).fill(0.0);
            state.b_enc[f] = -100.0;
            state.adam_w_enc.m.column_mut(f).fill(1.0);
        }
        let input = &x - &state.b_dec;
        let recon = (input.dot(&state.w_enc) + &state.b_enc)
            .mapv(|v| v.max(0.0))
            .dot(&state.w_dec)
            + &state.b_dec;
        let error = &recon - &x;
        resample(&mut state, &[3, 7], &x, &error, 1, 10);
        assert_eq!(state.resampled, 2);
        let acts = (input.dot(&state.w_enc) + &state.b_enc).mapv(|v| v.max(0.0));
        for f in [3, 7] {
            let norm = state.w_dec.row(f).dot(&state.w_dec.row(f)).sqrt();
            assert!((norm - DECODER_INIT_NORM).abs() < 1e-5);
            assert!(
                acts.column(f).iter().any(|&a| a > 0.0),
                "feature {f} fires again"
            );
            assert!(state.adam_w_enc.m.column(f).iter().all(|&m| m == 0.0));
            assert_eq!(state.last_fired[f], 11);
        }
    }

    #[test]
    fn normalizing_activations_makes_training_blind_to_their_scale() {
        let x = sparse_data(1024, 7);
        let mut c = config(Architecture::Standard);
        c.tokens = 256 * 30;
        c.normalize_activations = true;
        let (small, _) = train(&x, &c, None, |_| {}).unwrap();
        let big_x = &x * 1000.0;
        let (big, _) = train(&big_x, &c, None, |_| {}).unwrap();
        let (a, b) = (small.encode(x.view()), big.encode(big_x.view()));
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-3 * scale),
            "the same features at any input scale"
        );
        let recon = big.decode(b.view());
        let relative = (&recon - &big_x).mapv(|e| e * e).sum() / big_x.mapv(|v| v * v).sum();
        assert!(
            relative < 0.5,
            "the folded SAE reconstructs unscaled inputs: {relative}"
        );
    }

    /// The analytic gradients against central finite differences of the loss, in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut normal = |shape: (usize, usize)| {
            Array2::from_shape_fn(shape, |_| {
                let v: f32 = StandardNormal.sample(&mut rng);
                v
            })
        };
        let (b, d_in, d_sae, l1) = (6, 4, 5, 0.3f32);
        let x = normal((b, d_in));
        let w_enc = normal((d_in, d_sae));
        let w_dec = normal((d_sae, d_in));
        let b_enc = Array1::from_shape_fn(d_sae, |i| 0.1 * i as f32);
        let b_dec = Array1::from_shape_fn(d_in, |i| -0.05 * i as f32);
        let loss =
            |w_enc: &Array2<f32>, b_enc: &Array1<f32>, w_dec: &Array2<f32>, b_dec: &Array1<f32>| {
                let input = (&x - b_dec).mapv(f64::from);
                let pre = input.dot(&w_enc.mapv(f64::from)) + &b_enc.mapv(f64::from);
                let acts = pre.mapv(|v| v.max(0.0));
                let recon = acts.dot(&w_dec.mapv(f64::from)) + &b_dec.mapv(f64::from);
                let mse = (&recon - &x.mapv(f64::from)).mapv(|e| e * e).sum() / b as f64;
                let norms: Array1<f64> = w_dec
                    .rows()
                    .into_iter()
                    .map(|r| f64::from(r.dot(&r)).sqrt())
                    .collect();
                mse + f64::from(l1) * (&acts * &norms).sum() / b as f64
            };
        let input = &x - &b_dec;
        let acts = (input.dot(&w_enc) + &b_enc).mapv(|v| v.max(0.0));
        let error = acts.dot(&w_dec) + &b_dec - &x;
        let norms: Array1<f32> = w_dec.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
        let sums = acts.sum_axis(Axis(0));
        let g = gradients(&input, acts, &sums, &error, &w_enc, &w_dec, &norms, l1);
        let h = 1e-2f32;
        let check = |analytic: f32, plus: f64, minus: f64, what: &str| {
            let numeric = (plus - minus) / (2.0 * f64::from(h));
            assert!(
                (f64::from(analytic) - numeric).abs() < 2e-2 * numeric.abs().max(1.0),
                "{what}: analytic {analytic}, numeric {numeric}"
            );
        };
        for i in 0..d_in {
            for f in 0..d_sae {
                let (mut p, mut m) = (w_enc.clone(), w_enc.clone());
                p[[i, f]] += h;
                m[[i, f]] -= h;
                check(
                    g.w_enc[[i, f]],
                    loss(&p, &b_enc, &w_dec, &b_dec),
                    loss(&m, &b_enc, &w_dec, &b_dec),
                    "W_enc",
                );
                let (mut p, mut m) = (w_dec.clone(), w_dec.clone());
                p[[f, i]] += h;
                m[[f, i]] -= h;
                check(
                    g.w_dec[[f, i]],
                    loss(&w_enc, &b_enc, &p, &b_dec),
                    loss(&w_enc, &b_enc, &m, &b_dec),
                    "W_dec",
                );
            }
            let (mut p, mut m) = (b_dec.clone(), b_dec.clone());
            p[i] += h;
            m[i] -= h;
            check(
                g.b_dec[i],
                loss(&w_enc, &b_enc, &w_dec, &p),
                loss(&w_enc, &b_enc, &w_dec, &m),
                "b_dec",
            );
        }
        for f in 0..d_sae {
            let (mut p, mut m) = (b_enc.clone(), b_enc.clone());
            p[f] += h;
            m[f] -= h;
            check(
                g.b_enc[f],
                loss(&w_enc, &p, &w_dec, &b_dec),
                loss(&w_enc, &m, &w_dec, &b_dec),
                "b_enc",
            );
        }
    }

    #[test]
    fn a_resumed_run_rounds_exactly_as_an_uninterrupted_one_on_uneven_batches() {
        // Many small batches over data that does not divide into them, with wide matrices:
        // any difference in memory layout between a fresh and a resumed state changes the
        // rounding of the matrix products.
        let mut rng = StdRng::seed_from_u64(3);
        let x: Array2<f32> = Array2::from_shape_fn((69, 16), |_| StandardNormal.sample(&mut rng));
        let c = TrainConfig {
            d_sae: 256,
            batch_size: 8,
            tokens: 8 * 3000,
            lr: 3e-4,
            l1_coefficient: 5e-4,
            ..config(Architecture::Standard)
        };
        let (uninterrupted, full_summary) = train(&x, &c, None, |_| {}).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let checkpointing = Checkpointing {
            dir: dir.path().join("c"),
            every: 500,
            resume: true,
            inputs: "data A".into(),
        };
        let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train(&x, &c, Some(&checkpointing), |p| {
                if p.step == 2201 {
                    panic!("interrupted");
                }
            })
        }));
        assert!(interrupted.is_err());
        let (resumed, summary) = train(&x, &c, Some(&checkpointing), |_| {}).unwrap();
        assert_eq!(summary.resumed_from, 2000);
        assert_eq!(resumed.w_enc, uninterrupted.w_enc);
        assert_eq!(resumed.w_dec, uninterrupted.w_dec);
        assert_eq!(resumed.b_enc, uninterrupted.b_enc);
        assert_eq!(summary.mse, full_summary.mse);
    }
}
