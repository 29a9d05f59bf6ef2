//! `qexp run --shard I/N` and `qexp merge`: a run split over machines.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Failure, WholeRun};
use crate::execute;
use crate::manifest::Manifest;
use crate::shard::{Inputs, Partial, Role, Shard, partial};

/// What ties a shard to this version of the experiment and its inputs.
fn inputs(run: &WholeRun<'_>, weights_sha256: String) -> Inputs {
    Inputs {
        experiment_sha256: format!("{:x}", Sha256::digest(run.source.as_bytes())),
        weights_sha256,
        datasets_sha256: crate::lock::dataset_files(run.plan, run.root)
            .into_iter()
            .map(|(name, file)| (name, file.sha256))
            .collect(),
    }
}

/// Runs `shard`'s share and writes it into `folder`.
pub(super) fn run_shard(
    run: &WholeRun<'_>,
    shard: Shard,
    folder: &Path,
    retrain: bool,
) -> Result<(), Failure> {
    let roles = crate::shard::roles(run.plan);
    let sharded = roles
        .iter()
        .filter(|role| matches!(role, Role::Sharded { .. }))
        .count();
    if sharded == 0 {
        eprintln!(
            "note: no step of `{}` splits over shards: every step will run in `qexp merge`",
            run.plan.name
        );
    }
    // Refused before the run rather than after it.
    run.scope.check(folder, crate::output::Kind::Shards)?;
    let options = execute::Options {
        retrain,
        earlier: crate::report::written_tables(&crate::report::folder(run.reports, &run.plan.name)),
        ..Default::default()
    };
    let share = execute::execute_share(run.plan, run.runtime, run.scope, options, shard)?;
    let partial = Partial {
        shard,
        inputs: inputs(run, share.weights_sha256),
        tokens_run: share.tokens_run,
        saes_sha256: share.saes,
        parts: share.parts,
    };
    let rows: usize = partial.parts.values().map(|p| p.table.rows.len()).sum();
    let written = partial::write(folder, &partial, run.scope)?;
    outln!(
        "shard {shard} of `{}`: {rows} rows of {} table{} written to {}",
        run.plan.name,
        partial.parts.len(),
        if partial.parts.len() == 1 { "" } else { "s" },
        written.display()
    );
    outln!(
        "once every shard is done: qexp merge {}",
        run.experiment.display()
    );
    Ok(())
}

/// Writes the report of the shards in `folder`.
pub(super) fn merge(
    run: &WholeRun<'_>,
    folder: &Path,
    count: Option<usize>,
    allow_failed_claims: bool,
) -> Result<(), Failure> {
    let manifest = Manifest::read(&run.plan.model.path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the model folder {}: {e}",
            run.plan.model.path.display()
        )
    })?;
    let expected = inputs(run, manifest.weights_sha256.clone());
    let partials = partial::read_all(folder, count, &expected)?;
    let shard_tokens = partials.iter().map(|p| p.tokens_run).sum();
    let mut shard_saes: BTreeMap<String, String> = BTreeMap::new();
    for partial in &partials {
        for (name, sha) in &partial.saes_sha256 {
            if let Some(first) = shard_saes.get(name)
                && first != sha
            {
                return Err(anyhow::anyhow!(
                    "the shards read different weights for the SAE `{name}` (shard {} differs from an earlier one); run them again once its pin is settled",
                    partial.shard
                )
                .into());
            }
            shard_saes.insert(name.clone(), sha.clone());
        }
    }
    let mut shard_parts: BTreeMap<String, Vec<crate::shard::Part>> = BTreeMap::new();
    for (step, role) in run.plan.steps.iter().zip(crate::shard::roles(run.plan)) {
        let (crate::plan::Step::Table { name, .. }, Role::Sharded { .. }) = (step, role) else {
            continue;
        };
        let mut parts = Vec::with_capacity(partials.len());
        for partial in &partials {
            let part = partial.parts.get(name).cloned().ok_or_else(|| {
                anyhow::anyhow!(
                    "shard {} has no part of `{name}`: run it again with this qexp",
                    partial.shard
                )
            })?;
            parts.push(part);
        }
        shard_parts.insert(name.clone(), parts);
    }
    eprintln!(
        "merging {} shard{} of `{}` from {}",
        partials.len(),
        if partials.len() == 1 { "" } else { "s" },
        run.plan.name,
        folder.display()
    );
    run.run(
        execute::Options {
            shard_parts,
            shard_saes,
            ..Default::default()
        },
        shard_tokens,
        allow_failed_claims,
    )
}
