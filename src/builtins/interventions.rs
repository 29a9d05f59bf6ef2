//! Interventions, the calls inside a `variant { ... }`: their parameters and their
//! typed form. The session resolves them (heads chosen, means computed, SAEs loaded) into
//! the compile passes of `compile::interventions`.

use super::args::{Args, BindError, Features, Text};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::hooks::HookRef;
use crate::plan::Call;

pub const ZERO: Builtin = Builtin {
    name: "zero",
    produces: Produces::Intervention,
    summary: "zero-ablate a hook (a head, positions)",
    params: &[req("hook", Type::Hook)],
};

pub const MEAN: Builtin = Builtin {
    name: "mean",
    produces: Produces::Intervention,
    summary: "mean-ablate a hook with its mean over a dataset",
    params: &[req("hook", Type::Hook), req("dataset", Type::Dataset)],
};

pub const SPLICE: Builtin = Builtin {
    name: "splice",
    produces: Produces::Intervention,
    summary: "replace the SAE's hook with its reconstruction",
    params: &[req("sae", Type::Sae), opt("error_term", Type::Bool)],
};

pub const REMOVE_FEATURES: Builtin = Builtin {
    name: "remove_features",
    produces: Produces::Intervention,
    summary: "subtract act_f * W_dec[f] for chosen features",
    params: &[
        req("sae", Type::Sae),
        req("features", Type::Features),
        opt("pos", Type::Position),
    ],
};

pub const SCALE_FEATURES: Builtin = Builtin {
    name: "scale_features",
    produces: Produces::Intervention,
    summary: "scale chosen features' contribution",
    params: &[
        req("sae", Type::Sae),
        req("features", Type::Features),
        req("factor", Type::Number).within(-1e6, 1e6),
        opt("pos", Type::Position),
    ],
};

pub const STEER: Builtin = Builtin {
    name: "steer",
    produces: Produces::Intervention,
    summary: "add a feature's decoder direction (times scale) to a hook",
    params: &[
        req("hook", Type::Hook),
        req("sae", Type::Sae),
        req("feature", Type::Integer).within(0.0, 1_048_575.0),
        req("scale", Type::Number).within(-1e6, 1e6),
    ],
};

pub const ADD: Builtin = Builtin {
    name: "add",
    produces: Produces::Intervention,
    summary: "add a vector (times scale) to a hook: activation_difference, vector_file or a written list",
    params: &[
        req("hook", Type::Hook),
        req("vector", super::values::VECTOR),
        opt("scale", Type::Number).within(-1e6, 1e6),
    ],
};

pub const ACTADD: Builtin = Builtin {
    name: "actadd",
    produces: Produces::Intervention,
    summary: "ActAdd: the hook's value on one prompt minus another's, position by position, times scale, added at the front of every sequence",
    params: &[
        req("hook", Type::Hook),
        req("positive", Type::Str).non_empty(),
        req("negative", Type::Str).non_empty(),
        opt("scale", Type::Number).within(-1e6, 1e6),
    ],
};

pub const PATCH: Builtin = Builtin {
    name: "patch",
    produces: Produces::Intervention,
    summary: "replace a hook with its value from another variant or prompt",
    params: &[
        req("hook", Type::Hook),
        opt("from_variant", Type::Variant),
        opt("from_prompt", Type::Str),
    ],
};

/// An intervention as written, its arguments typed.
#[derive(Debug, Clone, PartialEq)]
pub enum InterventionCall {
    /// Zero-ablate a hook (a head, a position).
    Zero { hook: HookRef },
    /// Replace a hook with its mean over a dataset.
    Mean { hook: HookRef, dataset: String },
    /// Splice an SAE in at its hook; without the error term, the hook becomes the
    /// reconstruction.
    Splice { sae: String, error_term: bool },
    /// Scale chosen features' contribution (0 removes them), at a position or all.
    ScaleFeatures {
        sae: String,
        features: Features,
        factor: f32,
        pos: Option<i64>,
    },
    /// Add a feature's decoder direction times `scale` to a hook.
    Steer {
        hook: HookRef,
        sae: String,
        feature: usize,
        scale: f32,
    },
    /// Replace a hook with its value in another variant's run, or on another prompt.
    Patch {
        hook: HookRef,
        from_variant: Option<String>,
        from_prompt: Option<Text>,
    },
    Add {
        hook: HookRef,
        vector: VectorArg,
        scale: f32,
    },
    /// ActAdd: `scale` x (the hook on `positive` - on `negative`), per position, added
    /// at the first positions of every sequence.
    ActAdd {
        hook: HookRef,
        positive: Text,
        negative: Text,
        scale: f32,
    },
}

