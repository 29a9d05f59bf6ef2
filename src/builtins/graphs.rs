//! The graphs a plan runs, made from each step's own `reads`: what `qexp plan` shows
//! before anything runs, and what a test holds the executors to.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::args::Args;
use super::dashboards::FeatureDashboards;
use super::measurements::{Graph, Measurement, Reads};
use crate::plan::{Call, Plan, Step, TableSource, Value};

/// One compiled graph and the outputs the steps read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNeed {
    pub graph: Graph,
    pub outputs: BTreeSet<String>,
    pub used_by: Vec<String>,
}

/// The call of a step that runs graphs (a measurement's table, dashboards), with the
/// step's name; `None` for other steps.
pub fn measured_call(step: &Step) -> Option<(&str, &Call)> {
    match step {
        Step::Table {
            name,
            source: TableSource::Call { call, .. },
            ..
        }
        | Step::Dashboards { name, call } => Some((name, call)),
        _ => None,
    }
}

/// What a step reads, by its name; `None` for steps that run no graph.
pub fn step_reads(plan: &Plan, step: &Step) -> Option<(String, Reads)> {
    let (name, call) = measured_call(step)?;
    let reads = match step {
        Step::Dashboards { .. } => FeatureDashboards::bind(&Args::new(call)).ok()?.reads(plan),
        _ => Measurement::bind(call).ok()?.reads(plan),
    };
    Some((name.to_owned(), reads))
}

/// The graphs a run compiles (each once, shared by every step that runs it), in order
/// of first use.
pub fn graphs(plan: &Plan) -> Vec<GraphNeed> {
    let mut graphs: Vec<GraphNeed> = Vec::new();
    for (step, reads) in plan.steps.iter().filter_map(|s| step_reads(plan, s)) {
        for read in reads.0 {
            let index = match graphs.iter().position(|g| g.graph == read.graph) {
                Some(i) => i,
                None => {
                    graphs.push(GraphNeed {
                        graph: read.graph.clone(),
                        outputs: BTreeSet::new(),
                        used_by: Vec::new(),
                    });
                    graphs.len() - 1
                }
            };
            let need = &mut graphs[index];
            need.outputs.insert(read.output);
            if !need.used_by.contains(&step) {
                need.used_by.push(step.clone());
            }
        }
    }
    graphs
}

/// Activations computed once and reused: means for mean ablation, SAE training data.
pub fn cached(plan: &Plan) -> Vec<String> {
    let mut cached = Vec::new();
    for variant in &plan.variants {
        for call in variant.value.iter().filter(|c| c.function == "mean") {
            if let (Some(hook), Some(dataset)) = (call.args.get("hook"), call.args.get("dataset")) {
                cached.push(format!(
                    "mean of {hook} over {dataset} (for variant {})",
                    variant.name
                ));
            }
        }
    }
    for sae in plan.saes.iter().filter(|s| s.value.function == "train") {
        if let (Some(hook), Some(dataset)) =
            (sae.value.args.get("hook"), sae.value.args.get("dataset"))
        {
            cached.push(format!(
                "activations of {hook} over {dataset}, from a graph pruned after the hook (to train {})",
                sae.name
            ));
        }
    }
    cached
}

/// For each step, the last later step that repeats it (`None` when none does): the
/// same measurement with the same arguments but for the variants it runs (its
/// arguments of a variant type), as a `for` loop's passes are. Such steps read the same
/// prompts' clean passes, which the session keeps for them (see
/// `session::kept_passes`).
pub fn last_repeats(plan: &Plan) -> Vec<Option<usize>> {
    let signatures: Vec<_> = plan.steps.iter().map(repeat_signature).collect();
    signatures
        .iter()
        .enumerate()
        .map(|(index, own)| {
            own.as_ref()?;
            (index + 1..signatures.len())
                .rev()
                .find(|&later| signatures[later] == *own)
        })
        .collect()
}

/// The later steps that repeat step `index` (see [`last_repeats`]), in order.
pub fn repeats_of(plan: &Plan, index: usize) -> Vec<usize> {
    let Some(own) = plan.steps.get(index).and_then(repeat_signature) else {
        return Vec::new();
    };
    (index + 1..plan.steps.len())
        .filter(|&later| repeat_signature(&plan.steps[later]).as_ref() == Some(&own))
        .collect()
}

/// What two steps share when one repeats the other: the measurement and its arguments
/// but those of a variant type.
fn repeat_signature(step: &Step) -> Option<(&'static str, BTreeMap<&'static str, Value>)> {
    use super::spec::Type;
    let runs_variants = |ty: Type| matches!(ty, Type::Variant | Type::ListOf(Type::Variant));
    let Step::Table {
        source: TableSource::Call { call, .. },
        ..
    } = step
    else {
        return None;
    };
    let params = super::find(call.function)?.params;
    let mut args = call.args.clone();
    args.retain(|name, _| {
        !params
            .iter()
            .any(|p| p.name == *name && runs_variants(p.ty))
    });
    Some((call.function, args))
}

/// `qexp plan`'s text: the plan, then the graphs it compiles and what it caches.
pub fn describe(plan: &Plan) -> String {
    let mut out = plan.to_string();
    out.push_str(
        "graphs (each compiled once, pruned to its outputs, shared by the steps that run it; \
         variants that differ only in values, such as the head or the vector, share one):\n",
    );
    for need in graphs(plan) {
        let outputs: Vec<&str> = need.outputs.iter().map(String::as_str).collect();
        let _ = writeln!(out, "  {}: {}", need.graph, outputs.join(", "));
        let _ = writeln!(out, "    used by {}", need.used_by.join(", "));
    }
    let mut cached = cached(plan);
    let repeated: Vec<String> = last_repeats(plan)
        .iter()
        .zip(&plan.steps)
        .filter(|(last, _)| last.is_some())
        .filter_map(|(_, step)| match step {
            crate::plan::Step::Table { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    if !repeated.is_empty() {
        cached.push(format!(
            "the clean passes of steps a later step repeats but for its variants ({}), \
             until their last repeat, within {}",
            repeated.join(", "),
            crate::session::kept_passes::BUDGET_IN_WORDS
        ));
        cached.push(
            "the passes those steps' variants of zero, mean, add and patch edits make over a \
             small batch (128 tokens or fewer), run ahead as rows of one pass per \
             structure, until their step reads them, within half that"
                .to_owned(),
        );
    }
    if !cached.is_empty() {
        out.push_str("cached:\n");
        for c in cached {
            let _ = writeln!(out, "  {c}");
        }
    }
    if let Some((parameters, bytes)) = plan.model.weights {
        let _ = writeln!(
            out,
            "weights: {parameters} parameters, {} in memory as f32, held once and shared by \
             every graph (each graph adds only its own nodes and activation buffers)",
            crate::manifest::human_bytes(bytes)
        );
    }
    out
}
