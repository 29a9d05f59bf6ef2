//! The model-side work of a run: datasets loaded on first use, variants compiled on
//! first use, and each measurement as a function from its checked call to a table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ndarray::{Array1, Array2, Array3, ArrayD, Axis, s};

use crate::results::{Cell, Dashboards, Table};
use crate::analysis::composition::{self, Mode};
use crate::check::SANITY_CHECK_TEXT;
use crate::compile::{self, Intervention, SaeEdit, Target, interventions};
use crate::dataset;
use crate::onnx::ModelProto;
use crate::plan::{Call, HookRef, Plan, Value};
use crate::runtime::{
    Batch, Forward, HookedModel, RuntimeError, Sampling, kl_divergence, log_softmax_row,
    per_next_token, token_losses,
};

/// Logits are `tokens x d_vocab` floats; keeping a forward pass under this many tokens
/// keeps each batch's logits to a few hundred MB on a 50k vocabulary.
const TOKENS_PER_FORWARD: usize = 2048;

pub(super) struct Runner<'p, 'm, 'r> {
    pub plan: &'p Plan,
    pub model: &'m mut HookedModel<'r>,
    /// Where relative dataset paths start: the folder qexp runs in.
    pub root: PathBuf,
    /// Where the experiment may save what it makes.
    scope: crate::output::Scope,
    pub tables: BTreeMap<String, Table>,
    pub values: BTreeMap<String, Value>,
    datasets: BTreeMap<String, Vec<Vec<u32>>>,
    prompts: BTreeMap<String, Vec<String>>,
    variants: BTreeMap<String, Vec<Intervention>>,
    /// Each variant's `patch` sources, in the order of its graph inputs.
    patches: BTreeMap<String, Vec<PatchSource>>,
    saes: BTreeMap<String, std::sync::Arc<crate::sae::Sae>>,
    /// Tables made along the way (an SAE's training summary), shown before the step
    /// that caused them.
    pub pending: Vec<Table>,
}

type Failure = String;

