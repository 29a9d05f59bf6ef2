//! A shard's run (`qexp run --shard I/N`): the steps that split over a dataset make
//! their share of rows, the steps they read run whole, everything else waits for the
//! merge (see [`crate::shard::roles`]).

use std::collections::BTreeMap;

use super::{
    ExecuteError, Options, all_finite, bound_ops, describe, load_model, run_step,
    variants_last_used,
};
use crate::builtins::dashboards::FeatureDashboards;
use crate::builtins::measurements::Measurement;
use crate::builtins::table_ops::TableOp;
use crate::plan::{Plan, Step, TableSource};
use crate::runtime::Runtime;
use crate::session::{Failure, Session};
use crate::shard::{Part, Role, Shard};

/// What a shard made: each sharded table's part, by name, and the tokens it ran.
#[derive(Debug)]
pub struct Share {
    pub parts: BTreeMap<String, Part>,
    pub tokens_run: usize,
    pub weights_sha256: String,
    /// The weights (SHA-256) of each SAE the shard read, by name.
    pub saes: BTreeMap<String, String>,
    /// The `let` values without measured numbers (a head, whole numbers, text) the
    /// shard computed, as text: the merge must compute the same.
    pub values: BTreeMap<String, String>,
}

/// Runs `shard`'s share of `plan`.
pub fn execute_share(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
    options: Options,
    shard: Shard,
) -> Result<Share, ExecuteError> {
    let roles = crate::shard::roles(plan);
    let mut model = load_model(plan, runtime)?;
    let weights_sha256 = model.manifest.weights_sha256.clone();
    let root = std::env::current_dir().unwrap_or_default();
    let mut session = Session::new(plan, &mut model, root, scope.clone());
    session.retrain = options.retrain;
    session.earlier = options.earlier;
    session.in_shard = true;
    let repeats = crate::builtins::graphs::last_repeats(plan);
    let last_use = variants_last_used(plan);
    let mut parts = BTreeMap::new();
    for (index, step) in plan.steps.iter().enumerate() {
        let label = describe(step);
        let invalid = |message| ExecuteError::Invalid {
            step: label.clone(),
            message,
        };
        session.start_step(index, repeats[index]);
        let made = match (&roles[index], step) {
            (Role::Merge, _) => None,
            (Role::Prerequisite, _) => {
                run_step(&mut session, step).map_err(invalid)?;
                None
            }
            (
                Role::Sharded { dataset },
                Step::Table {
                    name,
                    source: TableSource::Call { call, .. },
                    ops,
                    ..
                },
            ) => Some((
                name,
                share_of(&mut session, call, ops, name, dataset, shard).map_err(invalid)?,
            )),
            (
                Role::Pass { turn },
                Step::Table {
                    name,
                    source: TableSource::Call { call, .. },
                    ops,
                    ..
                },
            ) if turn % shard.count == shard.index => Some((
                name,
                whole_pass(&mut session, call, ops, name).map_err(invalid)?,
            )),
            (Role::Pass { .. }, Step::Table { .. }) => None,
            (Role::Sharded { .. }, Step::Dashboards { name, call }) => {
                let dashboards = FeatureDashboards::bind(&crate::builtins::args::Args::new(call))
                    .map_err(|e| invalid(e.to_string()))?;
                let state = dashboards
                    .run_share(&mut session, name, shard)
                    .map_err(invalid)?;
                Some((
                    name,
                    Part {
                        state: Some(state),
                        ..Part::rows(crate::results::Table::new(name, &[]))
                    },
                ))
            }
            (Role::Sharded { .. } | Role::Pass { .. }, _) => {
                return Err(invalid(
                    "only a measurement's table is made by shards".into(),
                ));
            }
        };
        if let Some((name, part)) = made {
            if !all_finite(&part.table) {
                return Err(ExecuteError::NotFinite { step: label });
            }
            parts.insert(name.clone(), part);
        }
        session.take_reads();
        session.pending.clear();
        for (variant, _) in last_use.iter().filter(|(_, last)| **last == index) {
            session.forget_variant(variant);
        }
    }
    let values = plan
        .steps
        .iter()
        .zip(&roles)
        .filter_map(|(step, role)| match (step, role) {
            (Step::Compute { name, .. }, Role::Prerequisite) => {
                let value = session.values.get(name)?;
                discrete(value).then(|| (name.clone(), value.to_string()))
            }
            _ => None,
        })
        .collect();
    let saes = session
        .sae_records()
        .into_iter()
        .map(|record| (record.name, record.weights_sha256))
        .collect();
    drop(session);
    Ok(Share {
        parts,
        tokens_run: model.tokens_run(),
        weights_sha256,
        saes,
        values,
    })
}

/// Whether a value holds no measured number (which another machine's kernels could
/// move in its last digits): a head, whole numbers, text, or lists of them.
fn discrete(value: &crate::plan::Value) -> bool {
    use crate::plan::Value;
    match value {
        Value::Number(_) | Value::Expr(_) => false,
        Value::List(items) => items.iter().all(discrete),
        _ => true,
    }
}

/// A loop pass's table, whole (narrowed by its pipeline's first filter; the merge
/// applies every operation).
fn whole_pass(
    session: &mut Session<'_, '_, '_>,
    call: &crate::plan::Call,
    ops: &[crate::plan::Call],
    name: &str,
) -> Result<Part, Failure> {
    let measurement = narrowed(session, call, ops)?;
    Ok(Part::rows(measurement.run(session, name)?))
}

/// A step's measurement, told the filter its table goes through first.
fn narrowed(
    session: &Session<'_, '_, '_>,
    call: &crate::plan::Call,
    ops: &[crate::plan::Call],
) -> Result<Measurement, Failure> {
    let mut measurement = Measurement::bind(call).map_err(|e| e.to_string())?;
    if let Some(TableOp::Filter(filter)) = bound_ops(session, ops)?.first() {
        measurement.narrow(filter);
    }
    Ok(measurement)
}

/// A sharded table's part: its measurement over `shard`'s prompts of `dataset`
/// (narrowed by the pipeline's first filter, as a whole run narrows it; the merge
/// applies every operation to the stacked rows).
fn share_of(
    session: &mut Session<'_, '_, '_>,
    call: &crate::plan::Call,
    ops: &[crate::plan::Call],
    name: &str,
    dataset: &str,
    shard: Shard,
) -> Result<Part, Failure> {
    let measurement = narrowed(session, call, ops)?;
    let lengths = session.prompt_lengths(dataset)?;
    let prompts = crate::shard::share(&lengths, shard);
    measurement.run_share(session, name, prompts)
}

/// Harvests `shard`'s share of the activations the SAE `sae` trains on into its store
/// under `root` (see [`crate::sae::store`]).
pub fn harvest_share(
    plan: &Plan,
    runtime: &Runtime,
    scope: &crate::output::Scope,
    sae: &str,
    shard: Shard,
    root: &std::path::Path,
) -> Result<crate::session::HarvestShare, ExecuteError> {
    let mut model = load_model(plan, runtime)?;
    let project = std::env::current_dir().unwrap_or_default();
    let mut session = Session::new(plan, &mut model, project, scope.clone());
    session
        .harvest_share(sae, shard, root)
        .map_err(|message| ExecuteError::Invalid {
            step: format!("harvest {sae}"),
            message,
        })
}
