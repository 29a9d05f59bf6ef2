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
use crate::{execute, export, report, syntax};

// Printing to a closed pipe (`qexp hooks m | head`) is not an error worth a panic.
macro_rules! out {
    ($($arg:tt)*) => {{ let _ = write!(std::io::stdout(), $($arg)*); }};
}
macro_rules! outln {
    ($($arg:tt)*) => {{ let _ = writeln!(std::io::stdout(), $($arg)*); }};
}

mod shards;

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
    /// Export a checkpoint (a Hugging Face folder of GPT-2, GPT-Neo, GPT-NeoX, Llama,
    /// Mistral, Qwen2/3 or Gemma-2, or a .gguf file of those but GPT-Neo) to a hooked
    /// model folder.
    Export {
        checkpoint: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Fold each norm's weight (and a LayerNorm's bias) into the weights that read it
        /// (TransformerLens' `fold_ln`).
        #[arg(long)]
        fold_ln: bool,
        /// Centre the weights that write to the residual stream over d_model (LayerNorm
        /// models only, as in TransformerLens).
        #[arg(long)]
        center_writing_weights: bool,
        /// Centre the unembedding over the vocabulary (logits move by a constant).
        #[arg(long)]
        center_unembed: bool,
        /// Move value biases into the attention output bias.
        #[arg(long)]
        fold_value_biases: bool,
        /// All four, as `HookedTransformer.from_pretrained` processes weights by default.
        #[arg(long)]
        transformer_lens: bool,
        /// How model.onnx.data stores the weights: f32, or f16/bf16 for half the files
        /// (widened to f32 once when loaded; bf16 keeps a bf16 checkpoint exact).
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
        dtype: String,
        #[command(flatten)]
        outputs: OutputFlags,
    },
    /// Parse and check an experiment without running it (against the model's manifest,
    /// the SAEs' configs and the folders it would write, when they exist).
    Check {
        experiment: PathBuf,
        /// Where report folders go (default: reports/ in the experiment's project).
        #[arg(long)]
        reports: Option<PathBuf>,
        /// Check the file without its model folder (hooks, heads and shapes are then
        /// not checked against the model).
        #[arg(long)]
        syntax_only: bool,
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
    Plan {
        experiment: PathBuf,
        /// Also estimate each step's tokens, time and memory: loads the model, tokenizes
        /// the datasets and times a calibration pass on this machine (seconds).
        #[arg(long)]
        estimate: bool,
    },
    /// Run an experiment and write its report to reports/<experiment name>/.
    Run {
        experiment: PathBuf,
        /// Where report folders go (default: reports/ in the experiment's project).
        #[arg(long)]
        reports: Option<PathBuf>,
        /// Overrides the experiment's device.
        #[arg(long, value_enum)]
        device: Option<Device>,
        /// Train every SAE again, even those whose pin (the folder `save` names) was
        /// trained from the same model, dataset and settings.
        #[arg(long)]
        retrain: bool,
        /// Threads for the model's kernels (default: every core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        threads: Option<u16>,
        /// Exit with 0 even when an `expect` claim does not hold (the report says so
        /// either way).
        #[arg(long)]
        allow_failed_claims: bool,
        /// Run one shard, I of N (counting from 1): the steps that split over a
        /// dataset's prompts make this shard's share, the steps they read run whole,
        /// and the rest waits for `qexp merge` (`qexp plan` shows which is which).
        #[arg(long, value_name = "I/N")]
        shard: Option<crate::shard::Shard>,
        /// Where shards write their parts (default: <reports>/<experiment>.shards).
        #[arg(long)]
        shards_dir: Option<PathBuf>,
        #[command(flatten)]
        outputs: OutputFlags,
    },
    /// Write the report of a run made in shards (`qexp run --shard I/N` for every I):
    /// each sharded table stacked from the shards' parts, every other step run here.
    Merge {
        experiment: PathBuf,
        /// Where report folders go (default: reports/ in the experiment's project).
        #[arg(long)]
        reports: Option<PathBuf>,
        /// Overrides the experiment's device.
        #[arg(long, value_enum)]
        device: Option<Device>,
        /// Threads for the model's kernels (default: every core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        threads: Option<u16>,
        /// Where the shards wrote their parts (default: <reports>/<experiment>.shards).
        #[arg(long)]
        shards_dir: Option<PathBuf>,
        /// How many shards the run had, where the folder holds parts of runs with
        /// different counts.
        #[arg(long)]
        shards: Option<usize>,
        /// Exit with 0 even when an `expect` claim does not hold.
        #[arg(long)]
        allow_failed_claims: bool,
        #[command(flatten)]
        outputs: OutputFlags,
    },
    /// Run an experiment's shards as a Slurm job array and its merge as a job that
    /// waits for them (`qexp slurm EXP --shards N`); `status` and `resubmit` follow it.
    #[command(args_conflicts_with_subcommands = true)]
    Slurm {
        #[command(subcommand)]
        action: Option<SlurmAction>,
        /// The experiment to submit.
        experiment: Option<PathBuf>,
        /// How many shards (array tasks) to split the run into.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::shard::MAX_SHARDS as u64))]
        shards: Option<u64>,
        #[command(flatten)]
        resources: SlurmResources,
        /// Write the batch scripts and print the commands, without submitting.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        place: ShardPlace,
        #[command(flatten)]
        outputs: OutputFlags,
    },
    /// Which numbers changed between two reports (their results/*.csv), and by how much.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Numbers closer than this count as equal (default: each column's own
        /// tolerance, by the quantity it holds; see GRAMMAR.md).
        #[arg(long)]
        tolerance: Option<f64>,
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
        /// Train it again even when the folder holds a pin trained from the same inputs.
        #[arg(long)]
        retrain: bool,
        /// Train from the activations `qexp sae harvest` wrote in shards, read from
        /// disk as training goes, instead of harvesting them into memory.
        #[arg(long)]
        harvested: bool,
        #[command(flatten)]
        place: ShardPlace,
        #[command(flatten)]
        outputs: OutputFlags,
    },
    /// Harvest one shard (I of N) of the activations a declared SAE trains on, into an
    /// on-disk store in the shard folder, for `qexp sae train --harvested`.
    Harvest {
        experiment: PathBuf,
        /// The SAE's name in the experiment.
        name: String,
        #[arg(long, value_name = "I/N")]
        shard: crate::shard::Shard,
        #[arg(long, value_enum)]
        device: Option<Device>,
        #[command(flatten)]
        place: ShardPlace,
        #[command(flatten)]
        outputs: OutputFlags,
    },
}

