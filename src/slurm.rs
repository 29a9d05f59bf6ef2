//! `qexp slurm`: a sharded run as Slurm jobs. A job array runs the shards (`qexp run
//! --shard I/N`), a merge job (`qexp merge`) waits for all of them to succeed
//! (`--dependency=afterok`). Slurm schedules; qexp only writes the two batch scripts,
//! submits them with `sbatch` and reads `squeue` and the shard folder for the state.
//! Nothing here reaches the experiment file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// What a job asks Slurm for, passed to `#SBATCH` lines as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub partition: Option<String>,
    /// `--time`, e.g. `2:00:00`.
    pub time: Option<String>,
    /// `--mem`, e.g. `16G`.
    pub mem: Option<String>,
    /// `--gpus`; with any, the jobs run on CUDA.
    pub gpus: Option<u32>,
    /// `--cpus-per-task`; qexp's kernel threads follow it.
    pub cpus_per_task: Option<u32>,
    /// `--account`.
    pub account: Option<String>,
}

/// Everything the batch scripts run: absolute paths, as jobs start elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The experiment's name, for the jobs' names.
    pub name: String,
    pub qexp: PathBuf,
    pub project: PathBuf,
    pub experiment: PathBuf,
    pub reports: PathBuf,
    pub shards_dir: PathBuf,
    pub shards: usize,
    pub allow_outside_project: bool,
    pub resources: Resources,
    /// SAEs the experiment trains that the shards read: each is harvested by a job
    /// array and trained (and pinned) by a job before the shards start.
    #[serde(default)]
    pub trained_saes: Vec<String>,
}

/// What was submitted, kept in the shard folder as `slurm.json` for `status` and
/// `resubmit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub job: Job,
    /// Every array job that ran shards, the latest last, with the shards it ran.
    pub arrays: Vec<(String, Vec<usize>)>,
    /// The merge job waiting on the latest array.
    pub merge: String,
    /// The latest harvest array and training job of each SAE the shards read.
    #[serde(default)]
    pub trainings: Vec<Training>,
}

/// The jobs that make one SAE before the shards run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Training {
    pub sae: String,
    pub harvest: String,
    pub train: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(
        "cannot run `{program}` ({source}): is this a Slurm login node with Slurm's commands on PATH?"
    )]
    Missing {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no Slurm submission in {} (`qexp slurm EXPERIMENT --shards N` makes one)", folder.display())]
    NotSubmitted { folder: PathBuf },
    #[error("{} is not a submission this qexp wrote ({problem})", path.display())]
    Corrupt { path: PathBuf, problem: String },
    #[error("shard{} {} still queued or running: wait for {} (`qexp slurm status`), then resubmit", if shards.len() > 1 { "s" } else { "" }, crate::shard::numbers(shards), if shards.len() > 1 { "them" } else { "it" })]
    Busy { shards: Vec<usize> },
}

/// A shell word that stays one word whatever it holds.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn path_word(path: &Path) -> String {
    quoted(&path.display().to_string())
}

