//! `qexp plan --estimate`: the forward passes each step will make, and the time and
//! memory they should take on this machine, before anything runs.
//!
//! Tokens are counted exactly: datasets and prompts are tokenized as a run tokenizes
//! them, and each step's graphs come from its own `reads`. Time and memory come from a
//! calibration on this machine: one batch through the clean model (tokens per second),
//! a generation's session built and a few of its steps, a graph with other outputs (a
//! compile),
//! and the process's resident memory after them (the model as loaded). A graph pruned
//! after an early hook costs its share of the blocks. A step's memory adds the buffers
//! its outputs fill for one batch, the clean passes it keeps for the steps that repeat
//! it (which then do not run them again), and for the first generation, the weights'
//! pre-packed copy its sessions make (counted as large as the weights in f32: a model
//! whose weights are 4-bit blocks packs fewer bytes, so its estimate is high).
//!
//! What is not modelled: steps that run no graph (composition scores, tables made from
//! tables) count as free; an SAE's weights and a dashboard's collectors (heaps, samples,
//! correlation sums) are not counted in memory; a variant's graph is counted as compiled
//! once per structure for the whole run, though at most four are kept at once; SAE
//! training is counted as its harvest plus its matrix products.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Instant;

use crate::builtins::graphs::{measured_call, step_reads};
use crate::builtins::measurements::{Graph, Reads};
use crate::manifest::{LOGITS, Manifest};
use crate::plan::{Call, Plan, Value};
use crate::runtime::{Batch, Runtime};
use crate::session::{Failure, Session};

/// Tokens per row of the calibration batch.
const CALIBRATION_TOKENS: usize = 128;

/// What was measured on this machine.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Tokens per second through the clean model to its logits, in full batches.
    pub tokens_per_second: f64,
    /// Seconds of one generation step (one token, with the key/value cache).
    pub token_step_seconds: f64,
    /// Seconds to compile a graph and build its session.
    pub compile_seconds: f64,
    /// Seconds to build a generation's session: its graph with the key/value cache,
    /// weights pre-packed (and the first one's 4-bit blocks found).
    pub generation_build_seconds: f64,
    /// Floating-point operations per second the calibration batch achieved (two per
    /// weight per token), for work that is counted in operations (SAE training).
    pub flops: f64,
    /// The process's resident memory with the model loaded and one session built.
    pub resident_bytes: Option<u64>,
}

/// One step's passes and what they should cost.
#[derive(Debug, Clone)]
pub struct StepEstimate {
    pub step: String,
    /// Distinct graphs the step runs.
    pub graphs: usize,
    /// Real tokens the step puts through all its graphs.
    pub tokens: usize,
    pub seconds: f64,
    /// The largest buffers one batch of its outputs fills.
    pub buffer_bytes: u64,
    /// Why part of the step could not be counted (a prompt computed at run time).
    pub unknown: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Estimate {
    pub calibration: Calibration,
    pub steps: Vec<StepEstimate>,
}

impl Estimate {
    pub fn total_seconds(&self) -> f64 {
        self.steps.iter().map(|s| s.seconds).sum()
    }

    pub fn total_tokens(&self) -> usize {
        self.steps.iter().map(|s| s.tokens).sum()
    }

