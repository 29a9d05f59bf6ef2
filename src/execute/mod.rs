//! Runs a checked plan on its model and collects the results. The only stage besides
//! the report that touches ONNX Runtime and the file system.

use std::time::Instant;

pub use crate::results::{
    CLAIM_ROWS, Cell, Claim, Dashboards, Example, FeatureDashboard, Plot, PlotKind, QuantileBand,
    Results, SaeRecord, Section, Table, WINDOW,
};
pub use crate::session::{check_save_paths, checkpoints_dir};

use crate::builtins::args::Args;
use crate::builtins::checks::{Check, Quantifier};
use crate::builtins::dashboards::FeatureDashboards;
use crate::builtins::measurements::{Measurement, Read};
use crate::builtins::plots::PlotCall;
use crate::builtins::table_ops::{TableOp, columns_read, resolve_call};
use crate::builtins::values::ValueCall;
use crate::plan::{Call, Plan, Step, TableSource, Value};
use crate::runtime::{HookedModel, Runtime, RuntimeError};
use crate::session::Session;
use crate::syntax::ast::TextKind;

mod share;
pub use share::{Share, execute_share, harvest_share};

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("while loading the model {path}")]
    Load { path: String, source: RuntimeError },
    #[error("`{step}` came out with a non-finite number; the model or its input is broken")]
    NotFinite { step: String },
    #[error("`{step}`: {message}")]
    Invalid { step: String, message: String },
}

fn describe(step: &Step) -> String {
    match step {
        Step::Text { kind, .. } => kind.keyword().to_owned(),
        Step::Compute { name, call } => format!("let {name} = {}", call.function),
        Step::Table { name, .. } => format!("table {name}"),
        Step::Plot { name, call } => format!("plot {name} = {}", call.function),
        Step::Dashboards { name, .. } => format!("dashboards {name}"),
        Step::Expect { text, .. } => format!("expect {text:?}"),
    }
}

/// How a run treats what earlier runs left behind.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Train every SAE again, even where its pin was trained from the same inputs.
    pub retrain: bool,
    /// The tables of the report this run replaces, by name: numbers within tolerance of
    /// them keep their earlier value (see `results::tolerance::settle`).
    pub earlier: std::collections::BTreeMap<String, crate::results::tolerance::Written>,
    /// In a merge (`qexp merge`), the shards' parts of each sharded table, by name.
    pub shard_parts: std::collections::BTreeMap<String, Vec<crate::shard::Part>>,
    /// In a merge, the weights (SHA-256) of each SAE the shards read: the merge reads
    /// the same SAEs and refuses others.
    pub shard_saes: std::collections::BTreeMap<String, String>,
    /// In a merge, the `let` values without measured numbers the shards computed, as
    /// text: the merge refuses to go on from another value.
    pub shard_values: std::collections::BTreeMap<String, String>,
    /// Where SAEs to be trained read activations harvested in shards (`qexp sae
    /// harvest`), one store per SAE under it, instead of harvesting in memory.
    pub harvested: Option<std::path::PathBuf>,
}

/// Runs `plan`; whatever it saves (trained SAEs) must be a place `scope` allows.
pub fn execute(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
) -> Result<Results, ExecuteError> {
    execute_with(plan, runtime, scope, Options::default())
}

/// [`execute`] with `options`.
pub fn execute_with(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
    options: Options,
) -> Result<Results, ExecuteError> {
    run(plan, runtime, scope, options).map(|(results, _)| results)
}

/// What one step read: the graphs it ran and the outputs it took from each.
#[derive(Debug, Clone)]
pub struct StepReads {
    pub step: String,
    pub reads: Vec<Read>,
}

/// [`execute`], also returning what each step read from which graph (preparations
/// such as means, patch sources and SAE training aside), in the order of the plan.
pub fn execute_traced(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
) -> Result<(Results, Vec<StepReads>), ExecuteError> {
    run(plan, runtime, scope, Options::default())
}