impl Job {
    fn header(&self, kind: &str, log: &str) -> String {
        let mut lines = vec![
            "#!/bin/bash".to_owned(),
            format!(
                "#SBATCH --job-name={}",
                quoted(&format!("qexp-{kind}-{}", self.name))
            ),
            format!("#SBATCH --chdir={}", path_word(&self.project)),
            format!(
                "#SBATCH --output={}",
                path_word(&self.shards_dir.join("logs").join(log))
            ),
        ];
        let r = &self.resources;
        let mut option = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                lines.push(format!("#SBATCH --{name}={}", quoted(&value)));
            }
        };
        option("partition", r.partition.clone());
        option("account", r.account.clone());
        option("time", r.time.clone());
        option("mem", r.mem.clone());
        option("gpus", r.gpus.map(|g| g.to_string()));
        option("cpus-per-task", r.cpus_per_task.map(|c| c.to_string()));
        lines.push("set -euo pipefail".to_owned());
        lines.join("\n") + "\n"
    }

    /// The flags every job's qexp command takes: where reports and parts go, the
    /// device, and (for `run` and `merge`, which take it) the kernel threads.
    fn flags(&self, threads: bool) -> String {
        let mut flags = format!(
            "--reports {} --shards-dir {}",
            path_word(&self.reports),
            path_word(&self.shards_dir)
        );
        if let Some(cpus) = self.resources.cpus_per_task.filter(|_| threads) {
            flags.push_str(&format!(" --threads {cpus}"));
        }
        if self.resources.gpus.is_some_and(|g| g > 0) {
            flags.push_str(" --device cuda");
        }
        if self.allow_outside_project {
            flags.push_str(" --allow-outside-project");
        }
        flags
    }

    /// The array job's script: shard `$SLURM_ARRAY_TASK_ID` of N (the array's range is
    /// given at submission, so a resubmission can name only the failed shards).
    pub fn shard_script(&self) -> String {
        format!(
            "{}exec {} run {} --shard \"$SLURM_ARRAY_TASK_ID/{}\" {}\n",
            self.header("shard", "shard-%a-job-%A.out"),
            path_word(&self.qexp),
            path_word(&self.experiment),
            self.shards,
            self.flags(true)
        )
    }

    /// The merge job's script.
    pub fn merge_script(&self) -> String {
        format!(
            "{}exec {} merge {} --shards {} {}\n",
            self.header("merge", "merge-job-%j.out"),
            path_word(&self.qexp),
            path_word(&self.experiment),
            self.shards,
            self.flags(true)
        )
    }

    /// The harvest array's script for `sae`: shard `$SLURM_ARRAY_TASK_ID` of its
    /// training activations, into the shard folder's store.
    pub fn harvest_script(&self, sae: &str) -> String {
        format!(
            "{}exec {} sae harvest {} {sae} --shard \"$SLURM_ARRAY_TASK_ID/{}\" {}\n",
            self.header(
                &format!("harvest-{sae}"),
                &format!("harvest-{sae}-%a-job-%A.out")
            ),
            path_word(&self.qexp),
            path_word(&self.experiment),
            self.shards,
            self.flags(false)
        )
    }

    /// The training job's script for `sae`: trains it from the harvest and pins it.
    pub fn train_script(&self, sae: &str) -> String {
        format!(
            "{}exec {} sae train {} {sae} --harvested {}\n",
            self.header(&format!("train-{sae}"), &format!("train-{sae}-job-%j.out")),
            path_word(&self.qexp),
            path_word(&self.experiment),
            self.flags(false)
        )
    }

    fn script_path(&self, stage: &str) -> PathBuf {
        self.shards_dir.join(format!("{stage}.sbatch"))
    }

    fn shard_script_path(&self) -> PathBuf {
        self.shards_dir.join("shard.sbatch")
    }

    fn merge_script_path(&self) -> PathBuf {
        self.shards_dir.join("merge.sbatch")
    }

    /// Writes both scripts into the shard folder (which the caller has checked).
    pub fn write_scripts(&self) -> Result<(), SlurmError> {
        let logs = self.shards_dir.join("logs");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SlurmError::Write { path, source }
        };
        std::fs::create_dir_all(&logs).map_err(io(&logs))?;
        let mut scripts = vec![
            (self.shard_script_path(), self.shard_script()),
            (self.merge_script_path(), self.merge_script()),
        ];
        for sae in &self.trained_saes {
            scripts.push((
                self.script_path(&format!("harvest-{sae}")),
                self.harvest_script(sae),
            ));
            scripts.push((
                self.script_path(&format!("train-{sae}")),
                self.train_script(sae),
            ));
        }
        for (path, text) in scripts {
            std::fs::write(&path, text).map_err(io(&path))?;
        }
        Ok(())
    }
}

