//! Text-level operations on top of a forward pass: per-token loss and generation.

use ndarray::{Array3, ArrayView1};
use rand::SeedableRng;
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::rngs::StdRng;

use super::{Batch, HookedModel, RuntimeError};
use crate::compile::{self, kv_cache};
use crate::manifest::LOGITS;

/// `e^x` in f32 to about 2e-7 relative error, written so the compiler vectorizes loops
/// over it (libm's `expf` does not): `x = n ln2 + r`, `e^r` by a degree-6 polynomial on
/// `|r| <= ln2/2`, `2^n` built in the exponent bits. Per-token losses and KL divergences
/// take tens of exps per vocabulary entry and token; this keeps them off the critical path.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split as Cephes does: `n * LN2_HI` is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let n = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    f32::from_bits(((n + 127) << 23) as u32) * p
}

/// `log(sum(exp(logits)))`, stable (the max is subtracted first), summed in f64.
pub fn log_sum_exp(logits: ArrayView1<'_, f32>) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    sum_exp(&contiguous(logits), max).ln() + f64::from(max)
}

fn contiguous<'a>(row: ArrayView1<'a, f32>) -> std::borrow::Cow<'a, [f32]> {
    match row.to_slice() {
        Some(values) => std::borrow::Cow::Borrowed(values),
        None => std::borrow::Cow::Owned(row.to_vec()),
    }
}

/// `sum(exp(x - shift))`, in f32 chunks (vectorized) added up in f64.
fn sum_exp(values: &[f32], shift: f32) -> f64 {
    values
        .chunks(256)
        .map(|chunk| f64::from(chunk.iter().map(|&x| exp_approx(x - shift)).sum::<f32>()))
        .sum()
}

/// `KL(p || q)` for the distributions `softmax(p_logits)` and `softmax(q_logits)`:
/// `sum p_i (x_i - y_i) - lse(x) + lse(y)`, one pass over each row per term.
pub fn kl_divergence(p_logits: ArrayView1<'_, f32>, q_logits: ArrayView1<'_, f32>) -> f64 {
    kl_divergence_given(
        p_logits,
        q_logits,
        log_sum_exp(p_logits),
        log_sum_exp(q_logits),
    )
}

/// [`kl_divergence`] for rows whose log-sum-exps are known already: one pass, not three.
fn kl_divergence_given(
    p_logits: ArrayView1<'_, f32>,
    q_logits: ArrayView1<'_, f32>,
    lse_p: f64,
    lse_q: f64,
) -> f64 {
    let (p, q) = (contiguous(p_logits), contiguous(q_logits));
    let shift = lse_p as f32;
    let weighted: f64 = p
        .chunks(256)
        .zip(q.chunks(256))
        .map(|(x, y)| {
            f64::from(
                x.iter()
                    .zip(y)
                    .map(|(&x, &y)| exp_approx(x - shift) * (x - y))
                    .sum::<f32>(),
            )
        })
        .sum();
    (weighted - lse_p + lse_q).max(0.0)
}

/// A batch's logits with the log-sum-exp of every position that has a next token,
/// computed once: losses and KL divergences against other passes all need it, and over a
/// 50k vocabulary it is most of their cost.
pub struct NextTokenLogits<'a> {
    logits: &'a Array3<f32>,
    batch: &'a Batch,
    /// `[row][pos]`, as [`per_next_token`] lays them out.
    log_sum_exps: Vec<Vec<f64>>,
}

impl<'a> NextTokenLogits<'a> {
    pub fn new(logits: &'a Array3<f32>, batch: &'a Batch) -> Self {
        let log_sum_exps = per_next_token(batch, |row, pos| {
            log_sum_exp(logits.slice(ndarray::s![row, pos, ..]))
        });
        Self {
            logits,
            batch,
            log_sum_exps,
        }
    }

