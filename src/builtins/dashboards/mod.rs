//! `feature_dashboards(sae, features, dataset; tokens)`: sae_vis-style dashboards for
//! features of an SAE over (up to `tokens` tokens of) a dataset, in one streaming pass
//! (examples, activation histogram, correlated features and hook dimensions), then one
//! pass over the prompts that hold examples for the model's next-token predictions
//! there; for a query SAE also the key each example's feature pushes the head's
//! attention to, and for a residual-stream SAE the tokens its decoder direction promotes
//! and suppresses.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::{Array2, s};

mod collector;
mod correlations;

use collector::Collector;
use correlations::{Correlations, neuron_alignment};

use super::args::{Args, BindError, Features};
use super::measurements::attribution::{key_suffix, score_context};
use super::measurements::{Graph, Reads};
use crate::builtins::spec::{Builtin, MAX_TOKENS, Produces, Type, opt, req};
use crate::compile::Target;
use crate::hooks;
use crate::plan::Plan;
use crate::results::{Dashboards, WINDOW};
use crate::session::{Failure, SaeSplice, Session};

pub const SPEC: Builtin = Builtin {
    name: "feature_dashboards",
    produces: Produces::Dashboards,
    summary: "sae_vis-style pages for features",
    params: &[
        req("sae", Type::Sae),
        req("features", Type::Features),
        req("dataset", Type::Dataset),
        opt("tokens", Type::Integer).within(1.0, MAX_TOKENS),
        opt("next_tokens", Type::Bool),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDashboards {
    pub sae: String,
    pub features: Features,
    pub dataset: String,
    /// Tokens read at most.
    pub tokens: usize,
    /// Whether the pages show the model's next-token predictions on hover (one full
    /// forward pass over the prompts that hold examples).
    pub next_tokens: bool,
}

impl FeatureDashboards {
    pub fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            sae: args.name("sae")?,
            features: args.features("features")?,
            dataset: args.name("dataset")?,
            tokens: args.opt_int("tokens")?.unwrap_or(200_000).max(1) as usize,
            next_tokens: args.opt_bool("next_tokens")?.unwrap_or(true),
        })
    }

    /// The SAE's hook from the clean model, its logits unless `next_tokens` is off (the
    /// predictions shown on hover), and for a query SAE the layer's keys.
    pub fn reads(&self, plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        let hook = plan.sae_hook(&self.sae);
        reads.add(Graph::Clean, hook.clone());
        if self.next_tokens {
            reads.add(Graph::Clean, hooks::LOGITS);
        }
        if let Some(layer) = hooks::layer_of(&hook)
            && hook == hooks::block(layer, hooks::Q)
            && plan.sae_head(&self.sae).is_some()
        {
            reads.add(
                Graph::Clean,
                hooks::block(layer, key_suffix(plan.model.rotary)),
            );
        }
        reads
    }

    pub fn run(&self, s: &mut Session, name: &str) -> Result<Dashboards, Failure> {
        let used = self.prompts_read(s)?.len();
        let collected = self.collect(s, name, 0..used)?;
        self.finish(s, name, collected)
    }

    /// The token counts of the dataset's prompts that the `tokens` budget reads.
    fn prompts_read(&self, s: &mut Session) -> Result<Vec<usize>, Failure> {
        let mut lengths = s.prompt_lengths(&self.dataset)?;
        lengths.truncate(crate::session::prompts_holding(
            lengths.iter().copied(),
            self.tokens,
        ));
        Ok(lengths)
    }

    /// For `qexp run --shard`: the examples, counts and running sums of the shard's
    /// share of the prompts the budget reads, as JSON for its part.
    pub fn run_share(
        &self,
        s: &mut Session,
        name: &str,
        shard: crate::shard::Shard,
    ) -> Result<serde_json::Value, Failure> {
        let lengths = self.prompts_read(s)?;
        let share = crate::shard::share(&lengths, shard);
        let collected = self.collect(s, name, share)?;
        serde_json::to_value(&collected).map_err(|e| format!("`{name}`: {e}"))
    }

    /// The dashboards from every shard's part, in shard order.
    pub fn merge(
        &self,
        s: &mut Session,
        name: &str,
        parts: Vec<serde_json::Value>,
    ) -> Result<Dashboards, Failure> {
        let mut merged: Option<Collected> = None;
        for part in parts {
            let part: Collected = serde_json::from_value(part)
                .map_err(|e| format!("`{name}`: a shard's part is not dashboards ({e})"))?;
            merged = Some(match merged {
                Some(mut all) => {
                    all.absorb(part).map_err(|e| format!("`{name}`: {e}"))?;
                    all
                }
                None => part,
            });
        }
        let merged = merged.ok_or_else(|| format!("`{name}`: no shard made a part of it"))?;
        self.finish(s, name, merged)
    }

    /// One streaming pass over the prompts at `share` (of those the budget reads).
    fn collect(
        &self,
        s: &mut Session,
        name: &str,
        share: std::ops::Range<usize>,
    ) -> Result<Collected, Failure> {
        let dataset = &self.dataset;
        let SaeSplice { sae, target, .. } = s.sae_splice(&self.sae)?;
        let features = self.features.resolve(&s.values, sae.d_sae);
        let mut slot_of = vec![None; sae.d_sae];
        let mut collectors: Vec<Collector> = Vec::with_capacity(features.len());
        for &f in &features {
            if f < sae.d_sae && slot_of[f].is_none() {
                slot_of[f] = Some(collectors.len());
                collectors.push(Collector::new(f));
            }
        }
        let all = s.dataset(dataset)?;
        let used = share.end;
        let first = share.start;
        let sequences = &all[share];
        let budget: usize = sequences.iter().map(Vec::len).sum();
        let bar = crate::session::progress::bar(budget as u64, "tokens", &format!("{name} ="));
        bar.set_message(format!("feature_dashboards({}, {dataset})", self.sae));
        let mut correlations = Correlations::new(
            collectors.iter().map(|c| c.feature).collect(),
            sae.d_sae,
            sae.d_in,
        );
        let mut tokens = 0usize;
        let (mut active, mut chosen) = (Vec::new(), Vec::new());
        s.for_each_sae_batch(&sae, &target, sequences, |prompts, batch, inputs, acts| {
            let mut row_start = 0;
            for (row, &len) in batch.lengths.iter().enumerate() {
                let prompt = first + prompts[row];
                for pos in 0..len {
                    let token = acts.row(row_start + pos);
                    active.clear();
                    chosen.clear();
                    for (f, &a) in token.iter().enumerate() {
                        if a <= 0.0 {
                            continue;
                        }
                        active.push(f);
                        let Some(slot) = slot_of[f] else { continue };
                        chosen.push((slot, a));
                        let collector = &mut collectors[slot];
                        let wanted = collector.wants(a, prompt, pos);
                        if wanted.any() {
                            let (from, to) =
                                (pos.saturating_sub(WINDOW), (pos + WINDOW).min(len - 1));
                            let window = (from..=to).map(|p| acts[[row_start + p, f]]).collect();
                            collector.keep(
                                crate::results::Example {
                                    activation: a,
                                    prompt,
                                    pos,
                                    window,
                                    attends_to: None,
                                },
                                wanted,
                            );
                        }
                    }
                    correlations.add(inputs.row(row_start + pos), token, &active, &chosen);
                }
                row_start += len;
                tokens += len;
            }
            bar.set_position(tokens.min(budget) as u64);
        })?;
        bar.finish_and_clear();
        Ok(Collected {
            collectors,
            correlations,
            tokens,
            used_prompts: used,
        })
    }

    /// The pages from what the pass collected: examples' text, the model's predictions
    /// in their windows, and per SAE kind the attention targets or logit effects.
    fn finish(
        &self,
        s: &mut Session,
        name: &str,
        collected: Collected,
    ) -> Result<Dashboards, Failure> {
        let SaeSplice { sae, target, .. } = s.sae_splice(&self.sae)?;
        let sequences = s.dataset(&self.dataset)?;
        let Collected {
            collectors,
            correlations,
            tokens,
            used_prompts,
        } = collected;
        let mut features: Vec<_> = collectors
            .into_iter()
            .enumerate()
            .map(|(slot, mut c)| {
                c.tokens = tokens;
                let mut feature = c.finish();
                let (correlated_features, correlated_neurons) =
                    correlations.finish(slot, sae.w_dec.view());
                feature.correlated_features = correlated_features;
                feature.correlated_neurons = correlated_neurons;
                feature.neuron_alignment = neuron_alignment(sae.w_dec.row(feature.feature));
                feature
            })
            .collect();

        // Text of the prompts the pages show, and the model's predictions in the windows.
        let mut str_tokens = vec![Vec::new(); used_prompts];
        let mut windows: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for feature in &features {
            for example in feature
                .top
                .iter()
                .chain(feature.quantiles.iter().flat_map(|q| &q.examples))
            {
                if str_tokens[example.prompt].is_empty() {
                    str_tokens[example.prompt] = s.str_tokens(&sequences[example.prompt])?;
                }
                let from = example.pos.saturating_sub(WINDOW);
                windows
                    .entry(example.prompt)
                    .or_default()
                    .extend(from..from + example.window.len());
            }
        }
        let predictions = if self.next_tokens {
            predictions(s, &sequences, &windows)?
        } else {
            BTreeMap::new()
        };
        if let Some(layer) = crate::hooks::layer_of(&target.hook)
            && target.hook == hooks::block(layer, hooks::Q)
            && let Some(head) = target.head
        {
            attach_attention_targets(
                s,
                &mut features,
                &sequences[..used_prompts],
                layer,
                head,
                &sae,
            )?;
        }
        if let Some(effects) = logit_effects(s, &target, &sae, &features)? {
            for (feature, effect) in features.iter_mut().zip(effects) {
                feature.logit_effects = Some(effect);
            }
        }
        Ok(Dashboards {
            name: name.to_owned(),
            sae: self.sae.clone(),
            hook: match target.head {
                Some(h) => format!("{}[head = {h}]", target.hook),
                None => target.hook.clone(),
            },
            tokens,
            features,
            str_tokens,
            predictions,
        })
    }
}

