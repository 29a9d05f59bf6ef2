//! The command line: parses arguments, calls one pipeline stage, prints its outcome.

use std::path::{Path, PathBuf};

use anyhow::Context;
use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::manifest::Manifest;
use crate::output::Scope;
use crate::plan::Plan;
use crate::runtime::{Device, HookedModel, Runtime, Sampling};
use crate::{check, execute, export, report, syntax};

// Printing to a closed pipe (`qexp hooks m | head`) is not an error worth a panic.
macro_rules! out {
    ($($arg:tt)*) => {{ let _ = write!(std::io::stdout(), $($arg)*); }};
}
macro_rules! outln {
    ($($arg:tt)*) => {{ let _ = writeln!(std::io::stdout(), $($arg)*); }};
}

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
        #[command(flatten)]
        outputs: OutputFlags,
    },
    /// Parse and check an experiment without running it (against the model's manifest,
    /// the SAEs' configs and the folders it would write, when they exist).
    Check {
        experiment: PathBuf,
        /// Where report folders go.
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
        #[command(flatten)]
        outputs: OutputFlags,
    },
    /// Rewrite an experiment in the canonical layout (comments kept).
    Fmt {
        experiment: PathBuf,
        /// Only report whether the file is already formatted (exit code 1 if not).
        #[arg(long)]
        check: bool,
    },
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
        #[command(flatten)]
        outputs: OutputFlags,
    },
    /// Which numbers changed between two reports (their results/*.csv), and by how much.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Numbers closer than this count as equal.
        #[arg(long, default_value_t = 0.0)]
        tolerance: f64,
        /// Changed cells listed per table (every changed column is summarised).
        #[arg(long, default_value_t = 10)]
        examples: usize,
        /// Exit with 1 when the reports differ.
        #[arg(long)]
        exit_code: bool,
    },
    /// Sparse autoencoders.
    Sae {
        #[command(subcommand)]
        command: SaeCommand,
    },
    /// List a model folder's hook points with their shapes.
    Hooks { model: PathBuf },
    /// Continue a prompt.
    Generate {
        model: PathBuf,
        prompt: String,
        #[arg(long, default_value_t = 20)]
        max_new_tokens: usize,
        /// 0 means greedy; at most 100.
        #[arg(long, default_value_t = 0.0, value_parser = parse_temperature)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
    },
}

#[derive(Debug, Subcommand)]
enum SaeCommand {
    /// Train one SAE an experiment declares with `train(...)` and save it in SAELens'
    /// layout, without running the rest of the experiment. Resumes from its last
    /// checkpoint when there is one.
    Train {
        experiment: PathBuf,
        /// The SAE's name in the experiment.
        name: String,
        /// Where to save it (default: the experiment's `save`, else saes/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum)]
        device: Option<Device>,
        #[command(flatten)]
        outputs: OutputFlags,
    },
}

#[derive(Debug, clap::Args)]
struct OutputFlags {
    /// Let this command write outside the folder it runs in (the project). Without it,
    /// every output path must resolve inside the project.
    #[arg(long)]
    allow_outside_project: bool,
}

impl OutputFlags {
    fn scope(&self) -> Result<Scope, Failure> {
        Scope::current(self.allow_outside_project)
            .context("cannot resolve the current folder (the project)")
            .map_err(Failure::Other)
    }
}

/// Exit codes: 0 success, 1 a failure while running, 2 a problem in the experiment file.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Source(rendered)) => {
            let _ = write!(std::io::stderr(), "{rendered}");
            ExitCode::from(2)
        }
        Err(Failure::Other(error)) => {
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
        Err(Failure::Differ) => ExitCode::FAILURE,
    }
}

enum Failure {
    /// Rendered diagnostics of an experiment file.
    Source(String),
    Other(anyhow::Error),
    /// `qexp diff --exit-code` found differences (already printed).
    Differ,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::Other(error.into())
    }
}