impl<'p, 'm, 'r> Runner<'p, 'm, 'r> {
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
            pending: Vec::new(),
        }
    }

    fn runtime(error: RuntimeError) -> Failure {
        error_chain(&error)
    }

    /// A dataset's prompts as token ids (BOS as the model expects, cut to the context and
    /// to `max_tokens`).
    fn dataset(&mut self, name: &str) -> Result<Vec<Vec<u32>>, Failure> {
        if let Some(tokens) = self.datasets.get(name) {
            return Ok(tokens.clone());
        }
        let call = &self
            .plan
            .datasets
            .iter()
            .find(|d| d.name == name)
            .expect("the checker resolved it")
            .value;
        let prompts =
            dataset::load(call, &self.root).map_err(|e| format!("dataset `{name}`: {e}"))?;
        let max_tokens = dataset::max_tokens(call);
        let n_ctx = self.model.manifest.config.n_ctx;
        let prepend = self.model.manifest.special_tokens.prepend_bos;
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

    /// A value, with a `let` name replaced by what it computed.
    fn resolve(&self, value: Option<&Value>) -> Option<Value> {
        match value? {
            Value::Computed(name) => self.values.get(name).cloned(),
            other => Some(other.clone()),
        }
    }

    /// The features a `features` argument names: every one of `d_sae` for `all`, else the
    /// whole numbers it lists (see [`Self::integers`]).
    fn feature_list(&self, value: Option<&Value>, d_sae: usize) -> Vec<usize> {
        match self.resolve(value) {
            Some(Value::All) => (0..d_sae).collect(),
            other => self
                .integers(other.as_ref())
                .into_iter()
                .map(|f| f as usize)
                .collect(),
        }
    }

    /// The whole numbers in a value: a number, a list, a `let` list, or lists of those
    /// (`[FEATURES, FEATURES_HERE]`), flattened in order without repeats.
    fn integers(&self, value: Option<&Value>) -> Vec<i64> {
        let mut out = Vec::new();
        let mut pending: Vec<Value> = value.cloned().into_iter().collect();
        while let Some(v) = pending.pop() {
            match v {
                Value::Integer(n) if !out.contains(&n) => out.push(n),
                Value::List(items) => pending.extend(items.into_iter().rev()),
                Value::Computed(name) => pending.extend(self.values.get(&name).cloned()),
                _ => {}
            }
        }
        out
    }

    fn text(&self, value: Option<&Value>) -> Option<String> {
        match value? {
            Value::Str(s) => Some(s.clone()),
            Value::Computed(name) => match self.values.get(name) {
                Some(Value::Str(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    fn head(&self, value: Option<&Value>) -> Option<(usize, usize)> {
        match value? {
            Value::Head { layer, head } => Some((*layer, *head)),
            Value::Computed(name) => match self.values.get(name) {
                Some(Value::Head { layer, head }) => Some((*layer, *head)),
                _ => None,
            },
            _ => None,
        }
    }

    fn target(&self, hook: &HookRef) -> Result<Target, Failure> {
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

    /// What `run.json` records about each SAE the run made or read.
    pub fn sae_records(&self) -> Vec<super::SaeRecord> {
        use sha2::{Digest, Sha256};
        self.saes
            .iter()
            .map(|(name, sae)| {
                let mut hash = Sha256::new();
                let tensors = [
                    sae.w_enc.as_slice_memory_order(),
                    sae.b_enc.as_slice_memory_order(),
                    sae.w_dec.as_slice_memory_order(),
                    sae.b_dec.as_slice_memory_order(),
                    sae.threshold
                        .as_ref()
                        .and_then(|t| t.as_slice_memory_order()),
                ];
                for values in tensors.into_iter().flatten() {
                    for v in values {
                        hash.update(v.to_le_bytes());
                    }
                }
                let declared = self.plan.saes.iter().find(|s| &s.name == name);
                let origin = match declared.map(|s| (s.value.function, s.value.args.get("path"))) {
                    Some(("load", Some(Value::Str(path)))) => format!("load {path}"),
                    Some((function, _)) => function.to_owned(),
                    None => String::new(),
                };
                super::SaeRecord {
                    name: name.clone(),
                    origin,
                    weights_sha256: format!("{:x}", hash.finalize()),
                }
            })
            .collect()
    }

    /// Makes the SAE `name` (trains and saves it) unless a step already did.
    pub fn ensure_sae(&mut self, name: &str) -> Result<(), Failure> {
        self.sae(name).map(|_| ())
    }

    /// An SAE declared with `load`, read once.
    fn sae(&mut self, name: &str) -> Result<std::sync::Arc<crate::sae::Sae>, Failure> {
        if let Some(sae) = self.saes.get(name) {
            return Ok(sae.clone());
        }
        let call = &self
            .plan
            .saes
            .iter()
            .find(|s| s.name == name)
            .expect("the checker resolved it")
            .value;
        let call = call.clone();
        let sae = match call.function {
            "load" => {
                let Some(Value::Str(path)) = call.args.get("path") else {
                    unreachable!("checked")
                };
                crate::sae::load(&self.root.join(path)).map_err(|e| e.to_string())?
            }
            _ => self.train_sae(name, &call)?,
        };
        let sae = std::sync::Arc::new(sae);
        self.saes.insert(name.to_owned(), sae.clone());
        Ok(sae)
    }

    /// Splicing an SAE into the model in place of its hook, without the error term (what
    /// "reconstructed" means in the seed's columns and SAELens' metrics).
    fn sae_splice(&mut self, sae_name: &str) -> Result<SaeSplice, Failure> {
        let sae = self.sae(sae_name)?;
        let hook = sae
            .hook
            .clone()
            .ok_or_else(|| format!("SAE `{sae_name}` names no hook in its cfg.json"))?;
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
            key: format!("sae-splice:{sae_name}"),
            sae,
            target,
        })
    }

    /// A variant's interventions, resolved (heads chosen, means computed, SAEs loaded)
    /// once. All of one SAE's calls in a variant become one edit: `splice` decides
    /// whether the error term is dropped; feature removals and scalings ride along.
    fn interventions(&mut self, variant: &str) -> Result<Vec<Intervention>, Failure> {
        if let Some(done) = self.variants.get(variant) {
            return Ok(done.clone());
        }
        let calls = self
            .plan
            .variants
            .iter()
            .find(|v| v.name == variant)
            .expect("the checker resolved it")
            .value
            .clone();
        let mut resolved = Vec::new();
        let mut patches = Vec::new();
        let mut sae_edits: Vec<(String, SaeEdit)> = Vec::new();
        for call in &calls {
            if call.function == "steer" {
                let (Some(Value::Hook(hook)), Some(Value::Name(sae_name))) =
                    (call.args.get("hook"), call.args.get("sae"))
                else {
                    unreachable!("checked")
                };
                let sae = self.sae(sae_name)?;
                let feature = int(call, "feature").unwrap_or(0) as usize;
                let scale = number(call, "scale").unwrap_or(1.0) as f32;
                let direction = sae
                    .w_dec
                    .row(feature.min(sae.d_sae - 1))
                    .mapv(|w| w * scale);
                resolved.push(Intervention::Add {
                    target: self.target(hook)?,
                    vector: direction,
                });
                continue;
            }
            if let Some(Value::Name(sae_name)) = call.args.get("sae") {
                let sae = self.sae(sae_name)?;
                let hook = sae
                    .hook
                    .clone()
                    .ok_or_else(|| format!("SAE `{sae_name}` names no hook in its cfg.json"))?;
                let index = match sae_edits.iter().position(|(n, _)| n == sae_name) {
                    Some(i) => i,
                    None => {
                        sae_edits.push((
                            sae_name.clone(),
                            SaeEdit {
                                target: self.target(&hook)?,
                                sae: sae.clone(),
                                error_term: true,
                                scale: Vec::new(),
                                scale_pos: None,
                                acts_output: format!("{sae_name}.hook_sae_acts_post"),
                            },
                        ));
                        sae_edits.len() - 1
                    }
                };
                let edit = &mut sae_edits[index].1;
                match call.function {
                    "splice" => {
                        edit.error_term =
                            matches!(call.args.get("error_term"), Some(Value::Bool(true)))
                    }
                    "remove_features" | "scale_features" => {
                        let factor = if call.function == "remove_features" {
                            0.0
                        } else {
                            number(call, "factor").unwrap_or(1.0) as f32
                        };
                        let features = self.feature_list(call.args.get("features"), sae.d_sae);
                        edit.scale.extend(features.into_iter().map(|f| (f, factor)));
                        if let Some(pos) = int(call, "pos") {
                            edit.scale_pos = Some(pos);
                        }
                    }
                    other => return Err(format!("`{other}` is not supported by this version")),
                }
                continue;
            }
            let Some(Value::Hook(hook)) = call.args.get("hook") else {
                return Err(format!(
                    "`{}` is not supported by this version",
                    call.function
                ));
            };
            let target = self.target(hook)?;
            resolved.push(match call.function {
                "zero" => Intervention::Zero(target),
                "patch" => {
                    let input = format!("patch{}:{}", patches.len(), hook.name);
                    let from_prompt = match self.text(call.args.get("from_prompt")) {
                        Some(prompt) => Some(self.prompt_tokens(&prompt)?),
                        None => None,
                    };
                    patches.push(PatchSource {
                        input: input.clone(),
                        hook: hook.name.clone(),
                        from_variant: match call.args.get("from_variant") {
                            Some(Value::Name(v)) => Some(v.clone()),
                            _ => None,
                        },
                        from_prompt,
                    });
                    Intervention::Patch { target, input }
                }
                "mean" => {
                    let Some(Value::Name(dataset)) = call.args.get("dataset") else {
                        unreachable!("checked")
                    };
                    let value = self.mean_activation(&hook.name, dataset)?;
                    Intervention::Constant { target, value }
                }
                other => return Err(format!("`{other}` is not supported by this version")),
            });
        }
        resolved.extend(
            sae_edits
                .into_iter()
                .map(|(_, edit)| Intervention::Sae(edit)),
        );
        self.variants.insert(variant.to_owned(), resolved.clone());
        self.patches.insert(variant.to_owned(), patches);
        Ok(resolved)
    }

    /// The mean of a hook over every real token of a dataset, from a graph pruned to the hook.
    fn mean_activation(&mut self, hook: &str, dataset: &str) -> Result<ArrayD<f32>, Failure> {
        if crate::hooks::has_key_axis(hook) {
            return Err(format!(
                "mean ablation of `{hook}` is not defined: its shape depends on the prompt length"
            ));
        }
        let whole_hook = Target {
            hook: hook.to_owned(),
            head: None,
            pos: None,
        };
        let (rows, shape) = self.hook_activations(&whole_hook, dataset)?;
        let mean = rows
            .mapv(f64::from)
            .mean_axis(Axis(0))
            .ok_or_else(|| format!("dataset `{dataset}` has no tokens"))?;
        mean.mapv(|x| x as f32)
            .into_shape_with_order(shape)
            .map_err(|e| e.to_string())
    }

    /// Runs `batch` under a variant (`None`: the clean model), returning `outputs`.
    fn forward(
        &mut self,
        variant: Option<&str>,
        batch: &Batch,
        outputs: &[&str],
    ) -> Result<Forward, Failure> {
        let Some(variant) = variant else {
            let logits = outputs.contains(&"logits");
            let hooks: Vec<&str> = outputs.iter().copied().filter(|o| *o != "logits").collect();
            let forward = self.model.forward(batch, logits, &hooks);
            return finite(None, forward);
        };
        let key = format!("{variant}|{}", outputs.join(","));
        let feeds = self.patch_feeds(variant, batch)?;
        if let Some(forward) = self.model.forward_cached(&key, batch, &feeds) {
            return finite(Some(variant), forward);
        }
        let graph = self.variant_graph(variant, outputs)?;
        let forward = self.model.forward_graph_fed(&key, &graph, batch, &feeds);
        finite(Some(variant), forward)
    }

    /// The values a variant's `patch` interventions feed into its graph for `batch`: each
    /// patched hook run in its source (recursively, so a source may itself patch).
    fn patch_feeds(
        &mut self,
        variant: &str,
        batch: &Batch,
    ) -> Result<Vec<(String, ArrayD<f32>)>, Failure> {
        self.interventions(variant)?;
        let sources = self.patches.get(variant).cloned().unwrap_or_default();
        let mut feeds = Vec::with_capacity(sources.len());
        for source in sources {
            let value = match &source.from_prompt {
                None => {
                    let mut forward =
                        self.forward(source.from_variant.as_deref(), batch, &[&source.hook])?;
                    forward.hooks.remove(&source.hook).expect("requested")
                }
                Some(tokens) => {
                    if let Some(len) = batch.lengths.iter().find(|&&l| l != tokens.len()) {
                        return Err(format!(
                            "variant `{variant}` patches `{}` from a prompt of {} tokens into one of {len}; patching between prompts needs prompts of the same length",
                            source.hook,
                            tokens.len()
                        ));
                    }
                    let source_batch = self
                        .model
                        .batch(std::slice::from_ref(tokens))
                        .map_err(Self::runtime)?;
                    let mut forward = self.forward(
                        source.from_variant.as_deref(),
                        &source_batch,
                        &[&source.hook],
                    )?;
                    let one = forward.hooks.remove(&source.hook).expect("requested");
                    let views = vec![one.view(); batch.lengths.len()];
                    ndarray::concatenate(Axis(0), &views).map_err(|e| e.to_string())?
                }
            };
            feeds.push((source.input, value));
        }
        Ok(feeds)
    }

    fn variant_graph(&mut self, variant: &str, outputs: &[&str]) -> Result<ModelProto, Failure> {
        let edits = self.interventions(variant)?;
        self.edits_graph(&edits, outputs)
    }

    /// The exported graph with `edits` applied, pruned to `outputs`.
    fn edits_graph(&self, edits: &[Intervention], outputs: &[&str]) -> Result<ModelProto, Failure> {
        let manifest = &self.model.manifest;
        let heads = |hook: &str| {
            crate::hooks::head_count(hook, Some(manifest))
                .flatten()
                .unwrap_or(manifest.config.n_heads)
        };
        let edited =
            interventions::apply(self.model.graph(), edits, heads).map_err(|e| e.to_string())?;
        compile::select_outputs(&edited, outputs).map_err(|e| e.to_string())
    }

    /// Runs `batch` with ad-hoc `edits` (not a declared variant), cached under `key`.
    fn forward_edits(
        &mut self,
        key: &str,
        edits: &[Intervention],
        batch: &Batch,
        outputs: &[&str],
    ) -> Result<Forward, Failure> {
        let key = format!("{key}|{}", outputs.join(","));
        if let Some(forward) = self.model.forward_cached(&key, batch, &[]) {
            return finite(None, forward);
        }
        let graph = self.edits_graph(edits, outputs)?;
        finite(None, self.model.forward_graph(&key, &graph, batch))
    }

    /// A prompt's tokens, with BOS when the model expects it.
    fn prompt_tokens(&self, prompt: &str) -> Result<Vec<u32>, Failure> {
        let prepend = self.model.manifest.special_tokens.prepend_bos;
        self.model.to_tokens(prompt, prepend).map_err(Self::runtime)
    }

    fn str_tokens(&self, tokens: &[u32]) -> Result<Vec<String>, Failure> {
        self.model.to_str_tokens(tokens).map_err(Self::runtime)
    }

    pub fn compute(&mut self, call: &Call) -> Result<Value, Failure> {
        match call.function {
            "best_head" => {
                let column = |key: &str, default: &str| match call.args.get(key) {
                    Some(Value::Column(c)) => c.clone(),
                    _ => default.to_owned(),
                };
                let Some(Value::Name(table)) = call.args.get("table") else {
                    return Err("no table".into());
                };
                let table = &self.tables[table];
                let index = |c: &str| {
                    table
                        .column(c)
                        .ok_or_else(|| format!("table `{}` has no column `{c}`", table.name))
                };
                let (by, layer, head) = (
                    index(&column("by", "score"))?,
                    index(&column("layer", "layer"))?,
                    index(&column("head", "head"))?,
                );
                let best = table
                    .rows
                    .iter()
                    .filter(|row| row[by].number().is_some_and(f64::is_finite))
                    .max_by(|a, b| {
                        a[by]
                            .number()
                            .unwrap_or(f64::NAN)
                            .total_cmp(&b[by].number().unwrap_or(f64::NAN))
                    })
                    .ok_or_else(|| format!("table `{}` has no rows", table.name))?;
                match (&best[layer], &best[head]) {
                    (Cell::Integer(l), Cell::Integer(h)) => Ok(Value::Head {
                        layer: *l as usize,
                        head: *h as usize,
                    }),
                    _ => Err("the layer and head columns must hold whole numbers".into()),
                }
            }
            "values" => {
                let (Some(Value::Name(table)), Some(Value::Column(column))) =
                    (call.args.get("table"), call.args.get("column"))
                else {
                    unreachable!("checked")
                };
                let table = &self.tables[table];
                let index = table
                    .column(column)
                    .ok_or_else(|| format!("table `{}` has no column `{column}`", table.name))?;
                table
                    .rows
                    .iter()
                    .map(|row| match &row[index] {
                        Cell::Integer(n) => Ok(Value::Integer(*n)),
                        other => Err(format!(
                            "column `{column}` holds {other:?}, not whole numbers"
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::List)
            }
            "row" => {
                let Some(Value::Name(dataset)) = call.args.get("dataset") else {
                    unreachable!("checked")
                };
                let sequences = self.dataset(dataset)?;
                let index = int(call, "index").unwrap_or(0);
                let tokens = sequences.get(index as usize).ok_or_else(|| {
                    format!(
                        "dataset `{dataset}` has {} prompts; there is no prompt {index}",
                        sequences.len()
                    )
                })?;
                let tokens = match int(call, "until") {
                    Some(until) if (until as usize) < tokens.len() => &tokens[..=until as usize],
                    Some(until) => {
                        return Err(format!(
                            "prompt {index} of `{dataset}` has {} tokens; `until = {until}` is past its end",
                            tokens.len()
                        ));
                    }
                    None => &tokens[..],
                };
                // Drop BOS: running the prompt adds it again when the model wants it.
                let skip = usize::from(
                    self.model.manifest.special_tokens.prepend_bos
                        && tokens.first().copied() == self.model.manifest.special_tokens.bos,
                );
                Ok(Value::Str(
                    self.model
                        .to_string(&tokens[skip..])
                        .map_err(Self::runtime)?,
                ))
            }
            other => unreachable!("support() refused `{other}`"),
        }
    }

    pub fn table(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        match call.function {
            "sanity_check" => self.sanity_check(name, call),
            "generate" => self.generate(name, call),
            "composition_scores" => self.composition_scores(name, call),
            "per_token" => self.per_token(name, call),
            "test_prompt" => self.test_prompt(name, call),
            "attention" => self.attention(name, call),
            "direct_logit_attribution" => self.direct_logit_attribution(name, call),
            "feature_activations" => self.feature_activations(name, call),
            "feature_attribution" => self.feature_attribution(name, call),
            "feature_attribution_at" => self.feature_attribution_at(name, call),
            "feature_stats" => self.feature_stats(name, call),
            "feature_cooccurrence" => self.feature_cooccurrence(name, call),
            "sae_metrics" => self.sae_metrics(name, call),
            other => unreachable!("support() refused `{other}`"),
        }
    }

    fn sanity_check(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let text = self
            .text(call.args.get("text"))
            .unwrap_or_else(|| SANITY_CHECK_TEXT.to_owned());
        let losses = self.model.loss_per_token(&[&text]).map_err(Self::runtime)?;
        let losses = &losses[0];
        let loss = losses.iter().map(|&l| f64::from(l)).sum::<f64>() / losses.len().max(1) as f64;
        let mut table = Table::new(name, &["text", "tokens", "loss"]);
        table.rows.push(vec![
            Cell::Str(text),
            Cell::Integer(losses.len() as i64 + 1),
            Cell::Number(loss),
        ]);
        Ok(table)
    }

    fn generate(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let prompt = self.text(call.args.get("prompt")).unwrap_or_default();
        let max_new_tokens = int(call, "max_new_tokens").unwrap_or(20).max(0) as usize;
        let temperature = number(call, "temperature").unwrap_or(0.0);
        let sampling = if temperature > 0.0 {
            Sampling::Temperature {
                temperature: temperature as f32,
                seed: int(call, "seed").unwrap_or(0) as u64,
            }
        } else {
            Sampling::Greedy
        };
        let tokens = self.prompt_tokens(&prompt)?;
        let new = match call.args.get("variant") {
            Some(Value::Name(variant)) => {
                self.interventions(variant)?;
                if let Some(patch) = self.patches[variant.as_str()].first() {
                    return Err(format!(
                        "variant `{variant}` patches `{}`, whose value comes from another run of the same tokens; generation makes new tokens, so it cannot run under it",
                        patch.hook
                    ));
                }
                let graph = self.variant_graph(variant, &["logits"])?;
                let key = format!("{variant}|logits");
                self.model.generate_with(
                    &tokens,
                    max_new_tokens,
                    sampling,
                    false,
                    Some((&key, &graph)),
                )
            }
            _ => self
                .model
                .generate(&tokens, max_new_tokens, sampling, false),
        }
        .map_err(Self::runtime)?;
        let mut table = Table::new(name, &["prompt", "continuation", "new_tokens"]);
        table.rows.push(vec![
            Cell::Str(prompt),
            Cell::Str(self.model.to_string(&new).map_err(Self::runtime)?),
            Cell::Integer(new.len() as i64),
        ]);
        Ok(table)
    }

    fn composition_scores(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let mode = match call.args.get("mode") {
            Some(Value::Choice(m)) if m == "K" => Mode::K,
            Some(Value::Choice(m)) if m == "V" => Mode::V,
            _ => Mode::Q,
        };
        let fold_ln = matches!(call.args.get("fold_ln"), Some(Value::Bool(true)));
        let config = self.model.manifest.config.clone();
        let model = &*self.model;
        let scores = composition::composition_scores(&config, mode, fold_ln, |w| model.weight(w))
            .map_err(Self::runtime)?;
        let mut table = Table::new(name, &["layer1", "head1", "layer2", "head2", "score"]);
        table.rows = scores
            .iter()
            .map(|s| {
                vec![
                    Cell::Integer(s.layer1 as i64),
                    Cell::Integer(s.head1 as i64),
                    Cell::Integer(s.layer2 as i64),
                    Cell::Integer(s.head2 as i64),
                    Cell::Number(s.score),
                ]
            })
            .collect();
        Ok(table)
    }

    /// One row per token that has a next token, over a dataset, as the seed's
    /// `eval_prompt` makes them. With an SAE, also its per-token reconstruction columns,
    /// the KL of splicing it in (no error term), and the head's argmax attention then.
    fn per_token(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let Some(Value::Name(dataset)) = call.args.get("dataset") else {
            unreachable!("checked")
        };
        let sequences = self.dataset(dataset)?;
        let head = self.head(call.args.get("head"));
        let variants = names(call.args.get("variants"));
        let context_width = int(call, "context").unwrap_or(3).max(0) as usize;
        let top_k = int(call, "top_k").unwrap_or(10).max(1) as usize;
        let pattern_hook = head.map(|(l, _)| format!("blocks.{l}.attn.hook_pattern"));
        let q_hook = head.map(|(l, _)| format!("blocks.{l}.attn.hook_q"));
        let sae = match call.args.get("sae") {
            Some(Value::Name(sae_name)) => Some(self.sae_splice(sae_name)?),
            _ => None,
        };

        let columns = crate::check::builtins::table_columns(
            "per_token",
            head.is_some(),
            sae.is_some(),
            &variants,
        )
        .into_iter()
        .map(|(column, _)| column)
        .collect();
        let mut table = Table {
            name: name.to_owned(),
            columns,
            rows: Vec::new(),
        };
        // Explained variance needs the mean input over the whole dataset: rows keep their
        // squared error and input until the end, then the column is filled in.
        let mut sae_inputs: Vec<(Array1<f32>, f64)> = Vec::new();
        let mut input_sum: Option<Array1<f64>> = None;
        let mut input_count = 0usize;
        let explained_variance_column = table.column("explained_variance");

        let bar = super::progress::bar(
            sequences.iter().map(|s| s.len() as u64).sum(),
            "tokens",
            &format!("{name} ="),
        );
        bar.set_message(format!("per_token({dataset})"));
        let mut first_prompt = 0;
        for chunk in token_chunks(&sequences, self.plan.model.batch_size) {
            let batch = self.model.batch(chunk).map_err(Self::runtime)?;
            let mut clean_outputs = vec!["logits"];
            clean_outputs.extend(pattern_hook.as_deref());
            clean_outputs.extend(q_hook.as_deref());
            if let Some(splice) = &sae {
                clean_outputs.push(&splice.target.hook);
            }
            clean_outputs.dedup();
            let clean = self.forward(None, &batch, &clean_outputs)?;
            let clean_logits = clean.logits.as_ref().expect("logits requested");
            let clean_losses = token_losses(clean_logits, &batch);
            let mut variant_columns: Vec<VariantColumns> = Vec::new();
            for v in &variants {
                let forward = self.forward(Some(v), &batch, &["logits"])?;
                let logits = forward.logits.as_ref().expect("logits requested");
                variant_columns.push(VariantColumns {
                    losses: token_losses(logits, &batch),
                    kls: kl_divergences(clean_logits, logits, &batch),
                });
            }
            let sae_batch = match &sae {
                Some(splice) => {
                    let mut outputs = vec!["logits"];
                    outputs.extend(pattern_hook.as_deref());
                    let spliced = self.forward_edits(
                        &splice.key,
                        std::slice::from_ref(&splice.edit),
                        &batch,
                        &outputs,
                    )?;
                    let x = head_rows(
                        &clean.hooks[&splice.target.hook],
                        &batch,
                        splice.target.head,
                    );
                    let sum = x.mapv(f64::from).sum_axis(Axis(0));
                    input_sum = Some(match input_sum.take() {
                        Some(total) => total + sum,
                        None => sum,
                    });
                    input_count += x.nrows();
                    let acts = splice.sae.encode(x.view());
                    let recon = splice.sae.reconstruct(x.view(), acts.view());
                    let kls = kl_divergences(
                        clean_logits,
                        spliced.logits.as_ref().expect("logits requested"),
                        &batch,
                    );
                    Some((x, acts, recon, kls, spliced))
                }
                None => None,
            };
            let mut sae_row = 0;
            for (row, tokens) in chunk.iter().enumerate() {
                let strs = self.str_tokens(tokens)?;
                let index = first_prompt + row;
                for pos in 0..tokens.len() {
                    let token_row = sae_row;
                    sae_row += 1;
                    if pos + 1 == tokens.len() {
                        continue;
                    }
                    let mut cells = vec![
                        Cell::Str(strs[pos].clone()),
                        Cell::Str(format!("{}/{pos}", strs[pos])),
                        Cell::Str(context(&strs, pos, context_width)),
                        Cell::Integer(index as i64),
                        Cell::Integer(pos as i64),
                        Cell::Str(format!("{index}/{pos}")),
                        Cell::Number(f64::from(clean_losses[row][pos])),
                    ];
                    for v in &variant_columns {
                        cells.push(Cell::Number(f64::from(v.losses[row][pos])));
                        cells.push(Cell::Number(v.kls[row][pos]));
                    }
                    if let (Some((_, h)), Some(pattern_hook), Some(q_hook)) =
                        (head, &pattern_hook, &q_hook)
                    {
                        let (argmax, value) =
                            argmax_attention(&clean.hooks[pattern_hook], row, h, pos);
                        cells.push(Cell::Integer(argmax as i64));
                        cells.push(Cell::Str(strs[argmax].clone()));
                        cells.push(Cell::Number(f64::from(value)));
                        cells.push(Cell::Number(norm(clean.hooks[q_hook].slice(s![
                            row,
                            pos,
                            h,
                            ..
                        ]))));
                    }
                    if let Some((x, acts, recon, kls, spliced)) = &sae_batch {
                        let (x, acts, recon) =
                            (x.row(token_row), acts.row(token_row), recon.row(token_row));
                        let squared_error: f64 = x
                            .iter()
                            .zip(recon)
                            .map(|(&a, &b)| f64::from(a - b).powi(2))
                            .sum();
                        let mut active: Vec<(usize, f32)> = acts
                            .iter()
                            .enumerate()
                            .filter(|(_, a)| **a > 0.0)
                            .map(|(f, &a)| (f, a))
                            .collect();
                        let num_active = active.len();
                        active.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                        active.truncate(top_k);
                        cells.push(Cell::Number(norm(recon)));
                        cells.push(Cell::Number(squared_error / x.len().max(1) as f64));
                        cells.push(Cell::Number(f64::NAN)); // explained variance, below
                        cells.push(Cell::Integer(num_active as i64));
                        cells.push(Cell::IntegerList(
                            active.iter().map(|(f, _)| *f as i64).collect(),
                        ));
                        cells.push(Cell::NumberList(
                            active.iter().map(|(_, a)| f64::from(*a)).collect(),
                        ));
                        cells.push(Cell::Number(kls[row][pos]));
                        sae_inputs.push((x.to_owned(), squared_error));
                        if let (Some((_, h)), Some(pattern_hook)) = (head, &pattern_hook) {
                            let (argmax, value) =
                                argmax_attention(&spliced.hooks[pattern_hook], row, h, pos);
                            cells.push(Cell::Integer(argmax as i64));
                            cells.push(Cell::Str(strs[argmax].clone()));
                            cells.push(Cell::Number(f64::from(value)));
                        }
                    }
                    table.rows.push(cells);
                }
            }
            first_prompt += chunk.len();
            bar.inc(chunk.iter().map(|s| s.len() as u64).sum());
        }
        bar.finish_and_clear();
        if let (Some(column), Some(sum)) = (explained_variance_column, input_sum) {
            let mean = sum / input_count.max(1) as f64;
            for (row, (x, squared_error)) in table.rows.iter_mut().zip(&sae_inputs) {
                let variance: f64 = x
                    .iter()
                    .zip(&mean)
                    .map(|(&a, &m)| (f64::from(a) - m).powi(2))
                    .sum();
                row[column] = Cell::Number(1.0 - squared_error / variance.max(f64::MIN_POSITIVE));
            }
        }
        Ok(table)
    }

    /// TransformerLens' `test_prompt`: the top next tokens after a prompt, and the
    /// answer's rank, for the clean model and each variant.
    fn test_prompt(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let prompt = self.text(call.args.get("prompt")).unwrap_or_default();
        let answer = self.text(call.args.get("answer")).unwrap_or_default();
        let top_k = int(call, "top_k").unwrap_or(10).max(1) as usize;
        let tokens = self.prompt_tokens(&prompt)?;
        let answer_token = *self
            .model
            .to_tokens(&answer, false)
            .map_err(Self::runtime)?
            .first()
            .ok_or_else(|| "the answer is empty".to_owned())?;
        let batch = self
            .model
            .batch(std::slice::from_ref(&tokens))
            .map_err(Self::runtime)?;
        let mut table = Table::new(
            name,
            &["variant", "rank", "token", "logit", "prob", "answer_rank"],
        );
        let mut runs: Vec<Option<String>> = vec![None];
        runs.extend(names(call.args.get("variants")).into_iter().map(Some));
        for variant in runs {
            let forward = self.forward(variant.as_deref(), &batch, &["logits"])?;
            let logits = forward.logits.expect("logits requested");
            let last = logits.slice(s![0, tokens.len() - 1, ..]);
            let log_probs = log_softmax_row(last);
            let mut order: Vec<usize> = (0..last.len()).collect();
            order.sort_by(|&a, &b| last[b].total_cmp(&last[a]).then(a.cmp(&b)));
            let answer_rank = order
                .iter()
                .position(|&t| t == answer_token as usize)
                .unwrap_or(order.len());
            for (rank, &token) in order.iter().take(top_k).enumerate() {
                table.rows.push(vec![
                    Cell::Str(variant.clone().unwrap_or_else(|| "clean".into())),
                    Cell::Integer(rank as i64),
                    Cell::Str(self.str_tokens(&[token as u32])?.remove(0)),
                    Cell::Number(f64::from(last[token])),
                    Cell::Number(log_probs[token].exp()),
                    Cell::Integer(answer_rank as i64),
                ]);
            }
        }
        Ok(table)
    }

    /// A head's attention from one query position to every earlier position, clean and
    /// under each variant.
    fn attention(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let prompt = self.text(call.args.get("prompt")).unwrap_or_default();
        let (layer, head) = self
            .head(call.args.get("head"))
            .ok_or_else(|| "the head has no value".to_owned())?;
        let tokens = self.prompt_tokens(&prompt)?;
        let query = position(&tokens, call)?;
        let batch = self
            .model
            .batch(std::slice::from_ref(&tokens))
            .map_err(Self::runtime)?;
        let hook = format!("blocks.{layer}.attn.hook_pattern");
        let variants = names(call.args.get("variants"));
        let mut columns = vec!["pos", "str_tokens", "context", "attn"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        columns.extend(variants.iter().map(|v| format!("{v}_attn")));
        let mut patterns = Vec::new();
        let mut runs: Vec<Option<&str>> = vec![None];
        runs.extend(variants.iter().map(|v| Some(v.as_str())));
        for variant in runs {
            let forward = self.forward(variant, &batch, &[&hook])?;
            patterns.push(
                forward.hooks[&hook]
                    .slice(s![0, head, query, ..=query])
                    .to_owned(),
            );
        }
        let strs = self.str_tokens(&tokens)?;
        let mut table = Table {
            name: name.to_owned(),
            columns,
            rows: Vec::new(),
        };
        for key in 0..=query {
            let mut cells = vec![
                Cell::Integer(key as i64),
                Cell::Str(strs[key].clone()),
                Cell::Str(context(&strs, key, 3)),
            ];
            cells.extend(patterns.iter().map(|p| Cell::Number(f64::from(p[key]))));
            table.rows.push(cells);
        }
        Ok(table)
    }
}

impl Runner<'_, '_, '_> {
    /// The activations an SAE reads: every real token of a dataset at its hook (a head's
    /// slice when it has one), from a graph pruned right after the hook.
    /// Also returns the shape of one token's value (`[d_head]` for a head, `[n_heads, d_head]`
    /// for a whole per-head hook), since the rows are flattened.
    fn hook_activations(
        &mut self,
        target: &Target,
        dataset: &str,
    ) -> Result<(Array2<f32>, Vec<usize>), Failure> {
        let sequences = self.dataset(dataset)?;
        let mut blocks = Vec::new();
        let mut shape = Vec::new();
        for chunk in token_chunks(&sequences, self.plan.model.batch_size) {
            let batch = self.model.batch(chunk).map_err(Self::runtime)?;
            let forward = self.forward(None, &batch, &[&target.hook])?;
            let activation = &forward.hooks[&target.hook];
            // One token's value: [d_head] for a head, [n_heads, d_head] for a whole hook.
            shape = activation.shape()[2 + usize::from(target.head.is_some())..].to_vec();
            blocks.push(head_rows(activation, &batch, target.head));
        }
        let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
        let rows = ndarray::concatenate(Axis(0), &views).map_err(|e| e.to_string())?;
        Ok((rows, shape))
    }

    fn train_sae(&mut self, name: &str, call: &Call) -> Result<crate::sae::Sae, Failure> {
        use crate::sae::Architecture;
        use crate::sae::train::{Checkpointing, TrainConfig, train};
        let (Some(Value::Hook(hook)), Some(Value::Name(dataset))) =
            (call.args.get("hook"), call.args.get("dataset"))
        else {
            unreachable!("checked")
        };
        let save_to = self.text(call.args.get("save")).map(|p| self.root.join(p));
        if let Some(dir) = &save_to {
            check_save_paths(&self.scope, dir).map_err(|e| format!("saving `{name}`: {e}"))?;
        }
        let target = self.target(hook)?;
        // Cloned out of the runner's cache once, for the size estimate and the hash that
        // ties checkpoints to their inputs.
        let sequences = self.dataset(dataset)?;
        let tokens: usize = sequences.iter().map(Vec::len).sum();
        let dataset_sha256 = tokens_sha256(&sequences);
        drop(sequences);
        if let Some(width) = crate::hooks::width(hook, Some(&self.model.manifest))
            && let Some(available) = crate::machine::total_memory()
        {
            let needed = (tokens as u64).saturating_mul(width as u64 * 4);
            if needed > available / 2 {
                return Err(format!(
                    "training `{name}` would hold {tokens} activations of width {width} in memory, about {:.1} GiB, more than half of this machine's {:.1} GiB; use a smaller dataset (`take = ...`)",
                    needed as f64 / f64::from(1u32 << 30),
                    available as f64 / f64::from(1u32 << 30)
                ));
            }
        }
        let (activations, _) = self.hook_activations(&target, dataset)?;
        let architecture = match call.args.get("architecture") {
            Some(Value::Choice(a)) if a == "topk" => Architecture::TopK {
                k: int(call, "k").unwrap_or(32) as usize,
            },
            Some(Value::Choice(a)) if a == "jumprelu" => Architecture::JumpRelu,
            _ => Architecture::Standard,
        };
        let flag = |key: &str, default: bool| match call.args.get(key) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        };
        let config = TrainConfig {
            d_sae: int(call, "d_sae").unwrap_or(4096) as usize,
            architecture,
            l1_coefficient: number(call, "l1_coefficient").unwrap_or(5e-4) as f32,
            lr: number(call, "lr").unwrap_or(3e-4) as f32,
            batch_size: int(call, "batch_size").unwrap_or(4096) as usize,
            tokens: int(call, "tokens").unwrap_or(1_000_000) as usize,
            seed: int(call, "seed").unwrap_or(0) as u64,
            normalize_activations: flag("normalize_activations", false),
            resample_dead: flag("resample_dead", false),
        };
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
            every: int(call, "checkpoint_every").unwrap_or(0).max(0) as usize,
            resume: flag("resume", true),
        });
        let bar = super::progress::bar(
            config.tokens.div_ceil(config.batch_size.max(1)) as u64,
            "steps",
            &format!("training {name}"),
        );
        let (mut sae, summary) = train(&activations, &config, checkpointing.as_ref(), |p| {
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
        table.rows.push(vec![
            Cell::Integer(activations.nrows() as i64),
            Cell::Integer(summary.steps as i64),
            Cell::Integer(summary.tokens as i64),
            Cell::Number(summary.mse),
            Cell::Number(summary.l0),
            Cell::Number(summary.explained_variance),
            Cell::Number(summary.dead_fraction),
            Cell::Integer(summary.resampled as i64),
        ]);
        self.pending.push(table);
        if let Some(dir) = &save_to {
            crate::sae::save(&sae, dir).map_err(|e| format!("saving `{name}`: {e}"))?;
        }
        Ok(sae)
    }

    /// SAELens' quality metrics over a dataset: L0, MSE, explained variance, CE loss
    /// recovered and KL score (against `baseline`, or zero-ablating the SAE's target),
    /// dead and dense (firing on over 10% of tokens) feature fractions.
    fn sae_metrics(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let (Some(Value::Name(sae_name)), Some(Value::Name(dataset))) =
            (call.args.get("sae"), call.args.get("dataset"))
        else {
            unreachable!("checked")
        };
        let SaeSplice {
            sae,
            target,
            edit: splice,
            key: splice_key,
        } = self.sae_splice(sae_name)?;
        let (x, _) = self.hook_activations(&target, dataset)?;
        let acts = sae.encode(x.view());
        let recon = sae.reconstruct(x.view(), acts.view());
        let n = x.nrows() as f64;
        let squared_error = (&recon - &x).mapv(|e| f64::from(e * e)).sum();
        let centred = &x - &x.mean_axis(Axis(0)).ok_or("no activations")?;
        let variance = centred.mapv(|v| f64::from(v * v)).sum();
        let firing: Vec<usize> = (0..sae.d_sae)
            .map(|f| acts.column(f).iter().filter(|&&a| a > 0.0).count())
            .collect();

        let baseline = match call.args.get("baseline") {
            Some(Value::Name(variant)) => Baseline::Variant(variant.clone()),
            _ => Baseline::Zero(Intervention::Zero(target.clone())),
        };
        let sequences = self.dataset(dataset)?;
        let (
            mut clean_loss,
            mut spliced_loss,
            mut baseline_loss,
            mut kl_spliced,
            mut kl_baseline,
            mut tokens,
        ) = (0.0, 0.0, 0.0, 0.0, 0.0, 0usize);
        for chunk in token_chunks(&sequences, self.plan.model.batch_size) {
            let batch = self.model.batch(chunk).map_err(Self::runtime)?;
            let clean = self
                .forward(None, &batch, &["logits"])?
                .logits
                .expect("logits requested");
            let spliced = self
                .forward_edits(
                    &splice_key,
                    std::slice::from_ref(&splice),
                    &batch,
                    &["logits"],
                )?
                .logits
                .expect("logits");
            let base = match &baseline {
                Baseline::Variant(variant) => self.forward(Some(variant), &batch, &["logits"])?,
                Baseline::Zero(edit) => self.forward_edits(
                    &format!("sae-baseline:{name}"),
                    std::slice::from_ref(edit),
                    &batch,
                    &["logits"],
                )?,
            }
            .logits
            .expect("logits requested");
            let sum = |v: Vec<Vec<f32>>| v.iter().flatten().map(|&l| f64::from(l)).sum::<f64>();
            clean_loss += sum(token_losses(&clean, &batch));
            spliced_loss += sum(token_losses(&spliced, &batch));
            baseline_loss += sum(token_losses(&base, &batch));
            kl_spliced += kl_divergences(&clean, &spliced, &batch)
                .iter()
                .flatten()
                .sum::<f64>();
            kl_baseline += kl_divergences(&clean, &base, &batch)
                .iter()
                .flatten()
                .sum::<f64>();
            tokens += batch
                .lengths
                .iter()
                .map(|l| l.saturating_sub(1))
                .sum::<usize>();
        }
        let per = |x: f64| x / tokens.max(1) as f64;
        let mut table = Table::new(
            name,
            &[
                "l0",
                "mse",
                "explained_variance",
                "ce_loss_recovered",
                "kl_score",
                "dead_fraction",
                "dense_fraction",
                "clean_loss",
                "spliced_loss",
                "baseline_loss",
            ],
        );
        table.rows.push(vec![
            Cell::Number(acts.iter().filter(|&&a| a > 0.0).count() as f64 / n),
            Cell::Number(squared_error / n),
            Cell::Number(1.0 - squared_error / variance.max(f64::MIN_POSITIVE)),
            Cell::Number((baseline_loss - spliced_loss) / (baseline_loss - clean_loss)),
            Cell::Number(1.0 - kl_spliced / kl_baseline.max(f64::MIN_POSITIVE)),
            Cell::Number(firing.iter().filter(|&&c| c == 0).count() as f64 / sae.d_sae as f64),
            Cell::Number(
                firing.iter().filter(|&&c| c as f64 > 0.1 * n).count() as f64 / sae.d_sae as f64,
            ),
            Cell::Number(per(clean_loss)),
            Cell::Number(per(spliced_loss)),
            Cell::Number(per(baseline_loss)),
        ]);
        Ok(table)
    }

    /// An SAE's activations over a dataset, batch by batch, from a graph pruned to its
    /// hook: `visit(index of the batch's first prompt, batch, [tokens, d_sae])` for each
    /// batch until it returns false.
    fn for_each_sae_batch(
        &mut self,
        sae: &crate::sae::Sae,
        target: &Target,
        sequences: &[Vec<u32>],
        mut visit: impl FnMut(usize, &Batch, &Array2<f32>) -> bool,
    ) -> Result<(), Failure> {
        let mut first_prompt = 0;
        for chunk in token_chunks(sequences, self.plan.model.batch_size) {
            let batch = self.model.batch(chunk).map_err(Self::runtime)?;
            let forward = self.forward(None, &batch, &[&target.hook])?;
            let x = head_rows(&forward.hooks[&target.hook], &batch, target.head);
            if !visit(first_prompt, &batch, &sae.encode(x.view())) {
                break;
            }
            first_prompt += chunk.len();
        }
        Ok(())
    }

    /// The seed's co-occurrence counts (`df[df.top_k_features.apply(lambda x: 1669 in x)]`):
    /// for every pair of `features`, the rows of `table` whose list `column` holds the first,
    /// the second, both, or only one of them. One row per pair, in the order given.
    fn feature_cooccurrence(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let (Some(Value::Name(source)), Some(Value::Column(column))) =
            (call.args.get("table"), call.args.get("column"))
        else {
            unreachable!("checked")
        };
        let source = &self.tables[source];
        let index = source
            .column(column)
            .ok_or_else(|| format!("table `{}` has no column `{column}`", source.name))?;
        if matches!(self.resolve(call.args.get("features")), Some(Value::All)) {
            return Err("`feature_cooccurrence` needs a list of features, not `all`".into());
        }
        let features = self.integers(call.args.get("features"));
        let lists: Vec<&Vec<i64>> = source
            .rows
            .iter()
            .map(|row| match &row[index] {
                Cell::IntegerList(list) => Ok(list),
                other => Err(format!(
                    "column `{column}` holds {other:?}, not lists of features"
                )),
            })
            .collect::<Result<_, _>>()?;
        let mut table = Table::new(
            name,
            &[
                "feature_a",
                "feature_b",
                "rows_with_a",
                "rows_with_b",
                "both",
                "a_only",
                "b_only",
            ],
        );
        for (i, &a) in features.iter().enumerate() {
            for &b in &features[i + 1..] {
                let (mut with_a, mut with_b, mut both) = (0, 0, 0);
                for list in &lists {
                    let (has_a, has_b) = (list.contains(&a), list.contains(&b));
                    with_a += i64::from(has_a);
                    with_b += i64::from(has_b);
                    both += i64::from(has_a && has_b);
                }
                table.rows.push(vec![
                    Cell::Integer(a),
                    Cell::Integer(b),
                    Cell::Integer(with_a),
                    Cell::Integer(with_b),
                    Cell::Integer(both),
                    Cell::Integer(with_a - both),
                    Cell::Integer(with_b - both),
                ]);
            }
        }
        Ok(table)
    }

    /// Per feature over a dataset: how often it fires, how strongly (max, mean over the
    /// tokens it fires on, quantiles of those activations), and the token where it fires
    /// most with its context. The numbers behind a feature dashboard.
    fn feature_stats(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let (Some(Value::Name(sae_name)), Some(Value::Name(dataset))) =
            (call.args.get("sae"), call.args.get("dataset"))
        else {
            unreachable!("checked")
        };
        let SaeSplice { sae, target, .. } = self.sae_splice(sae_name)?;
        let sequences = self.dataset(dataset)?;
        let bar = super::progress::bar(
            sequences.iter().map(|s| s.len() as u64).sum(),
            "tokens",
            &format!("{name} ="),
        );
        bar.set_message(format!("feature_stats({sae_name}, {dataset})"));
        // Firing activations per feature (for the quantiles) and where each peaked.
        let mut firing: Vec<Vec<f32>> = vec![Vec::new(); sae.d_sae];
        let mut peak: Vec<Option<(f32, usize, usize)>> = vec![None; sae.d_sae];
        let mut tokens = 0usize;
        self.for_each_sae_batch(&sae, &target, &sequences, |first_prompt, batch, acts| {
            let mut token = 0;
            for (row, &len) in batch.lengths.iter().enumerate() {
                for pos in 0..len {
                    for (f, &a) in acts.row(token).iter().enumerate() {
                        if a > 0.0 {
                            firing[f].push(a);
                            if peak[f].is_none_or(|(best, _, _)| a > best) {
                                peak[f] = Some((a, first_prompt + row, pos));
                            }
                        }
                    }
                    token += 1;
                }
            }
            tokens += token;
            bar.inc(token as u64);
            true
        })?;
        bar.finish_and_clear();
        let mut table = Table::new(
            name,
            &[
                "feature",
                "density",
                "max_activation",
                "mean_activation",
                "q50",
                "q90",
                "q99",
                "top_token",
                "top_context",
            ],
        );
        for (f, values) in firing.iter_mut().enumerate() {
            values.sort_by(f32::total_cmp);
            let quantile = |q: f64| match values.len() {
                0 => 0.0,
                n => f64::from(values[((n - 1) as f64 * q).round() as usize]),
            };
            let (top_token, top_context) = match peak[f] {
                Some((_, prompt, pos)) => {
                    let strs = self.str_tokens(&sequences[prompt])?;
                    (strs[pos].clone(), context(&strs, pos, 3))
                }
                None => (String::new(), String::new()),
            };
            table.rows.push(vec![
                Cell::Integer(f as i64),
                Cell::Number(values.len() as f64 / tokens.max(1) as f64),
                Cell::Number(values.last().map_or(0.0, |&v| f64::from(v))),
                Cell::Number(if values.is_empty() {
                    0.0
                } else {
                    values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64
                }),
                Cell::Number(quantile(0.5)),
                Cell::Number(quantile(0.9)),
                Cell::Number(quantile(0.99)),
                Cell::Str(top_token),
                Cell::Str(top_context),
            ]);
        }
        Ok(table)
    }

    /// sae_vis-style dashboards for `features` of an SAE over (up to `tokens` tokens of)
    /// a dataset, in one streaming pass; for a query SAE also the key each example's
    /// feature pushes the head's attention to, and for a residual-stream SAE the tokens
    /// its decoder direction promotes and suppresses.
    pub fn feature_dashboards(&mut self, name: &str, call: &Call) -> Result<Dashboards, Failure> {
        use super::dashboards::Collector;
        use crate::results::WINDOW;
        let (Some(Value::Name(sae_name)), Some(Value::Name(dataset))) =
            (call.args.get("sae"), call.args.get("dataset"))
        else {
            unreachable!("checked")
        };
        let SaeSplice { sae, target, .. } = self.sae_splice(sae_name)?;
        let features = self.feature_list(call.args.get("features"), sae.d_sae);
        let budget = int(call, "tokens").unwrap_or(200_000).max(1) as usize;
        let mut slot_of = vec![None; sae.d_sae];
        let mut collectors: Vec<Collector> = Vec::with_capacity(features.len());
        for &f in &features {
            if f < sae.d_sae && slot_of[f].is_none() {
                slot_of[f] = Some(collectors.len());
                collectors.push(Collector::new(f));
            }
        }
        let sequences = self.dataset(dataset)?;
        let bar = super::progress::bar(budget as u64, "tokens", &format!("{name} ="));
        bar.set_message(format!("feature_dashboards({sae_name}, {dataset})"));
        let mut tokens = 0usize;
        let mut used_prompts = 0;
        self.for_each_sae_batch(&sae, &target, &sequences, |first_prompt, batch, acts| {
            let mut row_start = 0;
            for (row, &len) in batch.lengths.iter().enumerate() {
                for pos in 0..len {
                    let token = acts.row(row_start + pos);
                    for (f, &a) in token.iter().enumerate() {
                        if a <= 0.0 {
                            continue;
                        }
                        let Some(slot) = slot_of[f] else { continue };
                        let collector = &mut collectors[slot];
                        let (top, keep) = collector.wants(a);
                        if top || keep.is_some() {
                            let (from, to) =
                                (pos.saturating_sub(WINDOW), (pos + WINDOW).min(len - 1));
                            let window = (from..=to).map(|p| acts[[row_start + p, f]]).collect();
                            collector.keep(
                                crate::results::Example {
                                    activation: a,
                                    prompt: first_prompt + row,
                                    pos,
                                    window,
                                    attends_to: None,
                                },
                                top,
                                keep,
                            );
                        }
                    }
                }
                row_start += len;
                tokens += len;
            }
            used_prompts = first_prompt + batch.lengths.len();
            bar.set_position(tokens.min(budget) as u64);
            tokens < budget
        })?;
        bar.finish_and_clear();
        let mut features: Vec<_> = collectors
            .into_iter()
            .map(|mut c| {
                c.tokens = tokens;
                c.finish()
            })
            .collect();

        // Text of the prompts the pages show.
        let mut str_tokens = vec![Vec::new(); used_prompts];
        for feature in &features {
            for example in feature
                .top
                .iter()
                .chain(feature.quantiles.iter().flat_map(|q| &q.examples))
            {
                if str_tokens[example.prompt].is_empty() {
                    str_tokens[example.prompt] = self.str_tokens(&sequences[example.prompt])?;
                }
            }
        }
        if let Some(layer) = crate::hooks::layer_of(&target.hook)
            && target.hook == format!("blocks.{layer}.attn.hook_q")
            && let Some(head) = target.head
        {
            self.attach_attention_targets(
                &mut features,
                &sequences[..used_prompts],
                layer,
                head,
                &sae,
            )?;
        }
        if let Some(effects) = self.logit_effects(&target, &sae, &features)? {
            for (feature, effect) in features.iter_mut().zip(effects) {
                feature.logit_effects = Some(effect);
            }
        }
        Ok(Dashboards {
            name: name.to_owned(),
            sae: sae_name.clone(),
            hook: match target.head {
                Some(h) => format!("{}[head = {h}]", target.hook),
                None => target.hook.clone(),
            },
            tokens,
            features,
            str_tokens,
        })
    }

    /// For a query SAE at `head`: each shown example's key position that the feature's
    /// share of the query scores highest (rotary applied), from one more pass over the
    /// prompts that hold examples, pruned to the layer's keys.
    fn attach_attention_targets(
        &mut self,
        features: &mut [crate::results::FeatureDashboard],
        sequences: &[Vec<u32>],
        layer: usize,
        head: usize,
        sae: &crate::sae::Sae,
    ) -> Result<(), Failure> {
        use crate::analysis::score_attribution::{Rotation, score_of};
        let context = self.score_context(layer, head)?;
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
        let mut keys: std::collections::HashMap<usize, Array2<f32>> =
            std::collections::HashMap::new();
        for (prompt, tokens) in sequences.iter().enumerate() {
            if !wanted[prompt] {
                continue;
            }
            let batch = self
                .model
                .batch(std::slice::from_ref(tokens))
                .map_err(Self::runtime)?;
            let forward = self.forward(None, &batch, &[&context.key_hook])?;
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
        &mut self,
        target: &Target,
        sae: &crate::sae::Sae,
        features: &[crate::results::FeatureDashboard],
    ) -> Result<Option<Vec<crate::results::LogitEffects>>, Failure> {
        let writes_residual = [
            "hook_resid_pre",
            "hook_resid_mid",
            "hook_resid_post",
            "hook_attn_out",
            "hook_mlp_out",
        ]
        .iter()
        .any(|h| target.hook.ends_with(h));
        if !writes_residual || target.head.is_some() {
            return Ok(None);
        }
        let config = self.model.manifest.config.clone();
        let unembed = if config.tied_embeddings {
            self.model
                .weight("embed.W_E")
                .map_err(Self::runtime)?
                .reversed_axes()
        } else {
            self.model.weight("unembed.W_U").map_err(Self::runtime)?
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
                    .map(|t| {
                        Ok((
                            self.str_tokens(&[t as u32])?.remove(0),
                            f64::from(logits[t]),
                        ))
                    })
                    .collect()
            };
            out.push(crate::results::LogitEffects {
                promoted: pick(order.iter().take(10).copied().collect())?,
                suppressed: pick(order.iter().rev().take(10).copied().collect())?,
            });
        }
        Ok(Some(out))
    }

    /// Every feature's activation at one position of a prompt (the seed's
    /// `plot_line_with_top_10_labels(feature_acts)`).
    fn feature_activations(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let Some(Value::Name(sae_name)) = call.args.get("sae") else {
            unreachable!("checked")
        };
        let sae = self.sae(sae_name)?;
        let hook = sae
            .hook
            .clone()
            .ok_or_else(|| format!("SAE `{sae_name}` names no hook in its cfg.json"))?;
        let target = self.target(&hook)?;
        let prompt = self.text(call.args.get("prompt")).unwrap_or_default();
        let tokens = self.prompt_tokens(&prompt)?;
        let at = position(&tokens, call)?;
        let batch = self
            .model
            .batch(std::slice::from_ref(&tokens))
            .map_err(Self::runtime)?;
        let forward = self.forward(None, &batch, &[&target.hook])?;
        let activation = &forward.hooks[&target.hook];
        let x = match target.head {
            Some(head) => activation.slice(s![0, at, head, ..]).to_owned(),
            None => activation.slice(s![0, at, ..]).to_owned(),
        };
        let acts = sae.encode(x.view().insert_axis(Axis(0)));
        let mut table = Table::new(name, &["feature", "activation"]);
        table.rows = acts
            .row(0)
            .iter()
            .enumerate()
            .map(|(f, &a)| vec![Cell::Integer(f as i64), Cell::Number(f64::from(a))])
            .collect();
        Ok(table)
    }

    /// Each active feature of a query SAE, with its share of the head's attention score
    /// from `pos` to `key_pos` (by default where the head attends most from `pos`): the
    /// seed's "which features make the head attend to `says`", read off linearly.
    fn feature_attribution(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let (sae, context) = self.attribution_inputs(call)?;
        let prompt = self.text(call.args.get("prompt")).unwrap_or_default();
        let tokens = self.prompt_tokens(&prompt)?;
        let query = position(&tokens, call)?;
        let batch = self
            .model
            .batch(std::slice::from_ref(&tokens))
            .map_err(Self::runtime)?;
        let clean = self.forward(None, &batch, &context.outputs())?;
        let key_pos = match int(call, "key_pos") {
            Some(k) if k >= 0 && k as usize <= query => Some(k as usize),
            Some(k) => {
                return Err(format!(
                    "key_pos {k} is not a position the query at {query} can attend to (0 to {query})"
                ));
            }
            None => None,
        };
        let (key_pos, shares) = context.shares(&sae, &clean, 0, query, key_pos);
        let key_token = self.str_tokens(&tokens[key_pos..=key_pos])?.remove(0);
        let mut table = Table::new(
            name,
            &[
                "feature",
                "activation",
                "score_contribution",
                "key_pos",
                "key_token",
            ],
        );
        table.rows = shares
            .into_iter()
            .map(|(feature, activation, contribution)| {
                vec![
                    Cell::Integer(feature as i64),
                    Cell::Number(f64::from(activation)),
                    Cell::Number(contribution),
                    Cell::Integer(key_pos as i64),
                    Cell::Str(key_token.clone()),
                ]
            })
            .collect();
        Ok(table)
    }

    /// Feature attribution summed over many positions: the rows of `positions` (a
    /// per_token table of `dataset`, or any table with its `batch` and `pos` columns),
    /// each query's score to the key its head attends to most. Per feature: how often it
    /// is active there, its mean activation, and its total and mean share of the score.
    fn feature_attribution_at(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        let (Some(Value::Name(dataset)), Some(Value::Name(rows))) =
            (call.args.get("dataset"), call.args.get("positions"))
        else {
            unreachable!("checked")
        };
        let (sae, context) = self.attribution_inputs(call)?;
        let sequences = self.dataset(dataset)?;
        let rows_table = &self.tables[rows];
        let column = |c: &str| {
            rows_table.column(c).ok_or_else(|| {
                format!("table `{rows}` has no column `{c}` (a per_token table has one)")
            })
        };
        let (batch_column, pos_column) = (column("batch")?, column("pos")?);
        let mut wanted: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for row in &rows_table.rows {
            let (Some(prompt), Some(pos)) = (row[batch_column].number(), row[pos_column].number())
            else {
                return Err(format!("`batch` and `pos` of `{rows}` must be numbers"));
            };
            let (prompt, pos) = (prompt as usize, pos as usize);
            match sequences.get(prompt) {
                Some(tokens) if pos < tokens.len() => wanted.entry(prompt).or_default().push(pos),
                _ => {
                    return Err(format!(
                        "row {prompt}/{pos} of `{rows}` is not a token of dataset `{dataset}`; give the dataset the table was made from"
                    ));
                }
            }
        }
        // feature -> (positions active, sum of activations, sum of shares)
        let mut totals: BTreeMap<usize, (usize, f64, f64)> = BTreeMap::new();
        for (prompt, positions) in wanted {
            let batch = self
                .model
                .batch(std::slice::from_ref(&sequences[prompt]))
                .map_err(Self::runtime)?;
            let clean = self.forward(None, &batch, &context.outputs())?;
            for pos in positions {
                for (feature, activation, share) in context.shares(&sae, &clean, 0, pos, None).1 {
                    let entry = totals.entry(feature).or_default();
                    entry.0 += 1;
                    entry.1 += f64::from(activation);
                    entry.2 += share;
                }
            }
        }
        let mut table = Table::new(
            name,
            &[
                "feature",
                "positions",
                "mean_activation",
                "score_contribution",
                "mean_score_contribution",
            ],
        );
        table.rows = totals
            .into_iter()
            .map(|(feature, (n, activation, share))| {
                vec![
                    Cell::Integer(feature as i64),
                    Cell::Integer(n as i64),
                    Cell::Number(activation / n as f64),
                    Cell::Number(share),
                    Cell::Number(share / n as f64),
                ]
            })
            .collect();
        Ok(table)
    }

    /// A feature-attribution call's SAE, which must read its `head`'s query, and what
    /// splitting that head's scores needs.
    fn attribution_inputs(
        &mut self,
        call: &Call,
    ) -> Result<(std::sync::Arc<crate::sae::Sae>, ScoreContext), Failure> {
        let (layer, head) = self
            .head(call.args.get("head"))
            .ok_or_else(|| "the head has no value".to_owned())?;
        let Some(Value::Name(name)) = call.args.get("sae") else {
            unreachable!("checked")
        };
        let SaeSplice { sae, target, .. } = self.sae_splice(name)?;
        let q_hook = format!("blocks.{layer}.attn.hook_q");
        if target.hook != q_hook || target.head != Some(head) {
            return Err(format!(
                "SAE `{name}` reads `{}`{}; attribution to features needs an SAE on L{layer}H{head}'s query (`{q_hook}[head = {head}]`)",
                target.hook,
                target
                    .head
                    .map(|h| format!("[head = {h}]"))
                    .unwrap_or_default(),
            ));
        }
        Ok((sae, self.score_context(layer, head)?))
    }

    /// What splitting `head`'s attention scores needs: its hooks and the rotary tables.
    fn score_context(&self, layer: usize, head: usize) -> Result<ScoreContext, Failure> {
        let config = &self.model.manifest.config;
        let rotary = matches!(config.positional, crate::model::Positional::Rotary { .. });
        let rotation = if rotary {
            Some((
                self.model.weight("rotary.cos").map_err(Self::runtime)?,
                self.model.weight("rotary.sin").map_err(Self::runtime)?,
            ))
        } else {
            None
        };
        Ok(ScoreContext {
            q_hook: format!("blocks.{layer}.attn.hook_q"),
            key_hook: format!(
                "blocks.{layer}.attn.hook_{}",
                if rotary { "rot_k" } else { "k" }
            ),
            pattern_hook: format!("blocks.{layer}.attn.hook_pattern"),
            head,
            kv_head: head / config.gqa_group(),
            rotation,
            attn_scale: config.attn_scale,
        })
    }

    /// The head's direct effect on each token's logit at the prompt's last position,
    /// against the total effect of ablating it (the seed's "is the effect direct?"), for
    /// the tokens in the top `top` of the clean or the ablated run.
    fn direct_logit_attribution(&mut self, name: &str, call: &Call) -> Result<Table, Failure> {
        use crate::analysis::logit_attribution::{Unembed, direct_logits};
        let prompt = self.text(call.args.get("prompt")).unwrap_or_default();
        let (layer, head) = self
            .head(call.args.get("head"))
            .ok_or_else(|| "the head has no value".to_owned())?;
        let Some(Value::Name(ablation)) = call.args.get("ablation") else {
            unreachable!("checked")
        };
        let top = int(call, "top").unwrap_or(10).max(1) as usize;
        let tokens = self.prompt_tokens(&prompt)?;
        let batch = self
            .model
            .batch(std::slice::from_ref(&tokens))
            .map_err(Self::runtime)?;
        let result_hook = format!("blocks.{layer}.attn.hook_result");
        let clean = self.forward(
            None,
            &batch,
            &["logits", &result_hook, "ln_final.hook_scale"],
        )?;
        let ablated = self.forward(Some(ablation), &batch, &["logits"])?;
        let last = tokens.len() - 1;

        let config = self.model.manifest.config.clone();
        let ln_w = self.model.weight("ln_final.w").map_err(Self::runtime)?;
        let ln_w = ln_w
            .view()
            .into_dimensionality::<ndarray::Ix1>()
            .map_err(|e| e.to_string())?;
        let unembed_weight = if config.tied_embeddings {
            self.model.weight("embed.W_E")
        } else {
            self.model.weight("unembed.W_U")
        }
        .map_err(Self::runtime)?;
        let matrix = unembed_weight
            .view()
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|e| e.to_string())?;
        let unembed = if config.tied_embeddings {
            Unembed::TiedEmbedding(matrix)
        } else {
            Unembed::Matrix(matrix)
        };
        let scale = clean.hooks["ln_final.hook_scale"][[0, last, 0]];
        let component = clean.hooks[&result_hook]
            .slice(s![0, last, head, ..])
            .to_owned();
        let direct = direct_logits(
            component.view(),
            scale,
            ln_w,
            config.normalization,
            &unembed,
        );

        let clean_logits = clean.logits.expect("logits requested");
        let ablated_logits = ablated.logits.expect("logits requested");
        let effect: Vec<f64> = (0..direct.len())
            .map(|v| f64::from(clean_logits[[0, last, v]] - ablated_logits[[0, last, v]]))
            .collect();
        let mut by_direct: Vec<usize> = (0..direct.len()).collect();
        by_direct.sort_by(|&a, &b| direct[b].total_cmp(&direct[a]).then(a.cmp(&b)));
        let mut rank = vec![0usize; direct.len()];
        for (r, &v) in by_direct.iter().enumerate() {
            rank[v] = r + 1;
        }
        // As the seed: the tokens either run ranks in its top `top`, by how much the
        // ablation lowers them.
        let top_of = |logits: &ndarray::Array3<f32>| {
            let mut order: Vec<usize> = (0..direct.len()).collect();
            order.sort_by(|&a, &b| {
                logits[[0, last, b]]
                    .total_cmp(&logits[[0, last, a]])
                    .then(a.cmp(&b))
            });
            order.truncate(top);
            order
        };
        let mut by_effect = top_of(&clean_logits);
        let from_ablated: Vec<usize> = top_of(&ablated_logits)
            .into_iter()
            .filter(|v| !by_effect.contains(v))
            .collect();
        by_effect.extend(from_ablated);
        by_effect.sort_by(|&a, &b| effect[b].total_cmp(&effect[a]).then(a.cmp(&b)));
        let mut table = Table::new(
            name,
            &[
                "token",
                "direct_logit_attribution",
                "ablation_effect",
                "rank",
            ],
        );
        for &v in &by_effect {
            table.rows.push(vec![
                Cell::Str(self.str_tokens(&[v as u32])?.remove(0)),
                Cell::Number(direct[v]),
                Cell::Number(effect[v]),
                Cell::Integer(rank[v] as i64),
            ]);
        }
        Ok(table)
    }
}

/// What `sae_metrics` compares a splice against: a declared variant, or zero-ablating
/// the SAE's hook.
enum Baseline {
    Variant(String),
    Zero(Intervention),
}

/// Where a patched hook's value comes from: the hook in `from_variant`'s run (`None`: the
/// clean model) on the same tokens, or on `from_prompt`'s tokens.
#[derive(Debug, Clone)]
struct PatchSource {
    input: String,
    hook: String,
    from_variant: Option<String>,
    from_prompt: Option<Vec<u32>>,
}

/// A head's hooks and rotary tables, for splitting its attention scores over features.
struct ScoreContext {
    q_hook: String,
    key_hook: String,
    pattern_hook: String,
    head: usize,
    kv_head: usize,
    rotation: Option<(ArrayD<f32>, ArrayD<f32>)>,
    attn_scale: f32,
}

impl ScoreContext {
    fn outputs(&self) -> [&str; 3] {
        [&self.q_hook, &self.key_hook, &self.pattern_hook]
    }

    /// At batch row `row`, query `query`: the key position (given, or where the head
    /// attends most) and each active feature's `(feature, activation, share of the
    /// score)`, the share in the query's own space (the SAE's output scale applied).
    fn shares(
        &self,
        sae: &crate::sae::Sae,
        forward: &Forward,
        row: usize,
        query: usize,
        key_pos: Option<usize>,
    ) -> (usize, Vec<(usize, f32, f64)>) {
        use crate::analysis::score_attribution::{Rotation, feature_contributions};
        let key_pos = key_pos.unwrap_or_else(|| {
            argmax_attention(&forward.hooks[&self.pattern_hook], row, self.head, query).0
        });
        let x = forward.hooks[&self.q_hook]
            .slice(s![row, query, self.head, ..])
            .to_owned();
        let acts = sae.encode(x.view().insert_axis(Axis(0)));
        let key = forward.hooks[&self.key_hook].slice(s![row, key_pos, self.kv_head, ..]);
        let rotation = self.rotation.as_ref().map(|(cos, sin)| Rotation {
            cos: cos.slice(s![query, ..]),
            sin: sin.slice(s![query, ..]),
        });
        // A feature's decoded direction is in the SAE's normalized space; in the query's
        // space it is scaled by the token's output scale.
        let output_scale = f64::from(sae.output_scale(x.view()));
        let shares = feature_contributions(
            acts.row(0),
            sae.w_dec.view(),
            rotation.as_ref(),
            key,
            self.attn_scale,
        )
        .into_iter()
        .map(|(f, a, share)| (f, a, share * output_scale))
        .collect();
        (key_pos, shares)
    }
}

/// An SAE, the hook it reads, and the edit that splices it in.
struct SaeSplice {
    sae: std::sync::Arc<crate::sae::Sae>,
    target: Target,
    edit: Intervention,
    /// Names the spliced graph in the session cache.
    key: String,
}

/// A variant's per-token columns for one batch: `[row][pos]`.
struct VariantColumns {
    losses: Vec<Vec<f32>>,
    kls: Vec<Vec<f64>>,
}

/// `KL(clean || variant)` of the next-token distributions at every real position.
pub fn kl_divergences(clean: &Array3<f32>, variant: &Array3<f32>, batch: &Batch) -> Vec<Vec<f64>> {
    per_next_token(batch, |row, pos| {
        kl_divergence(
            clean.slice(s![row, pos, ..]),
            variant.slice(s![row, pos, ..]),
        )
    })
}

/// A forward pass's result, or an error naming the run (a variant or the clean model) and,
/// for NaNs, the output they came out of.
fn finite(
    variant: Option<&str>,
    forward: Result<Forward, RuntimeError>,
) -> Result<Forward, Failure> {
    let run = match variant {
        Some(variant) => format!("variant `{variant}`"),
        None => "the clean model".to_owned(),
    };
    let forward = forward.map_err(|e| format!("{run}: {}", error_chain(&e)))?;
    let logits = forward
        .logits
        .iter()
        .map(|l| ("logits", l.as_slice_memory_order()));
    let hooks = forward
        .hooks
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice_memory_order()));
    for (output, values) in logits.chain(hooks) {
        if values.is_some_and(|v| v.iter().any(|x| x.is_nan())) {
            return Err(format!(
                "{run}: `{output}` came out with NaN; the model's weights or the variant's edit is broken there"
            ));
        }
    }
    Ok(forward)
}

/// The head's argmax attention from `pos` in batch row `row`: (key position, weight).
fn argmax_attention(pattern: &ArrayD<f32>, row: usize, head: usize, pos: usize) -> (usize, f32) {
    pattern
        .slice(s![row, head, pos, ..=pos])
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
            if p > best.1 { (i, p) } else { best }
        })
}

fn norm<'a>(x: impl IntoIterator<Item = &'a f32>) -> f64 {
    x.into_iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// Every real token's value of a `[batch, pos, ...]` hook as one row each, in batch order
/// (a head's slice when `head` is given).
fn head_rows(activation: &ArrayD<f32>, batch: &Batch, head: Option<usize>) -> Array2<f32> {
    let mut values = Vec::new();
    let mut width = 0;
    for (row, &len) in batch.lengths.iter().enumerate() {
        let sequence = activation.index_axis(Axis(0), row);
        for pos in 0..len {
            let token = sequence.index_axis(Axis(0), pos);
            let x = match head {
                Some(head) => token.index_axis(Axis(0), head),
                None => token,
            };
            width = x.len();
            values.extend(x.iter());
        }
    }
    Array2::from_shape_vec((values.len() / width.max(1), width), values)
        .expect("every token has the same width")
}

/// The position a call's `pos` names in `tokens` (negative counts from the end; the last
/// token when absent).
fn position(tokens: &[u32], call: &Call) -> Result<usize, Failure> {
    let pos = int(call, "pos").unwrap_or(-1);
    let at = if pos < 0 {
        tokens.len() as i64 + pos
    } else {
        pos
    };
    if at < 0 || at as usize >= tokens.len() {
        return Err(format!(
            "position {pos} is outside the prompt's {} tokens",
            tokens.len()
        ));
    }
    Ok(at as usize)
}

/// A few tokens each side of `pos`, the token itself between bars: `says Mom|.| "`.
fn context(strs: &[String], pos: usize, width: usize) -> String {
    let before: String = strs[pos.saturating_sub(width)..pos].concat();
    let after: String = strs[pos + 1..(pos + 1 + width).min(strs.len())].concat();
    format!("{before}|{}|{after}", strs[pos])
}

/// Consecutive prompts grouped so a batch holds at most `batch_size` prompts and about
/// [`TOKENS_PER_FORWARD`] padded tokens.
fn token_chunks(sequences: &[Vec<u32>], batch_size: usize) -> Vec<&[Vec<u32>]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < sequences.len() {
        let mut end = start + 1;
        let mut width = sequences[start].len();
        while end < sequences.len() && end - start < batch_size.max(1) {
            let wider = width.max(sequences[end].len());
            if wider * (end - start + 1) > TOKENS_PER_FORWARD {
                break;
            }
            width = wider;
            end += 1;
        }
        out.push(&sequences[start..end]);
        start = end;
    }
    out
}

fn names(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::List(items)) => items.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    }
}

fn int(call: &Call, name: &str) -> Option<i64> {
    match call.args.get(name) {
        Some(Value::Integer(n)) => Some(*n),
        _ => None,
    }
}

fn number(call: &Call, name: &str) -> Option<f64> {
    match call.args.get(name) {
        Some(Value::Number(n)) => Some(*n),
        Some(Value::Integer(n)) => Some(*n as f64),
        _ => None,
    }
}

/// A hash of a dataset's token ids, sequence by sequence.
fn tokens_sha256(sequences: &[Vec<u32>]) -> String {
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

/// An error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
