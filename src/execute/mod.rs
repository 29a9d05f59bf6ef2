//! Runs a checked plan on its model and collects the results. The only stage besides
//! the report that touches ONNX Runtime and the file system.
//!
//! Every built-in of this version runs. The language may grow faster than the runner:
//! [`unsupported`] lists steps this binary cannot execute with the reason, and `qexp run`
//! refuses a plan with such steps unless asked to skip them, in which case the report
//! says so. A step that needs a skipped step is skipped too.

mod dashboards;
mod plots;
mod progress;
mod runner;
mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

pub use dashboards::{Dashboards, Example, FeatureDashboard, QuantileBand, WINDOW};
pub use plots::{Plot, PlotKind};
pub use runner::{check_save_paths, checkpoints_dir};
pub use table::{Cell, Table};

use runner::Runner;

use crate::plan::{Call, Plan, Step, TableSource, Value};
use crate::runtime::{HookedModel, Runtime, RuntimeError};
use crate::syntax::ast::TextKind;

/// What a run produced, in the order of the plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Results {
    pub sections: Vec<Section>,
    /// Wall-clock seconds per section; kept out of the result files (they vary run to run).
    #[serde(skip)]
    pub seconds: Vec<f64>,
    #[serde(skip)]
    pub model_source: String,
    #[serde(skip)]
    pub weights_sha256: String,
    /// The SAEs the run loaded or trained, for `run.json`.
    #[serde(skip)]
    pub saes: Vec<SaeRecord>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SaeRecord {
    pub name: String,
    /// `load <path>` or `train`.
    pub origin: String,
    /// SHA-256 of its weights as little-endian f32 (W_enc, b_enc, W_dec, b_dec, threshold).
    pub weights_sha256: String,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Section {
    Text {
        style: String,
        text: String,
    },
    Table(Table),
    Plot(Plot),
    Dashboards(Dashboards),
    /// A value computed at run time (`let HEAD = best_head(...)`).
    Value {
        name: String,
        value: String,
    },
    /// A step this version of qexp cannot run yet, kept visible in the report.
    Skipped {
        step: String,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("while loading the model {path}")]
    Load { path: String, source: RuntimeError },
    #[error("`{step}` came out with a non-finite number; the model or its input is broken")]
    NotFinite { step: String },
    #[error("`{step}`: {message}")]
    Invalid { step: String, message: String },
}

const LATER: &str = "is not in this version of qexp";

/// Built-ins this version runs.
const RUNNABLE: &[&str] = &[
    "sanity_check",
    "generate",
    "composition_scores",
    "best_head",
    "values",
    "row",
    "per_token",
    "test_prompt",
    "attention",
    "direct_logit_attribution",
    "feature_activations",
    "feature_attribution",
    "feature_attribution_at",
    "feature_stats",
    "feature_cooccurrence",
    "sae_metrics",
    "feature_dashboards",
];
/// Interventions this version compiles.
const INTERVENTIONS: &[&str] = &[
    "zero",
    "mean",
    "splice",
    "remove_features",
    "scale_features",
    "steer",
    "patch",
];

/// Steps of `plan` this version cannot execute, each with the reason.
pub fn unsupported(plan: &Plan) -> Vec<(String, String)> {
    let mut unavailable: BTreeSet<String> = plan
        .variants
        .iter()
        .filter(|v| v.value.iter().any(|c| !INTERVENTIONS.contains(&c.function)))
        .map(|v| v.name.clone())
        .collect();
    let mut out = Vec::new();
    for step in &plan.steps {
        if let Err(reason) = support(step, &unavailable) {
            if let Some(name) = step_name(step) {
                unavailable.insert(name.to_owned());
            }
            out.push((describe(step), reason));
        }
    }
    out
}

fn step_name(step: &Step) -> Option<&str> {
    match step {
        Step::Text { .. } => None,
        Step::Compute { name, .. }
        | Step::Table { name, .. }
        | Step::Plot { name, .. }
        | Step::Dashboards { name, .. } => Some(name),
    }
}

/// Names a call refers to (tables, computed values, variants, datasets, SAEs).
fn references(call: &Call) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Name(n) | Value::Computed(n) => out.push(n.clone()),
            Value::Hook(h) => out.extend(h.head_from.clone()),
            Value::List(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    call.args.values().for_each(|v| walk(v, &mut out));
    out
}

fn support(step: &Step, unavailable: &BTreeSet<String>) -> Result<(), String> {
    let call = match step {
        Step::Text { .. } => return Ok(()),
        Step::Table {
            source: TableSource::Table(t),
            ..
        } if unavailable.contains(t) => {
            return Err(format!("it reads table `{t}`, which is not computed"));
        }
        Step::Table {
            source: TableSource::Table(_),
            ..
        } => return Ok(()),
        Step::Table {
            source: TableSource::Call(call),
            ..
        }
        | Step::Compute { call, .. } => call,
        Step::Plot { call, .. } => {
            return match references(call)
                .into_iter()
                .find(|r| unavailable.contains(r))
            {
                Some(name) => Err(format!("it reads table `{name}`, which is not computed")),
                None => Ok(()),
            };
        }
        Step::Dashboards { call, .. } => call,
    };
    if !RUNNABLE.contains(&call.function) {
        return Err(format!("`{}` {LATER}", call.function));
    }
    match references(call)
        .into_iter()
        .find(|r| unavailable.contains(r))
    {
        Some(name) => Err(format!(
            "it needs `{name}`, which this version cannot make yet"
        )),
        None => Ok(()),
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Text { kind, .. } => kind.keyword().to_owned(),
        Step::Compute { name, call } => format!("let {name} = {}", call.function),
        Step::Table { name, .. } => format!("table {name}"),
        Step::Plot { name, call } => format!("plot {name} = {}", call.function),
        Step::Dashboards { name, .. } => format!("dashboards {name}"),
    }
}

/// Runs `plan`; whatever it saves (trained SAEs) must be a place `scope` allows.
pub fn execute(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
) -> Result<Results, ExecuteError> {
    let mut model =
        HookedModel::load(runtime, &plan.model.path).map_err(|source| ExecuteError::Load {
            path: plan.model.path.display().to_string(),
            source,
        })?;
    let model_source = model.manifest.source.clone();
    let weights_sha256 = model.manifest.weights_sha256.clone();
    let skipped: BTreeMap<String, String> = unsupported(plan).into_iter().collect();
    let root = std::env::current_dir().unwrap_or_default();
    let mut runner = Runner::new(plan, &mut model, root, scope.clone());
    let mut sections = Vec::new();
    let mut seconds = Vec::new();
    for step in &plan.steps {
        let started = Instant::now();
        let label = describe(step);
        let section = if let Some(reason) = skipped.get(&label) {
            Section::Skipped {
                step: label.clone(),
                reason: reason.clone(),
            }
        } else {
            run_step(&mut runner, step).map_err(|message| ExecuteError::Invalid {
                step: label.clone(),
                message,
            })?
        };
        for table in runner.pending.drain(..) {
            sections.push(Section::Table(table));
            seconds.push(0.0);
        }
        if let Section::Table(table) = &section {
            let finite = table.rows.iter().flatten().all(|c| match c {
                Cell::Number(x) => x.is_finite(),
                Cell::NumberList(xs) => xs.iter().all(|x| x.is_finite()),
                _ => true,
            });
            if !finite {
                return Err(ExecuteError::NotFinite { step: label });
            }
        }
        sections.push(section);
        seconds.push(started.elapsed().as_secs_f64());
    }
    // An SAE trained to be saved is made even when no step reads it.
    for sae in &plan.saes {
        if sae.value.args.contains_key("save")
            && !skipped.contains_key(&format!("sae {}", sae.name))
        {
            runner
                .ensure_sae(&sae.name)
                .map_err(|message| ExecuteError::Invalid {
                    step: format!("sae {}", sae.name),
                    message,
                })?;
            for table in runner.pending.drain(..) {
                sections.push(Section::Table(table));
                seconds.push(0.0);
            }
        }
    }
    let saes = runner.sae_records();
    Ok(Results {
        sections,
        seconds,
        model_source,
        weights_sha256,
        saes,
    })
}

fn run_step(runner: &mut Runner<'_, '_, '_>, step: &Step) -> Result<Section, String> {
    Ok(match step {
        Step::Text { kind, text } => Section::Text {
            style: match kind {
                TextKind::Title => "title",
                TextKind::Section => "section",
                TextKind::Paragraph => "paragraph",
            }
            .to_owned(),
            text: text.clone(),
        },
        Step::Table {
            name, source, ops, ..
        } => {
            let mut table = match source {
                TableSource::Call(call) => runner.table(name, call)?,
                TableSource::Table(t) => {
                    let mut table = runner.tables[t].clone();
                    table.name = name.clone();
                    table
                }
            };
            for op in ops {
                table = table.apply(op)?;
            }
            runner.tables.insert(name.clone(), table.clone());
            Section::Table(table)
        }
        Step::Compute { name, call } => {
            let value = runner.compute(call)?;
            let shown = match &value {
                Value::Str(s) => format!("{s:?}"),
                other => other.to_string(),
            };
            runner.values.insert(name.clone(), value);
            Section::Value {
                name: name.clone(),
                value: shown,
            }
        }
        Step::Plot { name, call } => {
            let Some(Value::Name(table)) = call.args.get("table") else {
                unreachable!("checked: a plot reads a table")
            };
            Section::Plot(plots::plot(name, call, &runner.tables[table])?)
        }
        Step::Dashboards { name, call } => {
            Section::Dashboards(runner.feature_dashboards(name, call)?)
        }
    })
}