fn run(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
    options: Options,
) -> Result<(Results, Vec<StepReads>), ExecuteError> {
    let mut model = load_model(plan, runtime)?;
    let model_source = model.manifest.source.clone();
    let weights_sha256 = model.manifest.weights_sha256.clone();
    let root = std::env::current_dir().unwrap_or_default();
    let mut session = Session::new(plan, &mut model, root, scope.clone());
    session.retrain = options.retrain;
    session.earlier = options.earlier;
    session.shard_parts = options.shard_parts;
    session.shard_saes = options.shard_saes;
    session.shard_values = options.shard_values;
    session.harvested = options.harvested;
    let mut traces = Vec::new();
    let mut sections = Vec::new();
    let mut seconds = Vec::new();
    let last_use = variants_last_used(plan);
    // A loop's tables that a `collect` stacks show in the report once, collected.
    let collected = plan.collected_tables();
    let repeats = crate::builtins::graphs::last_repeats(plan);
    for (index, step) in plan.steps.iter().enumerate() {
        session.start_step(index, repeats[index]);
        let started = Instant::now();
        let label = describe(step);
        let section = run_step(&mut session, step).map_err(|message| ExecuteError::Invalid {
            step: label.clone(),
            message,
        })?;
        traces.push(StepReads {
            step: label.clone(),
            reads: session.take_reads(),
        });
        push_pending(&mut session, &mut sections, &mut seconds);
        // A sweep declares variants per pass: each is released once no later step runs
        // it, and its graph's session once no live variant shares it.
        for (variant, _) in last_use.iter().filter(|(_, last)| **last == index) {
            session.forget_variant(variant);
        }
        if let Section::Table(table) = &section
            && !all_finite(table)
        {
            return Err(ExecuteError::NotFinite { step: label });
        }
        if matches!(step, Step::Table { name, .. } if collected.contains(name.as_str())) {
            continue;
        }
        sections.push(section);
        seconds.push(started.elapsed().as_secs_f64());
    }
    // An SAE trained to be saved is made even when no step reads it.
    for sae in &plan.saes {
        if sae.value.args.contains_key("save") {
            session
                .ensure_sae(&sae.name)
                .map_err(|message| ExecuteError::Invalid {
                    step: format!("sae {}", sae.name),
                    message,
                })?;
            push_pending(&mut session, &mut sections, &mut seconds);
        }
    }
    let saes = session.sae_records();
    let variant_passes_run_ahead = session.variant_passes_run_ahead();
    drop(session);
    let results = Results {
        tokens_run: model.tokens_run(),
        sessions_compiled: model.sessions_built(),
        sessions_packed: model.sessions_packed(),
        variant_passes_run_ahead,
        threads: runtime.kernel_threads(),
        sections,
        seconds,
        model_source,
        weights_sha256,
        saes,
    };
    Ok((results, traces))
}

/// The plan's model folder, loaded with the plan's settings for it.
pub fn load_model<'r>(plan: &Plan, runtime: &'r Runtime) -> Result<HookedModel<'r>, ExecuteError> {
    let mut model =
        HookedModel::load(runtime, &plan.model.path).map_err(|source| ExecuteError::Load {
            path: plan.model.path.display().to_string(),
            source,
        })?;
    if let Some(prepend_bos) = plan.model.prepend_bos {
        model.manifest.special_tokens.prepend_bos = prepend_bos;
    }
    Ok(model)
}

/// The index of the last step that runs each variant, directly or as the source another
/// variant patches from.
fn variants_last_used(plan: &Plan) -> std::collections::BTreeMap<String, usize> {
    let mut last = std::collections::BTreeMap::new();
    for (index, step) in plan.steps.iter().enumerate() {
        let found: Vec<&str> = match step {
            Step::Text { .. } => Vec::new(),
            Step::Compute { call, .. }
            | Step::Plot { call, .. }
            | Step::Dashboards { call, .. } => call.names(),
            Step::Table { source, ops, .. } | Step::Expect { source, ops, .. } => {
                let source = match source {
                    TableSource::Call { call, .. } => call.names(),
                    _ => Vec::new(),
                };
                source
                    .into_iter()
                    .chain(ops.iter().flat_map(Call::names))
                    .collect()
            }
        };
        for name in found {
            if plan.variants.iter().any(|v| v.name == name) {
                last.insert(name.to_owned(), index);
            }
        }
    }
    // A variant patches only from variants declared before it: walking back, each
    // source outlives every variant that reads it.
    for variant in plan.variants.iter().rev() {
        let Some(&until) = last.get(&variant.name) else {
            continue;
        };
        for source in variant.value.iter().flat_map(Call::names) {
            if plan.variants.iter().any(|v| v.name == source) {
                let entry = last.entry(source.to_owned()).or_insert(until);
                *entry = (*entry).max(until);
            }
        }
    }
    last
}

/// Shows the tables a step made along the way (an SAE's training summary) before the
/// step's own section, settled like any table.
fn push_pending(
    session: &mut Session<'_, '_, '_>,
    sections: &mut Vec<Section>,
    seconds: &mut Vec<f64>,
) {
    for mut table in std::mem::take(&mut session.pending) {
        session.settle(&mut table);
        sections.push(Section::Table(table));
        seconds.push(0.0);
    }
}

