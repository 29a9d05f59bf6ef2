//! The command line: parses arguments, calls one pipeline stage, prints its outcome.

use std::path::{Path, PathBuf};

use anyhow::Context;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::runtime::{Device, HookedModel, Runtime, Sampling};
use crate::{check, execute, export, report, syntax};

#[derive(Debug, Parser)]
#[command(
    name = "qexp",
    version,
    about = "Declarative mechanistic-interpretability experiments on ONNX Runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Export a checkpoint (a Llama-family .gguf file or a GPT-Neo HF folder) to a
    /// hooked model folder.
    Export {
        checkpoint: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Parse and check an experiment without running it.
    Check { experiment: PathBuf },
    /// Print an experiment's checked plan: what will run, on which graphs.
    Plan { experiment: PathBuf },
    /// Run an experiment and write its report to reports/<experiment name>/.
    Run {
        experiment: PathBuf,
        /// Where report folders go.
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
        /// Overrides the experiment's device.
        #[arg(long, value_enum)]
        device: Option<Device>,
    },
    /// List a model folder's hook points with their shapes.
    Hooks { model: PathBuf },
    /// Continue a prompt.
    Generate {
        model: PathBuf,
        prompt: String,
        #[arg(long, default_value_t = 20)]
        max_new_tokens: usize,
        /// 0 means greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
    },
}

/// Exit codes: 0 success, 1 a failure while running, 2 a problem in the experiment file.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Source(rendered)) => {
            eprint!("{rendered}");
            ExitCode::from(2)
        }
        Err(Failure::Other(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// Rendered diagnostics of an experiment file.
    Source(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::Other(error.into())
    }
}

/// Reads, parses and checks an experiment file.
fn load_plan(path: &Path) -> Result<(Plan, String), Failure> {
    let source =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display().to_string();
    let file =
        syntax::parse(&source).map_err(|d| Failure::Source(syntax::render(&d, &name, &source)))?;
    let plan =
        check::check(&file).map_err(|d| Failure::Source(syntax::render(&d, &name, &source)))?;
    Ok((plan, source))
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Check { experiment } => {
            let (plan, _) = load_plan(&experiment)?;
            println!("{}: ok ({} steps)", experiment.display(), plan.steps.len());
        }
        Command::Plan { experiment } => {
            let (plan, _) = load_plan(&experiment)?;
            print!("{plan}");
        }
        Command::Run {
            experiment,
            reports,
            device,
        } => {
            let (mut plan, source) = load_plan(&experiment)?;
            if let Some(device) = device {
                plan.model.device = device;
            }
            let runtime = Runtime::new(plan.model.device)?;
            let results = execute::execute(&plan, &runtime)?;
            let folder = report::write(&reports, &plan, &source, &results)?;
            for section in &results.sections {
                match section {
                    execute::Section::SanityCheck { loss, tokens, .. } => {
                        println!("sanity check: loss {loss:.4} over {tokens} tokens")
                    }
                    execute::Section::Generation {
                        prompt,
                        continuation,
                        ..
                    } => println!("generation: {prompt}{continuation}"),
                    execute::Section::Paragraph { .. } => {}
                }
            }
            println!("report written to {}", folder.display());
        }
        Command::Export { checkpoint, output } => {
            let summary = export::export(&checkpoint, &output)?;
            let m = &summary.manifest;
            println!(
                "exported {} to {}: {} layers, d_model {}, {} heads ({} kv), {} parameters, {} graph nodes, {} hook points",
                m.source,
                output.display(),
                m.config.n_layers,
                m.config.d_model,
                m.config.n_heads,
                m.config.n_kv_heads,
                m.parameters,
                summary.graph_nodes,
                m.hooks.len()
            );
        }
        Command::Hooks { model } => {
            let manifest = Manifest::read(&model)?;
            for hook in &manifest.hooks {
                println!(
                    "{:<40} [{}]  {}",
                    hook.name,
                    hook.shape.join(", "),
                    hook.meaning
                );
            }
        }
        Command::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            seed,
            device,
        } => {
            let runtime = Runtime::new(device)?;
            let mut model = HookedModel::load(&runtime, &model)?;
            let prepend = model.manifest.special_tokens.prepend_bos;
            let tokens = model.to_tokens(&prompt, prepend)?;
            let sampling = if temperature > 0.0 {
                Sampling::Temperature { temperature, seed }
            } else {
                Sampling::Greedy
            };
            let new = model.generate(&tokens, max_new_tokens, sampling, false)?;
            println!("{prompt}{}", model.to_string(&new)?);
        }
    }
    Ok(())
}
