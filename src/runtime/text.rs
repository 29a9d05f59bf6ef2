//! Text-level operations on top of a forward pass: per-token loss and generation.

use ndarray::{Array3, ArrayView1};
use rand::SeedableRng;
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::rngs::StdRng;

use super::{Batch, HookedModel, RuntimeError};

/// `log(sum(exp(logits)))`, computed stably in f64.
fn log_sum_exp(logits: ArrayView1<'_, f32>) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

/// `log_softmax` of one row of logits, in f64.
pub fn log_softmax_row(logits: ArrayView1<'_, f32>) -> Vec<f64> {
    let log_sum = log_sum_exp(logits);
    logits.iter().map(|&x| x as f64 - log_sum).collect()
}

/// Cross-entropy of each next token: entry `t` of a sequence is `-log p(token[t+1])`
/// given tokens `0..=t` (TransformerLens' `loss_per_token=True`). Padding is skipped, so
/// a sequence of n tokens has n - 1 losses.
pub fn token_losses(logits: &Array3<f32>, batch: &Batch) -> Vec<Vec<f32>> {
    per_next_token(batch, |row, pos| {
        let target = batch.input_ids[[row, pos + 1]] as usize;
        let logits = logits.slice(ndarray::s![row, pos, ..]);
        (log_sum_exp(logits) - logits[target] as f64) as f32
    })
}

/// `f(row, pos)` at every real position that has a next token, per row: the shape of
/// every per-token measurement.
pub fn per_next_token<T>(batch: &Batch, mut f: impl FnMut(usize, usize) -> T) -> Vec<Vec<T>> {
    batch
        .lengths
        .iter()
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
    /// at EOS when `stop_at_eos`. Recomputes the whole prefix each step (no KV cache):
    /// simple, exact, and fast enough for the short continuations experiments ask for.
    pub fn generate(
        &mut self,
        tokens: &[u32],
        max_new_tokens: usize,
        sampling: Sampling,
        stop_at_eos: bool,
    ) -> Result<Vec<u32>, RuntimeError> {
        self.generate_with(tokens, max_new_tokens, sampling, stop_at_eos, None)
    }

    /// [`Self::generate`] under a compiled variant graph (`(key, graph)`, as for
    /// [`HookedModel::forward_graph`]); `None` runs the clean model.
    pub fn generate_with(
        &mut self,
        tokens: &[u32],
        max_new_tokens: usize,
        sampling: Sampling,
        stop_at_eos: bool,
        variant: Option<(&str, &crate::onnx::ModelProto)>,
    ) -> Result<Vec<u32>, RuntimeError> {
        let mut rng = match sampling {
            Sampling::Temperature { seed, .. } => Some(StdRng::seed_from_u64(seed)),
            Sampling::Greedy => None,
        };
        let mut sequence = tokens.to_vec();
        let eos = self.manifest.special_tokens.eos;
        for _ in 0..max_new_tokens {
            let batch = self.batch(std::slice::from_ref(&sequence))?;
            let forward = match variant {
                Some((key, graph)) => self.forward_graph(key, graph, &batch)?,
                None => self.forward(&batch, true, &[])?,
            };
            let logits = forward.logits.expect("logits requested");
            let last = logits.slice(ndarray::s![0, sequence.len() - 1, ..]);
            let next = match (sampling, rng.as_mut()) {
                (Sampling::Temperature { temperature, .. }, Some(rng)) if temperature > 0.0 => {
                    let scaled = last.mapv(|x| x / temperature);
                    let probs: Vec<f64> = log_softmax_row(scaled.view())
                        .into_iter()
                        .map(f64::exp)
                        .collect();
                    WeightedIndex::new(&probs)
                        .map(|dist| dist.sample(rng))
                        .unwrap_or_else(|_| argmax(last))
                }
                _ => argmax(last),
            } as u32;
            sequence.push(next);
            if stop_at_eos && Some(next) == eos {
                break;
            }
        }
        Ok(sequence[tokens.len()..].to_vec())
    }
}

/// Index of the largest logit; the first one on ties, as torch's argmax.
fn argmax(row: ArrayView1<'_, f32>) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
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