    /// Cross-entropy of each next token: entry `t` of a sequence is `-log p(token[t+1])`
    /// given tokens `0..=t` (TransformerLens' `loss_per_token=True`). Padding is skipped,
    /// so a sequence of n tokens has n - 1 losses.
    pub fn losses(&self) -> Vec<Vec<f32>> {
        let batch = self.batch;
        self.log_sum_exps
            .iter()
            .enumerate()
            .map(|(row, sums)| {
                sums.iter()
                    .enumerate()
                    .map(|(pos, &lse)| {
                        let target = batch.input_ids[[row, pos + 1]] as usize;
                        (lse - f64::from(self.logits[[row, pos, target]])) as f32
                    })
                    .collect()
            })
            .collect()
    }

    /// `KL(self || other)` of the next-token distributions at every position; `other` is
    /// another pass over the same batch.
    pub fn kl_divergences(&self, other: &NextTokenLogits<'_>) -> Vec<Vec<f64>> {
        per_next_token(self.batch, |row, pos| {
            kl_divergence_given(
                self.logits.slice(ndarray::s![row, pos, ..]),
                other.logits.slice(ndarray::s![row, pos, ..]),
                self.log_sum_exps[row][pos],
                other.log_sum_exps[row][pos],
            )
        })
    }
}

/// `log_softmax` of one row of logits, in f64.
pub fn log_softmax_row(logits: ArrayView1<'_, f32>) -> Vec<f64> {
    let log_sum = log_sum_exp(logits);
    logits.iter().map(|&x| x as f64 - log_sum).collect()
}

/// How many tokens rank above `token` in one row of logits: those with a higher logit,
/// and those with an equal one and a lower id (the order `test_prompt` lists).
pub fn token_rank(logits: ArrayView1<'_, f32>, token: usize) -> usize {
    let own = logits[token];
    logits
        .iter()
        .enumerate()
        .filter(|&(t, &l)| l > own || (l == own && t < token))
        .count()
}

/// Cross-entropy of each next token (see [`NextTokenLogits::losses`]).
pub fn token_losses(logits: &Array3<f32>, batch: &Batch) -> Vec<Vec<f32>> {
    NextTokenLogits::new(logits, batch).losses()
}

/// `f(row, pos)` at every real position that has a next token, per row: the shape of
/// every per-token measurement.
/// Rows run in parallel: over a 50k vocabulary this is most of a measurement's own work.
pub fn per_next_token<T: Send>(batch: &Batch, f: impl Fn(usize, usize) -> T + Sync) -> Vec<Vec<T>> {
    use rayon::prelude::*;
    batch
        .lengths
        .par_iter()
        .enumerate()
        .map(|(row, &len)| (0..len.saturating_sub(1)).map(|pos| f(row, pos)).collect())
        .collect()
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax sampling at a temperature, from a seeded generator so runs repeat.
    Temperature {
        temperature: f32,
        seed: u64,
    },
}