/// Runs a Slurm command, returning its standard output.
fn slurm(program: &str, args: &[String]) -> Result<String, SlurmError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| SlurmError::Missing {
            program: program.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(SlurmError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `sbatch --parsable` prints `id` or `id;cluster`.
fn submit(args: Vec<String>) -> Result<String, SlurmError> {
    let out = slurm("sbatch", &args)?;
    let id = out.trim().split(';').next().unwrap_or_default().to_owned();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(SlurmError::Failed {
            command: format!("sbatch {}", args.join(" ")),
            stderr: format!("printed {:?}, not a job id", out.trim()),
        });
    }
    Ok(id)
}

/// Submits each trained SAE's harvest array and training job.
fn submit_trainings(job: &Job) -> Result<Vec<Training>, SlurmError> {
    let mut trainings = Vec::new();
    for sae in &job.trained_saes {
        let harvest = submit(vec![
            "--parsable".into(),
            format!("--array=1-{}", job.shards),
            job.script_path(&format!("harvest-{sae}"))
                .display()
                .to_string(),
        ])?;
        let train = submit(vec![
            "--parsable".into(),
            format!("--dependency=afterok:{harvest}"),
            job.script_path(&format!("train-{sae}"))
                .display()
                .to_string(),
        ])?;
        trainings.push(Training {
            sae: sae.clone(),
            harvest,
            train,
        });
    }
    Ok(trainings)
}

/// Submits `shards` as one array job (after `trainings`) and a merge job that runs
/// once all shards succeed.
fn submit_array_and_merge(
    job: &Job,
    shards: &[usize],
    trainings: &[Training],
) -> Result<(String, String), SlurmError> {
    let mut args = vec![
        "--parsable".to_owned(),
        format!("--array={}", crate::shard::numbers(shards).replace(' ', "")),
    ];
    if !trainings.is_empty() {
        let after: Vec<&str> = trainings.iter().map(|t| t.train.as_str()).collect();
        args.push(format!("--dependency=afterok:{}", after.join(":")));
    }
    args.push(job.shard_script_path().display().to_string());
    let array = submit(args)?;
    let merge = submit(vec![
        "--parsable".into(),
        format!("--dependency=afterok:{array}"),
        job.merge_script_path().display().to_string(),
    ])?;
    Ok((array, merge))
}

/// Writes the scripts, submits every shard and the merge, and records the submission.
pub fn submit_all(job: Job) -> Result<Submission, SlurmError> {
    job.write_scripts()?;
    let shards: Vec<usize> = (1..=job.shards).collect();
    let trainings = submit_trainings(&job)?;
    let (array, merge) = submit_array_and_merge(&job, &shards, &trainings)?;
    let submission = Submission {
        job,
        arrays: vec![(array, shards)],
        merge,
        trainings,
    };
    submission.save()?;
    Ok(submission)
}

const RECORD: &str = "slurm.json";

impl Submission {
    fn save(&self) -> Result<(), SlurmError> {
        let path = self.job.shards_dir.join(RECORD);
        let text = serde_json::to_string_pretty(self).expect("a submission serializes") + "\n";
        std::fs::write(&path, text).map_err(|source| SlurmError::Write { path, source })
    }

    /// The submission recorded in `folder`.
    pub fn read(folder: &Path) -> Result<Self, SlurmError> {
        let path = folder.join(RECORD);
        let text = match crate::files::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SlurmError::NotSubmitted {
                    folder: folder.to_owned(),
                });
            }
            Err(e) => {
                return Err(SlurmError::Corrupt {
                    path,
                    problem: e.to_string(),
                });
            }
        };
        serde_json::from_str(&text).map_err(|e| SlurmError::Corrupt {
            path,
            problem: e.to_string(),
        })
    }
}

