//! A run's session: the model, its datasets (tokenized on first use), its variants
//! (compiled on first use), its SAEs (loaded or trained once), and the tables and values
//! steps have made. Built-ins' executors read and run everything through it; it
//! records which graphs and hooks each step reads, so a test can hold them to the plan.

mod harvest;
mod passes_ahead;
pub use harvest::HarvestShare;
pub mod kept_passes;
pub mod progress;
pub mod reads;
mod rows;
mod saes;
mod shared_graphs;
mod variants;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::builtins::args::Text;
use crate::builtins::datasets::DatasetSource;
use crate::compile::{Intervention, Target};
use crate::hooks::{HookRef, LOGITS};
use crate::plan::{Named, Plan, Value};
use crate::results::Table;
use crate::runtime::{Batch, Forward, HookedModel, RuntimeError};
use reads::{Graph, Read};

pub(crate) use rows::finite;
pub use rows::{
    argmax_attention, context, error_chain, head_rows, length_sorted_chunks, norm, position,
    token_chunks,
};
pub use saes::{SaeSplice, check_save_paths, checkpoints_dir, prompts_holding};
pub(crate) use variants::PatchSource;

/// Why a step failed, in words for the user (the executor adds which step).
pub type Failure = String;

pub struct Session<'p, 'm, 'r> {
    pub plan: &'p Plan,
    pub model: &'m mut HookedModel<'r>,
    /// Where relative dataset paths start: the folder qexp runs in, which the CLI has
    /// made the experiment's project root.
    pub root: PathBuf,
    /// Where the experiment may save what it makes.
    pub(crate) scope: crate::output::Scope,
    pub tables: BTreeMap<String, Table>,
    pub values: BTreeMap<String, Value>,
    pub(crate) datasets: BTreeMap<String, Vec<Vec<u32>>>,
    pub(crate) prompts: BTreeMap<String, Vec<String>>,
    pub(crate) variants: BTreeMap<String, Vec<Intervention>>,
    /// Each variant's `patch` sources, in the order of its graph inputs.
    pub(crate) patches: BTreeMap<String, Vec<PatchSource>>,
    pub(crate) saes: BTreeMap<String, std::sync::Arc<crate::sae::Sae>>,
    /// Training activations that another SAE still to be trained will read.
    pub(crate) harvests: std::collections::HashMap<(String, Option<usize>, String), saes::Harvest>,
    /// Each (hook, dataset) mean a `mean` ablation took, so a sweep of mean ablations
    /// over one hook runs the dataset once.
    pub(crate) means: BTreeMap<(String, String), ndarray::ArrayD<f32>>,
    /// Tables made along the way (an SAE's training summary), shown before the step
    /// that caused them.
    pub pending: Vec<Table>,
    /// What the current step read, for checking it against the plan.
    reads: Vec<Read>,
    /// Above zero while preparing a variant or an SAE.
    preparing: usize,
    /// Train every SAE again, even where a pin with the same inputs exists (`--retrain`).
    pub retrain: bool,
    /// How each trained SAE came to be, for `run.json`.
    pub(crate) trained: BTreeMap<String, saes::Trained>,
    /// The tables of the report this run replaces (see `results::tolerance::settle`).
    pub earlier: BTreeMap<String, crate::results::tolerance::Written>,
    /// The compiled graph each variant runs, shared by variants of one structure.
    pub(crate) shared_graphs: shared_graphs::SharedGraphs,
    /// Clean passes kept for later steps over the same prompts.
    kept_passes: kept_passes::KeptPasses,
    /// Variant passes run ahead of their steps, as rows of one pass.
    passes_ahead: passes_ahead::PassesAhead,
    /// The current step, and the last later step that repeats it.
    step: usize,
    repeated_until: Option<usize>,
    /// Set in a shard (`qexp run --shard`): an SAE is read from its pin, never
    /// trained, so every shard reads the same one.
    pub in_shard: bool,
    /// In a merge, the shards' parts of each sharded table, by table name: the table
    /// is made from them instead of from the model.
    pub shard_parts: BTreeMap<String, Vec<crate::shard::Part>>,
    /// In a merge, the weights (SHA-256) of each SAE the shards read.
    pub shard_saes: BTreeMap<String, String>,
    /// In a merge, the `let` values without measured numbers the shards computed.
    pub shard_values: BTreeMap<String, String>,
    /// Where trained SAEs read their activations from, harvested in shards (one store
    /// per SAE, by name), instead of harvesting them in memory.
    pub harvested: Option<PathBuf>,
}

