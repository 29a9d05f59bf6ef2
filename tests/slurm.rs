//! `qexp slurm` on a real one-node Slurm cluster (Debian's slurmctld, slurmd and munge,
//! started by scripts/slurm_cluster.sh): three shards as a job array, one of them
//! killed before it runs, resubmitted alone; an SAE the shards read harvested in an
//! array and trained by a job before them. Each merged report equals a single run's.
//!
//! Needs root to start the daemons. Where Slurm cannot be had, the test says so and
//! passes, unless QEXP_REQUIRE_SLURM=1 (set by scripts/test.sh where it can install it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::qexp;

/// A running cluster, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm_cluster.sh")
    }

    /// Starts one, or says why it cannot.
    fn start() -> Result<Self, String> {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !is_root {
            return Err("starting Slurm's daemons needs root".into());
        }
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("bash")
            .arg(Self::script())
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        match output.status.code() {
            Some(0) => Ok(Cluster { dir }),
            Some(77) => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
            _ => panic!(
                "the Slurm cluster did not start: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// A Slurm command against this cluster.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new(program)
            .args(args)
            .env("SLURM_CONF", self.conf())
            .output()
            .unwrap();
        assert!(output.status.success(), "{program} {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// `qexp slurm ...` in `project` against `cluster`; its standard output.
fn slurm(cluster: &Cluster, project: &Path, args: &[&str]) -> String {
    let output = qexp(project)
        .env("SLURM_CONF", cluster.conf())
        .arg("slurm")
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "qexp slurm {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Polls `qexp slurm status EXPERIMENT` until `done` says so, for at most three minutes.
fn wait_for(
    cluster: &Cluster,
    project: &Path,
    experiment: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        let status = slurm(cluster, project, &["status", experiment]);
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "Slurm jobs did not get there in 3 minutes:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn shards_run_as_a_slurm_array_a_killed_shard_is_resubmitted_alone_and_saes_train_first() {
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(why) if std::env::var("QEXP_REQUIRE_SLURM").is_ok_and(|v| v == "1") => {
            panic!("QEXP_REQUIRE_SLURM=1 but no Slurm cluster could be started: {why}")
        }
        Err(why) => {
            eprintln!("skipped: no Slurm cluster here ({why})");
            return;
        }
    };
    let dir = common::project_with_tiny_model();
    let project = dir.path();
    std::fs::write(project.join("exp.qexp"), common::sharded_experiment()).unwrap();
    qexp(project)
        .args(["run", "exp.qexp", "--reports", "whole"])
        .assert()
        .success();

    // Held (the partition down) so shard 2 can be killed before it runs.
    cluster.run("scontrol", &["update", "PartitionName=debug", "State=DOWN"]);
    let submitted = slurm(
        &cluster,
        project,
        &["exp.qexp", "--shards", "3", "--cpus-per-task", "1"],
    );
    let array = submitted
        .split("job array ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no job array id in {submitted:?}"))
        .to_owned();
    let script =
        std::fs::read_to_string(project.join("reports/sharded.shards/shard.sbatch")).unwrap();
    assert!(
        script.contains("--shard \"$SLURM_ARRAY_TASK_ID/3\""),
        "{script}"
    );
    assert!(script.contains("--threads 1"), "{script}");
    cluster.run("scancel", &[&format!("{array}_2")]);
    cluster.run("scontrol", &["update", "PartitionName=debug", "State=UP"]);

    // The merge waits for an array that can no longer succeed.
    wait_for(&cluster, project, "exp.qexp", |s| {
        s.contains("shard 1: done")
            && s.contains("shard 3: done")
            && s.contains("shard 2: failed")
            && s.contains("merge: PENDING (DependencyNeverSatisfied)")
    });
    assert!(
        !project.join("reports/sharded").exists(),
        "no merge without every shard"
    );

    let resubmitted = slurm(&cluster, project, &["resubmit", "exp.qexp"]);
    assert!(
        resubmitted.contains("resubmitted shard 2 of `sharded`"),
        "{resubmitted}"
    );
    wait_for(&cluster, project, "exp.qexp", |s| {
        s.contains("merge: finished")
    });
    qexp(project)
        .args(["diff", "--exit-code", "whole/sharded", "reports/sharded"])
        .assert()
        .success();
    // Each shard ran once (shard 2 only when resubmitted), the merge once.
    let logs: Vec<String> = std::fs::read_dir(project.join("reports/sharded.shards/logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for shard in 1..=3 {
        let prefix = format!("shard-{shard}-");
        assert_eq!(
            logs.iter().filter(|l| l.starts_with(&prefix)).count(),
            1,
            "{logs:?}"
        );
    }
    assert_eq!(
        logs.iter().filter(|l| l.starts_with("merge-")).count(),
        1,
        "{logs:?}"
    );

    // An SAE the experiment trains and the shards read: harvested by an array, trained
    // and pinned by one job, then the shards, then the merge.
    std::fs::write(
        project.join("trained.qexp"),
        "experiment trained\nmodel \"models/tiny\" (batch_size = 2)\ndataset d = prompts([\"the cat sat on the mat\", \"a dog ran\", \"the the the the the the the the\", \"one\", \"a b c d e f\"])\nsae s = train(hook = blocks.1.attn.hook_q[head = 2], dataset = d, d_sae = 16, tokens = 40, batch_size = 8, save = \"saes/s\")\ntable tokens = per_token(d, sae = s)\n",
    )
    .unwrap();
    qexp(project)
        .args(["run", "trained.qexp", "--reports", "whole"])
        .assert()
        .success();
    std::fs::remove_dir_all(project.join("saes/s")).unwrap();
    let submitted = slurm(&cluster, project, &["trained.qexp", "--shards", "2"]);
    assert!(
        submitted.contains("submitted the harvest of `s`'s activations as job array"),
        "{submitted}"
    );
    wait_for(&cluster, project, "trained.qexp", |s| {
        s.contains("merge: finished")
    });
    assert!(project.join("saes/s/sae_weights.safetensors").is_file());
    qexp(project)
        .args(["diff", "--exit-code", "whole/trained", "reports/trained"])
        .assert()
        .success();
}
