//! Where an experiment's SAEs come from: an SAELens folder (`load`), or training on a
//! hook's activations (`train`), with their parameters and typed form.

use super::args::{Args, BindError, Text};
use crate::builtins::spec::{Builtin, MAX_SEED, MAX_TOKENS, Produces, Type, opt, req};
use crate::hooks::HookRef;
use crate::plan::Call;
use crate::sae::Architecture;
use crate::sae::train::TrainConfig;

pub const LOAD: Builtin = Builtin {
    name: "load",
    produces: Produces::Sae,
    summary: "an SAE folder in SAELens layout (cfg.json + sae_weights.safetensors) or Gemma Scope's params.npz",
    params: &[req("path", Type::Str).non_empty(), opt("hook", Type::Hook)],
};

pub const TRAIN: Builtin = Builtin {
    name: "train",
    produces: Produces::Sae,
    summary: "train an SAE on a hook's activations",
    params: &[
        req("hook", Type::Hook),
        req("dataset", Type::Dataset),
        req("d_sae", Type::Integer).within(1.0, 1_048_576.0),
        opt(
            "architecture",
            Type::Choice(&["standard", "topk", "jumprelu"]),
        ),
        opt("l1_coefficient", Type::Number).within(0.0, 1e3),
        opt("k", Type::Integer).within(1.0, 1_048_576.0),
        opt("tokens", Type::Integer).within(1.0, MAX_TOKENS),
        opt("lr", Type::Number).within(1e-12, 10.0),
        opt("batch_size", Type::Integer).within(1.0, 1_048_576.0),
        opt("seed", Type::Integer).within(0.0, MAX_SEED),
        opt("normalize_activations", Type::Bool),
        opt("resample_dead", Type::Bool),
        opt("save", Type::Str).non_empty(),
        opt("checkpoint_every", Type::Integer).within(0.0, 1e12),
        opt("resume", Type::Bool),
    ],
};

/// An SAE declaration, its arguments typed.
#[derive(Debug, Clone, PartialEq)]
pub enum SaeSource {
    /// An SAELens folder or Gemma Scope `params.npz`, relative to the project.
    Load {
        path: String,
        /// The hook it reads, where the experiment names it (over what its files say).
        hook: Option<HookRef>,
    },
    Train(Train),
}

/// `train(...)`: what to train on, how, and where to keep it.
#[derive(Debug, Clone, PartialEq)]
pub struct Train {
    pub hook: HookRef,
    pub dataset: String,
    pub config: TrainConfig,
    /// The folder the trained SAE is saved to (checkpoints go beside it).
    pub save: Option<Text>,
    /// Steps between checkpoints; 0 for none.
    pub checkpoint_every: usize,
    /// Whether to continue from the last checkpoint with the same settings and inputs.
    pub resume: bool,
}

impl SaeSource {
    pub fn bind(call: &Call) -> Result<Self, BindError> {
        let args = Args::new(call);
        if call.function == LOAD.name {
            return Ok(SaeSource::Load {
                path: match args.text("path")? {
                    Text::Given(path) => path,
                    Text::Computed(name) => {
                        return Err(BindError {
                            function: call.function.to_owned(),
                            argument: "path".to_owned(),
                            problem: format!("is `{name}`, computed at run time"),
                        });
                    }
                },
                hook: args.opt_hook("hook")?,
            });
        }
        let architecture = match args.opt_choice("architecture")?.as_deref() {
            Some("topk") => Architecture::TopK {
                k: args.opt_int("k")?.unwrap_or(32).max(1) as usize,
            },
            Some("jumprelu") => Architecture::JumpRelu,
            _ => Architecture::Standard,
        };
        let int = |name: &str, default: i64| -> Result<i64, BindError> {
            Ok(args.opt_int(name)?.unwrap_or(default))
        };
        Ok(SaeSource::Train(Train {
            hook: args.hook("hook")?,
            dataset: args.name("dataset")?,
            config: TrainConfig {
                d_sae: int("d_sae", 4096)? as usize,
                architecture,
                l1_coefficient: args.opt_number("l1_coefficient")?.unwrap_or(5e-4) as f32,
                lr: args.opt_number("lr")?.unwrap_or(3e-4) as f32,
                batch_size: int("batch_size", 4096)? as usize,
                tokens: int("tokens", 1_000_000)? as usize,
                seed: int("seed", 0)? as u64,
                normalize_activations: args.opt_bool("normalize_activations")?.unwrap_or(false),
                resample_dead: args.opt_bool("resample_dead")?.unwrap_or(false),
            },
            save: args.opt_text("save")?,
            checkpoint_every: int("checkpoint_every", 0)?.max(0) as usize,
            resume: args.opt_bool("resume")?.unwrap_or(true),
        }))
    }
}