impl<'p, 'm, 'r> Session<'p, 'm, 'r> {
    pub fn new(
        plan: &'p Plan,
        model: &'m mut HookedModel<'r>,
        root: PathBuf,
        scope: crate::output::Scope,
    ) -> Self {
        Self {
            plan,
            model,
            root,
            scope,
            tables: BTreeMap::new(),
            values: BTreeMap::new(),
            datasets: BTreeMap::new(),
            prompts: BTreeMap::new(),
            variants: BTreeMap::new(),
            patches: BTreeMap::new(),
            saes: BTreeMap::new(),
            harvests: std::collections::HashMap::new(),
            means: BTreeMap::new(),
            pending: Vec::new(),
            reads: Vec::new(),
            preparing: 0,
            retrain: false,
            trained: BTreeMap::new(),
            earlier: BTreeMap::new(),
            shared_graphs: shared_graphs::SharedGraphs::default(),
            kept_passes: kept_passes::KeptPasses::default(),
            passes_ahead: passes_ahead::PassesAhead::default(),
            step: 0,
            repeated_until: None,
            in_shard: false,
            shard_parts: BTreeMap::new(),
            shard_saes: BTreeMap::new(),
            shard_values: BTreeMap::new(),
            harvested: None,
        }
    }

    /// Gives `table`'s numbers within tolerance of the replaced report's table of the same
    /// name that table's values (see `results::tolerance::settle`).
    pub fn settle(&self, table: &mut crate::results::Table) {
        if let Some(earlier) = self.earlier.get(&table.name) {
            crate::results::tolerance::settle(table, earlier);
        }
    }

    /// Tells the user something about the run now, on stderr (a pin retrained, and why).
    pub(crate) fn note(&self, text: String) {
        eprintln!("note: {text}");
    }

    pub(crate) fn runtime(error: RuntimeError) -> Failure {
        error_chain(&error)
    }

    /// How many tokens each prompt of a dataset has, without copying its prompts.
    pub(crate) fn prompt_lengths(&mut self, name: &str) -> Result<Vec<usize>, Failure> {
        if !self.datasets.contains_key(name) {
            self.dataset(name)?;
        }
        Ok(self.datasets[name].iter().map(Vec::len).collect())
    }

