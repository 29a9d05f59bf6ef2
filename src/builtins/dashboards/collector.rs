//! Feature dashboards, the data sae_vis shows, collected in one streaming pass over a
//! dataset: per feature its firing count, max and mean, a histogram of its activations,
//! its top activating examples and examples from each activation quantile band, each
//! with a window of tokens shaded by the feature's activation. Memory stays bounded
//! however many tokens pass: a fixed top-k and a fixed-size sample per feature. Neither
//! depends on the order tokens arrive in (batches run by length, not dataset order):
//! ties break by position, and the sample keeps the firings whose hash of (feature,
//! prompt, position) is smallest, a uniform sample that any order draws alike.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use crate::results::tolerance::ranked;
use crate::results::{Example, FeatureDashboard, QuantileBand};

const TOP_EXAMPLES: usize = 20;
/// Firings sampled per feature for its histogram and quantile bands.
const SAMPLE: usize = 400;
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
    /// The stronger example is the smaller, so the max-heap's top is the weakest of the
    /// top k.
    fn cmp(&self, other: &Self) -> Ordering {
        strongest_first(rank(&self.0), rank(&other.0))
    }
}

/// A firing's activation and place, what top examples are ranked by.
type Rank = (f32, (usize, usize));

fn rank(example: &Example) -> Rank {
    (example.activation, (example.prompt, example.pos))
}

/// Larger activations first (to four decimals: see `tolerance::ranked`); on ties the
/// earlier prompt and position, so the top examples depend neither on the order
/// firings arrive in nor on kernel noise.
fn strongest_first((a, at_a): Rank, (b, at_b): Rank) -> Ordering {
    ranked(b).cmp(&ranked(a)).then(at_a.cmp(&at_b))
}

/// Whether a firing is kept: among the top examples, in the sample (with its key).
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    top: bool,
    sample_key: Option<u64>,
}

impl Wanted {
    pub fn any(&self) -> bool {
        self.top || self.sample_key.is_some()
    }
}