impl HookedModel<'_> {
    /// Per-token losses for each text (BOS prepended when the model expects it).
    pub fn loss_per_token(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let prepend = self.manifest.special_tokens.prepend_bos;
        let sequences = texts
            .iter()
            .map(|t| self.to_tokens(t, prepend))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = self.batch(&sequences)?;
        let forward = self.forward(&batch, true, &[])?;
        Ok(token_losses(
            forward.logits.as_ref().expect("logits requested"),
            &batch,
        ))
    }

    /// Continues `tokens` by `max_new_tokens`, returning only the new tokens. Stops early
    /// at EOS when `stop_at_eos`.
    pub fn generate(
        &mut self,
        tokens: &[u32],
        max_new_tokens: usize,
        sampling: Sampling,
        stop_at_eos: bool,
    ) -> Result<Vec<u32>, RuntimeError> {
        self.generate_with(tokens, max_new_tokens, sampling, stop_at_eos, None)
    }

    /// [`Self::generate`] under a variant (the clean model for `None`). With a key/value
    /// cache where the graph has one and the variant allows it, each new token runs
    /// through the model alone; otherwise the whole sequence reruns at every step. Both
    /// give the same tokens (tested).
    pub fn generate_with(
        &mut self,
        tokens: &[u32],
        max_new_tokens: usize,
        sampling: Sampling,
        stop_at_eos: bool,
        variant: Option<GenerationGraph<'_>>,
    ) -> Result<Vec<u32>, RuntimeError> {
        // Refused up front: finding out at the context's end wastes the whole run.
        let n_ctx = self.manifest.config.n_ctx;
        if tokens.len() + max_new_tokens > n_ctx {
            return Err(RuntimeError::TooLongToGenerate {
                prompt: tokens.len(),
                new: max_new_tokens,
                n_ctx,
            });
        }
        if tokens.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        let clean_graph;
        let variant = match variant {
            Some(variant) => variant,
            None => {
                clean_graph = self.graph().clone();
                GenerationGraph {
                    // Not an identifier, so no variant's sessions share its key.
                    key: "(clean)",
                    edited: &clean_graph,
                    cacheable: true,
                }
            }
        };
        let mut step = if variant.cacheable && kv_cache::supports(variant.edited) {
            Step::Cached(self.cached_steps(&variant)?)
        } else {
            let key = format!("{}|logits", variant.key);
            if !self.has_graph(&key) {
                let graph = compile::select_outputs(variant.edited, &[LOGITS])?;
                self.prepare_graph(&key, &graph)?;
            }
            Step::Rerun(key)
        };

        let mut rng = match sampling {
            Sampling::Temperature { seed, .. } => Some(StdRng::seed_from_u64(seed)),
            Sampling::Greedy => None,
        };
        let mut sequence = tokens.to_vec();
        let eos = self.manifest.special_tokens.eos;
        for _ in 0..max_new_tokens {
            let logits = match &mut step {
                Step::Cached(cache) => self.cached_step(cache, &sequence)?,
                Step::Rerun(key) => {
                    let batch = self.batch(std::slice::from_ref(&sequence))?;
                    let forward = self
                        .forward_cached(key, &batch, &[])
                        .expect("prepared above")?;
                    last_row(forward.logits.expect("logits requested"))
                }
            };
            let next = match (sampling, rng.as_mut()) {
                (Sampling::Temperature { temperature, .. }, Some(rng)) if temperature > 0.0 => {
                    let scaled = logits.mapv(|x| x / temperature);
                    let probs: Vec<f64> = log_softmax_row(scaled.view())
                        .into_iter()
                        .map(f64::exp)
                        .collect();
                    WeightedIndex::new(&probs)
                        .map(|dist| dist.sample(rng))
                        .unwrap_or_else(|_| argmax(logits.view()))
                }
                _ => argmax(logits.view()),
            } as u32;
            sequence.push(next);
            if stop_at_eos && Some(next) == eos {
                break;
            }
        }
        Ok(sequence[tokens.len()..].to_vec())
    }

    /// The session of `variant`'s graph with a key/value cache, pruned to the logits and
    /// the cache, and an empty cache for it.
    fn cached_steps(&mut self, variant: &GenerationGraph<'_>) -> Result<Cache, RuntimeError> {
        let config = &self.manifest.config;
        let n_layers = config.n_layers;
        let empty = ndarray::ArrayD::zeros(vec![1, 0, config.n_kv_heads, config.d_head]);
        let key = format!("{}|kv_cache", variant.key);
        let (past, presents): (Vec<_>, Vec<_>) = kv_cache::cache_names(n_layers)
            .into_iter()
            .map(|(past, present)| ((past, empty.clone()), present))
            .unzip();
        if !self.has_graph(&key) {
            let cached = kv_cache::with_kv_cache(variant.edited, n_layers)?;
            let outputs: Vec<&str> = std::iter::once(LOGITS)
                .chain(presents.iter().map(String::as_str))
                .collect();
            let graph = compile::select_outputs(&cached, &outputs)?;
            let graph = self.with_four_bit_weights(graph)?;
            // Every step after the first is one token: packed weights pay at once.
            self.prepare_graph_packed(&key, &graph, super::hooked::Packing::Now)?;
        }
        Ok(Cache {
            key,
            past,
            presents,
            cached_tokens: 0,
        })
    }

    /// Runs the tokens of `sequence` the cache does not hold yet, keeps their keys and
    /// values, and returns the last token's logits.
    fn cached_step(
        &mut self,
        cache: &mut Cache,
        sequence: &[u32],
    ) -> Result<ndarray::Array1<f32>, RuntimeError> {
        let new = &sequence[cache.cached_tokens..];
        let batch = Batch {
            input_ids: ndarray::Array2::from_shape_fn((1, new.len()), |(_, i)| i64::from(new[i])),
            attention_mask: ndarray::Array2::ones((1, sequence.len())),
            lengths: vec![new.len()],
        };
        let mut forward = self
            .forward_cached(&cache.key, &batch, &cache.past)
            .expect("prepared by cached_steps")?;
        for ((_, value), present) in cache.past.iter_mut().zip(&cache.presents) {
            *value = forward
                .hooks
                .remove(present)
                .ok_or_else(|| RuntimeError::Ort {
                    doing: "reading the key/value cache".into(),
                    message: format!("the session returned no `{present}`"),
                })?;
        }
        cache.cached_tokens = sequence.len();
        Ok(last_row(forward.logits.expect("logits requested")))
    }
}

