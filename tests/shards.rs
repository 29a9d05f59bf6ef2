//! `qexp run --shard I/N` and `qexp merge` on a tiny model: the merged report equals a
//! single run's for any number of shards (uneven ones included), and a merge refuses
//! shards that are missing or were made from another version of the experiment.

mod common;

use std::path::Path;

use common::qexp;

fn setup() -> tempfile::TempDir {
    let dir = common::project_with_tiny_model();
    std::fs::write(dir.path().join("exp.qexp"), common::sharded_experiment()).unwrap();
    dir
}

/// `qexp run EXPERIMENT --reports REPORTS`, which must succeed.
fn run_whole(dir: &Path, experiment: &str, reports: &str) {
    qexp(dir)
        .args(["run", experiment, "--reports", reports])
        .assert()
        .success();
}

/// `qexp run EXPERIMENT --shard I/N --reports REPORTS`, which must succeed; its output.
fn shard(dir: &Path, experiment: &str, i: usize, n: usize, reports: &str) -> String {
    let output = qexp(dir)
        .args(["run", experiment, "--reports", reports])
        .args(["--shard", &format!("{i}/{n}")])
        .output()
        .unwrap();
    assert!(output.status.success(), "shard {i}/{n}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Every shard of `n`, one after another; their outputs.
fn shards(dir: &Path, experiment: &str, n: usize, reports: &str) -> Vec<String> {
    (1..=n)
        .map(|i| shard(dir, experiment, i, n, reports))
        .collect()
}

/// `qexp merge EXPERIMENT --reports REPORTS`.
fn merge(dir: &Path, experiment: &str, reports: &str) -> std::process::Output {
    qexp(dir)
        .args(["merge", experiment, "--reports", reports])
        .output()
        .unwrap()
}

#[test]
fn a_merged_report_equals_a_single_run_for_one_two_and_three_shards() {
    let dir = setup();
    let dir = dir.path();
    run_whole(dir, "exp.qexp", "whole");
    let whole = dir.join("whole/sharded");
    let rows = std::fs::read_to_string(whole.join("results/tokens.csv"))
        .unwrap()
        .lines()
        .count();
    assert!(rows > 50, "{rows} rows");
    for n in 1..=3 {
        let reports = format!("sharded_{n}");
        shards(dir, "exp.qexp", n, &reports);
        // Shards write only their parts: no report until the merge.
        assert!(!dir.join(&reports).join("sharded").exists());
        let merged = merge(dir, "exp.qexp", &reports);
        assert!(merged.status.success(), "{merged:?}");
        let stdout = String::from_utf8(merged.stdout).unwrap();
        assert!(
            stdout.contains("claim holds: every token has a loss"),
            "{stdout}"
        );
        let report = dir.join(&reports).join("sharded");
        qexp(dir)
            .args(["diff", "--exit-code"])
            .args([whole.as_os_str(), report.as_os_str()])
            .assert()
            .success();
        // Rows in the single run's order (prompt, then position), not shard by shard.
        assert_eq!(
            std::fs::read_to_string(report.join("results/tokens.csv")).unwrap(),
            std::fs::read_to_string(whole.join("results/tokens.csv")).unwrap(),
            "{n} shards"
        );
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(report.join("run.json")).unwrap())
                .unwrap();
        assert_eq!(record["saes"][0]["name"], "s", "{record}");
    }
    // The shards' folder is kept out of git.
    assert_eq!(
        std::fs::read_to_string(dir.join("sharded_3/sharded.shards/.gitignore")).unwrap(),
        "*\n"
    );
}

#[test]
fn plan_shows_which_steps_split_and_which_wait_for_the_merge() {
    let dir = setup();
    let output = qexp(dir.path())
        .args(["plan", "exp.qexp"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("split over prompts: tokens (over `d`)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(a split step reads them): comp, BEST"),
        "{stdout}"
    );
    assert!(
        stdout.contains("in the merge: worst, mean_loss, expect \"every token has a loss\""),
        "{stdout}"
    );
}

#[test]
fn a_merge_refuses_missing_and_stale_shards() {
    let dir = setup();
    let dir = dir.path();
    let output = merge(dir, "exp.qexp", "reports");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("run `qexp run EXPERIMENT --shard I/N`"),
        "{stderr}"
    );

    shard(dir, "exp.qexp", 1, 3, "reports");
    shard(dir, "exp.qexp", 3, 3, "reports");
    let output = merge(dir, "exp.qexp", "reports");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("shard 2 of 3 missing"), "{stderr}");
    assert!(
        !dir.join("reports/sharded").exists(),
        "no report from a partial merge"
    );

    // The experiment changes after shard 1 ran: its part no longer belongs.
    shard(dir, "exp.qexp", 2, 3, "reports");
    let path = dir.join("exp.qexp");
    let edited = std::fs::read_to_string(&path)
        .unwrap()
        .replace("top(3)", "top(4)");
    std::fs::write(&path, edited).unwrap();
    shard(dir, "exp.qexp", 2, 3, "reports");
    let output = merge(dir, "exp.qexp", "reports");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("shard 1/3 was made from another version of the experiment"),
        "{stderr}"
    );
    // Rerunning the stale shards (as a resubmitted job would) completes the run.
    shard(dir, "exp.qexp", 1, 3, "reports");
    shard(dir, "exp.qexp", 3, 3, "reports");
    let output = merge(dir, "exp.qexp", "reports");
    assert!(output.status.success(), "{output:?}");

    // Shards that chose another head (as another machine's kernels might, between
    // close scores) do not merge into this one's report.
    for i in 1..=3 {
        let path = dir.join(format!("reports/sharded.shards/shard-{i:04}-of-0003.json"));
        let mut partial: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            partial["values"]["BEST"].is_string(),
            "{}",
            partial["values"]
        );
        partial["values"]["BEST"] = "L0H0".into();
        std::fs::write(&path, partial.to_string()).unwrap();
    }
    let output = merge(dir, "exp.qexp", "reports");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("the shards computed BEST = L0H0, this merge L"),
        "{stderr}"
    );
}