/// Where each shard and the merge stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Per shard (from 1): its Slurm state while queued (`PENDING`, `RUNNING`, ...),
    /// else `done` when its part is written, else `failed` (not queued, no part).
    pub shards: BTreeMap<usize, String>,
    /// The merge job's Slurm state while queued, else `None`.
    pub merge: Option<String>,
    /// Per trained SAE: its harvest tasks' and training job's states while queued.
    pub trainings: Vec<(String, Vec<String>, Option<String>)>,
}

impl Status {
    /// Shards neither queued nor done: the ones to resubmit.
    pub fn failed(&self) -> Vec<usize> {
        self.shards
            .iter()
            .filter(|(_, state)| *state == "failed")
            .map(|(&shard, _)| shard)
            .collect()
    }

    fn queued(&self) -> Vec<usize> {
        self.shards
            .iter()
            .filter(|(_, state)| !matches!(state.as_str(), "failed" | "done"))
            .filter(|(_, state)| !state.contains(NEVER))
            .map(|(&shard, _)| shard)
            .collect()
    }

    /// Shards that wait for something that failed (an SAE's harvest or training).
    fn blocked(&self) -> Vec<usize> {
        self.shards
            .iter()
            .filter(|(_, state)| state.contains(NEVER))
            .map(|(&shard, _)| shard)
            .collect()
    }
}

/// Asks `squeue` for the submission's jobs and looks for the shards' parts.
pub fn status(submission: &Submission) -> Result<Status, SlurmError> {
    // Every job of this user, each array task on its own line (`-r`): job ids that
    // Slurm has already forgotten are then simply absent, not an error.
    let out = slurm(
        "squeue",
        &["-h".into(), "-r".into(), "-o".into(), "%i %T %r".into()],
    )?;
    let queued: BTreeMap<String, String> = out
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (id, state) = (words.next()?, words.next()?);
            // Why a job waits (`Resources`, `DependencyNeverSatisfied`); `None` when it runs.
            let state = match words.next() {
                Some(reason) if reason != "None" => format!("{state} ({reason})"),
                _ => state.to_owned(),
            };
            Some((id.to_owned(), state))
        })
        .collect();
    let job = &submission.job;
    let mut shards = BTreeMap::new();
    for shard in 1..=job.shards {
        // The latest array that ran this shard.
        let array = submission
            .arrays
            .iter()
            .rev()
            .find(|(_, ran)| ran.contains(&shard))
            .map(|(id, _)| id.as_str())
            .unwrap_or_default();
        let written = job
            .shards_dir
            .join(format!("shard-{shard:04}-of-{:04}.json", job.shards))
            .is_file();
        let state = match queued.get(&format!("{array}_{shard}")) {
            Some(state) => state.clone(),
            None if written => "done".to_owned(),
            None => "failed".to_owned(),
        };
        shards.insert(shard, state);
    }
    let trainings = submission
        .trainings
        .iter()
        .map(|t| {
            let prefix = format!("{}_", t.harvest);
            let harvest: Vec<String> = queued
                .iter()
                .filter(|(id, _)| id.starts_with(&prefix))
                .map(|(id, state)| format!("{} {state}", &id[prefix.len()..]))
                .collect();
            (t.sae.clone(), harvest, queued.get(&t.train).cloned())
        })
        .collect();
    Ok(Status {
        shards,
        merge: queued.get(&submission.merge).cloned(),
        trainings,
    })
}

/// Slurm's reason for a job whose dependency failed.
const NEVER: &str = "DependencyNeverSatisfied";

