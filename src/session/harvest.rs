//! SAE training activations harvested in shards into an on-disk store
//! (`crate::sae::store`), and read back memory-mapped for training.

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2};

use super::{Failure, Session, head_rows, token_chunks};
use crate::builtins::saes::{SaeSource, Train};
use crate::sae::store;
use crate::shard::Shard;

/// The rows an SAE trains on: harvested in this process, or mapped from a store.
pub(crate) enum Activations {
    Held(std::sync::Arc<Array2<f32>>),
    Mapped(store::Mapped),
}

impl Activations {
    pub(crate) fn view(&self) -> ArrayView2<'_, f32> {
        match self {
            Activations::Held(rows) => rows.view(),
            Activations::Mapped(mapped) => mapped.view(),
        }
    }
}

/// What one harvest shard wrote.
#[derive(Debug)]
pub struct HarvestShare {
    pub rows: usize,
    pub folder: PathBuf,
    /// Set when the SAE's pin already holds it trained from the same inputs.
    pub pinned: bool,
}

impl Session<'_, '_, '_> {
    /// The store inputs of `train`'s activations: hook, width, model, dataset, tokens.
    pub(crate) fn store_inputs(&mut self, train: &Train) -> Result<store::Inputs, Failure> {
        let target = self.target(&train.hook)?;
        let sequences = self.dataset(&train.dataset)?;
        let total: usize = sequences.iter().map(Vec::len).sum();
        let d_in =
            crate::hooks::width(&train.hook, Some(&self.model.manifest)).ok_or_else(|| {
                format!(
                    "the width of {} is not in the model's manifest",
                    train.hook.name
                )
            })?;
        Ok(store::Inputs {
            hook: target.hook,
            head: target.head,
            d_in,
            model_weights_sha256: self.model.manifest.weights_sha256.clone(),
            dataset_token_ids_sha256: super::saes::tokens_sha256(&sequences),
            tokens: total.min(train.config.tokens),
        })
    }

    /// The store of SAE `name`'s activations under `root`, memory-mapped.
    pub(crate) fn mapped_activations(
        &mut self,
        root: &Path,
        name: &str,
        train: &Train,
    ) -> Result<Activations, Failure> {
        let inputs = self.store_inputs(train)?;
        let mapped = store::open(&root.join(name), &inputs).map_err(|e| e.to_string())?;
        Ok(Activations::Mapped(mapped))
    }

    /// Harvests `shard`'s share of the activations SAE `name` trains on into its store
    /// under `root`: a contiguous run of the batches a single process would run (the
    /// same batches, so the same numbers), cut at equal token counts.
    pub fn harvest_share(
        &mut self,
        name: &str,
        shard: Shard,
        root: &Path,
    ) -> Result<HarvestShare, Failure> {
        let declared = self
            .plan
            .saes
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no SAE `{name}` is declared"))?;
        let SaeSource::Train(train) =
            SaeSource::bind(&declared.value).map_err(|e| e.to_string())?
        else {
            return Err(format!(
                "`{name}` is made with `load`, not trained: nothing to harvest"
            ));
        };
        let folder = root.join(name);
        if self.pinned_already(name, &train)? {
            return Ok(HarvestShare {
                rows: 0,
                folder,
                pinned: true,
            });
        }
        let inputs = self.store_inputs(&train)?;
        let target = self.target(&train.hook)?;
        let sequences = self.dataset(&train.dataset)?;
        let chunks = token_chunks(&sequences, self.plan.model.batch_size);
        // Only the batches that reach the first `tokens` tokens are shared out (the
        // last of them counted only as far as it is read), so every shard has work.
        let mut chunk_tokens: Vec<usize> = Vec::new();
        let mut before = 0;
        for chunk in &chunks {
            if before >= inputs.tokens {
                break;
            }
            let tokens: usize = chunk.iter().map(Vec::len).sum();
            chunk_tokens.push(tokens.min(inputs.tokens - before));
            before += tokens;
        }
        let mine = crate::shard::share(&chunk_tokens, shard);
        let first_row: usize = chunk_tokens[..mine.start]
            .iter()
            .sum::<usize>()
            .min(inputs.tokens);
        let wanted = inputs.tokens - first_row;
        let mut writer = store::ShardWriter::new(&folder, shard.index + 1, shard.count, &inputs)
            .map_err(|e| e.to_string())?;
        let mut rows = 0;
        for chunk in &chunks[mine] {
            if rows >= wanted {
                break;
            }
            let batch = self.model.batch(chunk).map_err(Self::runtime)?;
            let forward = self.forward(None, &batch, &[&target.hook])?;
            let block = head_rows(&forward.hooks[&target.hook], &batch, target.head);
            if block.ncols() != inputs.d_in {
                return Err(format!(
                    "{} gave rows of {} values, not the {} its manifest says",
                    target.hook,
                    block.ncols(),
                    inputs.d_in
                ));
            }
            let take = block.nrows().min(wanted - rows);
            writer
                .append(block.slice(ndarray::s![..take, ..]))
                .map_err(|e| e.to_string())?;
            rows += take;
        }
        writer.finish(first_row).map_err(|e| e.to_string())?;
        Ok(HarvestShare {
            rows,
            folder,
            pinned: false,
        })
    }

    /// Whether SAE `name`'s pin was trained from `train`'s inputs (so training would
    /// read it, not train).
    fn pinned_already(&mut self, name: &str, train: &Train) -> Result<bool, Failure> {
        let Some(path) = &train.save else {
            return Ok(false);
        };
        if self.retrain {
            return Ok(false);
        }
        let dir = self.root.join(path.resolve(&self.values)?);
        let (pin_inputs, _) = self.pin_inputs(train)?;
        let pinned = crate::sae::pin::read(&dir)
            .is_some_and(|record| crate::sae::pin::changes(&record.inputs, &pin_inputs).is_empty());
        if pinned {
            let shown = self.shown(&dir);
            self.note(format!(
                "`{name}` is pinned at {shown} with the same inputs: nothing to harvest"
            ));
        }
        Ok(pinned)
    }
}