/// Reads, parses and checks an experiment file, with the model's manifest, the SAEs'
/// configs and the folders it would write (reports under `reports`).
fn load_plan(
    path: &Path,
    reports: Option<&Path>,
    scope: &Scope,
) -> Result<(Plan, String), Failure> {
    let (file, source) = parse_file(path)?;
    let mut context = context_for(&file, reports, scope);
    let name = path.display().to_string();
    let render = |d: Vec<syntax::Diagnostic>| Failure::Source(syntax::render(&d, &name, &source));
    let plan = check::check(&file, &context).map_err(render)?;
    // A `save` given through a `let` is known only once checked: verify the plan's own
    // paths, and check again to place any refusal in the source.
    for sae in &plan.saes {
        if let Some(crate::plan::Value::Str(save)) = sae.value.args.get("save") {
            refuse_if_unsafe(&mut context, scope, save);
        }
    }
    if let Some((save, why)) = context.refused_outputs.iter().next() {
        return Err(match check::check(&file, &context) {
            Err(diagnostics) => render(diagnostics),
            Ok(_) => Failure::Other(anyhow::anyhow!("cannot save to {save}: {why}")),
        });
    }
    Ok((plan, source))
}

fn parse_file(path: &Path) -> Result<(syntax::ast::File, String), Failure> {
    let source = syntax::read_source(path)?;
    let name = path.display().to_string();
    let file =
        syntax::parse(&source).map_err(|d| Failure::Source(syntax::render(&d, &name, &source)))?;
    Ok((file, source))
}

/// The files a check consults: the model's manifest, every loaded SAE's cfg.json, and
/// the folders the run would write (every `save =` of a `train`, and the report).
fn context_for(file: &syntax::ast::File, reports: Option<&Path>, scope: &Scope) -> check::Context {
    use syntax::ast::{DeclKind, ExprKind, Statement};
    let mut context = check::Context {
        memory_bytes: crate::machine::total_memory(),
        ..check::Context::default()
    };
    let mut statements: Vec<&syntax::ast::Spanned<Statement>> = file.statements.iter().collect();
    while let Some(statement) = statements.pop() {
        match &statement.node {
            Statement::Model { path, .. } => {
                context.manifest = Manifest::read(Path::new(&path.node)).ok()
            }
            Statement::Declare {
                kind: DeclKind::Sae,
                value,
                ..
            } => {
                if let ExprKind::Call { function, args } = &value.kind
                    && function.node == "load"
                    && let Some(ExprKind::Str(path)) = args.first().map(|a| &a.value.kind)
                {
                    context
                        .saes
                        .insert(path.clone(), crate::sae::read_shape(Path::new(path)));
                }
                if let ExprKind::Call { function, args } = &value.kind
                    && function.node == "train"
                {
                    for arg in args {
                        if arg.name.as_ref().is_some_and(|n| n.node == "save")
                            && let ExprKind::Str(path) = &arg.value.kind
                        {
                            refuse_if_unsafe(&mut context, scope, path);
                        }
                    }
                }
            }
            Statement::Experiment(name) if reports.is_some() => {
                let reports = reports.expect("matched");
                if let Err(why) = report::check_folder(reports, &name.node, scope) {
                    context.refused_report = Some(why.to_string());
                }
            }
            Statement::For { body, .. } => statements.extend(body),
            _ => {}
        }
    }
    context
}

/// Records in `context` why an SAE may not be saved to `save`, if it may not.
fn refuse_if_unsafe(context: &mut check::Context, scope: &Scope, save: &str) {
    if !context.refused_outputs.contains_key(save)
        && let Err(why) = execute::check_save_paths(scope, Path::new(save))
    {
        context
            .refused_outputs
            .insert(save.to_owned(), why.to_string());
    }
}