    /// The model as loaded plus the largest step's buffers.
    pub fn peak_bytes(&self) -> Option<u64> {
        let largest = self.steps.iter().map(|s| s.buffer_bytes).max().unwrap_or(0);
        self.calibration.resident_bytes.map(|r| r + largest)
    }
}

/// Loads the model, calibrates on it and estimates every step of `plan`.
pub fn estimate(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
) -> Result<Estimate, Failure> {
    let mut model = crate::execute::load_model(plan, runtime).map_err(|e| e.to_string())?;
    let root = std::env::current_dir().unwrap_or_default();
    let mut session = Session::new(plan, &mut model, root, scope.clone());
    let calibration = calibrate(&mut session)?;
    let mut steps = Vec::new();
    for sae in plan.saes.iter().filter(|s| s.value.function == "train") {
        steps.push(training(&mut session, &calibration, &sae.name, &sae.value)?);
    }
    let repeats = crate::builtins::graphs::last_repeats(plan);
    let mut run = RunState::default();
    for (index, step) in plan.steps.iter().enumerate() {
        let (Some((name, reads)), Some((_, call))) = (step_reads(plan, step), measured_call(step))
        else {
            continue;
        };
        let role = Role {
            keeps: repeats[index].is_some(),
            repeats: is_repeat(&repeats, index),
        };
        let estimate = measure(
            &mut session,
            &calibration,
            &mut run,
            name,
            call,
            &reads,
            role,
        )?;
        steps.push(estimate);
    }
    Ok(Estimate { calibration, steps })
}

/// Whether step `index` repeats an earlier one (see `builtins::graphs::last_repeats`:
/// each step of a chain of repeats names the chain's last step, which names none).
fn is_repeat(repeats: &[Option<usize>], index: usize) -> bool {
    repeats[..index].iter().any(|&last| {
        last.is_some_and(|last| last == index || (last > index && repeats[index] == Some(last)))
    })
}

/// Where a step stands among repeated steps (see `session::kept_passes`).
#[derive(Debug, Clone, Copy)]
struct Role {
    /// A later step repeats it: its clean passes are kept.
    keeps: bool,
    /// It repeats an earlier step: its clean passes were kept for it.
    repeats: bool,
}

/// What earlier steps left for later ones.
#[derive(Debug, Default)]
struct RunState {
    /// Graph structures compiled so far (variants that differ only in values share one).
    structures: BTreeSet<String>,
    /// Whether a session has pre-packed the weights (generation's do).
    packed: bool,
    /// Means computed so far (by hook and dataset), each one pass over its dataset.
    means: BTreeSet<String>,
    /// Of the clean passes kept for repeating steps, the fraction that fit the budget.
    kept_fraction: f64,
    /// The graphs a generation has run (each builds a cached session of its own).
    generations: BTreeSet<String>,
}

fn calibrate(session: &mut Session) -> Result<Calibration, Failure> {
    let config = &session.model.manifest.config;
    let length = CALIBRATION_TOKENS.min(config.n_ctx);
    let rows = session.batch_size();
    // Any tokens do: the cost of a pass does not depend on which.
    let row: Vec<u32> = (0..length as u32)
        .map(|t| t % config.d_vocab.max(1) as u32)
        .collect();
    let batch = session
        .model
        .batch(&vec![row.as_slice(); rows])
        .map_err(Session::runtime)?;
    // The first pass builds the session and warms it up; the second is timed.
    timed_pass(session, &batch, &[LOGITS])?;
    let pass = timed_pass(session, &batch, &[LOGITS])?.max(1e-9);
    let one = session
        .model
        .batch(&[&row[..1]])
        .map_err(Session::runtime)?;
    timed_pass(session, &one, &[LOGITS])?;
    let one_token_pass = timed_pass(session, &one, &[LOGITS])?;
    let (generation_build_seconds, token_step_seconds) = generation_costs(session, row[0])?;
    // Another set of outputs is another graph: its first pass, less a pass, is a compile.
    let compile_seconds = match session.model.manifest.hooks.first() {
        Some(hook) => {
            let hook = hook.name.clone();
            let first = timed_pass(session, &one, &[LOGITS, hook.as_str()])?;
            (first - one_token_pass).max(0.0)
        }
        None => 0.0,
    };
    let tokens = (rows * length) as f64;
    let parameters = session.model.manifest.parameters as f64;
    Ok(Calibration {
        tokens_per_second: tokens / pass,
        token_step_seconds,
        compile_seconds,
        generation_build_seconds,
        flops: 2.0 * parameters * tokens / pass,
        resident_bytes: crate::machine::resident_memory(),
    })
}

/// Seconds to build the clean model's generation session, and of one step of its
/// generation, as generation runs it (with its key/value cache, packed weights, and
/// 4-bit products where the weights are 4-bit blocks; the mean of a few steps).
fn generation_costs(session: &mut Session, token: u32) -> Result<(f64, f64), Failure> {
    const STEPS: usize = 8;
    let greedy = crate::runtime::Sampling::Greedy;
    let model = &mut session.model;
    let mut generate = |steps: usize| {
        let started = Instant::now();
        model
            .generate(&[token], steps, greedy, false)
            .map_err(Session::runtime)?;
        Ok::<_, Failure>(started.elapsed().as_secs_f64())
    };
    let first = generate(1)?;
    let step = generate(STEPS)? / STEPS as f64;
    Ok(((first - step).max(0.0), step))
}

/// Seconds of one clean pass over `batch` to `outputs`.
fn timed_pass(session: &mut Session, batch: &Batch, outputs: &[&str]) -> Result<f64, Failure> {
    let started = Instant::now();
    session.forward(None, batch, outputs)?;
    Ok(started.elapsed().as_secs_f64())
}

/// The token sequences a step reads: its dataset's, or its prompts'.
struct Inputs {
    sequences: Vec<usize>,
    unknown: Option<String>,
}

impl Inputs {
    fn tokens(&self) -> usize {
        self.sequences.iter().sum()
    }

