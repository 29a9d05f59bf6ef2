//! A session's SAEs: loaded from SAELens folders or trained on the session's model, once
//! each, and spliced into graphs.

use std::path::PathBuf;

use ndarray::{Array2, Axis};

use super::harvest::Activations;
use super::reads::Graph;
use super::{Failure, Session, head_rows, length_sorted_chunks, token_chunks};
use crate::builtins::saes::{SaeSource, Train};
use crate::compile::{Intervention, SaeEdit, Target};
use crate::hooks::HookRef;
use crate::plan::Value;
use crate::results::{Cell, Table};
use crate::runtime::Batch;

/// Activations harvested for SAE training, shared by the SAEs declared on the same hook
/// and dataset until the last of them has trained.
pub(crate) struct Harvest {
    rows: std::sync::Arc<Array2<f32>>,
    users_left: usize,
}

/// How a trained SAE came to be in this run.
pub(crate) enum Trained {
    /// Trained by this run and saved (pinned) at this path, as shown to the user.
    Pinned(String),
    /// Trained by this run, not saved.
    NotPinned,
    /// Read from its pin at this path, trained earlier from the same inputs.
    FromPin(String),
}

impl Trained {
    fn describe(&self) -> String {
        match self {
            Trained::Pinned(at) => format!("trained, pinned at {at}"),
            Trained::NotPinned => "trained, not pinned (no `save`)".into(),
            Trained::FromPin(at) => format!("read from its pin at {at}"),
        }
    }
}

/// An SAE, the hook it reads, and the edit that splices it in.
pub struct SaeSplice {
    pub sae: std::sync::Arc<crate::sae::Sae>,
    pub target: Target,
    pub edit: Intervention,
    /// The spliced graph, as the session caches and records it.
    pub graph: Graph,
}

