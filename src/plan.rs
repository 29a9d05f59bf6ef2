//! The checked plan: what an experiment will do, with every option resolved. Plain data,
//! no ONNX: `qexp plan` prints it, the executor runs it.

use std::fmt;
use std::path::PathBuf;

use crate::runtime::{Device, Sampling};

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    pub model: ModelSpec,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// A folder made by `qexp export`, relative to where qexp runs.
    pub path: PathBuf,
    pub device: Device,
    pub batch_size: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Mean next-token loss on a fixed text.
    SanityCheck { text: String },
    Generate {
        prompt: String,
        max_new_tokens: usize,
        sampling: Sampling,
    },
    /// Prose for the report, placed where it stands in the experiment.
    Paragraph(String),
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "experiment {}", self.name)?;
        writeln!(
            f,
            "model {} on {:?}, batches of {}",
            self.model.path.display(),
            self.model.device,
            self.model.batch_size
        )?;
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::SanityCheck { text } => writeln!(
                    f,
                    "{i}: sanity-check loss on {} characters of text (graph: logits)",
                    text.len()
                )?,
                Step::Generate {
                    prompt,
                    max_new_tokens,
                    sampling,
                } => writeln!(
                    f,
                    "{i}: generate {max_new_tokens} tokens after {prompt:?}, {sampling:?} (graph: logits)"
                )?,
                Step::Paragraph(text) => writeln!(f, "{i}: paragraph ({} characters)", text.len())?,
            }
        }
        Ok(())
    }
}
