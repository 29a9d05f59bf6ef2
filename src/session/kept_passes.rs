//! The clean model's passes a run has made, kept within a memory budget so that later
//! steps over the same prompts read them instead of running the model again: every
//! pass of a sweep compares its variants with the same clean run. (A variant's passes
//! are not kept: a loop's passes each run variants of their own.) A pass is found by
//! its tokens and the outputs asked for, compared in full.
//!
//! Only a step that a later step repeats (the executor tells which: the same call but
//! for its variants, as a `for` loop's passes are) keeps its passes, and they go once
//! the last such step is done, so a run whose steps each read their prompts once holds
//! nothing extra. When the budget is reached, passes no read of the current step
//! touched go first; a pass the current step would have to evict its own passes for is
//! not kept, so a scan of more batches than fit keeps its first ones for the next step
//! instead of evicting each batch just before it is read again.

use std::collections::VecDeque;

use ndarray::Array2;

use crate::runtime::{Batch, Forward};

/// At most this much of the machine's memory, and never more than [`MAX_BUDGET`].
const MEMORY_FRACTION: u64 = 16;
const MAX_BUDGET: usize = 1 << 30;

/// The budget in words, for `qexp plan` (keep it with the constants above).
pub const BUDGET_IN_WORDS: &str = "1 GiB or a sixteenth of the machine's memory, if less";

struct Entry {
    outputs: String,
    input_ids: Array2<i64>,
    attention_mask: Array2<i64>,
    forward: Forward,
    bytes: usize,
    /// The step that last read or kept it.
    step: usize,
    /// The last step that may read it.
    until: usize,
}

pub(crate) struct KeptPasses {
    /// Least recently read first.
    entries: VecDeque<Entry>,
    bytes: usize,
    budget: usize,
    step: usize,
    /// The last step that repeats the current one, when one does: passes are kept only
    /// then, and until then.
    keep_until: Option<usize>,
}

/// The bytes of clean passes kept on this machine ([`BUDGET_IN_WORDS`]).
pub fn budget() -> usize {
    crate::machine::total_memory()
        .map_or(MAX_BUDGET, |total| (total / MEMORY_FRACTION) as usize)
        .min(MAX_BUDGET)
}

impl Default for KeptPasses {
    fn default() -> Self {
        Self::with_budget(budget())
    }
}

impl KeptPasses {
    pub fn with_budget(budget: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            budget,
            step: 0,
            keep_until: None,
        }
    }

    /// Marks the start of step `step`, which step `keep_until` repeats last (`None`:
    /// no later step does), and drops the passes no step from here on may read.
    pub fn start_step(&mut self, step: usize, keep_until: Option<usize>) {
        self.step = step;
        self.keep_until = keep_until;
        let mut freed = 0;
        self.entries.retain(|e| {
            let keep = e.until >= step;
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        self.bytes -= freed;
    }

    /// A copy of the clean pass over `batch` with `outputs`, if kept.
    pub fn get(&mut self, batch: &Batch, outputs: &[&str]) -> Option<Forward> {
        let outputs = outputs.join("\n");
        let index = self.entries.iter().position(|e| {
            e.outputs == outputs
                && e.input_ids == batch.input_ids
                && e.attention_mask == batch.attention_mask
        })?;
        let mut entry = self.entries.remove(index)?;
        entry.step = self.step;
        entry.until = entry.until.max(self.keep_until.unwrap_or(0));
        let forward = entry.forward.clone();
        self.entries.push_back(entry);
        Some(forward)
    }

    /// Keeps `forward`, the clean pass over `batch` with `outputs`, if the current step
    /// is repeated and it fits the budget.
    pub fn insert(&mut self, batch: &Batch, outputs: &[&str], forward: &Forward) {
        let Some(until) = self.keep_until else {
            return;
        };
        let bytes = forward.bytes();
        if bytes > self.budget {
            return;
        }
        while self.bytes + bytes > self.budget {
            let Some(stale) = self.entries.iter().position(|e| e.step < self.step) else {
                return;
            };
            let evicted = self.entries.remove(stale).expect("found above");
            self.bytes -= evicted.bytes;
        }
        self.bytes += bytes;
        self.entries.push_back(Entry {
            outputs: outputs.join("\n"),
            input_ids: batch.input_ids.clone(),
            attention_mask: batch.attention_mask.clone(),
            forward: forward.clone(),
            bytes,
            step: self.step,
            until,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(value: f32, positions: usize) -> Forward {
        Forward {
            logits: Some(ndarray::Array3::from_elem((1, positions, 4), value)),
            hooks: Default::default(),
        }
    }

    #[test]
    fn a_pass_is_found_by_its_tokens_and_outputs_and_stale_ones_go_first() {
        // Room for two passes of 2 positions x 4 logits.
        let mut kept = KeptPasses::with_budget(2 * 2 * 4 * 4);
        let a = Batch::right_padded(&[vec![1, 2]], 0);
        let b = Batch::right_padded(&[vec![1, 3]], 0);
        let c = Batch::right_padded(&[vec![4, 3]], 0);
        kept.start_step(0, Some(5));
        kept.insert(&a, &["logits"], &pass(1.0, 2));
        kept.insert(&b, &["logits"], &pass(2.0, 2));
        assert!(
            kept.get(&a, &["logits", "blocks.0.hook_resid_pre"])
                .is_none()
        );
        assert_eq!(
            kept.get(&a, &["logits"]).unwrap().logits,
            pass(1.0, 2).logits
        );
        // Full, and both passes are this step's: `c` is not kept.
        kept.insert(&c, &["logits"], &pass(3.0, 2));
        assert!(kept.get(&c, &["logits"]).is_none());
        // The next step reads `b`; `a` is stale and makes room for `c`.
        kept.start_step(1, Some(5));
        assert!(kept.get(&b, &["logits"]).is_some());
        kept.insert(&c, &["logits"], &pass(3.0, 2));
        assert!(kept.get(&a, &["logits"]).is_none());
        assert!(kept.get(&b, &["logits"]).is_some());
        assert!(kept.get(&c, &["logits"]).is_some());
        // Larger than the whole budget: not kept, nothing evicted.
        kept.start_step(2, Some(5));
        let long = Batch::right_padded(&[vec![5; 8]], 0);
        kept.insert(&long, &["logits"], &pass(4.0, 8));
        assert!(kept.get(&long, &["logits"]).is_none());
        assert!(kept.get(&b, &["logits"]).is_some());
    }

    #[test]
    fn only_a_repeated_step_keeps_passes_and_only_until_its_last_repeat() {
        let mut kept = KeptPasses::with_budget(1 << 20);
        let a = Batch::right_padded(&[vec![1, 2]], 0);
        kept.start_step(0, None);
        kept.insert(&a, &["logits"], &pass(1.0, 2));
        assert!(
            kept.get(&a, &["logits"]).is_none(),
            "no later step repeats it"
        );
        kept.start_step(1, Some(3));
        kept.insert(&a, &["logits"], &pass(1.0, 2));
        kept.start_step(3, None);
        assert!(
            kept.get(&a, &["logits"]).is_some(),
            "the last repeat reads it"
        );
        kept.start_step(4, None);
        assert!(kept.get(&a, &["logits"]).is_none(), "gone after it");
        assert_eq!(kept.bytes, 0);
    }
}
