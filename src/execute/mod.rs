//! Runs a checked plan on its model and collects the results. The only stage besides
//! the report that touches ONNX Runtime and the file system.
//!
//! Not every step the language can express runs yet (interventions, SAEs and most
//! measurements are later work): [`unsupported`] lists them with the reason, and
//! `qexp run` refuses a plan with such steps unless asked to skip them, in which case
//! the report says so. A step that needs a skipped step is skipped too.

mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

pub use table::{Cell, Table};

use crate::analysis::composition::{self, Mode};
use crate::check::SANITY_CHECK_TEXT;
use crate::plan::{Call, Plan, Step, TableSource, Value};
use crate::runtime::{HookedModel, Runtime, RuntimeError, Sampling};
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
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Section {
    Text {
        style: String,
        text: String,
    },
    Table(Table),
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
    #[error("while computing `{step}`")]
    Step { step: String, source: RuntimeError },
    #[error("`{step}` came out with a non-finite number; the model or its input is broken")]
    NotFinite { step: String },
    #[error("`{step}`: {message}")]
    Invalid { step: String, message: String },
}

const LATER: &str = "needs interventions, datasets, SAEs and measurements that are not in this version yet (issues #4 and #5)";

/// Built-ins this version runs.
const RUNNABLE: &[&str] = &[
    "sanity_check",
    "generate",
    "composition_scores",
    "best_head",
];

/// Steps of `plan` this version cannot execute, each with the reason.
pub fn unsupported(plan: &Plan) -> Vec<(String, String)> {
    let mut unavailable: BTreeSet<String> = plan.variants.iter().map(|v| v.name.clone()).collect();
    unavailable.extend(plan.datasets.iter().map(|d| d.name.clone()));
    unavailable.extend(plan.saes.iter().map(|s| s.name.clone()));
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
        Step::Plot { .. } => return Err("plots come with the report issue (#6)".into()),
        Step::Dashboards { .. } => {
            return Err("feature dashboards come with the report issue (#6)".into());
        }
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

/// Values bound at run time, and tables made so far, by name.
#[derive(Default)]
struct State {
    tables: BTreeMap<String, Table>,
    values: BTreeMap<String, Value>,
}

pub fn execute(plan: &Plan, runtime: &Runtime) -> Result<Results, ExecuteError> {
    let mut model =
        HookedModel::load(runtime, &plan.model.path).map_err(|source| ExecuteError::Load {
            path: plan.model.path.display().to_string(),
            source,
        })?;
    let skipped: BTreeMap<String, String> = unsupported(plan).into_iter().collect();
    let mut state = State::default();
    let mut sections = Vec::new();
    let mut seconds = Vec::new();
    for step in &plan.steps {
        let started = Instant::now();
        let label = describe(step);
        let section = if let Some(reason) = skipped.get(&label) {
            Section::Skipped {
                step: label,
                reason: reason.clone(),
            }
        } else {
            run_step(&mut model, &mut state, step, &label)?
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

fn run_step(
    model: &mut HookedModel<'_>,
    state: &mut State,
    step: &Step,
    label: &str,
) -> Result<Section, ExecuteError> {
    let at = |source| ExecuteError::Step {
        step: label.to_owned(),
        source,
    };
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
                TableSource::Call(call) => make_table(model, name, call).map_err(at)?,
                TableSource::Table(t) => {
                    let mut table = state.tables[t].clone();
                    table.name = name.clone();
                    table
                }
            };
            for op in ops {
                table = table.apply(op);
            }
            let finite = table.rows.iter().flatten().all(|c| match c {
                Cell::Number(x) => x.is_finite(),
                Cell::NumberList(xs) => xs.iter().all(|x| x.is_finite()),
                _ => true,
            });
            if !finite {
                return Err(ExecuteError::NotFinite {
                    step: label.to_owned(),
                });
            }
            state.tables.insert(name.clone(), table.clone());
            Section::Table(table)
        }
        Step::Compute { name, call } => {
            let value = compute(state, call).map_err(|message| ExecuteError::Invalid {
                step: label.to_owned(),
                message,
            })?;
            let shown = value.to_string();
            state.values.insert(name.clone(), value);
            Section::Value {
                name: name.clone(),
                value: shown,
            }
        }
        Step::Plot { .. } | Step::Dashboards { .. } => unreachable!("support() refuses these"),
    })
}