fn parse_temperature(text: &str) -> Result<f32, String> {
    let t: f32 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=100.0).contains(&t) {
        Ok(t)
    } else {
        Err(format!("{t} is out of range: use 0 to 100"))
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Check {
            experiment,
            reports,
            outputs,
        } => {
            let (plan, _) = load_plan(&experiment, Some(&reports), &outputs.scope()?)?;
            outln!("{}: ok ({} steps)", experiment.display(), plan.steps.len());
        }
        Command::Plan { experiment } => {
            let scope = Scope::current(true).context("cannot resolve the current folder")?;
            let (plan, _) = load_plan(&experiment, None, &scope)?;
            out!("{plan}");
        }
        Command::Fmt { experiment, check } => {
            let (file, source) = parse_file(&experiment)?;
            let formatted = syntax::format(&file, &source);
            if check {
                if formatted != source {
                    return Err(Failure::Other(anyhow::anyhow!(
                        "{} is not formatted; run `qexp fmt {}`",
                        experiment.display(),
                        experiment.display()
                    )));
                }
            } else if formatted != source {
                std::fs::write(&experiment, formatted)
                    .with_context(|| format!("cannot write {}", experiment.display()))?;
            }
        }
        Command::Run {
            experiment,
            reports,
            device,
            outputs,
        } => {
            let scope = outputs.scope()?;
            let (mut plan, source) = load_plan(&experiment, Some(&reports), &scope)?;
            if let Some(device) = device {
                plan.model.device = device;
            }
            let runtime = Runtime::new(plan.model.device)?;
            let results = execute::execute(&plan, &runtime, &scope)?;
            let folder = report::write(&reports, &plan, &source, &results, &scope)?;
            for section in &results.sections {
                if let execute::Section::Table(table) = section
                    && table.rows.len() == 1
                {
                    let cells: Vec<String> = table
                        .columns
                        .iter()
                        .zip(&table.rows[0])
                        .map(|(c, v)| format!("{c}: {}", v.text()))
                        .collect();
                    outln!("{}: {}", table.name, cells.join(", "));
                }
            }
            outln!("report written to {}", folder.display());
        }
        Command::Export {
            checkpoint,
            output,
            outputs,
        } => {
            let summary = export::export(&checkpoint, &output, &outputs.scope()?)?;
            let m = &summary.manifest;
            outln!(
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
        Command::Sae {
            command:
                SaeCommand::Train {
                    experiment,
                    name,
                    out,
                    device,
                    outputs,
                },
        } => {
            let scope = outputs.scope()?;
            let (mut plan, _) = load_plan(&experiment, None, &scope)?;
            if let Some(device) = device {
                plan.model.device = device;
            }
            let Some(sae) = plan.saes.iter().find(|s| s.name == name) else {
                let declared: Vec<&str> = plan.saes.iter().map(|s| s.name.as_str()).collect();
                return Err(Failure::Other(anyhow::anyhow!(
                    "{} declares no SAE `{name}` (it declares: {})",
                    experiment.display(),
                    if declared.is_empty() {
                        "none".to_owned()
                    } else {
                        declared.join(", ")
                    }
                )));
            };
            if sae.value.function != "train" {
                return Err(Failure::Other(anyhow::anyhow!(
                    "`{name}` is made with `{}`, not trained, in {}",
                    sae.value.function,
                    experiment.display()
                )));
            }
            let out = out
                .or_else(|| match sae.value.args.get("save") {
                    Some(crate::plan::Value::Str(path)) => Some(PathBuf::from(path)),
                    _ => None,
                })
                .unwrap_or_else(|| Path::new("saes").join(&name));
            execute::check_save_paths(&scope, &out)?;
            // Only this SAE is made: nothing else runs, no other SAE is saved.
            plan.steps.clear();
            for other in &mut plan.saes {
                if other.name == name {
                    other
                        .value
                        .args
                        .insert("save", crate::plan::Value::Str(out.display().to_string()));
                } else {
                    other.value.args.remove("save");
                }
            }
            let runtime = Runtime::new(plan.model.device)?;
            let results = execute::execute(&plan, &runtime, &scope)?;
            for section in &results.sections {
                if let execute::Section::Table(table) = section {
                    for row in &table.rows {
                        let cells: Vec<String> = table
                            .columns
                            .iter()
                            .zip(row)
                            .map(|(c, v)| format!("{c}: {}", v.text()))
                            .collect();
                        outln!("{}", cells.join(", "));
                    }
                }
            }
            outln!("saved {name} to {}", out.display());
        }
        Command::Diff {
            a,
            b,
            tolerance,
            examples,
            exit_code,
        } => {
            let text = report::diff(&a, &b, tolerance, examples)?;
            if text.is_empty() {
                outln!("no differences in the result files");
            } else {
                out!("{text}");
                if exit_code {
                    return Err(Failure::Differ);
                }
            }
        }
        Command::Hooks { model } => {
            let manifest = Manifest::read(&model)?;
            for hook in &manifest.hooks {
                outln!(
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
            outln!("{prompt}{}", model.to_string(&new)?);
        }
    }
    Ok(())
}