#[derive(Debug, Subcommand)]
enum SlurmAction {
    /// Where each shard and the merge of the last submission stand.
    Status {
        experiment: PathBuf,
        #[command(flatten)]
        place: ShardPlace,
    },
    /// Submit again the shards that failed (not queued, no part written), with a new
    /// merge job.
    Resubmit {
        experiment: PathBuf,
        #[command(flatten)]
        place: ShardPlace,
    },
}

/// Where a sharded run's report and parts go.
#[derive(Debug, clap::Args)]
struct ShardPlace {
    /// Where report folders go (default: reports/ in the experiment's project).
    #[arg(long)]
    reports: Option<PathBuf>,
    /// Where the shards write their parts (default: <reports>/<experiment>.shards).
    #[arg(long)]
    shards_dir: Option<PathBuf>,
}

/// What each Slurm job asks for (`#SBATCH` options).
#[derive(Debug, clap::Args)]
struct SlurmResources {
    /// The partition (queue) the jobs run in.
    #[arg(long)]
    partition: Option<String>,
    /// The account the jobs are charged to.
    #[arg(long)]
    account: Option<String>,
    /// Time limit per job, as sbatch reads it (e.g. 2:00:00).
    #[arg(long)]
    time: Option<String>,
    /// Memory per job, as sbatch reads it (e.g. 16G).
    #[arg(long)]
    mem: Option<String>,
    /// GPUs per job; with any, the jobs run on CUDA.
    #[arg(long)]
    gpus: Option<u32>,
    /// CPUs per job; qexp's kernel threads follow.
    #[arg(long)]
    cpus_per_task: Option<u32>,
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

/// Exit codes: 0 success, 1 a failure while running, 2 a problem in the experiment file,
/// 3 a claim of the experiment did not hold (its report is written).
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
        Err(Failure::Claims(failed)) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: {failed} claim{} of the experiment did not hold (the report shows why; --allow-failed-claims exits with 0)",
                if failed == 1 { "" } else { "s" }
            );
            ExitCode::from(3)
        }
    }
}

/// An experiment about to run on this machine and write its report.
struct WholeRun {
    entered: InProject,
    reports: PathBuf,
    plan: Plan,
    source: String,
    scope: Scope,
    runtime: Runtime,
}