    /// A dataset's prompts as token ids (BOS as the model expects, cut to the context and
    /// to `max_tokens`).
    pub(crate) fn dataset(&mut self, name: &str) -> Result<Vec<Vec<u32>>, Failure> {
        if let Some(tokens) = self.datasets.get(name) {
            return Ok(tokens.clone());
        }
        let call = declared(&self.plan.datasets, name, "dataset")?;
        let source = DatasetSource::bind(call).map_err(|e| e.to_string())?;
        let prepend = self.model.manifest.special_tokens.prepend_bos;
        let special = &self.model.manifest.special_tokens;
        let special: Vec<u32> = [special.bos, special.eos, Some(special.pad)]
            .into_iter()
            .flatten()
            .collect();
        let d_vocab = self.model.manifest.config.d_vocab;
        if let Some(generated) = source.kind.generated(d_vocab, &special) {
            let bos = self.model.manifest.special_tokens.bos.filter(|_| prepend);
            let mut all = Vec::with_capacity(generated.len());
            let mut texts = Vec::with_capacity(generated.len());
            for ids in generated {
                let tokens: Vec<u32> = bos.into_iter().chain(ids).collect();
                if tokens.len() > self.model.manifest.config.n_ctx {
                    return Err(format!(
                        "dataset `{name}` makes prompts of {} tokens, more than the model's context of {}; ask for fewer tokens",
                        tokens.len(),
                        self.model.manifest.config.n_ctx
                    ));
                }
                texts.push(self.model.to_string(&tokens).map_err(Self::runtime)?);
                all.push(tokens);
            }
            self.prompts.insert(name.to_owned(), texts);
            self.datasets.insert(name.to_owned(), all.clone());
            return Ok(all);
        }
        let prompts = crate::builtins::datasets::load(&source, &self.root)
            .map_err(|e| format!("dataset `{name}`: {e}"))?;
        let max_tokens = source.max_tokens;
        let n_ctx = self.model.manifest.config.n_ctx;
        let mut all = Vec::with_capacity(prompts.len());
        for (index, prompt) in prompts.iter().enumerate() {
            let mut tokens = self
                .model
                .to_tokens(prompt, prepend)
                .map_err(Self::runtime)?;
            match max_tokens {
                Some(limit) => tokens.truncate(limit.min(n_ctx)),
                None if tokens.len() > n_ctx => {
                    return Err(format!(
                        "prompt {index} of dataset `{name}` has {} tokens, more than the model's context of {n_ctx}; give the dataset `max_tokens = {n_ctx}` (or less) to cut prompts",
                        tokens.len()
                    ));
                }
                None => {}
            }
            all.push(tokens);
        }
        self.prompts.insert(name.to_owned(), prompts);
        self.datasets.insert(name.to_owned(), all.clone());
        Ok(all)
    }

    pub(crate) fn target(&self, hook: &HookRef) -> Result<Target, Failure> {
        let head = match &hook.head_from {
            Some(name) => match self.values.get(name) {
                Some(Value::Head { layer, head }) => {
                    if crate::hooks::layer_of(&hook.name) != Some(*layer) {
                        return Err(format!(
                            "{name} is L{layer}H{head}, which is not in the layer of `{}`",
                            hook.name
                        ));
                    }
                    Some(*head)
                }
                _ => return Err(format!("`{name}` has no value")),
            },
            None => hook.head,
        };
        Ok(Target {
            hook: hook.name.clone(),
            head,
            pos: hook.pos,
        })
    }

    /// Runs `batch` under a variant (`None`: the clean model), returning `outputs`.
    pub(crate) fn forward(
        &mut self,
        variant: Option<&str>,
        batch: &Batch,
        outputs: &[&str],
    ) -> Result<Forward, Failure> {
        let graph = variant.map_or(Graph::Clean, |v| Graph::Variant(v.to_owned()));
        for output in outputs {
            self.note_read(graph.clone(), *output);
        }
        if variant.is_none()
            && let Some(kept) = self.kept_passes.get(batch, outputs)
        {
            return Ok(kept);
        }
        let forward = self.run_pass(variant, batch, outputs)?;
        if variant.is_none() {
            self.kept_passes.insert(batch, outputs, &forward);
        }
        Ok(forward)
    }

    /// [`Self::forward`] without the kept passes.
    fn run_pass(
        &mut self,
        variant: Option<&str>,
        batch: &Batch,
        outputs: &[&str],
    ) -> Result<Forward, Failure> {
        let Some(variant) = variant else {
            let logits = outputs.contains(&LOGITS);
            let hooks: Vec<&str> = outputs.iter().copied().filter(|o| *o != LOGITS).collect();
            return finite(None, self.model.forward(batch, logits, &hooks));
        };
        if let Some(ahead) = self.variant_pass_ahead(variant, batch, outputs) {
            return ahead;
        }
        let outputs_key = outputs.join(",");
        self.variant_graph(variant, outputs, None)?;
        let mut feeds = self.preparing(|s| s.patch_feeds(variant, batch))?;
        let graph = self
            .shared_graphs
            .get(variant, &outputs_key)
            .expect("compiled by variant_graph");
        feeds.extend(graph.feeds.iter().cloned());
        let forward = self
            .model
            .forward_cached(&graph.key, batch, &feeds)
            .expect("prepared by variant_graph");
        finite(Some(variant), forward)
    }

