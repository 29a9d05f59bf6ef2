//! Runs a checked plan on its model and collects the results. The only stage besides
//! the report that touches ONNX Runtime and the file system.
//!
//! Not every step the language can express runs yet (interventions, SAEs and most
//! measurements are later work): [`unsupported`] lists them, and `qexp run` refuses a
//! plan with such steps unless asked to skip them, in which case the report says so.

use std::time::Instant;

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
    /// A step this version of qexp cannot run yet, kept visible in the report.
    Skipped {
        step: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Cell {
    Integer(i64),
    Number(f64),
    Str(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("while loading the model {path}")]
    Load { path: String, source: RuntimeError },
    #[error("while computing table `{table}`")]
    Table { table: String, source: RuntimeError },
    #[error("table `{table}` came out with a non-finite number; the model or its input is broken")]
    NotFinite { table: String },
}

/// Steps of `plan` this version cannot execute, each with the reason.
pub fn unsupported(plan: &Plan) -> Vec<(String, String)> {
    plan.steps
        .iter()
        .filter_map(|step| support(step).err().map(|why| (describe(step), why)))
        .collect()
}

fn support(step: &Step) -> Result<(), String> {
    const LATER: &str =
        "needs interventions, SAEs and measurements (issues #4 and #5), not in this version";
    match step {
        Step::Text { .. } => Ok(()),
        Step::Table {
            source: TableSource::Call(call),
            ops,
            ..
        } => {
            if !matches!(call.function, "sanity_check" | "generate") {
                return Err(format!("`{}` {LATER}", call.function));
            }
            if call.args.contains_key("variant") {
                return Err(format!("generation under a variant {LATER}"));
            }
            if let Some(op) = ops.first() {
                return Err(format!(
                    "table operation `{}` is not implemented yet",
                    op.function
                ));
            }
            Ok(())
        }
        Step::Table {
            source: TableSource::Table(_),
            ..
        } => Err("table operations are not implemented yet".into()),
        Step::Compute { call, .. } => Err(format!("`{}` {LATER}", call.function)),
        Step::Plot { .. } => Err("plots come with the report issue (#6)".into()),
        Step::Dashboards { .. } => Err("feature dashboards come with the report issue (#6)".into()),
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Text { kind, .. } => kind.keyword().to_owned(),
        Step::Compute { name, call } => format!("let {name} = {call}"),
        Step::Table { name, .. } => format!("table {name}"),
        Step::Plot { name, call } => format!("plot {name} = {}", call.function),
        Step::Dashboards { name, .. } => format!("dashboards {name}"),
    }
}

pub fn execute(plan: &Plan, runtime: &Runtime) -> Result<Results, ExecuteError> {
    let mut model =
        HookedModel::load(runtime, &plan.model.path).map_err(|source| ExecuteError::Load {
            path: plan.model.path.display().to_string(),
            source,
        })?;
    let mut sections = Vec::new();
    let mut seconds = Vec::new();
    for step in &plan.steps {
        let started = Instant::now();
        let section = match (step, support(step)) {
            (_, Err(reason)) => Section::Skipped {
                step: describe(step),
                reason,
            },
            (Step::Text { kind, text }, Ok(())) => Section::Text {
                style: match kind {
                    TextKind::Title => "title",
                    TextKind::Section => "section",
                    TextKind::Paragraph => "paragraph",
                }
                .to_owned(),
                text: text.clone(),
            },
            (
                Step::Table {
                    name,
                    source: TableSource::Call(call),
                    ..
                },
                Ok(()),
            ) => {
                let table =
                    run_table(&mut model, name, call).map_err(|source| ExecuteError::Table {
                        table: name.clone(),
                        source,
                    })?;
                let finite = table
                    .rows
                    .iter()
                    .flatten()
                    .all(|c| !matches!(c, Cell::Number(x) if !x.is_finite()));
                if !finite {
                    return Err(ExecuteError::NotFinite {
                        table: name.clone(),
                    });
                }
                Section::Table(table)
            }
            (_, Ok(())) => unreachable!("support() accepts only the steps matched above"),
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

fn run_table(model: &mut HookedModel<'_>, name: &str, call: &Call) -> Result<Table, RuntimeError> {
    let prepend = model.manifest.special_tokens.prepend_bos;
    let (columns, row) = match call.function {
        "sanity_check" => {
            let text = str_arg(call, "text").unwrap_or(SANITY_CHECK_TEXT);
            let losses = model.loss_per_token(&[text])?;
            let losses = &losses[0];
            let loss =
                losses.iter().map(|&l| f64::from(l)).sum::<f64>() / losses.len().max(1) as f64;
            (
                vec!["text", "tokens", "loss"],
                vec![
                    Cell::Str(text.to_owned()),
                    Cell::Integer(losses.len() as i64 + 1),
                    Cell::Number(loss),
                ],
            )
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
            (
                vec!["prompt", "continuation", "new_tokens"],
                vec![
                    Cell::Str(prompt.to_owned()),
                    Cell::Str(model.to_string(&new)?),
                    Cell::Integer(new.len() as i64),
                ],
            )
        }
        other => unreachable!("support() refused `{other}`"),
    };
    Ok(Table {
        name: name.to_owned(),
        columns: columns.into_iter().map(str::to_owned).collect(),
        rows: vec![row],
    })
}
