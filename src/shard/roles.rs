//! Which steps a shard computes: decided from the plan alone.

use std::collections::BTreeSet;

use crate::builtins::measurements::Measurement;
use crate::plan::{Call, ColumnExpr, Plan, Step, TableSource, Value};

/// What a step does in a sharded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Its rows split over `dataset`'s prompts: each shard makes its share, the merge
    /// stacks the shares in prompt order and applies the step's table operations.
    Sharded { dataset: String },
    /// One pass of a loop whose tables a `collect` stacks (a sweep's variant): made
    /// whole by one shard, the passes dealt out in turn (pass `turn` to shard
    /// `turn mod N`); the merge applies the step's table operations.
    Pass { turn: usize },
    /// Not split, but a sharded step reads what it makes: every shard runs it whole,
    /// and so does the merge.
    Prerequisite,
    /// Runs in the merge only (it reads a sharded table, or no sharded step needs it).
    Merge,
}

/// Each step's role, in the plan's order. A table whose measurement splits over a
/// dataset's prompts is sharded unless it reads (directly or through a variant, an
/// SAE or a `let`) something a sharded step made: that is a merge point, and it and
/// everything after it that reads it run in the merge.
pub fn roles(plan: &Plan) -> Vec<Role> {
    let collected = plan.collected_tables();
    let mut turns = 0;
    let reads: Vec<Vec<usize>> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| step_dependencies(plan, index, step))
        .collect();
    let mut after_merge = vec![false; plan.steps.len()];
    let mut roles = Vec::with_capacity(plan.steps.len());
    for (index, step) in plan.steps.iter().enumerate() {
        let reads_sharded = reads[index].iter().any(|&earlier| after_merge[earlier]);
        let role = match step {
            // A loop's passes are many and alike: whole passes spread the work with no
            // pass's preparation (a mean, a patch source) repeated in every shard.
            Step::Table {
                name,
                source: TableSource::Call { call, .. },
                ..
            } if !reads_sharded
                && collected.contains(name.as_str())
                && Measurement::bind(call).is_ok() =>
            {
                turns += 1;
                Role::Pass { turn: turns - 1 }
            }
            _ => match shards_over(step) {
                Some(dataset) if !reads_sharded => Role::Sharded { dataset },
                _ => Role::Merge,
            },
        };
        after_merge[index] = reads_sharded || role.is_made_by_shards();
        roles.push(role);
    }
    // What a sharded step needs, and what that needs in turn, runs in every shard.
    for index in (0..plan.steps.len()).rev() {
        let needed = roles[index].is_made_by_shards() || roles[index] == Role::Prerequisite;
        if needed {
            for &earlier in &reads[index] {
                if roles[earlier] == Role::Merge {
                    roles[earlier] = Role::Prerequisite;
                }
            }
        }
    }
    roles
}

impl Role {
    /// Whether shards make the step's table (split or as whole passes).
    pub fn is_made_by_shards(&self) -> bool {
        matches!(self, Role::Sharded { .. } | Role::Pass { .. })
    }
}

/// The dataset a step splits over: a measurement's table that splits, or dashboards.
fn shards_over(step: &Step) -> Option<String> {
    match step {
        Step::Table {
            source: TableSource::Call { call, .. },
            ..
        } => Measurement::bind(call)
            .ok()?
            .shards_over()
            .map(str::to_owned),
        Step::Dashboards { call, .. } => {
            let args = crate::builtins::args::Args::new(call);
            Some(
                crate::builtins::dashboards::FeatureDashboards::bind(&args)
                    .ok()?
                    .dataset,
            )
        }
        _ => None,
    }
}

/// The earlier steps whose tables or values `step` reads.
fn step_dependencies(plan: &Plan, index: usize, step: &Step) -> Vec<usize> {
    let seen = names_read(plan, step);
    plan.steps[..index]
        .iter()
        .enumerate()
        .filter(|(_, earlier)| match earlier {
            Step::Table { name, .. } | Step::Compute { name, .. } => seen.contains(name),
            _ => false,
        })
        .map(|(i, _)| i)
        .collect()
}

/// The SAEs the experiment trains that shards read (a step they make or run whole
/// reads it): each must be trained and pinned before the shards run.
pub fn trained_saes_for_shards(plan: &Plan) -> Vec<String> {
    let roles = roles(plan);
    let mut wanted = BTreeSet::new();
    for (step, role) in plan.steps.iter().zip(&roles) {
        if *role != Role::Merge {
            wanted.extend(names_read(plan, step));
        }
    }
    plan.saes
        .iter()
        .filter(|sae| sae.value.function == "train" && wanted.contains(&sae.name))
        .map(|sae| sae.name.clone())
        .collect()
}

