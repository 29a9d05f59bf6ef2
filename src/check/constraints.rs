//! Checks that need several arguments at once or facts from outside the source: SAE
//! shapes against their hooks, features in range, generation within the context, SAE
//! training within the machine's memory.

use super::*;

impl Checker<'_> {
    pub(super) fn sae_shape(&mut self, call: &Call, span: Span) -> Option<SaeShape> {
        match call.function {
            "load" => {
                let Some(Value::Str(path)) = call.args.get("path") else {
                    return None;
                };
                let given = match call.args.get("hook") {
                    Some(Value::Hook(hook)) => Some(hook.clone()),
                    _ => None,
                };
                match self.context.saes.get(path) {
                    Some(Ok(shape)) => {
                        // A hook the experiment names is checked as every hook argument
                        // is; only one read from the SAE's files needs checking here.
                        let mut shape = shape.clone();
                        if given.is_some() {
                            shape.hook = given;
                        }
                        if let Some(hook) = &shape.hook
                            && !call.args.contains_key("hook")
                            && let Some(manifest) = self.manifest()
                        {
                            let problem = if manifest.hook(&hook.name).is_none() {
                                Some(format!(
                                    "the SAE's cfg.json names hook `{}`, which this model does not have",
                                    hook.name
                                ))
                            } else {
                                match (hook.head, hooks::head_count(&hook.name, Some(manifest))) {
                                    (Some(head), Some(Some(heads))) if head >= heads => {
                                        Some(format!(
                                            "the SAE's cfg.json names head {head} of `{}`, which has heads 0..{}",
                                            hook.name,
                                            heads - 1
                                        ))
                                    }
                                    (Some(head), None) => Some(format!(
                                        "the SAE's cfg.json names head {head} of `{}`, which has no head axis",
                                        hook.name
                                    )),
                                    _ => None,
                                }
                            };
                            if let Some(problem) = problem {
                                self.error(span, problem).hint = Some(
                                    "check `hook_name` and `hook_head_index` in its cfg.json"
                                        .into(),
                                );
                                return None;
                            }
                        }
                        if let Some(hook) = &shape.hook
                            && let Some(width) = hooks::width(hook, self.manifest())
                            && width != shape.d_in
                        {
                            self.error(
                                span,
                                format!(
                                    "the SAE's d_in is {} but its hook `{}` has width {width}",
                                    shape.d_in, hook.name
                                ),
                            );
                        }
                        Some(shape)
                    }
                    Some(Err(why)) => {
                        self.error(span, format!("cannot use the SAE at {path:?}: {why}"));
                        None
                    }
                    None => None,
                }
            }
            "train" => {
                let hook = match call.args.get("hook") {
                    Some(Value::Hook(h)) => h.clone(),
                    _ => return None,
                };
                let d_sae = match call.args.get("d_sae") {
                    Some(Value::Integer(n)) if *n > 0 => *n as usize,
                    _ => return None,
                };
                let d_in = hooks::width(&hook, self.manifest())?;
                Some(SaeShape {
                    d_in,
                    d_sae,
                    hook: Some(hook),
                })
            }
            _ => None,
        }
    }

    pub(super) fn feature_in_range(
        &mut self,
        span: Span,
        sae: &str,
        shape: &SaeShape,
        feature: i64,
    ) {
        if feature < 0 || feature as usize >= shape.d_sae {
            self.error(
                span,
                format!(
                    "feature {feature} is out of range: `{sae}` has features 0..{}",
                    shape.d_sae - 1
                ),
            );
        }
    }

    /// Checks that need several arguments at once.
    pub(super) fn post_check(&mut self, call: &Call, span: Span) {
        if call.function == "share" {
            let bound = |name| match call.args.get(name) {
                Some(Value::Number(x)) => Some(*x),
                Some(Value::Integer(n)) => Some(*n as f64),
                _ => None,
            };
            match (bound("at_least"), bound("at_most")) {
                (None, None) => {
                    self.error(span, "`share` needs a bound: `at_least`, `at_most` or both")
                        .hint = Some("e.g. `share(cond, at_least = 0.8)`: 80% of the rows".into());
                }
                (Some(low), Some(high)) if low > high => {
                    self.error(
                        span,
                        format!("no share is at least {low} and at most {high}"),
                    )
                    .hint = Some("swap the bounds".into());
                }
                _ => {}
            }
        }
        if let (Some(Value::Name(sae)), Some(Value::List(features))) =
            (call.args.get("sae"), call.args.get("features"))
            && let Some((Binding::Sae(Some(shape)), _)) = self.scope.get(sae).cloned()
        {
            for feature in features {
                if let Value::Integer(f) = feature {
                    self.feature_in_range(span, sae, &shape, *f);
                }
            }
        }
        if call.function == "steer"
            && let (Some(Value::Name(sae)), Some(Value::Hook(hook))) =
                (call.args.get("sae"), call.args.get("hook"))
            && let Some((Binding::Sae(Some(shape)), _)) = self.scope.get(sae).cloned()
        {
            if let Some(Value::Integer(f)) = call.args.get("feature") {
                self.feature_in_range(span, sae, &shape, *f);
            }
            if let Some(width) = hooks::width(hook, self.manifest())
                && width != shape.d_in
            {
                self.error(
                    span,
                    format!(
                        "`{sae}` writes vectors of {} but `{}` has width {width}",
                        shape.d_in, hook.name
                    ),
                );
            }
        }
        if call.function == "actadd"
            && let Some(Value::Hook(hook)) = call.args.get("hook")
        {
            let selected = hook.head.is_some() || hook.head_from.is_some() || hook.pos.is_some();
            let per_head = crate::hooks::point(&hook.name)
                .is_some_and(|p| p.heads != crate::hooks::Heads::None);
            if selected || per_head || hooks::has_key_axis(&hook.name) {
                self.error(
                    span,
                    format!(
                        "`actadd` adds to every front position of a [batch, pos, d] hook; `{}` is not one",
                        hook.name
                    ),
                )
                .hint = Some(
                    "use a residual-stream hook without a selector: `blocks.6.hook_resid_pre`"
                        .into(),
                );
            }
        }
        if call.function == "activation_patching" {
            let by = match call.args.get("by") {
                Some(Value::Choice(by)) => by.as_str(),
                _ => "pos",
            };
            let hook = match call.args.get("hook") {
                Some(Value::Choice(hook)) => hook.as_str(),
                _ => "resid_pre",
            };
            if by != "pos" && hook != "z" {
                self.error(span, format!("`{hook}` has no heads to patch `by = {by}`"))
                    .hint = Some(
                    "patch heads on `hook = z` (each head's output before W_O), or use `by = pos`"
                        .into(),
                );
            }
            if let Some(Value::List(layers)) = call.args.get("layers")
                && let Some(manifest) = self.manifest()
            {
                let n_layers = manifest.config.n_layers as i64;
                for layer in layers {
                    if let Value::Integer(l) = layer
                        && !(0..n_layers).contains(l)
                    {
                        self.error(span, format!("the model has no block {l}")).hint =
                            Some(format!("its blocks are 0 to {}", n_layers - 1));
                    }
                }
            }
        }
        if call.function == "generate"
            && let Some(Value::Integer(n)) = call.args.get("max_new_tokens")
            && let Some(manifest) = self.manifest()
            && *n as usize >= manifest.config.n_ctx
        {
            self.error(
                span,
                format!(
                    "max_new_tokens {n} does not fit the model's context of {} tokens",
                    manifest.config.n_ctx
                ),
            );
        }
        if call.function == "train"
            && let Some(shape) = self.sae_shape(call, span)
            && let Some(available) = self.context.memory_bytes
        {
            let batch = match call.args.get("batch_size") {
                Some(Value::Integer(n)) => *n as u64,
                _ => 4096,
            };
            let needed = training_bytes(shape.d_in as u64, shape.d_sae as u64, batch);
            if needed > available {
                self.error(
                    span,
                    format!(
                        "training this SAE needs about {:.1} GiB of memory (d_in {}, d_sae {}, batch {batch}); this machine has {:.1} GiB",
                        needed as f64 / GIB,
                        shape.d_in,
                        shape.d_sae,
                        available as f64 / GIB
                    ),
                )
                .hint = Some("use a smaller d_sae or batch_size".into());
            }
        }
        if call.function == "train" {
            let architecture = match call.args.get("architecture") {
                Some(Value::Choice(a)) => a.as_str(),
                _ => "standard",
            };
            if architecture == "topk" && !call.args.contains_key("k") {
                self.error(span, "a TopK SAE needs `k`, the number of active features");
            }
            for needs_save in ["checkpoint_every", "resume"] {
                if call.args.contains_key(needs_save) && !call.args.contains_key("save") {
                    self.error(
                        span,
                        format!(
                            "`{needs_save}` needs `save`: checkpoints are kept beside the saved SAE"
                        ),
                    );
                }
            }
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Memory SAE training holds at once, in bytes: encoder and decoder with their gradients
/// and Adam's two moments (4 copies each), and about five `[batch, d_sae]` arrays
/// (pre-activations, activations, their gradients, top-k scratch). Harvested activations
/// come on top and depend on the dataset.
fn training_bytes(d_in: u64, d_sae: u64, batch: u64) -> u64 {
    let floats = 4 * 2 * d_in * d_sae + 5 * batch * d_sae + 4 * (d_sae + d_in);
    floats.saturating_mul(4)
}
