//! `qexp run --shard I/N` and `qexp merge`: a run split over machines.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Failure, WholeRun};
use crate::execute;
use crate::manifest::Manifest;
use crate::shard::{Inputs, Partial, Role, Shard, partial};

/// What ties a shard to this version of the experiment and its inputs.
fn inputs(run: &WholeRun, weights_sha256: String) -> Inputs {
    Inputs {
        experiment_sha256: format!("{:x}", Sha256::digest(run.source.as_bytes())),
        weights_sha256,
        datasets_sha256: crate::lock::dataset_files(&run.plan, run.root())
            .into_iter()
            .map(|(name, file)| (name, file.sha256))
            .collect(),
    }
}

/// Runs `shard`'s share and writes it into `folder`.
pub(super) fn run_shard(
    run: &WholeRun,
    shard: Shard,
    folder: &Path,
    retrain: bool,
) -> Result<(), Failure> {
    let roles = crate::shard::roles(&run.plan);
    let sharded = roles.iter().filter(|role| role.is_made_by_shards()).count();
    if sharded == 0 {
        eprintln!(
            "note: no step of `{}` is made by shards: every step will run in `qexp merge`",
            run.plan.name
        );
    }
    // Refused before the run rather than after it.
    run.scope.check(folder, crate::output::Kind::Shards)?;
    let options = execute::Options {
        retrain,
        earlier: crate::report::written_tables(&crate::report::folder(
            &run.reports,
            &run.plan.name,
        )),
        ..Default::default()
    };
    let share = execute::execute_share(&run.plan, &run.runtime, &run.scope, options, shard)?;
    let partial = Partial {
        shard,
        inputs: inputs(run, share.weights_sha256),
        tokens_run: share.tokens_run,
        saes_sha256: share.saes,
        values: share.values,
        parts: share.parts,
    };
    let rows: usize = partial.parts.values().map(|p| p.table.rows.len()).sum();
    let written = partial::write(folder, &partial, &run.scope)?;
    outln!(
        "shard {shard} of `{}`: {rows} rows of {} table{} written to {}",
        run.plan.name,
        partial.parts.len(),
        if partial.parts.len() == 1 { "" } else { "s" },
        written.display()
    );
    outln!(
        "once every shard is done: qexp merge {}",
        run.experiment().display()
    );
    Ok(())
}