    fn longest(&self) -> usize {
        self.sequences.iter().copied().max().unwrap_or(0)
    }
}

fn inputs(session: &mut Session, call: &Call) -> Result<Inputs, Failure> {
    let mut inputs = Inputs {
        sequences: Vec::new(),
        unknown: None,
    };
    for (name, value) in &call.args {
        match (*name, value) {
            ("dataset", Value::Name(dataset)) => {
                inputs.sequences.extend(session.prompt_lengths(dataset)?)
            }
            ("prompt" | "clean" | "corrupted" | "text", Value::Str(prompt)) => {
                inputs.sequences.push(session.prompt_tokens(prompt)?.len());
            }
            ("prompt" | "clean" | "corrupted", Value::Computed(from)) => {
                inputs.unknown = Some(format!("its {name} is computed at run time by `{from}`"));
            }
            _ => {}
        }
    }
    Ok(inputs)
}

fn measure(
    session: &mut Session,
    calibration: &Calibration,
    run: &mut RunState,
    step: String,
    call: &Call,
    reads: &Reads,
    role: Role,
) -> Result<StepEstimate, Failure> {
    let inputs = inputs(session, call)?;
    let graphs: BTreeSet<&Graph> = reads.0.iter().map(|r| &r.graph).collect();
    let mut tokens = 0.0;
    // Tokens weighted by the share of the model each graph computes.
    let mut work = 0.0;
    let mut compiles = 0;
    for graph in &graphs {
        let through = match graph {
            // Activation patching runs the corrupted prompt once per piece of a block.
            Graph::Patched(_) => {
                let rows = patched_rows(call, &session.model.manifest, inputs.longest());
                (rows * inputs.longest()) as f64
            }
            // A repeat finds the clean passes kept for it, as far as they fit.
            Graph::Clean if role.repeats => (1.0 - run.kept_fraction) * inputs.tokens() as f64,
            _ => inputs.tokens() as f64,
        };
        let outputs = reads.0.iter().filter(|r| r.graph == **graph);
        let depth = depth_fraction(&session.model.manifest, outputs.map(|r| r.output.as_str()));
        // Means are taken over a graph pruned after their hook: counted as a full pass.
        let means = means_needed(session, run, graph)? as f64;
        tokens += through + means;
        work += through * depth + means;
        if run.structures.insert(structure(session.plan, graph)) {
            compiles += 1;
        }
    }
    let mut seconds = work / calibration.tokens_per_second;
    if call.function == "generate" {
        let steps = match call.args.get("max_new_tokens") {
            Some(Value::Integer(n)) => (*n).max(0) as usize,
            _ => 20,
        };
        tokens += (steps * graphs.len()) as f64;
        seconds += (steps * graphs.len()) as f64 * calibration.token_step_seconds;
        for graph in &graphs {
            if run.generations.insert(format!("{graph:?}")) {
                seconds += calibration.generation_build_seconds;
            }
        }
    }
    // Generation's sessions pre-pack the weights: a second copy of them, once per run.
    let packs = call.function == "generate" && !run.packed;
    run.packed |= packs;
    seconds += compiles as f64 * calibration.compile_seconds;
    let rows = session.batch_size().min(inputs.sequences.len().max(1));
    let manifest = &session.model.manifest;
    let mut buffer_bytes: u64 = reads
        .0
        .iter()
        .map(|read| output_bytes(manifest, &read.output, rows, inputs.longest()))
        .sum();
    if packs {
        buffer_bytes += manifest.weights_bytes();
    }
    if role.keeps && !role.repeats {
        let clean: u64 = reads
            .0
            .iter()
            .filter(|read| read.graph == Graph::Clean)
            .flat_map(|read| {
                inputs
                    .sequences
                    .iter()
                    .map(|&length| output_bytes(manifest, &read.output, 1, length))
            })
            .sum();
        let budget = crate::session::kept_passes::budget() as u64;
        run.kept_fraction = if clean == 0 {
            1.0
        } else {
            budget.min(clean) as f64 / clean as f64
        };
        buffer_bytes += budget.min(clean);
    }
    Ok(StepEstimate {
        step,
        graphs: graphs.len(),
        tokens: tokens.round() as usize,
        seconds,
        buffer_bytes,
        unknown: inputs.unknown,
    })
}

/// Tokens of the passes that compute the means a variant ablates with, the first time
/// each is needed.
fn means_needed(
    session: &mut Session,
    run: &mut RunState,
    graph: &Graph,
) -> Result<usize, Failure> {
    let Some(edits) = variant_edits(session.plan, graph) else {
        return Ok(0);
    };
    let mut tokens = 0;
    for call in edits.iter().filter(|c| c.function == "mean") {
        if let (Some(Value::Hook(hook)), Some(Value::Name(dataset))) =
            (call.args.get("hook"), call.args.get("dataset"))
            && run.means.insert(format!("{} over {dataset}", hook.name))
        {
            tokens += session
                .dataset(dataset)?
                .iter()
                .map(Vec::len)
                .sum::<usize>();
        }
    }
    Ok(tokens)
}

/// The edits of the variant `graph` runs; `None` for other graphs.
fn variant_edits<'p>(plan: &'p Plan, graph: &Graph) -> Option<&'p [Call]> {
    let Graph::Variant(name) = graph else {
        return None;
    };
    let variant = plan.variants.iter().find(|v| v.name == *name)?;
    Some(&variant.value)
}