/// The graph a generation runs under: a variant's.
pub struct GenerationGraph<'a> {
    /// The variant's name, keying its sessions.
    pub key: &'a str,
    /// The model's graph with the variant's interventions applied, not pruned.
    pub edited: &'a crate::onnx::ModelProto,
    /// Whether a token's hook values stay the same as tokens follow it (no edit at a
    /// position counted from the end), so a key/value cache gives the same tokens as
    /// rerunning the sequence.
    pub cacheable: bool,
}

/// How each generation step runs.
enum Step {
    Cached(Cache),
    /// The session key of a whole-sequence rerun.
    Rerun(String),
}

/// A generation's key/value cache: the graph inputs of the next step.
struct Cache {
    key: String,
    /// `(past input name, [1, cached_tokens, kv_head, d_head])`, keys and values of
    /// every layer.
    past: Vec<(String, ndarray::ArrayD<f32>)>,
    /// The output that gives each of `past` its next value.
    presents: Vec<String>,
    cached_tokens: usize,
}

/// The last position's logits of a one-row batch.
fn last_row(logits: Array3<f32>) -> ndarray::Array1<f32> {
    let last = logits.shape()[1] - 1;
    logits.slice(ndarray::s![0, last, ..]).to_owned()
}

/// Index of the largest logit; the first one on ties, as torch's argmax.
pub fn argmax<T: PartialOrd>(row: ArrayView1<'_, T>) -> usize {
    let mut best = 0;
    for (i, x) in row.iter().enumerate() {
        if *x > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fast_exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0.0f64;
        // Inside the clamp; below -87 the result is exp(-87), a flush towards zero.
        for i in -86_900..88_000 {
            let x = i as f32 * 1e-3;
            let (fast, exact) = (super::exp_approx(x) as f64, (x as f64).exp());
            worst = worst.max((fast - exact).abs() / exact);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn kl_divergence_matches_the_definition() {
        let p = ndarray::array![1.0f32, -2.0, 0.5, 3.0, 0.0];
        let q = ndarray::array![0.2f32, 1.0, -1.5, 2.7, 0.1];
        let (lp, lq) = (
            super::log_softmax_row(p.view()),
            super::log_softmax_row(q.view()),
        );
        let expected: f64 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
        assert!((super::kl_divergence(p.view(), q.view()) - expected).abs() < 1e-6);
        assert_eq!(super::kl_divergence(p.view(), p.view()), 0.0);
    }

    use super::*;
    use ndarray::Array3;

    #[test]
    fn loss_is_the_negative_log_probability_of_the_next_token() {
        // Two equal logits: the next token has probability 1/2 wherever it is.
        let logits = Array3::zeros((1, 3, 2));
        let batch = Batch::right_padded(&[vec![0, 1, 1]], 0);
        let losses = token_losses(&logits, &batch);
        assert_eq!(losses.len(), 1);
        assert_eq!(losses[0].len(), 2);
        assert!((losses[0][0] - std::f32::consts::LN_2).abs() < 1e-6);
    }

    #[test]
    fn padding_gets_no_loss() {
        let logits = Array3::zeros((2, 3, 2));
        let batch = Batch::right_padded(&[vec![0, 1, 1], vec![1, 0]], 0);
        let losses = token_losses(&logits, &batch);
        assert_eq!(losses[1].len(), 1);
    }
}