/// A vector written in the source, or computed by a `let` at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorArg {
    Given(Vec<f64>),
    Computed(String),
}

impl VectorArg {
    pub fn resolve(
        &self,
        values: &std::collections::BTreeMap<String, crate::plan::Value>,
    ) -> Result<Vec<f64>, String> {
        match self {
            VectorArg::Given(numbers) => Ok(numbers.clone()),
            VectorArg::Computed(name) => match values.get(name) {
                Some(crate::plan::Value::List(items)) => vector_numbers(items),
                _ => Err(format!("`{name}` has no vector value")),
            },
        }
    }
}

/// The numbers of a vector's items (whole numbers count as numbers).
pub fn vector_numbers(items: &[crate::plan::Value]) -> Result<Vec<f64>, String> {
    use crate::plan::Value;
    items
        .iter()
        .map(|item| match item {
            Value::Number(x) => Ok(*x),
            Value::Integer(n) => Ok(*n as f64),
            other => Err(format!("a vector holds numbers, not {other}")),
        })
        .collect()
}

impl InterventionCall {
    pub fn bind(call: &Call) -> Result<Self, BindError> {
        let args = Args::new(call);
        Ok(match call.function {
            "zero" => InterventionCall::Zero {
                hook: args.hook("hook")?,
            },
            "mean" => InterventionCall::Mean {
                hook: args.hook("hook")?,
                dataset: args.name("dataset")?,
            },
            "splice" => InterventionCall::Splice {
                sae: args.name("sae")?,
                error_term: args.opt_bool("error_term")?.unwrap_or(false),
            },
            "remove_features" | "scale_features" => InterventionCall::ScaleFeatures {
                sae: args.name("sae")?,
                features: args.features("features")?,
                factor: if call.function == "remove_features" {
                    0.0
                } else {
                    args.opt_number("factor")?.unwrap_or(1.0) as f32
                },
                pos: args.position("pos")?,
            },
            "steer" => InterventionCall::Steer {
                hook: args.hook("hook")?,
                sae: args.name("sae")?,
                feature: args.opt_int("feature")?.unwrap_or(0).max(0) as usize,
                scale: args.opt_number("scale")?.unwrap_or(1.0) as f32,
            },
            "add" => InterventionCall::Add {
                hook: args.hook("hook")?,
                vector: args.vector("vector")?,
                scale: args.opt_number("scale")?.unwrap_or(1.0) as f32,
            },
            "actadd" => InterventionCall::ActAdd {
                hook: args.hook("hook")?,
                positive: args.text("positive")?,
                negative: args.text("negative")?,
                scale: args.opt_number("scale")?.unwrap_or(1.0) as f32,
            },
            "patch" => InterventionCall::Patch {
                hook: args.hook("hook")?,
                from_variant: args.opt_name("from_variant")?,
                from_prompt: args.opt_text("from_prompt")?,
            },
            other => {
                return Err(BindError {
                    function: other.to_owned(),
                    argument: String::new(),
                    problem: "is not an intervention".to_owned(),
                });
            }
        })
    }

    /// The hook it edits, where its values (which head, a mean, a vector, a patch's
    /// source) become graph inputs once compiled, as every edit's but an SAE's do (see
    /// `compile::interventions::lift`): variants that differ only in those values share
    /// one graph. `None` for SAE edits, whose weights stay in the graph.
    pub fn lifted_hook(&self) -> Option<&HookRef> {
        match self {
            InterventionCall::Zero { hook }
            | InterventionCall::Mean { hook, .. }
            | InterventionCall::Steer { hook, .. }
            | InterventionCall::Patch { hook, .. }
            | InterventionCall::Add { hook, .. }
            | InterventionCall::ActAdd { hook, .. } => Some(hook),
            InterventionCall::Splice { .. } | InterventionCall::ScaleFeatures { .. } => None,
        }
    }

    /// The SAE the intervention edits in place (spliced, features scaled), if any.
    pub fn edits_sae(&self) -> Option<&str> {
        match self {
            InterventionCall::Splice { sae, .. } | InterventionCall::ScaleFeatures { sae, .. } => {
                Some(sae)
            }
            _ => None,
        }
    }
}