#[test]
fn a_shard_refuses_to_train_an_sae_that_every_shard_would_train() {
    let dir = common::project_with_tiny_model();
    std::fs::write(
        dir.path().join("exp.qexp"),
        "experiment sharded_training\nmodel \"models/tiny\"\ndataset d = prompts([\"the cat sat on the mat\", \"a dog ran\"])\nsae s = train(hook = blocks.1.attn.hook_q[head = 2], dataset = d, d_sae = 16, tokens = 200, batch_size = 8, save = \"saes/s\")\ntable tokens = per_token(d, sae = s)\n",
    )
    .unwrap();
    let output = qexp(dir.path())
        .args(["run", "exp.qexp", "--shard", "1/2"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("`s` would be trained in every shard: pin it once first with `qexp sae train EXPERIMENT s`"),
        "{stderr}"
    );
    // Pinned once, the shards read it.
    qexp(dir.path())
        .args(["sae", "train", "exp.qexp", "s"])
        .assert()
        .success();
    shards(dir.path(), "exp.qexp", 2, "reports");
    let merged = merge(dir.path(), "exp.qexp", "reports");
    assert!(merged.status.success(), "{merged:?}");
}

/// Eight passes of a head-ablation loop (zero and mean ablation per head).
const SWEEP: &str = r#"experiment sweep
model "models/tiny" (batch_size = 3)
dataset d = prompts(["the cat sat on the mat", "a dog ran", "the the the the the the the the", "one", "a b c d e f"])
for layer in range(0, 2) {
    for head in range(model.n_heads) {
        variant zeroed {
            zero(blocks.layer.attn.hook_z[head = head])
        }
        variant averaged {
            mean(blocks.layer.attn.hook_z[head = head], dataset = d)
        }
        table loss = per_token(d, variants = [zeroed, averaged])
            | aggregate(clean = mean(loss), zero = mean(zeroed_loss), avg = mean(averaged_loss))
    }
}
table sweep = collect(loss) | derive(change = zero - clean)
"#;

#[test]
fn a_sweep_s_passes_are_dealt_out_whole_and_merge_into_the_single_run_s_report() {
    let dir = common::project_with_tiny_model();
    let dir = dir.path();
    std::fs::write(dir.join("sweep.qexp"), SWEEP).unwrap();
    let plan = qexp(dir).args(["plan", "sweep.qexp"]).output().unwrap();
    let plan = String::from_utf8(plan.stdout).unwrap();
    assert!(
        plan.contains(
            "8 loop passes, each whole in one shard, dealt out in turn: loss_0_0 ... loss_1_3"
        ),
        "{plan}"
    );
    assert!(plan.contains("in the merge: sweep"), "{plan}");
    run_whole(dir, "sweep.qexp", "whole");
    // Five shards for eight passes: three shards make two passes, two make one.
    for n in [2, 5] {
        let reports = format!("sharded_{n}");
        for (stdout, i) in shards(dir, "sweep.qexp", n, &reports).iter().zip(1..) {
            let passes = 8 / n + usize::from(i <= 8 % n);
            let tables = format!(" {passes} table");
            assert!(stdout.contains(&tables), "shard {i}/{n}: {stdout}");
        }
        let merged = merge(dir, "sweep.qexp", &reports);
        assert!(merged.status.success(), "{merged:?}");
        let merged = dir.join(&reports).join("sweep/results/sweep.csv");
        assert_eq!(
            std::fs::read_to_string(merged).unwrap(),
            std::fs::read_to_string(dir.join("whole/sweep/results/sweep.csv")).unwrap(),
            "{n} shards"
        );
    }
}

#[test]
fn pooled_statistics_merge_into_the_single_run_s_numbers() {
    let dir = common::project_with_tiny_model();
    let dir = dir.path();
    let sae = common::fixture("saes/standard");
    std::fs::write(
        dir.join("stats.qexp"),
        format!(
            r#"experiment stats
model "models/tiny" (batch_size = 2)
dataset d = prompts(["the cat sat on the mat", "a dog ran", "the the the the the the the the", "one", "a b c d e f a b c d e f", "cat dog", "the mat sat on the cat"])
sae s = load("{}")
table features = feature_stats(s, d)
table heads = pattern_scores(d)
table acts = activations(d, blocks.1.hook_resid_post, unembed = true)
dashboards pages = feature_dashboards(s, [0, 1, 5], d, tokens = 60)
"#,
            sae.display()
        ),
    )
    .unwrap();
    let plan = qexp(dir).args(["plan", "stats.qexp"]).output().unwrap();
    let plan = String::from_utf8(plan.stdout).unwrap();
    assert!(
        plan.contains(
            "split over prompts: features (over `d`), heads (over `d`), acts (over `d`), pages (over `d`)"
        ),
        "{plan}"
    );
    run_whole(dir, "stats.qexp", "whole");
    for n in [2, 3] {
        let reports = format!("sharded_{n}");
        shards(dir, "stats.qexp", n, &reports);
        let merged = merge(dir, "stats.qexp", &reports);
        assert!(merged.status.success(), "{merged:?}");
        let report = dir.join(&reports).join("stats");
        qexp(dir)
            .args(["diff", "--exit-code"])
            .args([dir.join("whole/stats").as_os_str(), report.as_os_str()])
            .assert()
            .success();
        // Quantiles and peaks pool exactly: the same activations, sorted; per-token
        // rows stack in prompt order.
        for table in ["features", "acts"] {
            let csv = format!("results/{table}.csv");
            assert_eq!(
                std::fs::read_to_string(report.join(&csv)).unwrap(),
                std::fs::read_to_string(dir.join("whole/stats").join(&csv)).unwrap(),
                "{table}, {n} shards"
            );
        }
        // Dashboards pool their examples, samples and sums: the same pages.
        let pages = std::fs::read_dir(dir.join("whole/stats/dashboards/pages")).unwrap();
        let mut compared = 0;
        for page in pages {
            let page = page.unwrap().file_name();
            let merged = report.join("dashboards/pages").join(&page);
            assert_eq!(
                std::fs::read_to_string(&merged).unwrap(),
                std::fs::read_to_string(dir.join("whole/stats/dashboards/pages").join(&page))
                    .unwrap(),
                "{page:?}, {n} shards"
            );
            compared += 1;
        }
        assert!(compared >= 3, "{compared} pages");
    }
}

/// An SAE trained on the experiment's own dataset, pinned at saes/s, read by a
/// per-token table.
const TRAINED: &str = r#"experiment trained
model "models/tiny" (batch_size = 2)
dataset d = prompts(["the cat sat on the mat", "a dog ran", "the the the the the the the the", "one", "a b c d e f a b c d e f", "cat dog", "the mat sat on the cat"])
sae s = train(hook = blocks.1.attn.hook_q[head = 2], dataset = d, d_sae = 16, tokens = 60, batch_size = 8, save = "saes/s")
table tokens = per_token(d, sae = s)
"#;

#[test]
fn an_sae_trained_from_activations_harvested_in_shards_is_the_same_sae() {
    let dir = common::project_with_tiny_model();
    let dir = dir.path();
    std::fs::write(dir.join("trained.qexp"), TRAINED).unwrap();
    qexp(dir)
        .args([
            "sae",
            "train",
            "trained.qexp",
            "s",
            "--out",
            "saes/in_memory",
        ])
        .assert()
        .success();
    // The dataset has more tokens than the SAE reads: only the batches that reach its
    // 60 tokens are shared out, so every shard harvests some.
    let mut harvested = 0;
    for i in 1..=3 {
        let shard = format!("{i}/3");
        let output = qexp(dir)
            .args(["sae", "harvest", "trained.qexp", "s", "--shard", &shard])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let rows: usize = stdout
            .split(": ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(rows > 0, "shard {i}: {stdout}");
        harvested += rows;
    }
    assert_eq!(harvested, 60);
    // The shards' rows join into one file, read from disk as training goes.
    qexp(dir)
        .args(["sae", "train", "trained.qexp", "s", "--harvested"])
        .assert()
        .success();
    let store = dir.join("reports/trained.shards/activations/s");
    assert!(store.join("activations.f32").is_file());
    assert_eq!(
        std::fs::metadata(store.join("activations.f32"))
            .unwrap()
            .len(),
        60 * 16 * 4,
        "60 tokens of a 16-wide head"
    );
    assert_eq!(
        std::fs::read(dir.join("saes/s/sae_weights.safetensors")).unwrap(),
        std::fs::read(dir.join("saes/in_memory/sae_weights.safetensors")).unwrap(),
        "the same activations in the same order train the same SAE"
    );
    // Pinned now: a harvest finds nothing to do, and shards read the pin.
    let output = qexp(dir)
        .args(["sae", "harvest", "trained.qexp", "s", "--shard", "1/3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("s is pinned with the same inputs"),
        "{stdout}"
    );
    shards(dir, "trained.qexp", 2, "reports");
    let merged = merge(dir, "trained.qexp", "reports");
    assert!(merged.status.success(), "{merged:?}");
}
