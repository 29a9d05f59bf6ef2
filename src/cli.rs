//! The command line: parses arguments, calls one pipeline stage, prints its outcome.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::export;
use crate::manifest::Manifest;
use crate::runtime::{Device, HookedModel, Runtime, Sampling};

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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