/// What one streaming pass collects: per chosen feature its examples and counts, the
/// running sums behind the correlations, the tokens read, and how many of the
/// dataset's prompts the pass (or, in a shard, the run) reads.
#[derive(serde::Serialize, serde::Deserialize)]
struct Collected {
    collectors: Vec<Collector>,
    correlations: Correlations,
    tokens: usize,
    used_prompts: usize,
}

impl Collected {
    /// Adds another shard's pass to this one.
    fn absorb(&mut self, other: Collected) -> Result<(), String> {
        if other.collectors.len() != self.collectors.len() {
            return Err("the shards' parts have different features".to_owned());
        }
        for (mine, theirs) in self.collectors.iter_mut().zip(other.collectors) {
            mine.absorb(theirs)?;
        }
        self.correlations.absorb(other.correlations)?;
        self.tokens += other.tokens;
        self.used_prompts = self.used_prompts.max(other.used_prompts);
        Ok(())
    }
}

/// Next tokens shown for each token of the example windows, as sae_vis shows on hover.
const PREDICTIONS: usize = 3;

/// The clean model's [`PREDICTIONS`] most likely next tokens at each position of
/// `windows` (positions by prompt), from batches of prompts of similar length, each cut
/// after its last window position (causal: later tokens change nothing there).
fn predictions(
    s: &mut Session,
    sequences: &[Vec<u32>],
    windows: &BTreeMap<usize, BTreeSet<usize>>,
) -> Result<BTreeMap<(usize, usize), crate::results::Predictions>, Failure> {
    let wanted: Vec<(usize, &BTreeSet<usize>)> = windows.iter().map(|(&p, w)| (p, w)).collect();
    let cut: Vec<Vec<u32>> = wanted
        .iter()
        .map(|&(prompt, positions)| {
            let last = positions.last().copied().unwrap_or(0);
            sequences[prompt][..=last.min(sequences[prompt].len() - 1)].to_vec()
        })
        .collect();
    let mut out = BTreeMap::new();
    for rows in crate::session::length_sorted_chunks(&cut, s.batch_size()) {
        let batch = s.batch_of(&cut, &rows)?;
        let forward = s.forward(None, &batch, &[hooks::LOGITS])?;
        let logits = forward.logits.ok_or("the model returned no logits")?;
        for (row, &i) in rows.iter().enumerate() {
            let (prompt, positions) = wanted[i];
            for &pos in positions {
                let top = top_next_tokens(logits.slice(s![row, pos, ..]))
                    .into_iter()
                    .map(|(t, probability)| Ok((s.str_tokens(&[t as u32])?.remove(0), probability)))
                    .collect::<Result<Vec<_>, Failure>>()?;
                out.insert((prompt, pos), top);
            }
        }
    }
    Ok(out)
}