impl WholeRun {
    /// Enters the experiment's project, checks the experiment and readies the runtime
    /// (`device` overriding the experiment's, `threads` for the kernels).
    fn prepare(
        experiment: &Path,
        reports: Option<&Path>,
        device: Option<Device>,
        threads: Option<u16>,
        outputs: &OutputFlags,
    ) -> Result<Self, Failure> {
        let entered = InProject::enter(experiment)?;
        let reports = entered.reports(reports);
        let scope = outputs.scope()?;
        let (mut plan, source) = load_plan(&entered.experiment, Some(&reports), &scope)?;
        if let Some(device) = device {
            plan.model.device = device;
        }
        let mut runtime = Runtime::new(plan.model.device)?;
        runtime.threads = threads.map(usize::from);
        Ok(Self {
            entered,
            reports,
            plan,
            source,
            scope,
            runtime,
        })
    }

    /// The experiment file, relative to the project root.
    fn experiment(&self) -> &Path {
        &self.entered.experiment
    }

    fn root(&self) -> &Path {
        &self.entered.project.root
    }

    /// Where this run's shards write their parts: `--shards-dir` as typed, if given.
    fn shards_folder(&self, typed: Option<&Path>) -> PathBuf {
        self.entered
            .shards_folder(typed, &self.reports, &self.plan.name)
    }

    /// Runs the experiment with `options`, writes its report and lock file and prints
    /// its one-row tables and claims. `shard_tokens` were run by shards this run merges.
    fn run(
        &self,
        mut options: execute::Options,
        shard_tokens: usize,
        allow_failed_claims: bool,
    ) -> Result<(), Failure> {
        let (plan, scope) = (&self.plan, &self.scope);
        let lock_path = crate::lock::path_for(self.experiment());
        scope.check_file(&lock_path, crate::lock::HEADER)?;
        let locked = crate::lock::read(&lock_path)?;
        // Hashed once, before the run reads them.
        let datasets = crate::lock::dataset_files(plan, self.root());
        let mut told = Vec::new();
        if let Some(locked) = &locked {
            told = crate::lock::differences(
                locked,
                &crate::lock::before_run(plan, self.root(), &datasets),
            );
            for difference in &told {
                eprintln!(
                    "note: {difference}: the report will not match {}",
                    lock_path.display()
                );
            }
        }
        options.earlier = report::written_tables(&report::folder(&self.reports, &plan.name));
        let mut results = execute::execute_with(plan, &self.runtime, scope, options)?;
        results.tokens_run += shard_tokens;
        let folder = report::write(&self.reports, plan, &self.source, &results, scope)?;
        let lock = crate::lock::after_run(plan, &results, datasets);
        if let Some(locked) = &locked {
            for difference in crate::lock::differences(locked, &lock) {
                if !told.contains(&difference) {
                    eprintln!("note: {difference}");
                }
            }
        }
        crate::lock::write(&lock_path, &lock, scope)?;
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
        let failed = claims_summary(&results);
        if failed > 0 && !allow_failed_claims {
            return Err(Failure::Claims(failed));
        }
        Ok(())
    }
}

/// Prints each claim's verdict; returns how many did not hold.
fn claims_summary(results: &execute::Results) -> usize {
    let mut failed = 0;
    for claim in results.claims() {
        let verdict = if claim.holds {
            "holds"
        } else {
            failed += 1;
            "DOES NOT HOLD"
        };
        outln!("claim {verdict}: {} ({})", claim.text, claim.detail);
    }
    failed
}

enum Failure {
    /// Rendered diagnostics of an experiment file.
    Source(String),
    Other(anyhow::Error),
    /// `qexp diff --exit-code` found differences (already printed).
    Differ,
    /// This many of the experiment's claims did not hold (the report is written).
    Claims(usize),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::Other(error.into())
    }
}

/// Reads, parses and checks an experiment file; experiment-file problems exit with 2.
fn load_plan(
    path: &Path,
    reports: Option<&Path>,
    scope: &Scope,
) -> Result<(Plan, String), Failure> {
    crate::experiment::load(path, reports, scope, crate::experiment::Model::Required)
        .map_err(Failure::from_load)
}

impl Failure {
    fn from_load(error: crate::experiment::LoadError) -> Self {
        match error {
            crate::experiment::LoadError::Source(rendered) => Failure::Source(rendered),
            other => Failure::Other(other.into()),
        }
    }
}