    /// Runs `batch` with ad-hoc `edits` (an SAE spliced in, its hook ablated: not a
    /// declared variant), cached as `graph`.
    pub(crate) fn forward_edits(
        &mut self,
        graph: &Graph,
        edits: &[Intervention],
        batch: &Batch,
        outputs: &[&str],
    ) -> Result<Forward, Failure> {
        self.forward_edits_fed(graph, edits, batch, &[], outputs)
    }

    /// [`Self::forward_edits`] for edits that read graph inputs of their own (a
    /// patch's values), fed from `feeds`.
    pub(crate) fn forward_edits_fed(
        &mut self,
        graph: &Graph,
        edits: &[Intervention],
        batch: &Batch,
        feeds: &[(String, ndarray::ArrayD<f32>)],
        outputs: &[&str],
    ) -> Result<Forward, Failure> {
        for output in outputs {
            self.note_read(graph.clone(), *output);
        }
        let key = format!("{graph}|{}", outputs.join(","));
        if let Some(forward) = self.model.forward_cached(&key, batch, feeds) {
            return finite(None, forward);
        }
        let compiled = self.edits_graph(edits, outputs)?;
        finite(
            None,
            self.model.forward_graph_fed(&key, &compiled, batch, feeds),
        )
    }

    /// Releases the compiled sessions of an ad-hoc `graph` (each holds a copy of the
    /// weights) once a step is done with it.
    pub(crate) fn forget_graph(&mut self, graph: &Graph) {
        self.model.forget_graphs(&graph.to_string());
    }

    /// Records that the current step read `output` from `graph` (unless the read serves
    /// a variant's or an SAE's preparation, which `qexp plan` lists on its own).
    pub(crate) fn note_read(&mut self, graph: Graph, output: impl Into<String>) {
        if self.preparing == 0 {
            let read = Read {
                graph,
                output: output.into(),
            };
            if !self.reads.contains(&read) {
                self.reads.push(read);
            }
        }
    }

    /// Marks the start of step `step`, which step `repeated_until` repeats last (see
    /// `kept_passes`: only then are its passes kept for later steps).
    pub fn start_step(&mut self, step: usize, repeated_until: Option<usize>) {
        self.kept_passes.start_step(step, repeated_until);
        self.passes_ahead.start_step(step);
        self.step = step;
        self.repeated_until = repeated_until;
    }

    /// Variant passes that ran as rows of another variant's pass (see `passes_ahead`).
    pub fn variant_passes_run_ahead(&self) -> usize {
        self.passes_ahead.run_ahead
    }

    /// The reads recorded since the last call.
    pub fn take_reads(&mut self) -> Vec<Read> {
        std::mem::take(&mut self.reads)
    }

    /// Runs `work` as preparation (means, patch sources, SAE training): its reads are
    /// not the step's.
    pub(crate) fn preparing<T>(&mut self, work: impl FnOnce(&mut Self) -> T) -> T {
        self.preparing += 1;
        let out = work(self);
        self.preparing -= 1;
        out
    }

    /// A table made by an earlier step.
    pub(crate) fn table(&self, name: &str) -> Result<&Table, Failure> {
        self.tables
            .get(name)
            .ok_or_else(|| format!("table `{name}` has not been made"))
    }

    /// Prompts per forward pass.
    pub(crate) fn batch_size(&self) -> usize {
        self.plan.model.batch_size
    }