/// What a graph compiles to, as far as the plan tells: a variant's edits without their
/// values (which head, the vector), as variants that differ only in values share one
/// compiled graph; an SAE's edits keep theirs.
fn structure(plan: &Plan, graph: &Graph) -> String {
    let Some(edits) = variant_edits(plan, graph) else {
        return graph.to_string();
    };
    let edits: Vec<String> = edits
        .iter()
        .map(|call| {
            let bound = crate::builtins::interventions::InterventionCall::bind(call).ok();
            match bound.as_ref().and_then(|edit| edit.lifted_hook()) {
                Some(hook) => format!(
                    "{}({}, head: {}, pos: {:?})",
                    call.function,
                    hook.name,
                    hook.head.is_some() || hook.head_from.is_some(),
                    hook.pos
                ),
                None => format!("{call:?}"),
            }
        })
        .collect();
    format!("variant {}", edits.join(" + "))
}

/// Rows of one patched block: a row per position, per head, or per head and position.
fn patched_rows(call: &Call, manifest: &Manifest, length: usize) -> usize {
    let heads = manifest.config.n_heads;
    match call.args.get("by") {
        Some(Value::Choice(by)) if by == "head" => heads,
        Some(Value::Choice(by)) if by == "head_pos" => heads * length,
        _ => length,
    }
}

/// An SAE's training: its harvest (a pass to its hook over the tokens it trains on) and
/// its matrix products (encoder and decoder, forward and backward: about six operations
/// per weight per token).
fn training(
    session: &mut Session,
    calibration: &Calibration,
    name: &str,
    call: &Call,
) -> Result<StepEstimate, Failure> {
    let inputs = inputs(session, call)?;
    let wanted = match call.args.get("tokens") {
        Some(Value::Integer(n)) => (*n).max(0) as usize,
        _ => inputs.tokens(),
    };
    let harvested = wanted.min(inputs.tokens());
    let d_sae = match call.args.get("d_sae") {
        Some(Value::Integer(n)) => (*n).max(0) as f64,
        _ => 0.0,
    };
    let d_in = match call.args.get("hook") {
        Some(Value::Hook(hook)) => {
            crate::hooks::width(hook, Some(&session.model.manifest)).unwrap_or(0) as f64
        }
        _ => 0.0,
    };
    let depth = match call.args.get("hook") {
        Some(Value::Hook(hook)) => depth_fraction(&session.model.manifest, [hook.name.as_str()]),
        _ => 1.0,
    };
    let seconds = harvested as f64 * depth / calibration.tokens_per_second
        + 6.0 * d_in * d_sae * wanted as f64 / calibration.flops;
    let pin = match call.args.get("save") {
        Some(Value::Str(path)) => Some(session.root.join(path)),
        _ => None,
    };
    if let Some(pin) = pin.filter(|dir| crate::sae::pin::read(dir).is_some()) {
        // The run reads the pin when it was trained from the same inputs.
        return Ok(StepEstimate {
            step: format!("train {name}"),
            graphs: 0,
            tokens: 0,
            seconds: 0.0,
            buffer_bytes: 0,
            unknown: Some(format!(
                "read from its pin at {}; if its inputs changed, training again takes {harvested} tokens and {}",
                pin.display(),
                self::seconds(seconds)
            )),
        });
    }
    Ok(StepEstimate {
        step: format!("train {name}"),
        graphs: 1,
        tokens: harvested,
        seconds,
        buffer_bytes: (harvested as f64 * d_in * 4.0) as u64,
        unknown: inputs.unknown,
    })
}