/// Every name `step` reads, and every name the variants and SAEs it reads read.
fn names_read(plan: &Plan, step: &Step) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut calls: Vec<&Call> = Vec::new();
    match step {
        Step::Text { .. } => {}
        Step::Compute { call, .. } | Step::Plot { call, .. } | Step::Dashboards { call, .. } => {
            calls.push(call)
        }
        Step::Table { source, ops, .. } => {
            source_names(source, &mut names, &mut calls);
            calls.extend(ops);
        }
        Step::Expect {
            source, ops, check, ..
        } => {
            source_names(source, &mut names, &mut calls);
            calls.extend(ops);
            calls.push(check);
        }
    }
    for call in calls {
        call_names(call, &mut names);
    }
    // Variants and SAEs are declared, not steps: what their declarations read counts.
    let mut seen = BTreeSet::new();
    let mut pending: Vec<String> = names.iter().cloned().collect();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let declared: Vec<&Call> = plan
            .variants
            .iter()
            .filter(|v| v.name == name)
            .flat_map(|v| v.value.iter())
            .chain(
                plan.saes
                    .iter()
                    .filter(|s| s.name == name)
                    .map(|s| &s.value),
            )
            .collect();
        for call in declared {
            let mut more = BTreeSet::new();
            call_names(call, &mut more);
            pending.extend(more);
        }
    }
    seen
}

fn source_names<'p>(
    source: &'p TableSource,
    names: &mut BTreeSet<String>,
    calls: &mut Vec<&'p Call>,
) {
    match source {
        TableSource::Call { call, .. } => calls.push(call),
        TableSource::Table(table) => {
            names.insert(table.clone());
        }
        TableSource::Collect { parts, .. } => {
            names.extend(parts.iter().map(|part| part.table.clone()));
        }
    }
}

/// Every name a call's arguments refer to: declarations, tables and `let`s, in
/// column expressions too.
fn call_names(call: &Call, names: &mut BTreeSet<String>) {
    fn value(v: &Value, names: &mut BTreeSet<String>) {
        match v {
            Value::Name(name) | Value::Computed(name) => {
                names.insert(name.clone());
            }
            Value::List(items) => items.iter().for_each(|item| value(item, names)),
            Value::Expr(e) => expr(e, names),
            _ => {}
        }
    }
    fn expr(e: &ColumnExpr, names: &mut BTreeSet<String>) {
        match e {
            ColumnExpr::Value(name, _) => {
                names.insert(name.clone());
            }
            ColumnExpr::Not(inner) | ColumnExpr::Neg(inner) => expr(inner, names),
            ColumnExpr::Binary(_, a, b) => {
                expr(a, names);
                expr(b, names);
            }
            ColumnExpr::Call(_, args) | ColumnExpr::List(args) => {
                args.iter().for_each(|a| expr(a, names))
            }
            ColumnExpr::Column(_)
            | ColumnExpr::Number(_)
            | ColumnExpr::Str(_)
            | ColumnExpr::Bool(_) => {}
        }
    }
    call.args.values().for_each(|v| value(v, names));
}

/// The `qexp plan` lines saying what a sharded run does with each step.
pub fn describe(plan: &Plan) -> String {
    let roles = roles(plan);
    let mut sharded: Vec<String> = Vec::new();
    let mut passes: Vec<String> = Vec::new();
    let mut prerequisite: Vec<String> = Vec::new();
    let mut merged: Vec<String> = Vec::new();
    for (step, role) in plan.steps.iter().zip(&roles) {
        let label = match step {
            Step::Text { .. } => continue,
            Step::Table { name, .. }
            | Step::Compute { name, .. }
            | Step::Plot { name, .. }
            | Step::Dashboards { name, .. } => name.clone(),
            Step::Expect { text, .. } => format!("expect {text:?}"),
        };
        match role {
            Role::Sharded { dataset } => sharded.push(format!("{label} (over `{dataset}`)")),
            Role::Pass { .. } => passes.push(label),
            Role::Prerequisite => prerequisite.push(label),
            Role::Merge => merged.push(label),
        }
    }
    let mut out = String::from("shards (`qexp run --shard I/N` for each I, then `qexp merge`):\n");
    if sharded.is_empty() && passes.is_empty() {
        out.push_str(
            "  no step splits over a dataset's prompts or is a loop's pass: the merge would run every step\n",
        );
        return out;
    }
    if !sharded.is_empty() {
        out.push_str(&format!("  split over prompts: {}\n", sharded.join(", ")));
    }
    match passes.as_slice() {
        [] => {}
        [one] => out.push_str(&format!("  a loop's pass, whole in shard 1: {one}\n")),
        [first, .., last] => out.push_str(&format!(
            "  {} loop passes, each whole in one shard, dealt out in turn: {first} ... {last}\n",
            passes.len()
        )),
    }
    if !prerequisite.is_empty() {
        out.push_str(&format!(
            "  run whole in every shard and again in the merge (a split step reads them): {}\n",
            prerequisite.join(", ")
        ));
    }
    if !merged.is_empty() {
        out.push_str(&format!("  in the merge: {}\n", merged.join(", ")));
    }
    out
}
