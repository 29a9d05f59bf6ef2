//! What moves with a feature over a dashboard's tokens, collected in the same streaming
//! pass as its examples: the Pearson correlation of its activation with every other
//! feature's and with every dimension of the hook it reads (sae_vis' "correlated
//! features" and "correlated neurons"), from running sums, so memory does not grow with
//! the number of tokens. Also the dimensions its decoder direction writes most ("neuron
//! alignment"), from the weights.

use ndarray::{ArrayView1, ArrayView2};

use crate::results::{Correlation, NeuronWeight};

/// Rows shown in each table, as sae_vis shows.
pub const ROWS: usize = 3;
/// Feature pairs whose sums are kept at most (8 bytes each): beyond this, a dashboards
/// step over many features of a wide SAE skips the correlated-features table.
const MAX_FEATURE_PAIRS: usize = 1 << 25;

/// Running sums for the chosen features (`slots`), every feature, and every input dimension.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Correlations {
    /// The chosen features, by slot.
    slots: Vec<usize>,
    tokens: usize,
    feature_sum: Vec<f64>,
    feature_sum_sq: Vec<f64>,
    /// `[slot][feature]`: the sum of the products of their activations; empty when skipped.
    feature_cross: Vec<f64>,
    input_sum: Vec<f64>,
    input_sum_sq: Vec<f64>,
    /// `[slot][dimension]`.
    input_cross: Vec<f64>,
    d_sae: usize,
    d_in: usize,
}

impl Correlations {
    pub fn new(slots: Vec<usize>, d_sae: usize, d_in: usize) -> Self {
        let pairs = slots.len().saturating_mul(d_sae);
        Self {
            tokens: 0,
            feature_sum: vec![0.0; d_sae],
            feature_sum_sq: vec![0.0; d_sae],
            feature_cross: if pairs <= MAX_FEATURE_PAIRS {
                vec![0.0; pairs]
            } else {
                Vec::new()
            },
            input_sum: vec![0.0; d_in],
            input_sum_sq: vec![0.0; d_in],
            input_cross: vec![0.0; slots.len() * d_in],
            slots,
            d_sae,
            d_in,
        }
    }

    /// Adds one token: its input to the SAE and its activations. `active` lists the
    /// features with a nonzero activation, `chosen` the slots among them.
    pub fn add(
        &mut self,
        input: ArrayView1<'_, f32>,
        acts: ArrayView1<'_, f32>,
        active: &[usize],
        chosen: &[(usize, f32)],
    ) {
        self.tokens += 1;
        for &g in active {
            let a = f64::from(acts[g]);
            self.feature_sum[g] += a;
            self.feature_sum_sq[g] += a * a;
        }
        for (i, &x) in input.iter().enumerate() {
            let x = f64::from(x);
            self.input_sum[i] += x;
            self.input_sum_sq[i] += x * x;
        }
        for &(slot, a) in chosen {
            let a = f64::from(a);
            if !self.feature_cross.is_empty() {
                let row = &mut self.feature_cross[slot * self.d_sae..(slot + 1) * self.d_sae];
                for &g in active {
                    row[g] += a * f64::from(acts[g]);
                }
            }
            let row = &mut self.input_cross[slot * self.d_in..(slot + 1) * self.d_in];
            for (r, &x) in row.iter_mut().zip(input.iter()) {
                *r += a * f64::from(x);
            }
        }
    }

    /// Adds another shard's sums over the same features and dimensions.
    pub fn absorb(&mut self, other: Correlations) -> Result<(), String> {
        if other.slots != self.slots || other.d_sae != self.d_sae || other.d_in != self.d_in {
            return Err("the shards' parts correlate other features".to_owned());
        }
        self.tokens += other.tokens;
        let add = |mine: &mut Vec<f64>, theirs: Vec<f64>| {
            mine.iter_mut().zip(theirs).for_each(|(a, b)| *a += b);
        };
        add(&mut self.feature_sum, other.feature_sum);
        add(&mut self.feature_sum_sq, other.feature_sum_sq);
        add(&mut self.feature_cross, other.feature_cross);
        add(&mut self.input_sum, other.input_sum);
        add(&mut self.input_sum_sq, other.input_sum_sq);
        add(&mut self.input_cross, other.input_cross);
        Ok(())
    }

