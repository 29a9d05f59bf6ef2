//! A session's variants: each declared variant's interventions resolved once (heads
//! chosen, means computed, SAEs loaded), compiled into graphs, and the values its
//! `patch` interventions feed in per batch.

use ndarray::{ArrayD, Axis};

use super::{Failure, Session};
use crate::builtins::interventions::InterventionCall;
use crate::compile::interventions::{Add, AddAtFront, Constant, Patch, Zero};
use crate::compile::{self, Intervention, SaeEdit, Target, interventions};
use crate::onnx::ModelProto;
use crate::runtime::Batch;

/// Where a patched hook's value comes from: the hook in `from_variant`'s run (`None`: the
/// clean model) on the same tokens, or on `from_prompt`'s tokens.
#[derive(Debug, Clone)]
pub(crate) struct PatchSource {
    pub input: String,
    pub hook: String,
    pub from_variant: Option<String>,
    pub from_prompt: Option<Vec<u32>>,
}

impl Session<'_, '_, '_> {
    /// A variant's interventions, resolved (heads chosen, means computed, SAEs loaded)
    /// once. All of one SAE's calls in a variant become one edit: `splice` decides
    /// whether the error term is dropped; feature removals and scalings ride along.
    pub(crate) fn interventions(&mut self, variant: &str) -> Result<Vec<Intervention>, Failure> {
        if let Some(done) = self.variants.get(variant) {
            return Ok(done.clone());
        }
        let calls = super::declared(&self.plan.variants, variant, "variant")?.clone();
        let mut resolved = Vec::new();
        let mut patches = Vec::new();
        let mut sae_edits: Vec<(String, SaeEdit)> = Vec::new();
        for call in &calls {
            let call = InterventionCall::bind(call).map_err(|e| e.to_string())?;
            if let Some(sae_name) = call.edits_sae() {
                let sae = self.sae(sae_name)?;
                let index = match sae_edits.iter().position(|(n, _)| n == sae_name) {
                    Some(i) => i,
                    None => {
                        let hook = sae.hook.clone().ok_or_else(|| {
                            format!("SAE `{sae_name}` names no hook in its files; name it where it is loaded: load(\"...\", hook = blocks.L.hook_resid_post)")
                        })?;
                        sae_edits.push((
                            sae_name.to_owned(),
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
                match &call {
                    InterventionCall::Splice { error_term, .. } => edit.error_term = *error_term,
                    InterventionCall::ScaleFeatures {
                        features,
                        factor,
                        pos,
                        ..
                    } => {
                        let features = features.resolve(&self.values, sae.d_sae);
                        edit.scale
                            .extend(features.into_iter().map(|f| (f, *factor)));
                        if let Some(pos) = pos {
                            edit.scale_pos = Some(*pos);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            resolved.push(match call {
                // Handled above with the SAE's other edits.
                InterventionCall::Splice { .. } | InterventionCall::ScaleFeatures { .. } => {
                    continue;
                }
                InterventionCall::Zero { hook } => Intervention::Zero(Zero {
                    target: self.target(&hook)?,
                }),
                InterventionCall::Mean { hook, dataset } => {
                    let value = self.preparing(|s| s.mean_activation(&hook.name, &dataset))?;
                    Intervention::Constant(Constant {
                        target: self.target(&hook)?,
                        value,
                    })
                }
                InterventionCall::Steer {
                    hook,
                    sae,
                    feature,
                    scale,
                } => {
                    let sae = self.sae(&sae)?;
                    let direction = sae
                        .w_dec
                        .row(feature.min(sae.d_sae - 1))
                        .mapv(|w| w * scale);
                    Intervention::Add(Add {
                        target: self.target(&hook)?,
                        vector: direction,
                    })
                }
                InterventionCall::Add {
                    hook,
                    vector,
                    scale,
                } => {
                    let target = self.target(&hook)?;
                    let vector = vector.resolve(&self.values)?;
                    let width = crate::hooks::width(&hook, Some(&self.model.manifest));
                    if let Some(width) = width
                        && width != vector.len()
                    {
                        return Err(format!(
                            "the vector has {} numbers, but `{}` is {width} wide",
                            vector.len(),
                            hook.name
                        ));
                    }
                    Intervention::Add(Add {
                        target,
                        vector: vector.iter().map(|&x| x as f32 * scale).collect(),
                    })
                }
                InterventionCall::ActAdd {
                    hook,
                    positive,
                    negative,
                    scale,
                } => {
                    let positive = positive.resolve(&self.values)?;
                    let negative = negative.resolve(&self.values)?;
                    let rows =
                        self.preparing(|s| s.prompt_difference(&hook, &positive, &negative))?;
                    Intervention::AddAtFront(AddAtFront {
                        target: self.target(&hook)?,
                        rows: rows.mapv(|x| x * scale),
                    })
                }
                InterventionCall::Patch {
                    hook,
                    from_variant,
                    from_prompt,
                } => {
                    let input = format!("patch{}:{}", patches.len(), hook.name);
                    let from_prompt = match from_prompt {
                        Some(prompt) => {
                            let prompt = prompt.resolve(&self.values)?;
                            Some(self.prompt_tokens(&prompt)?)
                        }
                        None => None,
                    };
                    patches.push(PatchSource {
                        input: input.clone(),
                        hook: hook.name.clone(),
                        from_variant,
                        from_prompt,
                    });
                    Intervention::Patch(Patch {
                        target: self.target(&hook)?,
                        input,
                    })
                }
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

    /// ActAdd's steering rows: `hook` on `positive` minus on `negative`, position by
    /// position (`[tokens, d]`). The prompts must be as long in tokens: the paper pads
    /// the shorter with spaces, which the user can write.
    pub(crate) fn prompt_difference(
        &mut self,
        hook: &crate::hooks::HookRef,
        positive: &str,
        negative: &str,
    ) -> Result<ndarray::Array2<f32>, Failure> {
        if hook.head.is_some() || hook.head_from.is_some() || hook.pos.is_some() {
            return Err(format!(
                "`actadd` adds at the front positions of the whole `{}`: leave out the selector",
                hook.name
            ));
        }
        let (plus, minus) = (self.prompt_tokens(positive)?, self.prompt_tokens(negative)?);
        if plus.len() != minus.len() {
            return Err(format!(
                "`actadd` subtracts position by position, but {positive:?} is {} token(s) long and {negative:?} {}: pad the shorter with spaces (as the ActAdd paper does) until they match",
                plus.len(),
                minus.len()
            ));
        }
        let batch = self.model.batch(&[plus, minus]).map_err(Session::runtime)?;
        let mut forward = self.forward(None, &batch, &[&hook.name])?;
        let value = forward.hooks.remove(&hook.name).expect("asked for");
        let value = value.into_dimensionality::<ndarray::Ix3>().map_err(|_| {
            format!(
                "`actadd` adds to a hook laid out [batch, pos, d]; `{}` is not",
                hook.name
            )
        })?;
        Ok(&value.index_axis(Axis(0), 0) - &value.index_axis(Axis(0), 1))
    }

    /// The mean of a hook over every real token of a dataset, from a graph pruned to the hook.
    pub(crate) fn mean_activation(
        &mut self,
        hook: &str,
        dataset: &str,
    ) -> Result<ArrayD<f32>, Failure> {
        let key = (hook.to_owned(), dataset.to_owned());
        if let Some(mean) = self.means.get(&key) {
            return Ok(mean.clone());
        }
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
        let (rows, shape) = self.hook_activations(&whole_hook, dataset, None)?;
        let mean = rows
            .mapv(f64::from)
            .mean_axis(Axis(0))
            .ok_or_else(|| format!("dataset `{dataset}` has no tokens"))?;
        let mean = mean
            .mapv(|x| x as f32)
            .into_shape_with_order(shape)
            .map_err(|e| e.to_string())?;
        self.means.insert(key, mean.clone());
        Ok(mean)
    }

    /// The values a variant's `patch` interventions feed into its graph for `batch`: each
    /// patched hook run in its source (recursively, so a source may itself patch).
    pub(crate) fn patch_feeds(
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

    /// Releases the compiled graphs of `variant` (each a session holding its own copy
    /// of the weights); a later step that runs it compiles it again.
    pub fn forget_variant(&mut self, variant: &str) {
        self.model.forget_graphs(variant);
        for key in self.shared_graphs.release(variant) {
            self.model.forget_graph(&key);
        }
    }

    /// The structure key of the graph `variant` runs for `outputs`: its values lifted
    /// into inputs, compiled once, its session built unless a variant of the same
    /// structure built it already. With `wanted`, `None` when the structure is another:
    /// then no session is built (a look ahead builds none for structures it does not
    /// run), and the key is remembered so that the graph is not compiled again to say so.
    pub(super) fn variant_graph(
        &mut self,
        variant: &str,
        outputs: &[&str],
        wanted: Option<&str>,
    ) -> Result<Option<String>, Failure> {
        let outputs_key = outputs.join(",");
        let other = |key: &str| wanted.is_some_and(|w| w != key);
        if let Some(graph) = self.shared_graphs.get(variant, &outputs_key) {
            return Ok(Some(graph.key.clone()).filter(|k| !other(k)));
        }
        if self
            .shared_graphs
            .known_key(variant, &outputs_key)
            .is_some_and(other)
        {
            return Ok(None);
        }
        let edits = self.interventions(variant)?;
        let graph = self.edits_graph(&edits, outputs)?;
        let (lifted, feeds) = interventions::lift_values(&graph, &edits);
        let key = super::shared_graphs::structure_key(&lifted);
        self.shared_graphs.know_key(variant, &outputs_key, &key);
        if other(&key) {
            return Ok(None);
        }
        self.model
            .prepare_graph(&key, &lifted)
            .map_err(Session::runtime)?;
        let compiled = super::shared_graphs::VariantGraph {
            key: key.clone(),
            feeds,
        };
        self.shared_graphs.insert(variant, &outputs_key, compiled);
        Ok(Some(key))
    }

    /// The exported graph with `edits` applied, pruned to `outputs`.
    pub(crate) fn edits_graph(
        &self,
        edits: &[Intervention],
        outputs: &[&str],
    ) -> Result<ModelProto, Failure> {
        let edited = self.edited_graph(edits)?;
        compile::select_outputs(&edited, outputs).map_err(|e| e.to_string())
    }

    /// The exported graph with `edits` applied, every output kept.
    pub(crate) fn edited_graph(&self, edits: &[Intervention]) -> Result<ModelProto, Failure> {
        let manifest = &self.model.manifest;
        let heads = |hook: &str| {
            crate::hooks::head_count(hook, Some(manifest))
                .flatten()
                .unwrap_or(manifest.config.n_heads)
        };
        interventions::apply(self.model.graph(), edits, heads).map_err(|e| e.to_string())
    }

    /// The hook the variant's first `patch` replaces, if it patches any.
    pub(crate) fn first_patched_hook(&self, variant: &str) -> Option<&str> {
        self.patches.get(variant)?.first().map(|p| p.hook.as_str())
    }
}