fn run_step(session: &mut Session<'_, '_, '_>, step: &Step) -> Result<Section, String> {
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
            let table = pipeline(session, Some(name), source, ops)?;
            session.tables.insert(name.clone(), table.clone());
            Section::Table(table)
        }
        Step::Expect {
            text,
            written,
            source,
            ops,
            check,
        } => {
            // A claim's table has no name, so no earlier version: it reads the settled
            // numbers of the tables it starts from.
            let table = pipeline(session, None, source, ops)?;
            let check = resolve_call(check, &session.values)?;
            let check = Check::bind(&check).map_err(|e| e.to_string())?;
            Section::Claim(claim(text, written, &check, &table))
        }
        Step::Compute { name, call } => {
            let value = ValueCall::bind(call)
                .map_err(|e| e.to_string())?
                .compute(session)?;
            if let Some(shards) = session.shard_values.get(name)
                && *shards != value.to_string()
            {
                return Err(format!(
                    "the shards computed {name} = {shards}, this merge {value}: their split steps used another value; run the shards and the merge with one qexp on one kind of machine"
                ));
            }
            let shown = match &value {
                Value::Str(s) => format!("{s:?}"),
                Value::List(items) if items.iter().all(|v| matches!(v, Value::Number(_))) => {
                    // A vector's values (a steering vector) move in their last digits
                    // with the CPU's kernels: they go in a table of their own, which is
                    // settled within tolerance like any other, not into the page's text.
                    session.pending.push(vector_table(name, items));
                    format!("a vector of {} values (table `{name}`)", items.len())
                }
                other => other.to_string(),
            };
            session.values.insert(name.clone(), value);
            Section::Value {
                name: name.clone(),
                value: shown,
            }
        }
        Step::Plot { name, call } => {
            let plot = PlotCall::bind(call).map_err(|e| e.to_string())?;
            Section::Plot(plot.run(name, session.table(&plot.table)?)?)
        }
        Step::Dashboards { name, call } => {
            let dashboards =
                FeatureDashboards::bind(&Args::new(call)).map_err(|e| e.to_string())?;
            Section::Dashboards(match session.shard_parts.remove(name) {
                Some(parts) => {
                    session.same_saes_as_shards(call)?;
                    let states = parts
                        .into_iter()
                        .map(|part| part.state.ok_or("a shard's part holds no dashboards"))
                        .collect::<Result<Vec<_>, _>>()?;
                    dashboards.merge(session, name, states)?
                }
                None => dashboards.run(session, name)?,
            })
        }
    })
}

/// A `let` vector as a table of its values, by index.
fn vector_table(name: &str, items: &[Value]) -> crate::results::Table {
    let mut table = crate::results::Table::new(name, &["index", "value"]);
    for (index, item) in items.iter().enumerate() {
        if let Value::Number(x) = item {
            table
                .rows
                .push(vec![Cell::Integer(index as i64), Cell::Number(*x)]);
        }
    }
    table
}

/// The table a pipeline makes: its source (a measurement or an earlier table) through
/// its operations. A named table is settled against the earlier report's table of
/// that name, after its source and after its operations.
fn pipeline(
    session: &mut Session<'_, '_, '_>,
    name: Option<&str>,
    source: &TableSource,
    ops: &[Call],
) -> Result<Table, String> {
    let ops = bound_ops(session, ops)?;
    let mut table = match source {
        TableSource::Call { call, labels } => {
            let mut measurement = Measurement::bind(call).map_err(|e| e.to_string())?;
            let shards_made = name.and_then(|name| session.shard_parts.remove(name));
            let mut table = match shards_made {
                Some(parts) => {
                    session.same_saes_as_shards(call)?;
                    measurement.merge(name.unwrap_or("claim"), parts)?
                }
                None => {
                    if let Some(TableOp::Filter(filter)) = ops.first() {
                        measurement.narrow(filter);
                    }
                    measurement.run(session, name.unwrap_or("claim"))?
                }
            };
            relabel(&mut table, labels);
            // Before the table's own sorts and cuts, so they order the earlier numbers
            // where only noise moved them.
            if name.is_some() {
                session.settle(&mut table);
            }
            table
        }
        TableSource::Table(t) => session.table(t)?.clone(),
        TableSource::Collect { name, parts } => collect(session, name, parts)?,
    };
    if let Some(name) = name {
        table.name = name.to_owned();
    }
    for op in &ops {
        table = op.apply_with(table, &session.tables)?;
    }
    if name.is_some() {
        session.settle(&mut table);
    }
    Ok(table)
}