    /// The tables for the feature in `slot`, given the SAE's decoder `[d_sae, d_in]`:
    /// the most correlated other features (`None` when skipped) and input dimensions.
    pub fn finish(
        &self,
        slot: usize,
        w_dec: ArrayView2<'_, f32>,
    ) -> (Option<Vec<Correlation>>, Vec<Correlation>) {
        let f = self.slots[slot];
        let n = self.tokens as f64;
        let (sum_f, sum_sq_f) = (self.feature_sum[f], self.feature_sum_sq[f]);
        let pearson = |cross: f64, sum: f64, sum_sq: f64| {
            let covariance = n * cross - sum_f * sum;
            let spread = (n * sum_sq_f - sum_f * sum_f) * (n * sum_sq - sum * sum);
            (spread > 0.0).then(|| covariance / spread.sqrt())
        };
        let direction = w_dec.row(f);
        let norm = |v: ArrayView1<'_, f32>| f64::from(v.dot(&v)).sqrt().max(1e-12);
        let norm_f = norm(direction);

        let features = (!self.feature_cross.is_empty()).then(|| {
            let cross = &self.feature_cross[slot * self.d_sae..(slot + 1) * self.d_sae];
            let candidates = (0..self.d_sae).filter(|&g| g != f).filter_map(|g| {
                let r = pearson(cross[g], self.feature_sum[g], self.feature_sum_sq[g])?;
                let other = w_dec.row(g);
                Some(Correlation {
                    index: g,
                    pearson: r,
                    cosine: f64::from(direction.dot(&other)) / (norm_f * norm(other)),
                })
            });
            strongest(candidates)
        });
        let cross = &self.input_cross[slot * self.d_in..(slot + 1) * self.d_in];
        let neurons = strongest((0..self.d_in).filter_map(|i| {
            Some(Correlation {
                index: i,
                pearson: pearson(cross[i], self.input_sum[i], self.input_sum_sq[i])?,
                cosine: f64::from(direction[i]) / norm_f,
            })
        }));
        (features, neurons)
    }
}

/// The [`ROWS`] largest correlations; ties go to the lower index, so reruns agree.
fn strongest(candidates: impl Iterator<Item = Correlation>) -> Vec<Correlation> {
    let mut all: Vec<Correlation> = candidates.collect();
    all.sort_by(|a, b| b.pearson.total_cmp(&a.pearson).then(a.index.cmp(&b.index)));
    all.truncate(ROWS);
    all
}

/// The dimensions a decoder direction writes most, by absolute weight.
pub fn neuron_alignment(direction: ArrayView1<'_, f32>) -> Vec<NeuronWeight> {
    let l1: f64 = direction.iter().map(|w| f64::from(w.abs())).sum();
    let mut order: Vec<usize> = (0..direction.len()).collect();
    order.sort_by(|&a, &b| {
        direction[b]
            .abs()
            .total_cmp(&direction[a].abs())
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(ROWS)
        .map(|i| NeuronWeight {
            index: i,
            value: f64::from(direction[i]),
            share_of_l1: f64::from(direction[i].abs()) / l1.max(1e-12),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    /// Pearson correlation over a few tokens, the textbook way.
    fn pearson(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
        let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
        cov / (vx * vy).sqrt()
    }

    #[test]
    fn running_sums_give_the_pearson_correlation_and_the_decoder_cosine() {
        // Four features over five tokens; feature 0 is chosen. Feature 1 follows it,
        // feature 2 opposes it, feature 3 never fires (no correlation defined).
        let acts: Array2<f32> = array![
            [1.0, 2.0, 0.0, 0.0],
            [0.0, 0.5, 1.0, 0.0],
            [2.0, 3.0, 0.0, 0.0],
            [0.5, 0.0, 0.5, 0.0],
            [0.0, 0.0, 2.0, 0.0],
        ];
        let inputs: Array2<f32> =
            array![[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 1.0]];
        let w_dec: Array2<f32> = array![[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]];
        let mut c = Correlations::new(vec![0], 4, 2);
        for t in 0..5 {
            let active: Vec<usize> = (0..4).filter(|&g| acts[[t, g]] > 0.0).collect();
            let chosen: Vec<(usize, f32)> = if acts[[t, 0]] > 0.0 {
                vec![(0, acts[[t, 0]])]
            } else {
                vec![]
            };
            c.add(inputs.row(t), acts.row(t), &active, &chosen);
        }
        let (features, neurons) = c.finish(0, w_dec.view());
        let features = features.unwrap();
        let column = |a: &Array2<f32>, j: usize| -> Vec<f64> {
            a.column(j).iter().map(|&v| f64::from(v)).collect()
        };
        let f0 = column(&acts, 0);
        assert_eq!(
            features.iter().map(|c| c.index).collect::<Vec<_>>(),
            [1, 2],
            "feature 3 has no variance"
        );
        assert!((features[0].pearson - pearson(&f0, &column(&acts, 1))).abs() < 1e-12);
        assert!((features[1].pearson - pearson(&f0, &column(&acts, 2))).abs() < 1e-12);
        assert!((features[0].cosine - 1.0 / 2f64.sqrt()).abs() < 1e-6);
        assert!((features[1].cosine + 1.0).abs() < 1e-6);
        for n in &neurons {
            let r = pearson(&f0, &column(&inputs, n.index));
            assert!((n.pearson - r).abs() < 1e-12, "dimension {}", n.index);
        }
        assert_eq!(neurons[0].index, 0, "dimension 0 follows feature 0");
        assert_eq!(neurons[0].cosine, 1.0);
    }

    #[test]
    fn neuron_alignment_ranks_dimensions_by_absolute_weight() {
        let aligned = neuron_alignment(array![0.5f32, -2.0, 1.0, 0.5].view());
        let ranked: Vec<(usize, f64, f64)> = aligned
            .iter()
            .map(|n| (n.index, n.value, n.share_of_l1))
            .collect();
        assert_eq!(ranked, [(1, -2.0, 0.5), (2, 1.0, 0.25), (0, 0.5, 0.125)]);
    }
}