/// The share of a full pass (every block and the unembedding, as calibrated) that a
/// graph pruned after `outputs` computes: the blocks up to the deepest output's, and the
/// unembedding only for the logits.
fn depth_fraction<'a>(manifest: &Manifest, outputs: impl IntoIterator<Item = &'a str>) -> f64 {
    let config = &manifest.config;
    let unembed = (config.d_model * config.d_vocab) as f64;
    let embed_and_unembed = if config.tied_embeddings {
        unembed
    } else {
        2.0 * unembed
    };
    let per_block =
        ((manifest.parameters as f64 - embed_and_unembed) / config.n_layers.max(1) as f64).max(0.0);
    let full = per_block * config.n_layers as f64 + unembed;
    let mut needed: f64 = 0.0;
    for output in outputs {
        let cost = match crate::hooks::layer_of(output) {
            _ if output == LOGITS => full,
            Some(layer) => per_block * (layer + 1) as f64,
            None => full,
        };
        needed = needed.max(cost);
    }
    if full > 0.0 { needed / full } else { 1.0 }
}

/// Bytes of `output` for `rows` rows of `length` tokens, from the shape the manifest
/// gives its hook (a dimension named for the config, a size, or a position axis).
fn output_bytes(manifest: &Manifest, output: &str, rows: usize, length: usize) -> u64 {
    let config = &manifest.config;
    let shape: Vec<String> = match manifest.hook(output) {
        Some(hook) => hook.shape.clone(),
        None if output == LOGITS => ["batch", "pos", "d_vocab"].map(String::from).to_vec(),
        None => return 0,
    };
    let size = |dim: &str| -> u64 {
        let n = match dim {
            "batch" => rows,
            "pos" | "query_pos" | "key_pos" => length,
            "d_model" => config.d_model,
            "d_vocab" => config.d_vocab,
            other => other.parse().unwrap_or(1),
        };
        n as u64
    };
    4 * shape.iter().map(|d| size(d)).product::<u64>()
}

/// `qexp plan --estimate`'s text.
pub fn describe(estimate: &Estimate) -> String {
    let c = &estimate.calibration;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "estimates (calibrated on this machine: {:.0} tokens/s in full batches, {:.0} ms a \
         generated token, {:.1} s to compile a graph, {:.1} s to build a generation's \
         session):",
        c.tokens_per_second,
        1e3 * c.token_step_seconds,
        c.compile_seconds,
        c.generation_build_seconds
    );
    for step in &estimate.steps {
        let _ = write!(
            out,
            "  {}: {} graph{}, {} tokens, {}, buffers {}",
            step.step,
            step.graphs,
            if step.graphs == 1 { "" } else { "s" },
            step.tokens,
            seconds(step.seconds),
            crate::manifest::human_bytes(step.buffer_bytes)
        );
        match &step.unknown {
            Some(why) => {
                let _ = writeln!(out, " (not all counted: {why})");
            }
            None => out.push('\n'),
        }
    }
    let _ = write!(
        out,
        "  total: {} tokens, {}",
        estimate.total_tokens(),
        seconds(estimate.total_seconds())
    );
    match estimate.peak_bytes() {
        Some(peak) => {
            let _ = writeln!(
                out,
                ", peak memory about {} (the model as loaded, {}, and the largest step's buffers)",
                crate::manifest::human_bytes(peak),
                crate::manifest::human_bytes(c.resident_bytes.unwrap_or(0))
            );
        }
        None => out.push('\n'),
    }
    out
}

fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    }
}