/// A pipeline's operations, with the `let` values they read filled in.
fn bound_ops(session: &Session<'_, '_, '_>, ops: &[Call]) -> Result<Vec<TableOp>, String> {
    ops.iter()
        .map(|op| {
            let op = resolve_call(op, &session.values)?;
            TableOp::bind(&op).map_err(|e| e.to_string())
        })
        .collect()
}

/// Whether every number in `table` is finite.
fn all_finite(table: &Table) -> bool {
    table.rows.iter().flatten().all(|c| match c {
        Cell::Number(x) => x.is_finite(),
        Cell::NumberList(xs) => xs.iter().all(|x| x.is_finite()),
        _ => true,
    })
}

/// Names the columns and `variant` cells of variants a `for` body declared as written.
fn relabel(table: &mut Table, labels: &[(String, String)]) {
    if labels.is_empty() {
        return;
    }
    for column in &mut table.columns {
        if let Some(written) = crate::plan::relabel(column, labels) {
            *column = written;
        }
    }
    if let Some(variant) = table.column("variant") {
        for row in &mut table.rows {
            if let Cell::Str(cell) = &mut row[variant]
                && let Some(written) = crate::plan::relabel(cell, labels)
            {
                *cell = written;
            }
        }
    }
}

/// The tables of a `collect`, stacked, each row led by its pass's loop variables.
fn collect(
    session: &Session<'_, '_, '_>,
    name: &str,
    parts: &[crate::plan::CollectedPart],
) -> Result<Table, String> {
    let mut columns: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for part in parts {
        let table = session.table(&part.table)?;
        if columns.is_empty() {
            columns = part.keys.iter().map(|(var, _)| var.clone()).collect();
            columns.extend(table.columns.iter().cloned());
        }
        let keys: Vec<Cell> = part
            .keys
            .iter()
            .map(|(_, value)| match value {
                Value::Integer(n) => Cell::Integer(*n),
                Value::Number(x) => Cell::Number(*x),
                Value::Bool(b) => Cell::Bool(*b),
                Value::Str(s) => Cell::Str(s.clone()),
                other => Cell::Str(other.to_string()),
            })
            .collect();
        rows.extend(table.rows.iter().map(|row| {
            let mut collected = keys.clone();
            collected.extend(row.iter().cloned());
            collected
        }));
    }
    Ok(Table {
        name: name.to_owned(),
        columns,
        rows,
    })
}

/// The verdict of `check` on `table`, with the rows behind it.
fn claim(text: &str, written: &str, check: &Check, table: &Table) -> Claim {
    let verdict = check.evaluate(table);
    // When the claim fails, the rows that make it fail come first: those that miss the
    // condition, or for an upper bound on a share, those that meet it.
    let against_meets = matches!(
        check.quantifier,
        Quantifier::Share {
            at_most: Some(high),
            ..
        } if verdict.rows > 0 && verdict.meeting as f64 / verdict.rows as f64 > high
    );
    let mut order: Vec<usize> = (0..table.rows.len()).collect();
    if !verdict.holds {
        order.sort_by_key(|&i| verdict.meets[i] != against_meets);
    }
    let read = columns_read(&check.condition);
    // The row's text (which token, which context) first, then what the condition reads.
    let mut shown: Vec<usize> = (0..table.columns.len())
        .filter(|&c| {
            table
                .rows
                .first()
                .is_some_and(|r| matches!(r[c], Cell::Str(_)))
        })
        .take(2)
        .collect();
    for (c, column) in table.columns.iter().enumerate() {
        if read.contains(&column.as_str()) && !shown.contains(&c) {
            shown.push(c);
        }
    }
    let evidence = Table {
        name: "evidence".into(),
        columns: std::iter::once("meets".to_owned())
            .chain(shown.iter().map(|&c| table.columns[c].clone()))
            .collect(),
        rows: order
            .iter()
            .take(CLAIM_ROWS)
            .map(|&i| {
                std::iter::once(Cell::Bool(verdict.meets[i]))
                    .chain(shown.iter().map(|&c| table.rows[i][c].clone()))
                    .collect()
            })
            .collect(),
    };
    Claim {
        text: text.to_owned(),
        written: written.to_owned(),
        holds: verdict.holds,
        rows: verdict.rows,
        meeting: verdict.meeting,
        detail: verdict.detail,
        evidence,
        show: check.show.clone(),
    }
}