/// A command that reads an experiment, moved into the experiment's project root: the
/// experiment's own paths then resolve there from whichever folder the command was
/// started in, while paths typed on the command line keep meaning what they meant there.
struct InProject {
    /// The experiment file, relative to the root where it lies inside it.
    experiment: PathBuf,
    started_in: PathBuf,
    project: crate::project::Project,
}

impl InProject {
    fn enter(experiment: &Path) -> Result<InProject, Failure> {
        let started_in = std::env::current_dir().context("cannot resolve the current folder")?;
        let project = crate::project::Project::of(experiment, &started_in)
            .with_context(|| format!("cannot read {}", experiment.display()))?;
        let relative = project.relative(&started_in, experiment);
        // Said whenever the experiment's paths will not resolve where a user may expect:
        // away from the folder they typed in, or away from an experiment outside it.
        if started_in.canonicalize().ok().as_ref() != Some(&project.root) || relative.is_absolute()
        {
            eprintln!("note: {}", project.describe());
        }
        std::env::set_current_dir(&project.root)
            .with_context(|| format!("cannot enter {}", project.root.display()))?;
        Ok(InProject {
            experiment: relative,
            started_in,
            project,
        })
    }

    /// A path typed on the command line, as seen from the project root.
    fn typed(&self, path: &Path) -> PathBuf {
        self.project.relative(&self.started_in, path)
    }

    /// Where reports go: `--reports` as typed, else reports/ in the project.
    fn reports(&self, typed: Option<&Path>) -> PathBuf {
        typed.map_or_else(|| PathBuf::from("reports"), |path| self.typed(path))
    }