/// The [`PREDICTIONS`] largest logits of `row` with their probabilities, largest first,
/// ties to the lower id (test_prompt's order).
fn top_next_tokens(row: ndarray::ArrayView1<'_, f32>) -> Vec<(usize, f64)> {
    let log_sum = crate::runtime::log_sum_exp(row);
    let mut order: Vec<usize> = (0..row.len()).collect();
    let k = PREDICTIONS.min(order.len());
    order.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
        row[b].total_cmp(&row[a]).then(a.cmp(&b))
    });
    order.truncate(k);
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .map(|t| (t, (f64::from(row[t]) - log_sum).exp()))
        .collect()
}

/// For a query SAE at `head`: each shown example's key position that the feature's
/// share of the query scores highest (rotary applied), from one more pass over the
/// prompts that hold examples, pruned to the layer's keys.
fn attach_attention_targets(
    s: &mut Session,
    features: &mut [crate::results::FeatureDashboard],
    sequences: &[Vec<u32>],
    layer: usize,
    head: usize,
    sae: &crate::sae::Sae,
) -> Result<(), Failure> {
    use crate::analysis::score_attribution::{Rotation, score_of};
    let context = score_context(s, layer, head)?;
    let mut wanted = vec![false; sequences.len()];
    for feature in features.iter() {
        for e in feature
            .top
            .iter()
            .chain(feature.quantiles.iter().flat_map(|q| &q.examples))
        {
            wanted[e.prompt] = true;
        }
    }
    let mut keys: std::collections::HashMap<usize, Array2<f32>> = std::collections::HashMap::new();
    for (prompt, tokens) in sequences.iter().enumerate() {
        if !wanted[prompt] {
            continue;
        }
        let batch = s
            .model
            .batch(std::slice::from_ref(tokens))
            .map_err(Session::runtime)?;
        let forward = s.forward(None, &batch, &[&context.key_hook])?;
        keys.insert(
            prompt,
            forward.hooks[&context.key_hook]
                .slice(s![0, .., context.kv_head, ..])
                .to_owned(),
        );
    }
    for feature in features.iter_mut() {
        let f = feature.feature;
        let examples = feature.top.iter_mut().chain(
            feature
                .quantiles
                .iter_mut()
                .flat_map(|q| q.examples.iter_mut()),
        );
        for e in examples {
            let key = &keys[&e.prompt];
            // Without the token's query its normalization is unknown here; dashboards
            // show the unnormalized direction (the same for SAEs without it).
            let direction = sae.w_dec.row(f).mapv(|w| w * e.activation);
            let rotation = context.rotation.as_ref().map(|(cos, sin)| Rotation {
                cos: cos.slice(s![e.pos, ..]),
                sin: sin.slice(s![e.pos, ..]),
            });
            e.attends_to = (0..=e.pos)
                .map(|j| {
                    (
                        j,
                        score_of(
                            direction.view(),
                            rotation.as_ref(),
                            key.row(j),
                            context.attn_scale,
                        ),
                    )
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
        }
    }
    Ok(())
}

/// For SAEs on the residual stream (or an attention/MLP output): the ten tokens each
/// feature's decoder direction raises most and lowers most through the unembedding
/// (the final norm's scale left out, as sae_vis does).
fn logit_effects(
    s: &Session,
    target: &Target,
    sae: &crate::sae::Sae,
    features: &[crate::results::FeatureDashboard],
) -> Result<Option<Vec<crate::results::LogitEffects>>, Failure> {
    let writes_residual = [
        hooks::RESID_PRE,
        hooks::RESID_MID,
        hooks::RESID_POST,
        hooks::ATTN_OUT,
        hooks::MLP_OUT,
    ]
    .iter()
    .any(|h| target.hook.ends_with(h));
    if !writes_residual || target.head.is_some() {
        return Ok(None);
    }
    let config = s.model.manifest.config.clone();
    let unembed = if config.tied_embeddings {
        s.model
            .weight("embed.W_E")
            .map_err(Session::runtime)?
            .reversed_axes()
    } else {
        s.model.weight("unembed.W_U").map_err(Session::runtime)?
    };
    let unembed = unembed
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(features.len());
    for feature in features {
        let logits = sae.w_dec.row(feature.feature).dot(&unembed);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let pick = |ids: Vec<usize>| -> Result<Vec<(String, f64)>, Failure> {
            ids.into_iter()
                .map(|t| Ok((s.str_tokens(&[t as u32])?.remove(0), f64::from(logits[t]))))
                .collect()
        };
        out.push(crate::results::LogitEffects {
            promoted: pick(order.iter().take(10).copied().collect())?,
            suppressed: pick(order.iter().rev().take(10).copied().collect())?,
            histogram: logit_histogram(logits.view()),
        });
    }
    Ok(Some(out))
}

/// Bins of a decoder direction's logit change over the whole vocabulary (sae_vis' logit
/// histogram), from the smallest change to the largest.
fn logit_histogram(logits: ndarray::ArrayView1<'_, f32>) -> Vec<(f64, f64, usize)> {
    const BINS: usize = 40;
    let (low, high) = logits
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    // Also refuses NaN bounds: a direction with no finite spread has no histogram.
    if high.partial_cmp(&low) != Some(std::cmp::Ordering::Greater) {
        return Vec::new();
    }
    let values = logits.iter().map(|&v| f64::from(v));
    equal_bins(values, f64::from(low), f64::from(high), BINS)
}

/// `(from, to, count)` for `bins` equal bins over `[low, high]` (`high > low`); a value
/// at `high` (or rounding past it) counts in the last bin.
fn equal_bins(
    values: impl IntoIterator<Item = f64>,
    low: f64,
    high: f64,
    bins: usize,
) -> Vec<(f64, f64, usize)> {
    let width = (high - low) / bins as f64;
    let mut counts = vec![0usize; bins];
    for v in values {
        counts[(((v - low) / width) as usize).min(bins - 1)] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, n)| (low + i as f64 * width, low + (i + 1) as f64 * width, n))
        .collect()
}
