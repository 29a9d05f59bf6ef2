//! A sweep's variant passes over one small batch, run ahead as rows of one pass.
//!
//! A `for` loop over heads runs its step once per head, each time one prompt under
//! another variant: passes that small are mostly fixed cost (SmolLM2 on two cores: 23
//! ms for 8 tokens, 37 ms for 32, four times the tokens for 1.6 times the time). So
//! when a step runs a variant over a small batch, the variants of the same graph
//! structure that it and its repeats (see `builtins::graphs::repeats_of`) will run next
//! go in the same pass, each on its own copy of the batch's rows and fed its own values
//! (`compile::interventions::stack_rows`), as TransformerLens' batched patching does.
//! The passes later steps read are kept for them, within a memory budget, and each is
//! read once.
//!
//! Only variants of zero, mean, `add` and `patch` edits run ahead: resolving them has
//! no effect but computing a mean, and a patch's source pass is one its step would run.
//! `steer` (which may train its SAE, whose summary belongs before the step that needs
//! it), ActAdd (values one per position, which cannot stack) and SAE edits run when
//! their step does; so does everything in a shard, which runs only some of a loop's
//! passes.

use ndarray::Array2;

use super::{Failure, Session, finite};
use crate::builtins::interventions::InterventionCall;
use crate::compile::interventions::{Feed, stack_rows};
use crate::runtime::{Batch, Forward};

/// A batch of at most this many tokens (rows times positions) runs its variants ahead
/// (`qexp plan`, the README and GRAMMAR.md say so in words).
const SMALL_BATCH_TOKENS: usize = 128;
/// The pass that runs them holds at most this many.
const PASS_TOKENS: usize = 512;

struct Entry {
    variant: String,
    outputs: String,
    input_ids: Array2<i64>,
    attention_mask: Array2<i64>,
    forward: Forward,
    /// The last step that may read it.
    until: usize,
}

impl Entry {
    fn is(&self, variant: &str, batch: &Batch, outputs: &str) -> bool {
        self.variant == variant
            && self.outputs == outputs
            && self.input_ids == batch.input_ids
            && self.attention_mask == batch.attention_mask
    }
}

/// Variant passes run ahead of their steps, until those steps read them.
pub(crate) struct PassesAhead {
    entries: Vec<Entry>,
    bytes: usize,
    budget: usize,
    /// Variant passes that ran as rows of another variant's pass, for `run.json`.
    pub run_ahead: usize,
}

impl Default for PassesAhead {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            // Beside the clean passes kept (`kept_passes`), within the same bound.
            budget: super::kept_passes::budget() / 2,
            run_ahead: 0,
        }
    }
}

impl PassesAhead {
    /// The pass of `variant` over `batch` with `outputs`, if it ran ahead; read once.
    fn take(&mut self, variant: &str, batch: &Batch, outputs: &str) -> Option<Forward> {
        let index = self
            .entries
            .iter()
            .position(|e| e.is(variant, batch, outputs))?;
        let entry = self.entries.swap_remove(index);
        self.bytes -= entry.forward.bytes();
        Some(entry.forward)
    }

    fn holds(&self, variant: &str, batch: &Batch, outputs: &str) -> bool {
        self.entries.iter().any(|e| e.is(variant, batch, outputs))
    }

    /// Drops the passes no step from `step` on may read (their step failed).
    pub fn start_step(&mut self, step: usize) {
        let mut freed = 0;
        self.entries.retain(|e| {
            let keep = e.until >= step;
            if !keep {
                freed += e.forward.bytes();
            }
            keep
        });
        self.bytes -= freed;
    }

    fn room(&self) -> usize {
        self.budget.saturating_sub(self.bytes)
    }
}

/// The values each variant's patches feed for the batch (`[batch, ...]`, one input per
/// patch), one variant's rows after another's; `None` if the variants' inputs differ.
fn patch_rows(per_variant: &[Vec<Feed>]) -> Option<Vec<Feed>> {
    let first = per_variant.first()?;
    (0..first.len())
        .map(|index| {
            let name = &first[index].0;
            let views: Vec<_> = per_variant
                .iter()
                .map(|feeds| {
                    feeds
                        .get(index)
                        .filter(|(n, _)| n == name)
                        .map(|(_, v)| v.view())
                })
                .collect::<Option<_>>()?;
            let rows = ndarray::concatenate(ndarray::Axis(0), &views).ok()?;
            Some((name.clone(), rows))
        })
        .collect()
}

