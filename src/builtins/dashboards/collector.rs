//! Feature dashboards, the data sae_vis shows, collected in one streaming pass over a
//! dataset: per feature its firing count, max and mean, a histogram of its activations,
//! its top activating examples and examples from each activation quantile band, each
//! with a window of tokens shaded by the feature's activation. Memory stays bounded
//! however many tokens pass: a fixed top-k and a fixed-size reservoir sample per feature.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::results::{Example, FeatureDashboard, QuantileBand};

const TOP_EXAMPLES: usize = 20;
const RESERVOIR: usize = 400;
const HISTOGRAM_BINS: usize = 30;
/// Quantile bands of the nonzero activations, examples drawn from each.
const BANDS: usize = 4;
const PER_BAND: usize = 5;

/// A heap entry ordered by activation, smallest on top (a min-heap of the best k).
struct Ranked(Example);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, and the weakest of the top k must be on top.
        other
            .0
            .activation
            .total_cmp(&self.0.activation)
            .then(self.0.prompt.cmp(&other.0.prompt))
            .then(self.0.pos.cmp(&other.0.pos))
    }
}

/// The running state for one feature.
pub struct Collector {
    pub feature: usize,
    pub tokens: usize,
    pub fired: usize,
    pub max: f32,
    pub sum: f64,
    top: BinaryHeap<Ranked>,
    reservoir: Vec<Example>,
    rng: StdRng,
}

impl Collector {
    pub fn new(feature: usize) -> Self {
        Self {
            feature,
            tokens: 0,
            fired: 0,
            max: 0.0,
            sum: 0.0,
            top: BinaryHeap::new(),
            reservoir: Vec::new(),
            rng: StdRng::seed_from_u64(feature as u64),
        }
    }

    /// Whether an activation would be kept (so callers build examples only then).
    pub fn wants(&mut self, activation: f32) -> (bool, Option<usize>) {
        self.fired += 1;
        self.max = self.max.max(activation);
        self.sum += f64::from(activation);
        let top = self.top.len() < TOP_EXAMPLES
            || self.top.peek().is_some_and(|r| activation > r.0.activation);
        // Reservoir sampling (Algorithm R): the i-th firing replaces a random slot with
        // probability RESERVOIR / i.
        let slot = if self.reservoir.len() < RESERVOIR {
            Some(self.reservoir.len())
        } else {
            let j = self.rng.random_range(0..self.fired);
            (j < RESERVOIR).then_some(j)
        };
        (top, slot)
    }

    pub fn keep(&mut self, example: Example, top: bool, slot: Option<usize>) {
        if let Some(slot) = slot {
            if slot == self.reservoir.len() {
                self.reservoir.push(example.clone());
            } else {
                self.reservoir[slot] = example.clone();
            }
        }
        if top {
            self.top.push(Ranked(example));
            if self.top.len() > TOP_EXAMPLES {
                self.top.pop();
            }
        }
    }

    pub fn finish(self) -> FeatureDashboard {
        let mut top: Vec<Example> = self.top.into_iter().map(|r| r.0).collect();
        top.sort_by(|a, b| {
            b.activation
                .total_cmp(&a.activation)
                .then(a.prompt.cmp(&b.prompt))
                .then(a.pos.cmp(&b.pos))
        });
        let mut sample = self.reservoir;
        sample.sort_by(|a, b| {
            a.activation
                .total_cmp(&b.activation)
                .then(a.prompt.cmp(&b.prompt))
                .then(a.pos.cmp(&b.pos))
        });
        let histogram = histogram(&sample, self.max);
        let quantiles = (0..BANDS)
            .rev()
            .filter_map(|band| {
                let (from, to) = (
                    band * sample.len() / BANDS,
                    (band + 1) * sample.len() / BANDS,
                );
                let slice = &sample[from..to];
                let (first, last) = (slice.first()?, slice.last()?);
                let step = (slice.len() / PER_BAND).max(1);
                let examples: Vec<Example> = slice
                    .iter()
                    .rev()
                    .step_by(step)
                    .take(PER_BAND)
                    .cloned()
                    .collect();
                Some(QuantileBand {
                    label: format!(
                        "{}-{}% of firings ({:.3} to {:.3})",
                        band * 100 / BANDS,
                        (band + 1) * 100 / BANDS,
                        first.activation,
                        last.activation
                    ),
                    examples,
                })
            })
            .collect();
        FeatureDashboard {
            feature: self.feature,
            density: self.fired as f64 / self.tokens.max(1) as f64,
            max_activation: f64::from(self.max),
            mean_activation: if self.fired == 0 {
                0.0
            } else {
                self.sum / self.fired as f64
            },
            histogram,
            top,
            quantiles,
            logit_effects: None,
            neuron_alignment: Vec::new(),
            correlated_neurons: Vec::new(),
            correlated_features: None,
        }
    }
}

/// Counts over `[0, max]` in equal bins, from the sample.
fn histogram(sample: &[Example], max: f32) -> Vec<(f64, f64, usize)> {
    if sample.is_empty() || max <= 0.0 {
        return Vec::new();
    }
    let activations = sample.iter().map(|e| f64::from(e.activation));
    super::equal_bins(activations, 0.0, f64::from(max), HISTOGRAM_BINS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(activation: f32, pos: usize) -> Example {
        Example {
            activation,
            prompt: 0,
            pos,
            window: vec![activation],
            attends_to: None,
        }
    }

    #[test]
    fn the_top_examples_are_the_largest_and_memory_stays_bounded() {
        let mut collector = Collector::new(3);
        for i in 0..10_000 {
            let activation = ((i * 7919) % 10_007) as f32 / 100.0;
            let (top, slot) = collector.wants(activation);
            if top || slot.is_some() {
                collector.keep(example(activation, i), top, slot);
            }
            assert!(collector.reservoir.len() <= RESERVOIR && collector.top.len() <= TOP_EXAMPLES);
        }
        collector.tokens = 20_000;
        let dashboard = collector.finish();
        let mut all: Vec<f32> = (0..10_000)
            .map(|i| ((i * 7919) % 10_007) as f32 / 100.0)
            .collect();
        all.sort_by(|a, b| b.total_cmp(a));
        let top: Vec<f32> = dashboard.top.iter().map(|e| e.activation).collect();
        assert_eq!(top, all[..TOP_EXAMPLES]);
        assert_eq!(dashboard.density, 0.5);
        assert_eq!(dashboard.quantiles.len(), BANDS);
        assert!(
            dashboard.quantiles[0].examples[0].activation
                > dashboard.quantiles[BANDS - 1].examples[0].activation,
            "bands run from the strongest down"
        );
        let counted: usize = dashboard.histogram.iter().map(|h| h.2).sum();
        assert_eq!(counted, RESERVOIR);
    }
}