/// The running state for one feature.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Collector {
    pub feature: usize,
    pub tokens: usize,
    pub fired: usize,
    pub max: f32,
    pub sum: f64,
    #[serde(with = "heap")]
    top: BinaryHeap<Ranked>,
    /// The sampled firings by key; the largest key is the first to go.
    sample: BTreeMap<u64, Example>,
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
            sample: BTreeMap::new(),
        }
    }

    /// Counts a firing and says whether it would be kept (so callers build examples only
    /// then).
    pub fn wants(&mut self, activation: f32, prompt: usize, pos: usize) -> Wanted {
        self.fired += 1;
        self.max = self.max.max(activation);
        self.sum += f64::from(activation);
        let top = self.top.len() < TOP_EXAMPLES
            || self.top.peek().is_some_and(|weakest| {
                strongest_first((activation, (prompt, pos)), rank(&weakest.0)) == Ordering::Less
            });
        let key = sample_key(self.feature, prompt, pos);
        let sampled = self.sample.len() < SAMPLE
            || self
                .sample
                .last_key_value()
                .is_some_and(|(&last, _)| key < last);
        Wanted {
            top,
            sample_key: sampled.then_some(key),
        }
    }

    pub fn keep(&mut self, example: Example, wanted: Wanted) {
        if let Some(key) = wanted.sample_key {
            self.sample.insert(key, example.clone());
            if self.sample.len() > SAMPLE {
                self.sample.pop_last();
            }
        }
        if wanted.top {
            self.top.push(Ranked(example));
            if self.top.len() > TOP_EXAMPLES {
                self.top.pop();
            }
        }
    }

    /// Adds another shard's state for the same feature: counts add up, the top
    /// examples and the sample keep what they would have kept from one pass (both are
    /// decided by activation and place or by key, not by arrival).
    pub fn absorb(&mut self, other: Collector) -> Result<(), String> {
        if other.feature != self.feature {
            return Err(format!(
                "a shard's part has feature {} where {} was expected",
                other.feature, self.feature
            ));
        }
        self.fired += other.fired;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        for ranked in other.top {
            self.top.push(ranked);
            if self.top.len() > TOP_EXAMPLES {
                self.top.pop();
            }
        }
        for (key, example) in other.sample {
            self.sample.insert(key, example);
            if self.sample.len() > SAMPLE {
                self.sample.pop_last();
            }
        }
        Ok(())
    }

    pub fn finish(self) -> FeatureDashboard {
        let mut top: Vec<Example> = self.top.into_iter().map(|r| r.0).collect();
        top.sort_by(|a, b| strongest_first(rank(a), rank(b)));
        let mut sample: Vec<Example> = self.sample.into_values().collect();
        // Weakest first; ties (to four decimals) by place, as the top examples.
        sample.sort_by(|a, b| strongest_first(rank(b), rank(a)));
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

/// The top examples stored as a list (a heap's order is its own).
mod heap {
    use std::collections::BinaryHeap;

    use super::{Example, Ranked};

    pub fn serialize<S: serde::Serializer>(
        heap: &BinaryHeap<Ranked>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(heap.iter().map(|ranked| &ranked.0))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BinaryHeap<Ranked>, D::Error> {
        let examples: Vec<Example> = serde::Deserialize::deserialize(deserializer)?;
        Ok(examples.into_iter().map(Ranked).collect())
    }
}

/// A firing's place in the sample: splitmix64 of its feature, prompt and position, so
/// the sample is a pseudo-random one that does not depend on the order of arrival.
/// splitmix64's mixing is a bijection and its input is distinct for each (prompt,
/// position) of a feature (positions stay below 2^20), so no two firings share a key.
fn sample_key(feature: usize, prompt: usize, pos: usize) -> u64 {
    let mut z = (feature as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((prompt as u64) << 20)
        .wrapping_add(pos as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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

    fn collect(order: impl Iterator<Item = usize>) -> FeatureDashboard {
        let mut collector = Collector::new(3);
        for i in order {
            let activation = activation_at(i);
            let wanted = collector.wants(activation, 0, i);
            if wanted.any() {
                collector.keep(example(activation, i), wanted);
            }
            assert!(collector.sample.len() <= SAMPLE && collector.top.len() <= TOP_EXAMPLES);
        }
        collector.tokens = 20_000;
        collector.finish()
    }

    /// Some ties on purpose: 10,000 firings over 5,000 values.
    fn activation_at(i: usize) -> f32 {
        ((i * 7919) % 5_003) as f32 / 100.0
    }

    #[test]
    fn the_top_examples_are_the_largest_and_memory_stays_bounded() {
        let dashboard = collect(0..10_000);
        let mut all: Vec<(f32, usize)> = (0..10_000).map(|i| (activation_at(i), i)).collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let top: Vec<(f32, usize)> = dashboard
            .top
            .iter()
            .map(|e| (e.activation, e.pos))
            .collect();
        assert_eq!(top, all[..TOP_EXAMPLES]);
        assert_eq!(dashboard.density, 0.5);
        assert_eq!(dashboard.quantiles.len(), BANDS);
        assert!(
            dashboard.quantiles[0].examples[0].activation
                > dashboard.quantiles[BANDS - 1].examples[0].activation,
            "bands run from the strongest down"
        );
        let counted: usize = dashboard.histogram.iter().map(|h| h.2).sum();
        assert_eq!(counted, SAMPLE);
    }

    #[test]
    fn the_order_tokens_arrive_in_changes_nothing() {
        let forward = collect(0..10_000);
        let backward = collect((0..10_000).rev());
        let shuffled = collect((0..10_000).map(|i| (i * 3_001) % 10_000));
        for other in [&backward, &shuffled] {
            assert_eq!(forward.top, other.top);
            assert_eq!(forward.quantiles, other.quantiles);
            assert_eq!(forward.histogram, other.histogram);
        }
    }
}