/// Resubmits the failed shards with a new merge job (the old one, which waits for an
/// array that failed, is cancelled). Shards that wait for an SAE whose harvest or
/// training failed are cancelled and submitted again after a new harvest and training
/// (a harvest finds an SAE already pinned and does nothing). Refuses while shards are
/// still queued.
pub fn resubmit(submission: &mut Submission) -> Result<Vec<usize>, SlurmError> {
    let status = status(submission)?;
    let busy = status.queued();
    if !busy.is_empty() {
        return Err(SlurmError::Busy { shards: busy });
    }
    let blocked = status.blocked();
    let mut again = status.failed();
    again.extend(&blocked);
    again.sort_unstable();
    if again.is_empty() {
        return Ok(again);
    }
    let mut stale: Vec<String> = Vec::new();
    if status.merge.is_some() {
        stale.push(submission.merge.clone());
    }
    for shard in &blocked {
        if let Some((array, _)) = submission
            .arrays
            .iter()
            .rev()
            .find(|(_, ran)| ran.contains(shard))
        {
            stale.push(format!("{array}_{shard}"));
        }
    }
    if !stale.is_empty() {
        slurm("scancel", &stale)?;
    }
    submission.job.write_scripts()?;
    if !blocked.is_empty() {
        submission.trainings = submit_trainings(&submission.job)?;
    }
    let (array, merge) = submit_array_and_merge(&submission.job, &again, &submission.trainings)?;
    submission.arrays.push((array, again.clone()));
    submission.merge = merge;
    submission.save()?;
    Ok(again)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            name: "sweep".into(),
            qexp: "/opt/qexp/bin/qexp".into(),
            project: "/home/a/it's here".into(),
            experiment: "/home/a/it's here/experiments/sweep.qexp".into(),
            reports: "/home/a/it's here/reports".into(),
            shards_dir: "/home/a/it's here/reports/sweep.shards".into(),
            shards: 3,
            allow_outside_project: false,
            resources: Resources {
                partition: Some("gpu".into()),
                time: Some("1:00:00".into()),
                gpus: Some(1),
                cpus_per_task: Some(8),
                ..Default::default()
            },
            trained_saes: vec!["q_sae".into()],
        }
    }

    #[test]
    fn an_sae_the_shards_read_is_harvested_in_shards_and_trained_once() {
        let job = job();
        let harvest = job.harvest_script("q_sae");
        assert!(
            harvest.contains("sae harvest '/home/a/it'\\''s here/experiments/sweep.qexp' q_sae --shard \"$SLURM_ARRAY_TASK_ID/3\""),
            "{harvest}"
        );
        let train = job.train_script("q_sae");
        assert!(train.contains(" q_sae --harvested --reports "), "{train}");
        assert!(
            train.contains("#SBATCH --job-name='qexp-train-q_sae-sweep'"),
            "{train}"
        );
    }

    #[test]
    fn the_shard_script_runs_the_array_task_s_shard_with_the_job_s_resources() {
        let script = job().shard_script();
        assert!(script.starts_with("#!/bin/bash\n"), "{script}");
        for line in [
            "#SBATCH --partition='gpu'",
            "#SBATCH --time='1:00:00'",
            "#SBATCH --gpus='1'",
            "#SBATCH --cpus-per-task='8'",
            "#SBATCH --chdir='/home/a/it'\\''s here'",
            "#SBATCH --output='/home/a/it'\\''s here/reports/sweep.shards/logs/shard-%a-job-%A.out'",
            "exec '/opt/qexp/bin/qexp' run '/home/a/it'\\''s here/experiments/sweep.qexp' --shard \"$SLURM_ARRAY_TASK_ID/3\" --reports '/home/a/it'\\''s here/reports' --shards-dir '/home/a/it'\\''s here/reports/sweep.shards' --threads 8 --device cuda",
        ] {
            assert!(script.lines().any(|l| l == line), "{line}\n{script}");
        }
        assert!(!script.contains("--mem"), "{script}");
    }

    #[test]
    fn the_merge_script_merges_all_shards() {
        let script = job().merge_script();
        assert!(
            script.contains("merge '/home/a/it'\\''s here/experiments/sweep.qexp' --shards 3 "),
            "{script}"
        );
        assert!(script.contains("merge-job-%j.out"), "{script}");
    }
}