impl Session<'_, '_, '_> {
    /// `variant`'s pass over `batch`: one that ran ahead, or run now as rows of one pass
    /// with the variants of the same structure this step and its repeats run next over
    /// the same batch. `None` when neither applies (the batch is large, no such variant
    /// follows, or their values cannot be stacked as rows): the caller runs it alone.
    pub(super) fn variant_pass_ahead(
        &mut self,
        variant: &str,
        batch: &Batch,
        outputs: &[&str],
    ) -> Option<Result<Forward, Failure>> {
        let outputs_key = outputs.join(",");
        if let Some(forward) = self.passes_ahead.take(variant, batch, &outputs_key) {
            return Some(Ok(forward));
        }
        if self.in_shard
            || self.preparing > 0
            || batch.input_ids.len() > SMALL_BATCH_TOKENS
            || !self.runs_ahead(variant)
        {
            return None;
        }
        let key = self.variant_graph(variant, outputs, None).ok().flatten()?;
        let tokens = batch.input_ids.len().max(1);
        let mut most = PASS_TOKENS / tokens;
        if outputs.contains(&crate::hooks::LOGITS) {
            let logits = tokens * self.model.manifest.config.d_vocab * size_of::<f32>();
            most = most.min(1 + self.passes_ahead.room() / logits.max(1));
        }
        // Each variant's lifted values, and its patches' values for this batch.
        let feeds_of = |s: &mut Self, v: &str| {
            let lifted = s.shared_graphs.get(v, &outputs_key)?.feeds.clone();
            let patched = s.preparing(|s| s.patch_feeds(v, batch)).ok()?;
            Some((lifted, patched))
        };
        let mut together = vec![variant.to_owned()];
        let mut per_variant = vec![feeds_of(self, variant)?];
        let until = self.repeated_until.unwrap_or(self.step);
        for candidate in self.variants_to_come(variant) {
            if together.len() >= most {
                break;
            }
            if together.contains(&candidate)
                || self.passes_ahead.holds(&candidate, batch, &outputs_key)
                || !self.runs_ahead(&candidate)
                || self
                    .variant_graph(&candidate, outputs, Some(&key))
                    .ok()
                    .flatten()
                    .is_none()
            {
                continue;
            }
            if let Some(feeds) = feeds_of(self, &candidate) {
                together.push(candidate);
                per_variant.push(feeds);
            }
        }
        if together.len() < 2 {
            return None;
        }
        let (lifted, patched): (Vec<_>, Vec<_>) = per_variant.into_iter().unzip();
        let mut feeds = stack_rows(&lifted, batch.len())?;
        feeds.extend(patch_rows(&patched)?);
        let rows = batch.repeated(together.len());
        let forward = match self.model.forward_cached(&key, &rows, &feeds)? {
            Ok(forward) => forward,
            // Too large a pass, say: each variant runs alone instead.
            Err(_) => return None,
        };
        let mut own = None;
        for (index, name) in together.iter().enumerate() {
            let part = forward.rows(index * batch.len()..(index + 1) * batch.len());
            if index == 0 {
                own = Some(finite(Some(name), Ok(part)));
                continue;
            }
            // A pass with NaN is not kept: its step runs it again and says so.
            let bytes = part.bytes();
            if bytes > self.passes_ahead.room() {
                continue;
            }
            if let Ok(part) = finite(Some(name), Ok(part)) {
                self.passes_ahead.bytes += bytes;
                self.passes_ahead.run_ahead += 1;
                self.passes_ahead.entries.push(Entry {
                    variant: name.clone(),
                    outputs: outputs_key.clone(),
                    input_ids: batch.input_ids.clone(),
                    attention_mask: batch.attention_mask.clone(),
                    forward: part,
                    until,
                });
            }
        }
        own
    }

    /// Whether `variant` may run ahead of its step: declared with zero, mean, `add` and
    /// `patch` edits only, and resolved without error.
    fn runs_ahead(&mut self, variant: &str) -> bool {
        let Some(declared) = self.plan.variants.iter().find(|v| v.name == variant) else {
            return false;
        };
        let simple = declared.value.iter().all(|call| {
            matches!(
                InterventionCall::bind(call),
                Ok(InterventionCall::Zero { .. }
                    | InterventionCall::Mean { .. }
                    | InterventionCall::Add { .. }
                    | InterventionCall::Patch { .. })
            )
        });
        simple && self.preparing(|s| s.interventions(variant)).is_ok()
    }

    /// The variants the current step runs after `variant`, then those its repeats run,
    /// in order.
    fn variants_to_come(&self, variant: &str) -> Vec<String> {
        let variants_of = |index: usize| -> Vec<String> {
            let names = match &self.plan.steps[index] {
                crate::plan::Step::Table {
                    source: crate::plan::TableSource::Call { call, .. },
                    ..
                } => call.names(),
                _ => Vec::new(),
            };
            names
                .into_iter()
                .filter(|n| self.plan.variants.iter().any(|v| v.name == *n))
                .map(str::to_owned)
                .collect()
        };
        let own = variants_of(self.step);
        let after = own.iter().position(|v| v == variant).map_or(0, |i| i + 1);
        let mut to_come: Vec<String> = own[after..].to_vec();
        if self.repeated_until.is_some() {
            for later in crate::builtins::graphs::repeats_of(self.plan, self.step) {
                to_come.extend(variants_of(later));
            }
        }
        to_come
    }
}
