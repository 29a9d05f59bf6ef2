//! Runs a checked plan on its model and collects the results. The only stage besides
//! the report that touches ONNX Runtime and the file system.

use std::time::Instant;

use crate::plan::{Plan, Step};
use crate::runtime::{HookedModel, Runtime, RuntimeError};

/// What a run produced, in the order of the plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Results {
    pub sections: Vec<Section>,
    /// Wall-clock seconds per section; kept out of the result files (they vary run to run).
    #[serde(skip)]
    pub seconds: Vec<f64>,
    pub model_source: String,
    pub weights_sha256: String,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Section {
    SanityCheck {
        text: String,
        tokens: usize,
        loss: f64,
    },
    Generation {
        prompt: String,
        continuation: String,
        tokens: Vec<u32>,
        sampling: String,
    },
    Paragraph {
        text: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("while loading the model {path}: {source}")]
    Load { path: String, source: RuntimeError },
    #[error("while running step {step} ({what}): {source}")]
    Step {
        step: usize,
        what: &'static str,
        source: RuntimeError,
    },
    #[error("step {step} ({what}) produced a non-finite number; the model or its input is broken")]
    NotFinite { step: usize, what: &'static str },
}

pub fn execute(plan: &Plan, runtime: &Runtime) -> Result<Results, ExecuteError> {
    let mut model =
        HookedModel::load(runtime, &plan.model.path).map_err(|source| ExecuteError::Load {
            path: plan.model.path.display().to_string(),
            source,
        })?;
    let mut sections = Vec::new();
    let mut seconds = Vec::new();
    for (step, item) in plan.steps.iter().enumerate() {
        let started = Instant::now();
        let section = match item {
            Step::SanityCheck { text } => {
                let what = "sanity_check";
                let at = |source| ExecuteError::Step { step, what, source };
                let losses = model.loss_per_token(&[text]).map_err(at)?;
                let losses = &losses[0];
                let loss =
                    losses.iter().map(|&l| f64::from(l)).sum::<f64>() / losses.len().max(1) as f64;
                if !loss.is_finite() {
                    return Err(ExecuteError::NotFinite { step, what });
                }
                Section::SanityCheck {
                    text: text.clone(),
                    tokens: losses.len() + 1,
                    loss,
                }
            }
            Step::Generate {
                prompt,
                max_new_tokens,
                sampling,
            } => {
                let at = |source| ExecuteError::Step {
                    step,
                    what: "generate",
                    source,
                };
                let prepend = model.manifest.special_tokens.prepend_bos;
                let tokens = model.to_tokens(prompt, prepend).map_err(at)?;
                let new = model
                    .generate(&tokens, *max_new_tokens, *sampling, false)
                    .map_err(at)?;
                Section::Generation {
                    prompt: prompt.clone(),
                    continuation: model.to_string(&new).map_err(at)?,
                    tokens: new,
                    sampling: format!("{sampling:?}"),
                }
            }
            Step::Paragraph(text) => Section::Paragraph { text: text.clone() },
        };
        sections.push(section);
        seconds.push(started.elapsed().as_secs_f64());
    }
    Ok(Results {
        sections,
        seconds,
        model_source: model.manifest.source.clone(),
        weights_sha256: model.manifest.weights_sha256.clone(),
    })
}