/// Writes the report of the shards in `folder`.
pub(super) fn merge(
    run: &WholeRun,
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
    let mut partials = partial::read_all(folder, count, &expected)?;
    let shard_tokens = partials.iter().map(|p| p.tokens_run).sum();
    let shard_saes = agreed(
        &partials,
        |p| &p.saes_sha256,
        |name, _, _, shard| {
            format!(
                "the shards read different weights for the SAE `{name}` (shard {shard} differs from an earlier one); run them again once its pin is settled"
            )
        },
    )?;
    let shard_values = agreed(
        &partials,
        |p| &p.values,
        |name, first, value, shard| {
            format!(
                "the shards computed different values of `{name}` ({first} and {value}, shard {shard}): run every shard with one qexp on one kind of machine"
            )
        },
    )?;
    let mut shard_parts: BTreeMap<String, Vec<crate::shard::Part>> = BTreeMap::new();
    let count = partials.len();
    for (step, role) in run.plan.steps.iter().zip(crate::shard::roles(&run.plan)) {
        let (crate::plan::Step::Table { name, .. } | crate::plan::Step::Dashboards { name, .. }) =
            step
        else {
            continue;
        };
        // Every shard made a share of a split table; one shard made each pass whole.
        let makers: Vec<usize> = match role {
            Role::Sharded { .. } => (0..count).collect(),
            Role::Pass { turn } => vec![turn % count],
            Role::Prerequisite | Role::Merge => continue,
        };
        let mut parts = Vec::with_capacity(makers.len());
        for maker in makers {
            let partial = &mut partials[maker];
            let part = partial.parts.remove(name).ok_or_else(|| {
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
        "merging {count} shard{} of `{}` from {}",
        if count == 1 { "" } else { "s" },
        run.plan.name,
        folder.display()
    );
    run.run(
        execute::Options {
            shard_parts,
            shard_saes,
            shard_values,
            ..Default::default()
        },
        shard_tokens,
        allow_failed_claims,
    )
}

/// What every shard recorded under a name (in the map `pick` reads), refusing names
/// two shards recorded differently, with `conflict(name, first, other, shard)`.
fn agreed(
    partials: &[Partial],
    pick: impl Fn(&Partial) -> &BTreeMap<String, String>,
    conflict: impl Fn(&str, &str, &str, Shard) -> String,
) -> Result<BTreeMap<String, String>, Failure> {
    let mut agreed: BTreeMap<String, String> = BTreeMap::new();
    for partial in partials {
        for (name, value) in pick(partial) {
            if let Some(first) = agreed.get(name)
                && first != value
            {
                return Err(anyhow::anyhow!(conflict(name, first, value, partial.shard)).into());
            }
            agreed.insert(name.clone(), value.clone());
        }
    }
    Ok(agreed)
}

/// The experiment's shard folder, as the project sees it, for a Slurm command.
fn slurm_place(
    experiment: &Path,
    place: &super::ShardPlace,
) -> Result<(super::InProject, crate::plan::Plan, PathBuf, PathBuf), Failure> {
    let entered = super::InProject::enter(experiment)?;
    let reports = entered.reports(place.reports.as_deref());
    let scope = crate::output::Scope::current(true)?;
    let (plan, _) = super::load_plan(&entered.experiment, Some(&reports), &scope)?;
    let folder = entered.shards_folder(place.shards_dir.as_deref(), &reports, &plan.name);
    Ok((entered, plan, reports, folder))
}

/// `qexp slurm EXP --shards N`.
pub(super) fn slurm_submit(
    experiment: &Path,
    shards: usize,
    resources: super::SlurmResources,
    dry_run: bool,
    place: &super::ShardPlace,
    outputs: &super::OutputFlags,
) -> Result<(), Failure> {
    let (entered, plan, reports, folder) = slurm_place(experiment, place)?;
    let scope = outputs.scope()?;
    partial::prepare_folder(&folder, &scope)?;
    let root = std::env::current_dir()?;
    let absolute = |path: &Path| root.join(path);
    let trained_saes = crate::shard::trained_saes_for_shards(&plan);
    for sae in &trained_saes {
        let declared = plan.saes.iter().find(|s| &s.name == sae);
        if declared.is_some_and(|s| !s.value.args.contains_key("save")) {
            return Err(anyhow::anyhow!(
                "the shards read `{sae}`, which the experiment trains without `save = \"...\"`: give it a folder to be pinned in, so the training job can pin it and every shard read the same SAE"
            )
            .into());
        }
    }
    let job = crate::slurm::Job {
        name: plan.name.clone(),
        trained_saes,
        qexp: std::env::current_exe()?,
        project: root.clone(),
        experiment: absolute(&entered.experiment),
        reports: absolute(&reports),
        shards_dir: absolute(&folder),
        shards,
        allow_outside_project: outputs.allow_outside_project,
        resources: crate::slurm::Resources {
            partition: resources.partition,
            time: resources.time,
            mem: resources.mem,
            gpus: resources.gpus,
            cpus_per_task: resources.cpus_per_task,
            account: resources.account,
        },
    };
    let sharded = crate::shard::roles(&plan)
        .iter()
        .filter(|role| role.is_made_by_shards())
        .count();
    if sharded == 0 {
        eprintln!(
            "note: no step of `{}` is made by shards: the shards will do nothing and the merge everything",
            plan.name
        );
    }
    if dry_run {
        job.write_scripts()?;
        let script = |stage: &str| folder.join(format!("{stage}.sbatch")).display().to_string();
        outln!(
            "wrote the batch scripts into {}; to submit by hand:",
            folder.display()
        );
        let mut trains = Vec::new();
        for sae in &job.trained_saes {
            outln!(
                "  sbatch --parsable --array=1-{shards} {}   # harvest `{sae}`: job H",
                script(&format!("harvest-{sae}"))
            );
            outln!(
                "  sbatch --parsable --dependency=afterok:H {}   # train `{sae}`: job T",
                script(&format!("train-{sae}"))
            );
            trains.push("T");
        }
        let after = if trains.is_empty() {
            String::new()
        } else {
            " --dependency=afterok:<each T>".to_owned()
        };
        outln!(
            "  sbatch --parsable --array=1-{shards}{after} {}   # the shards: job S",
            script("shard")
        );
        outln!(
            "  sbatch --dependency=afterok:S {}   # the merge",
            script("merge")
        );
        return Ok(());
    }
    // A new submission's state is read from its own shards only.
    partial::remove_parts(&folder)?;
    let submission = crate::slurm::submit_all(job)?;
    for training in &submission.trainings {
        outln!(
            "submitted the harvest of `{}`'s activations as job array {} ({shards} tasks), its training as job {} (after the harvest; a pin with the same inputs is kept)",
            training.sae,
            training.harvest,
            training.train
        );
    }
    let (array, _) = submission.arrays.last().expect("one array submitted");
    outln!(
        "submitted {shards} shard{} of `{}` as job array {array}, the merge as job {} (runs once every shard succeeds)",
        if shards == 1 { "" } else { "s" },
        plan.name,
        submission.merge
    );
    outln!("logs: {}", folder.join("logs").display());
    outln!("progress: qexp slurm status {}", experiment.display());
    Ok(())
}

/// `qexp slurm status EXP`.
pub(super) fn slurm_status(experiment: &Path, place: &super::ShardPlace) -> Result<(), Failure> {
    let (_, plan, reports, folder) = slurm_place(experiment, place)?;
    let submission = crate::slurm::Submission::read(&folder)?;
    let status = crate::slurm::status(&submission)?;
    let arrays: Vec<&str> = submission
        .arrays
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    outln!(
        "`{}`: {} shards (job array{} {}), merge job {}",
        plan.name,
        submission.job.shards,
        if arrays.len() == 1 { "" } else { "s" },
        arrays.join(", "),
        submission.merge
    );
    for (sae, harvest, train) in &status.trainings {
        let harvest = if harvest.is_empty() {
            "finished or not queued".to_owned()
        } else {
            harvest.join(", ")
        };
        outln!(
            "  `{sae}`: harvest {harvest}; training {}",
            train.as_deref().unwrap_or("finished or not queued")
        );
    }
    for (shard, state) in &status.shards {
        let hint = if state == "failed" {
            format!(
                " (not queued and no part written: see {}; `qexp slurm resubmit` runs it again)",
                folder.join("logs").display()
            )
        } else {
            String::new()
        };
        outln!("  shard {shard}: {state}{hint}");
    }
    let report = crate::report::folder(&reports, &plan.name);
    match &status.merge {
        Some(state) if state.contains("DependencyNeverSatisfied") => outln!(
            "  merge: {state}: a shard failed; `qexp slurm resubmit {}` runs it again with a new merge",
            experiment.display()
        ),
        Some(state) => outln!("  merge: {state}"),
        None if status.failed().is_empty() && report.join("index.html").exists() => {
            outln!("  merge: finished; report in {}", report.display())
        }
        None => outln!(
            "  merge: not queued (it runs only after every shard succeeds; see {})",
            folder.join("logs").display()
        ),
    }
    Ok(())
}

/// `qexp slurm resubmit EXP`.
pub(super) fn slurm_resubmit(experiment: &Path, place: &super::ShardPlace) -> Result<(), Failure> {
    let (_, plan, _, folder) = slurm_place(experiment, place)?;
    let mut submission = crate::slurm::Submission::read(&folder)?;
    let resubmitted = crate::slurm::resubmit(&mut submission)?;
    if resubmitted.is_empty() {
        outln!("no shard of `{}` failed: nothing to resubmit", plan.name);
        return Ok(());
    }
    let (array, _) = submission.arrays.last().expect("an array was submitted");
    outln!(
        "resubmitted shard{} {} of `{}` as job array {array}, the merge as job {}",
        if resubmitted.len() == 1 { "" } else { "s" },
        crate::shard::numbers(&resubmitted),
        plan.name,
        submission.merge
    );
    Ok(())
}

/// Where harvested activations go: `activations/` in the experiment's shard folder.
pub(super) fn store_root(
    entered: &super::InProject,
    place: &super::ShardPlace,
    experiment: &str,
) -> PathBuf {
    let reports = entered.reports(place.reports.as_deref());
    entered
        .shards_folder(place.shards_dir.as_deref(), &reports, experiment)
        .join("activations")
}

/// `qexp sae harvest EXP NAME --shard I/N`.
pub(super) fn harvest(
    experiment: &Path,
    name: &str,
    shard: Shard,
    device: Option<crate::runtime::Device>,
    place: &super::ShardPlace,
    outputs: &super::OutputFlags,
) -> Result<(), Failure> {
    let entered = super::InProject::enter(experiment)?;
    let scope = outputs.scope()?;
    let (mut plan, _) = super::load_plan(&entered.experiment, None, &scope)?;
    if let Some(device) = device {
        plan.model.device = device;
    }
    let root = store_root(&entered, place, &plan.name);
    let folder = root.parent().expect("the store is inside the shard folder");
    partial::prepare_folder(folder, &scope)?;
    let runtime = crate::runtime::Runtime::new(plan.model.device)?;
    let harvested = execute::harvest_share(&plan, &runtime, &scope, name, shard, &root)?;
    if harvested.pinned {
        outln!("{name} is pinned with the same inputs: training reads the pin, nothing harvested");
    } else {
        outln!(
            "harvest shard {shard} of {name}: {} activations written to {}",
            harvested.rows,
            harvested.folder.display()
        );
        outln!(
            "once every shard is done: qexp sae train {} {name} --harvested",
            experiment.display()
        );
    }
    Ok(())
}
