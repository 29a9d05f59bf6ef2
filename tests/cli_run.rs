//! `qexp run` end to end on a tiny model: report files written, reruns byte-identical,
//! prompt text escaped in the HTML, a broken experiment stops before anything is written.
//! The temp folders have no .venv: qexp finds ONNX Runtime beside its own binary.

mod common;

use std::path::Path;

use common::qexp;

fn setup() -> tempfile::TempDir {
    let dir = common::project_with_tiny_model();
    std::fs::write(
        dir.path().join("exp.qexp"),
        "experiment tiny_run\nmodel \"models/tiny\"\nparagraph \"<b>not bold</b>\"\ntable sanity = sanity_check(\"the the the\")\ntable continued = generate(\"<script>alert(1)</script>\", max_new_tokens = 4)\ntable comp = composition_scores(mode = Q)\nplot heat = heatmap(comp, rows = [layer1, head1], columns = [layer2, head2], value = score)\n",
    )
    .unwrap();
    dir
}

/// The `run.json` of the report of `experiment` in the project `dir`.
fn run_record(dir: &Path, experiment: &str) -> serde_json::Value {
    let path = dir.join("reports").join(experiment).join("run.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn run_writes_a_report_that_reruns_byte_identically() {
    let dir = setup();
    let report = dir.path().join("reports/tiny_run");
    qexp(dir.path())
        .args(["run", "exp.qexp"])
        .assert()
        .success();
    let files = [
        "results/sanity.csv",
        "results/continued.csv",
        "plots/heat.svg",
        "index.html",
    ];
    let first: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(report.join(f)).unwrap())
        .collect();
    qexp(dir.path())
        .args(["run", "exp.qexp"])
        .assert()
        .success();
    for (file, before) in files.iter().zip(&first) {
        assert_eq!(
            &std::fs::read(report.join(file)).unwrap(),
            before,
            "{file} changed between identical runs"
        );
    }
    let sanity = std::fs::read_to_string(report.join("results/sanity.csv")).unwrap();
    let loss: f64 = sanity
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{sanity}");

    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(
        !html.contains("<script>alert"),
        "prompt text must be escaped"
    );
    // Table cells travel as JSON inside a script element, `<` escaped so no prompt can
    // end it; the page writes them back with textContent.
    assert!(
        html.contains("\\u003cscript>alert(1)\\u003c/script>"),
        "{html}"
    );
    assert!(
        !html.contains("innerHTML"),
        "cells are never parsed as markup"
    );
    assert!(!html.contains("<b>not bold</b>"));
}