    /// Where a sharded run of `experiment` keeps its parts: `--shards-dir` as typed,
    /// else `<reports>/<experiment>.shards`.
    fn shards_folder(&self, typed: Option<&Path>, reports: &Path, experiment: &str) -> PathBuf {
        typed.map_or_else(
            || crate::shard::partial::default_folder(reports, experiment),
            |path| self.typed(path),
        )
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
            syntax_only,
            outputs,
        } => {
            let model = if syntax_only {
                crate::experiment::Model::Optional
            } else {
                crate::experiment::Model::Required
            };
            let entered = InProject::enter(&experiment)?;
            let reports = entered.reports(reports.as_deref());
            let (plan, _) = crate::experiment::load(
                &entered.experiment,
                Some(&reports),
                &outputs.scope()?,
                model,
            )
            .map_err(Failure::from_load)?;
            let steps = plan.steps.len();
            let plural = if steps == 1 { "" } else { "s" };
            outln!("{}: ok ({steps} step{plural})", experiment.display());
        }
        Command::Plan {
            experiment,
            estimate,
        } => {
            let entered = InProject::enter(&experiment)?;
            let scope = Scope::current(true).context("cannot resolve the current folder")?;
            let (plan, _) = load_plan(&entered.experiment, None, &scope)?;
            out!("{}", crate::builtins::graphs::describe(&plan));
            out!("{}", crate::shard::describe(&plan));
            if estimate {
                let runtime = Runtime::new(plan.model.device)?;
                let estimate = crate::estimate::estimate(&plan, &runtime, &scope)
                    .map_err(|message| anyhow::anyhow!("cannot estimate the run: {message}"))?;
                out!("{}", crate::estimate::describe(&estimate));
            }
        }
        Command::Fmt { experiment, check } => {
            let (file, source) =
                crate::experiment::parse(&experiment).map_err(Failure::from_load)?;
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
            retrain,
            threads,
            allow_failed_claims,
            shard,
            shards_dir,
            outputs,
        } => {
            let run =
                WholeRun::prepare(&experiment, reports.as_deref(), device, threads, &outputs)?;
            match shard {
                Some(shard) => {
                    let folder = run.shards_folder(shards_dir.as_deref());
                    shards::run_shard(&run, shard, &folder, retrain)?;
                }
                None => run.run(
                    execute::Options {
                        retrain,
                        ..Default::default()
                    },
                    0,
                    allow_failed_claims,
                )?,
            }
        }
        Command::Slurm {
            action,
            experiment,
            shards,
            resources,
            dry_run,
            place,
            outputs,
        } => match action {
            Some(SlurmAction::Status { experiment, place }) => {
                shards::slurm_status(&experiment, &place)?
            }
            Some(SlurmAction::Resubmit { experiment, place }) => {
                shards::slurm_resubmit(&experiment, &place)?
            }
            None => {
                let experiment = experiment.ok_or_else(|| {
                    anyhow::anyhow!("name the experiment: qexp slurm EXPERIMENT --shards N")
                })?;
                let shards = shards.ok_or_else(|| {
                    anyhow::anyhow!("say how many shards: qexp slurm EXPERIMENT --shards N")
                })?;
                shards::slurm_submit(
                    &experiment,
                    shards as usize,
                    resources,
                    dry_run,
                    &place,
                    &outputs,
                )?
            }
        },
        Command::Merge {
            experiment,
            reports,
            device,
            threads,
            shards_dir,
            shards: count,
            allow_failed_claims,
            outputs,
        } => {
            let run =
                WholeRun::prepare(&experiment, reports.as_deref(), device, threads, &outputs)?;
            let folder = run.shards_folder(shards_dir.as_deref());
            shards::merge(&run, &folder, count, allow_failed_claims)?;
        }
        Command::Export {
            checkpoint,
            output,
            fold_ln,
            center_writing_weights,
            center_unembed,
            fold_value_biases,
            transformer_lens,
            dtype,
            outputs,
        } => {
            use crate::model::WeightStorage;
            use crate::processing::Step;
            let storage = match dtype.as_str() {
                "f16" => WeightStorage::Float16,
                "bf16" => WeightStorage::Bfloat16,
                _ => WeightStorage::Float32,
            };
            let asked = [
                (fold_ln, Step::FoldLn),
                (center_writing_weights, Step::CenterWritingWeights),
                (center_unembed, Step::CenterUnembed),
                (fold_value_biases, Step::FoldValueBiases),
            ];
            let steps: Vec<Step> = asked
                .into_iter()
                .filter(|(on, _)| *on || transformer_lens)
                .map(|(_, step)| step)
                .collect();
            let summary =
                export::export_with(&checkpoint, &output, &outputs.scope()?, &steps, storage)?;
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
            if !m.processing.is_empty() {
                let names: Vec<&str> = m.processing.iter().map(|s| s.name()).collect();
                outln!(
                    "weights processed as TransformerLens does: {}",
                    names.join(", ")
                );
            }
            let skipped: Vec<&str> = steps
                .iter()
                .filter(|s| !m.processing.contains(s))
                .map(|s| s.name())
                .collect();
            if !skipped.is_empty() {
                outln!(
                    "not applied (an RMSNorm does not remove the mean they rely on, as in TransformerLens): {}",
                    skipped.join(", ")
                );
            }
        }
        Command::Sae {
            command:
                SaeCommand::Train {
                    experiment,
                    name,
                    out,
                    device,
                    retrain,
                    harvested,
                    place,
                    outputs,
                },
        } => {
            let entered = InProject::enter(&experiment)?;
            let (experiment, out) = (&entered.experiment, out.map(|p| entered.typed(&p)));
            let scope = outputs.scope()?;
            let (mut plan, _) = load_plan(experiment, None, &scope)?;
            let store = shards::store_root(&entered, &place, &plan.name);
            if let Some(device) = device {
                plan.model.device = device;
            }
            let out = crate::experiment::only_training(&mut plan, &name, out)
                .map_err(|e| anyhow::anyhow!("{}: {e}", experiment.display()))?;
            execute::check_save_paths(&scope, &out)?;
            let runtime = Runtime::new(plan.model.device)?;
            let options = execute::Options {
                retrain,
                harvested: harvested.then_some(store),
                ..Default::default()
            };
            let results = execute::execute_with(&plan, &runtime, &scope, options)?;
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
            match results.saes.iter().find(|s| s.name == name) {
                Some(sae) if sae.from_pin => {
                    outln!(
                        "{name} is pinned at {} with the same inputs; kept it (--retrain trains it again)",
                        out.display()
                    )
                }
                _ => outln!("saved {name} to {}", out.display()),
            }
        }
        Command::Sae {
            command:
                SaeCommand::Harvest {
                    experiment,
                    name,
                    shard,
                    device,
                    place,
                    outputs,
                },
        } => shards::harvest(&experiment, &name, shard, device, &place, &outputs)?,
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
            outln!(
                "{} hook points; weights: {} parameters, {} in memory as f32 once loaded",
                manifest.hooks.len(),
                manifest.parameters,
                crate::manifest::human_bytes(manifest.weights_bytes())
            );
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