impl Session<'_, '_, '_> {
    /// What `run.json` records about each SAE the run made or read.
    pub(crate) fn sae_records(&self) -> Vec<crate::results::SaeRecord> {
        self.saes
            .iter()
            .map(|(name, sae)| {
                let declared = self.plan.saes.iter().find(|s| &s.name == name);
                let origin = match declared.map(|s| (s.value.function, s.value.args.get("path"))) {
                    Some(("load", Some(Value::Str(path)))) => format!("load {path}"),
                    Some((function, _)) => match self.trained.get(name) {
                        Some(how) => format!("{function}: {}", how.describe()),
                        None => function.to_owned(),
                    },
                    None => String::new(),
                };
                crate::results::SaeRecord {
                    name: name.clone(),
                    origin,
                    weights_sha256: sae.weights_sha256(),
                    from_pin: matches!(self.trained.get(name), Some(Trained::FromPin(_))),
                }
            })
            .collect()
    }

    /// In a merge, reads the SAEs `call` names (a sharded step's, which the shards
    /// read), so the report records them, and refuses any whose weights differ from
    /// the shards'.
    pub(crate) fn same_saes_as_shards(&mut self, call: &crate::plan::Call) -> Result<(), Failure> {
        for name in call.names() {
            if !self.plan.saes.iter().any(|s| s.name == name) {
                continue;
            }
            let sha = self.sae(name)?.weights_sha256();
            if let Some(shards) = self.shard_saes.get(name)
                && *shards != sha
            {
                return Err(format!(
                    "the shards read other weights for the SAE `{name}` ({}…) than this merge ({}…); run the shards again",
                    &shards[..shards.len().min(16)],
                    &sha[..sha.len().min(16)]
                ));
            }
        }
        Ok(())
    }

    /// Makes the SAE `name` (trains and saves it) unless a step already did.
    pub(crate) fn ensure_sae(&mut self, name: &str) -> Result<(), Failure> {
        self.sae(name).map(|_| ())
    }

    /// An SAE declared with `load`, read once.
    pub(crate) fn sae(&mut self, name: &str) -> Result<std::sync::Arc<crate::sae::Sae>, Failure> {
        if let Some(sae) = self.saes.get(name) {
            return Ok(sae.clone());
        }
        let call = super::declared(&self.plan.saes, name, "SAE")?;
        let sae = match SaeSource::bind(call).map_err(|e| e.to_string())? {
            SaeSource::Load { path, hook } => {
                let mut sae = crate::sae::load(&self.root.join(path)).map_err(|e| e.to_string())?;
                if hook.is_some() {
                    sae.hook = hook;
                }
                sae
            }
            SaeSource::Train(train) => self.preparing(|s| s.train_sae(name, &train))?,
        };
        let sae = std::sync::Arc::new(sae);
        self.saes.insert(name.to_owned(), sae.clone());
        Ok(sae)
    }

    /// Splicing an SAE into the model in place of its hook, without the error term (what
    /// "reconstructed" means in the seed's columns and SAELens' metrics).
    pub(crate) fn sae_splice(&mut self, sae_name: &str) -> Result<SaeSplice, Failure> {
        let sae = self.sae(sae_name)?;
        let hook = sae.hook.clone().ok_or_else(|| {
            format!(
                "SAE `{sae_name}` names no hook in its files; name it where it is loaded: \
                     load(\"...\", hook = blocks.L.hook_resid_post)"
            )
        })?;
        let target = self.target(&hook)?;
        Ok(SaeSplice {
            edit: Intervention::Sae(SaeEdit {
                target: target.clone(),
                sae: sae.clone(),
                error_term: false,
                scale: Vec::new(),
                scale_pos: None,
                acts_output: format!("{sae_name}.hook_sae_acts_post"),
            }),
            graph: Graph::Spliced(sae_name.to_owned()),
            sae,
            target,
        })
    }

    /// The activations an SAE reads: the real tokens of a dataset at its hook (a head's
    /// slice when it has one), in dataset order, from a graph pruned right after the hook;
    /// with a `limit`, only the first `limit` tokens (no later batch is run).
    /// Also returns the shape of one token's value (`[d_head]` for a head, `[n_heads, d_head]`
    /// for a whole per-head hook), since the rows are flattened.
    pub(crate) fn hook_activations(
        &mut self,
        target: &Target,
        dataset: &str,
        limit: Option<usize>,
    ) -> Result<(Array2<f32>, Vec<usize>), Failure> {
        let sequences = self.dataset(dataset)?;
        let limit = limit.unwrap_or(usize::MAX);
        let mut blocks = Vec::new();
        let mut shape = Vec::new();
        let mut rows = 0;
        for chunk in token_chunks(&sequences, self.plan.model.batch_size) {
            if rows >= limit {
                break;
            }
            let batch = self.model.batch(chunk).map_err(Self::runtime)?;
            let forward = self.forward(None, &batch, &[&target.hook])?;
            let activation = &forward.hooks[&target.hook];
            // One token's value: [d_head] for a head, [n_heads, d_head] for a whole hook.
            shape = activation.shape()[2 + usize::from(target.head.is_some())..].to_vec();
            let block = head_rows(activation, &batch, target.head);
            rows += block.nrows();
            blocks.push(block);
        }
        let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
        let mut all = ndarray::concatenate(Axis(0), &views).map_err(|e| e.to_string())?;
        if all.nrows() > limit {
            all = all.slice_move(ndarray::s![..limit, ..]);
        }
        Ok((all, shape))
    }

    /// The activations `train` trains an SAE on: its dataset's first `tokens` tokens at
    /// its hook. SAEs declared on the same hook and dataset share one harvest (as many
    /// tokens as the largest of them reads), kept until the last of them has trained.
    fn training_activations(
        &mut self,
        target: &Target,
        train: &Train,
    ) -> Result<std::sync::Arc<Array2<f32>>, Failure> {
        let key = (target.hook.clone(), target.head, train.dataset.clone());
        if let Some(harvest) = self.harvests.get_mut(&key) {
            let rows = harvest.rows.clone();
            harvest.users_left = harvest.users_left.saturating_sub(1);
            if harvest.users_left == 0 {
                self.harvests.remove(&key);
            }
            return Ok(rows);
        }
        // Every SAE still to be trained on this hook and dataset (this one among them).
        let mut peers = 0;
        let mut tokens = train.config.tokens;
        for call in &self.plan.saes {
            if self.saes.contains_key(&call.name) {
                continue;
            }
            if let Ok(SaeSource::Train(other)) = SaeSource::bind(&call.value)
                && other.dataset == train.dataset
                && self.target(&other.hook).is_ok_and(|t| t == *target)
            {
                peers += 1;
                tokens = tokens.max(other.config.tokens);
            }
        }
        let (rows, _) = self.hook_activations(target, &train.dataset, Some(tokens))?;
        let rows = std::sync::Arc::new(rows);
        if peers > 1 {
            self.harvests.insert(
                key,
                Harvest {
                    rows: rows.clone(),
                    users_left: peers - 1,
                },
            );
        }
        Ok(rows)
    }

    pub(crate) fn train_sae(
        &mut self,
        name: &str,
        train: &Train,
    ) -> Result<crate::sae::Sae, Failure> {
        use crate::sae::train::{Checkpointing, train as run_training};
        let (hook, dataset) = (&train.hook, &train.dataset);
        let save_to = match &train.save {
            Some(path) => Some(self.root.join(path.resolve(&self.values)?)),
            None => None,
        };
        if let Some(dir) = &save_to {
            check_save_paths(&self.scope, dir).map_err(|e| format!("saving `{name}`: {e}"))?;
        }
        let target = self.target(hook)?;
        let total: usize = self.prompt_lengths(dataset)?.iter().sum();
        let tokens = total.min(train.config.tokens);
        if self.harvested.is_none()
            && let Some(width) = crate::hooks::width(hook, Some(&self.model.manifest))
            && let Some(available) = crate::machine::total_memory()
        {
            let needed = (tokens as u64).saturating_mul(width as u64 * 4);
            if needed > available / 2 {
                return Err(format!(
                    "training `{name}` would hold {tokens} activations of width {width} in memory, about {:.1} GiB, more than half of this machine's {:.1} GiB; use a smaller dataset (`take = ...`), or harvest them to disk in shards (`qexp sae harvest`)",
                    needed as f64 / f64::from(1u32 << 30),
                    available as f64 / f64::from(1u32 << 30)
                ));
            }
        }
        let (pin_inputs, dataset_sha256) = self.pin_inputs(train)?;
        if let Some(dir) = &save_to
            && let Some(sae) = self.reuse_pin(name, dir, &pin_inputs)
        {
            return Ok(sae);
        }
        if self.in_shard {
            // Shards on other machines could train different SAEs from the same inputs
            // (their kernels round differently): their rows would not be one table.
            return Err(format!(
                "`{name}` would be trained in every shard: pin it once first with `qexp sae train EXPERIMENT {name}` (its `train(...)` needs `save = \"...\"`; `qexp sae harvest EXPERIMENT {name} --shard I/N` and `qexp sae train ... --harvested` split its harvest, and `qexp slurm` does both), then run the shards, which read the pin"
            ));
        }
        let harvest = match self.harvested.clone() {
            Some(root) => self.mapped_activations(&root, name, train)?,
            None => Activations::Held(self.training_activations(&target, train)?),
        };
        let harvest = harvest.view();
        // A shared harvest may hold more tokens than this SAE reads.
        let activations = harvest.slice(ndarray::s![..harvest.nrows().min(tokens), ..]);
        let config = train.config.clone();
        let inputs = format!(
            "model weights sha256 {}, hook {}{}, dataset `{dataset}` token ids sha256 {dataset_sha256}",
            self.model.manifest.weights_sha256,
            target.hook,
            target
                .head
                .map(|h| format!(" head {h}"))
                .unwrap_or_default(),
        );
        let checkpointing = save_to.as_ref().map(|dir| Checkpointing {
            inputs: inputs.clone(),
            dir: checkpoints_dir(dir),
            every: train.checkpoint_every,
            resume: train.resume,
        });
        let bar = super::progress::bar(
            config.tokens.div_ceil(config.batch_size.max(1)) as u64,
            "steps",
            &format!("training {name}"),
        );
        let (mut sae, summary) = run_training(activations, &config, checkpointing.as_ref(), |p| {
            bar.set_position(p.step as u64);
            if p.step % 10 == 0 || p.step == p.steps {
                bar.set_message(format!(
                    "MSE {:.4}, L0 {:.1}, EV {:.3}, dead {:.1}%",
                    p.mse,
                    p.l0,
                    p.explained_variance,
                    100.0 * p.dead_fraction
                ));
            }
        })
        .map_err(|e| format!("training `{name}`: {e}"))?;
        bar.finish_and_clear();
        sae.hook = Some(HookRef {
            name: target.hook.clone(),
            head: target.head,
            head_from: None,
            pos: None,
        });
        let summary = crate::sae::pin::RecordedSummary {
            activations: activations.nrows(),
            training: summary,
        };
        self.pending.push(training_table(name, &summary));
        match &save_to {
            Some(dir) => {
                let record = crate::sae::pin::TrainingRecord {
                    inputs: pin_inputs,
                    summary,
                    trained_with: format!("qexp {}", env!("CARGO_PKG_VERSION")),
                };
                crate::sae::pin::save(&sae, &record, dir)
                    .map_err(|e| format!("saving `{name}`: {e}"))?;
                self.trained
                    .insert(name.to_owned(), Trained::Pinned(self.shown(dir)));
            }
            None => {
                self.trained.insert(name.to_owned(), Trained::NotPinned);
            }
        }
        Ok(sae)
    }

    /// What a pin of an SAE trained as `train` says it was trained from, and the
    /// hash of its dataset's token ids.
    pub(crate) fn pin_inputs(
        &mut self,
        train: &Train,
    ) -> Result<
        (
            std::collections::BTreeMap<String, serde_json::Value>,
            String,
        ),
        Failure,
    > {
        let target = self.target(&train.hook)?;
        let dataset_sha256 = tokens_sha256(&self.dataset(&train.dataset)?);
        let inputs = crate::sae::pin::inputs(
            &crate::sae::pin::Provenance {
                model_weights_sha256: &self.model.manifest.weights_sha256,
                hook: &target.hook,
                head: target.head,
                dataset_token_ids_sha256: &dataset_sha256,
            },
            &train.config,
        );
        Ok((inputs, dataset_sha256))
    }

    /// The SAE pinned at `dir` if it was trained from `inputs` (and `--retrain` is not
    /// given), with its recorded training summary queued as the step's table; `None`
    /// (after a note saying why) when it must be trained.
    fn reuse_pin(
        &mut self,
        name: &str,
        dir: &std::path::Path,
        inputs: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Option<crate::sae::Sae> {
        let record = crate::sae::pin::read(dir)?;
        let shown = self.shown(dir);
        let changes = crate::sae::pin::changes(&record.inputs, inputs);
        if !changes.is_empty() {
            self.note(format!(
                "`{name}`: the SAE pinned at {shown} was trained from other inputs ({}); training it again",
                changes.join(", ")
            ));
            return None;
        }
        if self.retrain {
            self.note(format!(
                "`{name}`: training again over the pin at {shown} (--retrain)"
            ));
            return None;
        }
        match crate::sae::load(dir) {
            Ok(sae) => {
                self.pending.push(training_table(name, &record.summary));
                self.trained
                    .insert(name.to_owned(), Trained::FromPin(shown));
                Some(sae)
            }
            Err(e) => {
                self.note(format!(
                    "`{name}`: the pin at {shown} cannot be read ({e}); training it again"
                ));
                None
            }
        }
    }

    /// A path as the user wrote it: relative to the project where it is inside.
    pub(crate) fn shown(&self, path: &std::path::Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// An SAE's activations over `sequences`, batch by batch, from a graph pruned to
    /// its hook: `visit(each row's prompt index, batch, the SAE's input [tokens, d_in],
    /// its activations [tokens, d_sae])`. Prompts run in batches of similar length, not
    /// in dataset order, so visitors must not depend on the order.
    pub(crate) fn for_each_sae_batch(
        &mut self,
        sae: &crate::sae::Sae,
        target: &Target,
        sequences: &[Vec<u32>],
        mut visit: impl FnMut(&[usize], &Batch, &Array2<f32>, &Array2<f32>),
    ) -> Result<(), Failure> {
        for prompts in length_sorted_chunks(sequences, self.plan.model.batch_size) {
            let batch = self.batch_of(sequences, &prompts)?;
            let forward = self.forward(None, &batch, &[&target.hook])?;
            let x = head_rows(&forward.hooks[&target.hook], &batch, target.head);
            visit(&prompts, &batch, &x, &sae.encode(x.view()));
        }
        Ok(())
    }
}

/// The table an SAE's training adds to the report: what training reported.
fn training_table(name: &str, summary: &crate::sae::pin::RecordedSummary) -> Table {
    let mut table = Table::new(
        &format!("{name}_training"),
        &[
            "activations",
            "steps",
            "tokens",
            "mse",
            "l0",
            "explained_variance",
            "dead_fraction",
            "resampled",
        ],
    );
    let training = &summary.training;
    table.rows.push(vec![
        Cell::Integer(summary.activations as i64),
        Cell::Integer(training.steps as i64),
        Cell::Integer(training.tokens as i64),
        Cell::Number(training.mse),
        Cell::Number(training.l0),
        Cell::Number(training.explained_variance),
        Cell::Number(training.dead_fraction),
        Cell::Integer(training.resampled as i64),
    ]);
    table
}

/// How many of the first prompts it takes to hold `budget` tokens (all, if they hold
/// fewer).
pub fn prompts_holding(lengths: impl IntoIterator<Item = usize>, budget: usize) -> usize {
    let mut tokens = 0;
    let mut prompts = 0;
    for length in lengths {
        if tokens >= budget {
            break;
        }
        tokens += length;
        prompts += 1;
    }
    prompts
}

/// Whether an SAE may be saved to `dir` (and its checkpoints beside it).
pub fn check_save_paths(
    scope: &crate::output::Scope,
    dir: &std::path::Path,
) -> Result<(), crate::output::OutputError> {
    use crate::output::Kind;
    scope.check(dir, Kind::Sae)?;
    scope.check(&checkpoints_dir(dir), Kind::Checkpoints)
}

/// Where a saved SAE's training checkpoints go: beside it, so saving the finished SAE
/// (which replaces its folder whole) leaves them alone.
pub fn checkpoints_dir(sae_dir: &std::path::Path) -> PathBuf {
    let name = sae_dir
        .file_name()
        .map_or_else(|| "sae".into(), |n| n.to_string_lossy().into_owned());
    sae_dir.with_file_name(format!("{name}.checkpoints"))
}

/// A hash of a dataset's token ids, sequence by sequence.
pub(crate) fn tokens_sha256(sequences: &[Vec<u32>]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for sequence in sequences {
        hasher.update((sequence.len() as u64).to_le_bytes());
        for token in sequence {
            hasher.update(token.to_le_bytes());
        }
    }
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::prompts_holding;

    #[test]
    fn a_token_budget_takes_the_first_prompts_until_it_is_reached() {
        let prompts = [3, 4, 5];
        assert_eq!(prompts_holding(prompts, 1), 1);
        assert_eq!(prompts_holding(prompts, 3), 1);
        assert_eq!(prompts_holding(prompts, 4), 2);
        assert_eq!(prompts_holding(prompts, 7), 2);
        assert_eq!(prompts_holding(prompts, 100), 3);
    }
}