    /// The prompts of `sequences` at `prompts` (one batch of [`length_sorted_chunks`])
    /// padded into one batch.
    pub(crate) fn batch_of(
        &self,
        sequences: &[Vec<u32>],
        prompts: &[usize],
    ) -> Result<Batch, Failure> {
        let rows: Vec<&[u32]> = prompts.iter().map(|&i| sequences[i].as_slice()).collect();
        self.model.batch(&rows).map_err(Self::runtime)
    }

    /// The model's final norm and unembedding, for reading residual-stream vectors as
    /// logits (direct logit attribution, the logit lens).
    pub(crate) fn readout(&self) -> Result<crate::analysis::logit_attribution::Readout, Failure> {
        let config = &self.model.manifest.config;
        let ln_w = self
            .model
            .weight("ln_final.w")
            .map_err(Self::runtime)?
            .into_dimensionality::<ndarray::Ix1>()
            .map_err(|e| e.to_string())?;
        let unembed = self
            .model
            .weight(if config.tied_embeddings {
                "embed.W_E"
            } else {
                "unembed.W_U"
            })
            .map_err(Self::runtime)?
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|e| e.to_string())?;
        Ok(crate::analysis::logit_attribution::Readout {
            normalization: config.normalization,
            ln_w,
            unembed,
            tied: config.tied_embeddings,
        })
    }

    /// [`Self::answer_token`] of an answer given in the source or computed by a `let`, as
    /// an index into the logits.
    pub(crate) fn answer(&self, answer: &crate::builtins::args::Text) -> Result<usize, Failure> {
        Ok(self.answer_token(&answer.resolve(&self.values)?)? as usize)
    }

    /// The one token an answer stands for (`" says"`); an answer of several tokens is
    /// refused, naming its pieces, rather than scored by its first.
    pub(crate) fn answer_token(&self, answer: &str) -> Result<u32, Failure> {
        let tokens = self.model.to_tokens(answer, false).map_err(Self::runtime)?;
        match tokens.as_slice() {
            [one] => Ok(*one),
            [] => Err("the answer is empty".to_owned()),
            several => {
                let pieces = self.str_tokens(several)?;
                Err(format!(
                    "the answer {answer:?} is {} tokens ({}); an answer is scored as one next token, so give one: {:?}",
                    several.len(),
                    pieces
                        .iter()
                        .map(|p| format!("{p:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    pieces[0]
                ))
            }
        }
    }

    /// A prompt's tokens, with BOS when the model expects it.
    pub(crate) fn prompt_tokens(&self, prompt: &str) -> Result<Vec<u32>, Failure> {
        let prepend = self.model.manifest.special_tokens.prepend_bos;
        self.model.to_tokens(prompt, prepend).map_err(Self::runtime)
    }

    /// A measurement's prompt argument (given, or a `let`'s text) as tokens and as the
    /// one-row batch that runs them.
    pub(crate) fn one_prompt(&self, prompt: &Text) -> Result<OnePrompt, Failure> {
        let tokens = self.prompt_tokens(&prompt.resolve(&self.values)?)?;
        let batch = self
            .model
            .batch(std::slice::from_ref(&tokens))
            .map_err(Self::runtime)?;
        Ok(OnePrompt { tokens, batch })
    }

    pub(crate) fn str_tokens(&self, tokens: &[u32]) -> Result<Vec<String>, Failure> {
        self.model.to_str_tokens(tokens).map_err(Self::runtime)
    }
}

/// One prompt's tokens and their one-row batch (see [`Session::one_prompt`]).
pub(crate) struct OnePrompt {
    pub tokens: Vec<u32>,
    pub batch: Batch,
}

/// What the plan declares as `name` among `declared` (datasets, SAEs, variants).
fn declared<'p, T>(declared: &'p [Named<T>], name: &str, what: &str) -> Result<&'p T, Failure> {
    declared
        .iter()
        .find(|d| d.name == name)
        .map(|d| &d.value)
        .ok_or_else(|| format!("no {what} `{name}` is declared"))
}