#[test]
fn a_broken_experiment_exits_2_and_writes_nothing() {
    let dir = setup();
    std::fs::write(
        dir.path().join("bad.qexp"),
        "experiment broken\nmodel \"models/tiny\" (device = tpu)\n",
    )
    .unwrap();
    let output = qexp(dir.path()).args(["run", "bad.qexp"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("bad.qexp:2:31: `tpu` is not one of cpu, cuda, coreml"),
        "{stderr}"
    );
    assert!(!dir.path().join("reports").exists());
}

#[test]
fn a_report_folder_that_is_not_a_report_is_left_alone() {
    let dir = setup();
    std::fs::create_dir_all(dir.path().join("reports/tiny_run")).unwrap();
    std::fs::write(dir.path().join("reports/tiny_run/thesis.tex"), "mine").unwrap();
    // Found by the check, before anything runs, and pinned to the experiment's name.
    let output = qexp(dir.path()).args(["run", "exp.qexp"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("exp.qexp:1:12: cannot write this experiment's report")
            && stderr.contains("it is not a report folder qexp made"),
        "{stderr}"
    );
    assert!(dir.path().join("reports/tiny_run/thesis.tex").exists());
}

#[test]
fn feature_dashboards_write_one_escaped_page_per_feature_and_an_index() {
    let dir = setup();
    let sae = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saes/standard");
    std::fs::write(
        dir.path().join("pages.qexp"),
        format!(
            "experiment pages\nmodel \"models/tiny\"\ndataset d = prompts([\"the cat <b>sat</b>\", \"a dog ran\"])\nsae s = load(\"{}\")\ndashboards dash = feature_dashboards(s, [0, 1, 5], d)\n",
            sae.display()
        ),
    )
    .unwrap();
    qexp(dir.path())
        .args(["run", "pages.qexp"])
        .assert()
        .success();
    let pages = dir.path().join("reports/pages/dashboards/dash");
    let index = std::fs::read_to_string(pages.join("index.html")).unwrap();
    for f in [0, 1, 5] {
        assert!(
            index.contains(&format!("href=\"feature_{f}.html\"")),
            "{index}"
        );
        let page = std::fs::read_to_string(pages.join(format!("feature_{f}.html"))).unwrap();
        assert!(!page.contains("<b>"), "prompt text is escaped");
        // Links go only to pages this step wrote (correlated features may be others).
        for link in page.split("href=\"feature_").skip(1) {
            let target = &link[..link.find('"').unwrap()];
            assert!(
                pages.join(format!("feature_{target}")).exists(),
                "dead link to feature_{target}"
            );
        }
    }
    let report = std::fs::read_to_string(dir.path().join("reports/pages/index.html")).unwrap();
    assert!(report.contains("dashboards/dash/index.html"));
}

#[test]
fn fmt_rewrites_to_the_canonical_layout_and_check_mode_reports_it() {
    let dir = setup();
    let path = dir.path().join("messy.qexp");
    std::fs::write(&path, "experiment   messy // name\nmodel \"models/tiny\"(batch_size=2)\n\n\n\ntable s=sanity_check( )\n").unwrap();
    let output = qexp(dir.path())
        .args(["fmt", "--check", "messy.qexp"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    qexp(dir.path())
        .args(["fmt", "messy.qexp"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "experiment messy // name\nmodel \"models/tiny\" (batch_size = 2)\n\ntable s = sanity_check()\n"
    );
    qexp(dir.path())
        .args(["fmt", "--check", "messy.qexp"])
        .assert()
        .success();
}

#[test]
fn sae_train_trains_one_declared_sae_and_saves_it_in_saelens_layout() {
    let dir = setup();
    let loaded = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saes/standard");
    std::fs::write(
        dir.path().join("sae.qexp"),
        format!(
            "experiment sae_only\nmodel \"models/tiny\"\ndataset d = prompts([\"the cat sat on the mat\", \"a dog ran\"])\nsae s = train(hook = blocks.1.attn.hook_q[head = 2], dataset = d, d_sae = 16, tokens = 500, batch_size = 8)\nsae other = load(\"{}\")\n",
            loaded.display()
        ),
    )
    .unwrap();
    let output = qexp(dir.path())
        .args(["sae", "train", "sae.qexp", "s", "--out", "saes/q"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(
        String::from_utf8(output.stdout)
            .unwrap()
            .contains("saved s to saes/q")
    );
    let cfg = std::fs::read_to_string(dir.path().join("saes/q/cfg.json")).unwrap();
    assert!(
        cfg.contains("\"hook_name\": \"blocks.1.attn.hook_q\""),
        "{cfg}"
    );
    assert!(dir.path().join("saes/q/sae_weights.safetensors").exists());
    assert!(
        !dir.path().join("reports").exists(),
        "training an SAE writes no report"
    );
    let output = qexp(dir.path())
        .args(["sae", "train", "sae.qexp", "other"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("made with `load`, not trained"), "{stderr}");
}

#[test]
fn reports_outside_the_project_are_refused_and_run_json_records_saes_and_seeds() {
    let dir = setup();
    let output = qexp(dir.path())
        .args(["run", "exp.qexp", "--reports", "../elsewhere"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("outside the project"), "{stderr}");
    assert!(!dir.path().parent().unwrap().join("elsewhere").exists());

    let sae = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saes/standard");
    std::fs::write(
        dir.path().join("seeded.qexp"),
        format!(
            "experiment seeded\nmodel \"models/tiny\"\ndataset d = prompts([\"the cat sat\"])\nsae s = load(\"{}\")\ntable a = feature_activations(s, \"the cat\")\ntable g = generate(\"the\", max_new_tokens = 2, temperature = 1.0, seed = 7)\n",
            sae.display()
        ),
    )
    .unwrap();
    qexp(dir.path())
        .args(["run", "seeded.qexp"])
        .assert()
        .success();
    let run = run_record(dir.path(), "seeded");
    assert_eq!(run["seeds"]["g.seed"], 7);
    assert_eq!(run["saes"][0]["name"], "s");
    assert_eq!(run["saes"][0]["weights_sha256"].as_str().unwrap().len(), 64);
}

/// A trained SAE with `save` is pinned: reruns read it while the model, dataset and
/// settings are those it was trained from, train it again when one of them changes or
/// on `--retrain`, and say which they did.
#[test]
fn a_pinned_sae_is_reused_until_its_inputs_change() {
    let dir = setup();
    let experiment = |l1: &str| {
        format!(
            "experiment pinned\nmodel \"models/tiny\"\ndataset d = prompts([\"the cat sat on the mat\", \"a dog ran\"])\nsae s = train(hook = blocks.1.attn.hook_q[head = 2], dataset = d, d_sae = 16, tokens = 500, batch_size = 8, l1_coefficient = {l1}, save = \"pins/s\")\ntable stats = feature_stats(s, d)\n"
        )
    };
    let run = |args: &[&str]| {
        let output = qexp(dir.path())
            .args(["run", "pinned.qexp"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let sae = run_record(dir.path(), "pinned")["saes"][0].clone();
        (sae, String::from_utf8(output.stderr).unwrap())
    };
    let weights = || std::fs::read(dir.path().join("pins/s/sae_weights.safetensors")).unwrap();
    let training = || {
        std::fs::read_to_string(dir.path().join("reports/pinned/results/s_training.csv")).unwrap()
    };

    std::fs::write(dir.path().join("pinned.qexp"), experiment("0.01")).unwrap();
    let (first, _) = run(&[]);
    assert_eq!(first["from_pin"], false);
    assert!(dir.path().join("pins/s/training.json").exists());
    let (pinned_weights, first_training) = (weights(), training());

    // The same inputs: read from the pin, the same training table shown.
    let (again, stderr) = run(&[]);
    assert_eq!(again["from_pin"], true, "{again}");
    assert_eq!(again["weights_sha256"], first["weights_sha256"]);
    assert!(!stderr.contains("training it again"), "{stderr}");
    assert_eq!(training(), first_training);

    // On request: trained again (same seed, so the same weights on this machine).
    let (retrained, stderr) = run(&["--retrain"]);
    assert_eq!(retrained["from_pin"], false);
    assert!(stderr.contains("--retrain"), "{stderr}");

    // One setting changed: trained again, the change named, the pin replaced.
    std::fs::write(dir.path().join("pinned.qexp"), experiment("0.5")).unwrap();
    let (changed, stderr) = run(&[]);
    assert_eq!(changed["from_pin"], false);
    assert!(
        stderr.contains("trained from other inputs (l1_coefficient: 0.01 -> 0.5)"),
        "{stderr}"
    );
    assert_ne!(weights(), pinned_weights);
    let (after, _) = run(&[]);
    assert_eq!(after["from_pin"], true);
}

/// `qexp run` writes a lock beside the experiment; a rerun on another dataset file says
/// so before it starts.
#[test]
fn the_lock_names_the_inputs_and_a_changed_dataset_is_announced() {
    let dir = setup();
    std::fs::write(dir.path().join("lines.txt"), "the cat sat\n%\na dog ran\n").unwrap();
    std::fs::write(
        dir.path().join("locked.qexp"),
        "experiment locked\nmodel \"models/tiny\"\ndataset lines = text(\"lines.txt\", separator = \"\\n%\\n\")\ntable losses = per_token(lines)\n",
    )
    .unwrap();
    let run = || {
        let output = qexp(dir.path())
            .args(["run", "locked.qexp"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stderr).unwrap()
    };
    assert!(!run().contains("note:"));
    let lock = std::fs::read_to_string(dir.path().join("locked.lock")).unwrap();
    assert!(lock.starts_with("# qexp lock:"), "{lock}");
    assert!(lock.contains("path: lines.txt"), "{lock}");
    assert!(lock.contains("weights_sha256:"), "{lock}");
    assert!(!run().contains("note:"), "same inputs, nothing to say");

    std::fs::write(
        dir.path().join("lines.txt"),
        "the cat sat\n%\na dog walked\n",
    )
    .unwrap();
    let stderr = run();
    assert!(
        stderr.contains("note: dataset `lines` (lines.txt) differs from the lock's"),
        "{stderr}"
    );
    assert!(!run().contains("note:"), "the lock now holds the new file");
}

#[test]
fn claims_are_checked_summarised_at_the_top_and_a_failed_one_exits_3() {
    let dir = common::project_with_tiny_model();
    std::fs::write(
        dir.path().join("claims.qexp"),
        r#"experiment claims
model "models/tiny"
table sanity = sanity_check("the the the")
table comp = composition_scores(mode = Q)
plot heat = heatmap(comp, rows = [layer1, head1], columns = [layer2, head2], value = score)
table strongest = comp | sort(score, desc) | top(3)
let WRITERS = values(strongest, head1)
expect "the loss is positive" = sanity | all(loss > 0, show = [heat])
expect "the strongest pairs' writers compose somewhere" = comp
    | filter(contains(WRITERS, head1))
    | share(score > 0, at_least = 0.5)
expect "some pair composes above 1000" = comp | any(score > 1000)
"#,
    )
    .unwrap();
    let output = qexp(dir.path())
        .args(["run", "claims.qexp"])
        .assert()
        .code(3)
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("claim holds: the loss is positive (1 of 1 row; all asked)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("claim DOES NOT HOLD: some pair composes above 1000 (0 of 16 rows (0.0%); at least one asked)"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("1 claim of the experiment did not hold"),
        "{stderr}"
    );

    // The report is written all the same: a summary first, each claim where it stands.
    let report = dir.path().join("reports/claims");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    let summary = html.find("Claims: 2 of 3 hold").expect("a summary");
    let first_table = html.find("id=\"table-sanity\"").unwrap();
    assert!(summary < first_table, "the summary opens the report");
    assert!(
        html.contains(r#"<img src="plots/heat.svg""#),
        "the claim shows its plot"
    );
    assert!(html.contains("id=\"claim-3\""));
    let claims = std::fs::read_to_string(report.join("results/claims.csv")).unwrap();
    let lines: Vec<&str> = claims.lines().collect();
    assert_eq!(lines[0], "claim,holds,rows,meeting,detail,checked_as");
    assert!(
        lines[1].starts_with("the loss is positive,true,1,1,"),
        "{claims}"
    );
    assert!(
        lines[2].starts_with("the strongest pairs' writers compose somewhere,true,"),
        "{claims}"
    );
    assert!(
        lines[3].starts_with("some pair composes above 1000,false,16,0,"),
        "{claims}"
    );

    qexp(dir.path())
        .args(["run", "claims.qexp", "--allow-failed-claims"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(report.join("results/claims.csv")).unwrap(),
        claims
    );
}

#[test]
fn a_missing_model_folder_is_an_error_unless_only_the_syntax_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("exp.qexp"),
        "experiment no_model\nmodel \"models/typo\"\ntable t = attention(\"the cat\", L9H9, pos = -1)\n",
    )
    .unwrap();
    for command in ["check", "plan", "run"] {
        let output = qexp(dir.path())
            .args([command, "exp.qexp"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains(
                "exp.qexp:2:7: cannot read the model: models/typo is not a qexp model folder"
            ),
            "{command}: {stderr}"
        );
        assert!(stderr.contains("--syntax-only"), "{stderr}");
    }
    assert!(!dir.path().join("reports").exists());
    qexp(dir.path())
        .args(["check", "--syntax-only", "exp.qexp"])
        .assert()
        .success()
        .stdout("exp.qexp: ok (1 step)\n");
}

#[test]
fn paths_resolve_against_the_project_root_from_any_folder() {
    let dir = common::project_with_tiny_model();
    let root = dir.path();
    std::fs::write(root.join("qexp.toml"), "").unwrap();
    std::fs::create_dir_all(root.join("experiments")).unwrap();
    std::fs::write(
        root.join("experiments/e.qexp"),
        "experiment rooted\nmodel \"models/tiny\"\ndataset d = text(\"data/t.txt\")\ntable s = activations(d, hook = blocks.0.hook_resid_post)\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/t.txt"), "the cat sat on the mat\n").unwrap();

    // From the experiment's own folder: the model and dataset are found at the root,
    // the report goes to the root's reports/ and the lock sits beside the experiment.
    let output = qexp(&root.join("experiments"))
        .args(["run", "e.qexp"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("it holds qexp.toml"), "{stderr}");
    assert!(root.join("reports/rooted/index.html").is_file());
    assert!(root.join("experiments/e.lock").is_file());
    assert!(!root.join("experiments/reports").exists());
    let lock = std::fs::read_to_string(root.join("experiments/e.lock")).unwrap();
    assert!(lock.contains("data/t.txt"), "{lock}");

    // From an unrelated folder, naming the experiment by its absolute path: the same.
    let elsewhere = tempfile::tempdir().unwrap();
    let absolute = root.join("experiments/e.qexp");
    qexp(elsewhere.path())
        .args(["check", absolute.to_str().unwrap()])
        .assert()
        .success();
    qexp(elsewhere.path())
        .args(["run", absolute.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(root.join("experiments/e.lock")).unwrap(),
        lock
    );
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

    // `--reports` typed on the command line means the folder it names from where it
    // was typed.
    qexp(&root.join("experiments"))
        .args(["run", "e.qexp", "--reports", "here"])
        .assert()
        .success();
    assert!(root.join("experiments/here/rooted/index.html").is_file());
}

#[test]
fn a_head_sweep_compiles_one_graph_per_layer_and_kind_however_many_heads() {
    let dir = common::project_with_tiny_model();
    let sweep = |heads: &str| {
        format!(
            "experiment sweep\nmodel \"models/tiny\"\ndataset d = prompts([\"the cat sat on the mat\", \"a dog ran\"])\nfor layer in range(0, 2) {{\n    for head in {heads} {{\n        variant zeroed {{\n            zero(blocks.layer.attn.hook_z[head = head])\n        }}\n        variant averaged {{\n            mean(blocks.layer.attn.hook_z[head = head], dataset = d)\n        }}\n        table loss = per_token(d, variants = [zeroed, averaged])\n            | aggregate(clean = mean(loss), zeroed = mean(zeroed_loss), averaged = mean(averaged_loss))\n    }}\n}}\ntable swept = collect(loss)\n"
        )
    };
    let mut compiled = Vec::new();
    let mut tables = Vec::new();
    for heads in ["range(model.n_heads)", "range(0, 1)"] {
        std::fs::write(dir.path().join("sweep.qexp"), sweep(heads)).unwrap();
        qexp(dir.path())
            .args(["run", "sweep.qexp"])
            .assert()
            .success();
        let run = run_record(dir.path(), "sweep");
        compiled.push(run["sessions_compiled"].as_u64().unwrap());
        tables.push(
            std::fs::read_to_string(dir.path().join("reports/sweep/results/swept.csv")).unwrap(),
        );
    }
    assert_eq!(
        compiled[0], compiled[1],
        "sessions compiled, all heads vs one"
    );
    // The one-head sweep's rows are the all-heads sweep's rows for head 0.
    let rows: Vec<&str> = tables[0].lines().collect();
    assert!(
        rows.len() > 2 * 2 + 1,
        "every head of both layers: {}",
        tables[0]
    );
    for row in tables[1].lines() {
        assert!(rows.contains(&row), "{row} in {}", tables[0]);
    }
}

#[test]
fn plan_estimates_count_the_tokens_a_run_puts_through_the_model() {
    let dir = common::project_with_tiny_model();
    let lines: Vec<String> = (0..12)
        .map(|i| format!("line {i} of the story goes on {}", "and on ".repeat(i)))
        .collect();
    std::fs::write(dir.path().join("lines.txt"), lines.join("\n%\n")).unwrap();
    std::fs::write(
        dir.path().join("sweep.qexp"),
        r#"experiment sweep
model "models/tiny" (batch_size = 4)
dataset lines = text("lines.txt", separator = "\n%\n")
for head in range(2) {
    variant zeroed {
        zero(blocks.0.attn.hook_z[head = head])
    }
    variant averaged {
        mean(blocks.1.attn.hook_z[head = head], dataset = lines)
    }
    table loss = per_token(lines, variants = [zeroed, averaged])
}
variant first_zeroed {
    zero(blocks.1.attn.hook_z[head = 0])
}
table prompt = test_prompt("the cat sat on the", "m", variants = [first_zeroed])
table patched = activation_patching("the cat sat on", "the dog sat on", "m", "r", hook = z, by = head)
"#,
    )
    .unwrap();
    let planned = qexp(dir.path())
        .args(["plan", "sweep.qexp", "--estimate"])
        .assert()
        .success();
    let text = String::from_utf8(planned.get_output().stdout.clone()).unwrap();
    for step in ["loss_0:", "loss_1:", "prompt:", "patched:"] {
        assert!(
            text.contains(&format!("  {step}")),
            "{step} missing:\n{text}"
        );
    }
    let total: usize = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("total: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total:\n{text}"));
    assert!(text.contains("peak memory about"), "{text}");

    qexp(dir.path())
        .args(["run", "sweep.qexp"])
        .assert()
        .success();
    let run = run_record(dir.path(), "sweep");
    assert_eq!(
        run["tokens_run"].as_u64(),
        Some(total as u64),
        "the estimate counts every token the run puts through a graph:\n{text}"
    );
}