fn compute(state: &State, call: &Call) -> Result<Value, String> {
    match call.function {
        "best_head" => {
            let column = |key: &str, default: &str| match call.args.get(key) {
                Some(Value::Column(c)) => c.clone(),
                _ => default.to_owned(),
            };
            let Some(Value::Name(table)) = call.args.get("table") else {
                return Err("no table".into());
            };
            let table = &state.tables[table];
            let (by, layer, head) = (
                column("by", "score"),
                column("layer", "layer"),
                column("head", "head"),
            );
            let index = |c: &str| {
                table
                    .column(c)
                    .ok_or_else(|| format!("table `{}` has no column `{c}`", table.name))
            };
            let (by, layer, head) = (index(&by)?, index(&layer)?, index(&head)?);
            let best = table
                .rows
                .iter()
                .filter(|row| {
                    matches!(row[by], Cell::Number(x) if x.is_finite())
                        || matches!(row[by], Cell::Integer(_))
                })
                .max_by(|a, b| cell_f64(&a[by]).total_cmp(&cell_f64(&b[by])))
                .ok_or_else(|| format!("table `{}` is empty", table.name))?;
            match (&best[layer], &best[head]) {
                (Cell::Integer(l), Cell::Integer(h)) => Ok(Value::Head {
                    layer: *l as usize,
                    head: *h as usize,
                }),
                _ => Err("the layer and head columns must hold whole numbers".into()),
            }
        }
        other => unreachable!("support() refused `{other}`"),
    }
}

fn cell_f64(cell: &Cell) -> f64 {
    match cell {
        Cell::Integer(n) => *n as f64,
        Cell::Number(x) => *x,
        _ => f64::NAN,
    }
}

fn str_arg<'a>(call: &'a Call, name: &str) -> Option<&'a str> {
    match call.args.get(name) {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    }
}

fn int_arg(call: &Call, name: &str) -> Option<i64> {
    match call.args.get(name) {
        Some(Value::Integer(n)) => Some(*n),
        _ => None,
    }
}

fn num_arg(call: &Call, name: &str) -> Option<f64> {
    match call.args.get(name) {
        Some(Value::Number(n)) => Some(*n),
        Some(Value::Integer(n)) => Some(*n as f64),
        _ => None,
    }
}

fn make_table(model: &mut HookedModel<'_>, name: &str, call: &Call) -> Result<Table, RuntimeError> {
    let prepend = model.manifest.special_tokens.prepend_bos;
    match call.function {
        "sanity_check" => {
            let text = str_arg(call, "text").unwrap_or(SANITY_CHECK_TEXT);
            let losses = model.loss_per_token(&[text])?;
            let losses = &losses[0];
            let loss =
                losses.iter().map(|&l| f64::from(l)).sum::<f64>() / losses.len().max(1) as f64;
            let mut table = Table::new(name, &["text", "tokens", "loss"]);
            table.rows.push(vec![
                Cell::Str(text.to_owned()),
                Cell::Integer(losses.len() as i64 + 1),
                Cell::Number(loss),
            ]);
            Ok(table)
        }
        "generate" => {
            let prompt = str_arg(call, "prompt").unwrap_or_default();
            let max_new_tokens = int_arg(call, "max_new_tokens").unwrap_or(20).max(0) as usize;
            let temperature = num_arg(call, "temperature").unwrap_or(0.0);
            let sampling = if temperature > 0.0 {
                Sampling::Temperature {
                    temperature: temperature as f32,
                    seed: int_arg(call, "seed").unwrap_or(0) as u64,
                }
            } else {
                Sampling::Greedy
            };
            let tokens = model.to_tokens(prompt, prepend)?;
            let new = model.generate(&tokens, max_new_tokens, sampling, false)?;
            let mut table = Table::new(name, &["prompt", "continuation", "new_tokens"]);
            table.rows.push(vec![
                Cell::Str(prompt.to_owned()),
                Cell::Str(model.to_string(&new)?),
                Cell::Integer(new.len() as i64),
            ]);
            Ok(table)
        }
        "composition_scores" => {
            let mode = match call.args.get("mode") {
                Some(Value::Choice(m)) if m == "K" => Mode::K,
                Some(Value::Choice(m)) if m == "V" => Mode::V,
                _ => Mode::Q,
            };
            let fold_ln = matches!(call.args.get("fold_ln"), Some(Value::Bool(true)));
            let config = model.manifest.config.clone();
            let scores =
                composition::composition_scores(&config, mode, fold_ln, |w| model.weight(w))?;
            let mut table = Table::new(name, &["layer1", "head1", "layer2", "head2", "score"]);
            table.rows = scores
                .iter()
                .map(|s| {
                    vec![
                        Cell::Integer(s.layer1 as i64),
                        Cell::Integer(s.head1 as i64),
                        Cell::Integer(s.layer2 as i64),
                        Cell::Integer(s.head2 as i64),
                        Cell::Number(s.score),
                    ]
                })
                .collect();
            Ok(table)
        }
        other => unreachable!("support() refused `{other}`"),
    }
}
