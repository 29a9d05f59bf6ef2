//! What qexp guarantees when an experiment (or its inputs) is careless or hostile, tried
//! through the real binary in a throwaway project: no folder it did not make is ever
//! replaced, nothing is written outside the project without a flag, a kill never leaves a
//! name empty, no input panics, hangs or exhausts memory, and nonsense is a located error.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;

const TINY_LLAMA: &str = "tests/fixtures/tiny_llama/model.gguf";
const HEADER: &str = "experiment probe\nmodel \"models/tiny\"\n";

fn qexp(dir: &Path) -> Command {
    let mut command = Command::cargo_bin("qexp").unwrap();
    command.current_dir(dir).timeout(Duration::from_secs(120));
    command
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A project folder with the tiny model exported into `models/tiny`.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let gguf = fixture(TINY_LLAMA);
    qexp(dir.path())
        .args(["export", gguf.to_str().unwrap(), "-o", "models/tiny"])
        .assert()
        .success();
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Runs `qexp args` and returns its output, checking it never panicked.
fn run(dir: &Path, args: &[&str]) -> Output {
    let output = qexp(dir).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        output.status.code().is_some(),
        "killed by a signal (abort, stack overflow): {stderr}"
    );
    output
}

/// Runs `qexp args`, expects exit code `code` and a stderr containing `expected`.
fn fails_with(dir: &Path, args: &[&str], code: i32, expected: &str) {
    let output = run(dir, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
}

/// `qexp check` of `body` (after the header) fails with exit code 2 and a message
/// containing `expected`, located in the file.
fn check_refuses(dir: &Path, body: &str, expected: &str) {
    write(dir, "probe.qexp", &format!("{HEADER}{body}"));
    let output = run(dir, &["check", "probe.qexp"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{body}: {stderr}");
    assert!(stderr.contains(expected), "{body}: {stderr}");
    assert!(stderr.contains("probe.qexp:"), "located: {stderr}");
}

const TRAIN: &str = "dataset d = prompts([\"the cat sat on the mat\", \"a dog ran\"])\n\
                     sae s = train(hook = blocks.1.attn.hook_q[head = 2], dataset = d, d_sae = 16, tokens = 200, batch_size = 8";

#[test]
fn save_never_replaces_a_folder_qexp_did_not_make() {
    let dir = project();
    std::fs::create_dir(dir.path().join("thesis")).unwrap();
    write(dir.path(), "thesis/chapter1.tex", "years of work");
    let outside = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
    }

    for (save, expected) in [
        ("thesis", "it is not a SAE folder qexp made"),
        ("models/tiny", "it is not a SAE folder qexp made"),
        (".", "it is the project folder or one of its parents"),
        (
            "experiments/..",
            "it is the project folder or one of its parents",
        ),
        ("..", "it is the project folder or one of its parents"),
        ("../elsewhere", "outside the project"),
        ("/tmp/qexp-elsewhere", "outside the project"),
        #[cfg(unix)]
        ("escape/sae", "outside the project"),
        #[cfg(unix)]
        ("loop/sae", "too many levels of symbolic links"),
    ] {
        check_refuses(
            dir.path(),
            &format!("{TRAIN}, save = \"{save}\")\n"),
            expected,
        );
        // `run` refuses it the same way, before any work.
        let output = run(dir.path(), &["run", "probe.qexp"]);
        assert_eq!(output.status.code(), Some(2), "{save}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("thesis/chapter1.tex")).unwrap(),
        "years of work"
    );
    assert!(dir.path().join("models/tiny/manifest.json").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

    // `qexp sae train --out` shares the rule.
    write(dir.path(), "train.qexp", &format!("{HEADER}{TRAIN})\n"));
    let output = run(
        dir.path(),
        &["sae", "train", "train.qexp", "s", "--out", "thesis"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(dir.path().join("thesis/chapter1.tex").exists());

    // A folder qexp saved an SAE to is replaced; the flag allows a path outside.
    for _ in 0..2 {
        let output = run(
            dir.path(),
            &["sae", "train", "train.qexp", "s", "--out", "saes/s"],
        );
        assert!(output.status.success());
    }
    let elsewhere = outside.path().join("sae");
    let output = run(
        dir.path(),
        &[
            "sae",
            "train",
            "train.qexp",
            "s",
            "--out",
            elsewhere.to_str().unwrap(),
            "--allow-outside-project",
        ],
    );
    assert!(output.status.success());
    assert!(elsewhere.join("cfg.json").exists());
}

#[test]
fn export_replaces_only_model_folders_it_made() {
    let dir = project();
    let gguf = fixture(TINY_LLAMA);
    std::fs::create_dir(dir.path().join("mine")).unwrap();
    write(dir.path(), "mine/manifest.json", "{}");
    write(dir.path(), "mine/notes.txt", "keep");
    let output = run(
        dir.path(),
        &["export", gguf.to_str().unwrap(), "-o", "mine"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not a model folder qexp made"),
        "{output:?}"
    );
    assert!(dir.path().join("mine/notes.txt").exists());
    let output = run(
        dir.path(),
        &["export", gguf.to_str().unwrap(), "-o", "models/tiny"],
    );
    assert!(output.status.success(), "re-exporting over its own folder");
}

#[test]
fn a_report_killed_at_any_moment_leaves_the_old_or_the_new_report() {
    let dir = project();
    write(
        dir.path(),
        "exp.qexp",
        "experiment killed\nmodel \"models/tiny\"\ntable comp = composition_scores(mode = Q)\nplot heat = heatmap(comp, rows = [layer1, head1], columns = [layer2, head2], value = score)\n",
    );
    assert!(run(dir.path(), &["run", "exp.qexp"]).status.success());
    let report = dir.path().join("reports/killed");
    let binary = assert_cmd::cargo::cargo_bin("qexp");
    for delay_ms in [5, 20, 40, 60, 80, 120, 160] {
        let mut child = std::process::Command::new(&binary)
            .args(["run", "exp.qexp"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            report.join("index.html").exists() && report.join(".qexp-output").exists(),
            "after a kill at {delay_ms} ms the report is whole"
        );
    }
    // The next run removes what the killed ones left.
    assert!(run(dir.path(), &["run", "exp.qexp"]).status.success());
    let entries: Vec<String> = std::fs::read_dir(dir.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["killed"]);
}

#[test]
fn a_checkpoint_of_other_activations_is_never_resumed() {
    let dir = project();
    let train = |head: usize| {
        format!(
            "{HEADER}dataset d = prompts([\"the cat sat on the mat\", \"a dog ran\"])\nsae s = train(hook = blocks.1.attn.hook_q[head = {head}], dataset = d, d_sae = 16, tokens = 400, batch_size = 8, save = \"saes/s\", checkpoint_every = 10)\n"
        )
    };
    write(dir.path(), "train.qexp", &train(2));
    assert!(
        run(dir.path(), &["sae", "train", "train.qexp", "s"])
            .status
            .success()
    );
    write(dir.path(), "train.qexp", &train(3));
    fails_with(
        dir.path(),
        &["sae", "train", "train.qexp", "s"],
        1,
        "trained on other activations",
    );
    fails_with(
        dir.path(),
        &["sae", "train", "train.qexp", "s"],
        1,
        "head 2",
    );
    let cfg = std::fs::read_to_string(dir.path().join("saes/s/cfg.json")).unwrap();
    assert!(cfg.contains("\"hook_head_index\": 2"), "untouched: {cfg}");
}

#[test]
fn training_killed_and_resumed_ends_with_the_same_sae() {
    let dir = project();
    let train = |save: &str| {
        format!(
            "{HEADER}dataset d = prompts([\"the cat sat on the mat and then the dog ran after it\", \"a dog ran far away\"])\nsae s = train(hook = blocks.1.attn.hook_q[head = 2], dataset = d, d_sae = 256, tokens = 480_000, batch_size = 8, save = \"{save}\", checkpoint_every = 1000)\n"
        )
    };
    write(dir.path(), "whole.qexp", &train("saes/whole"));
    write(dir.path(), "killed.qexp", &train("saes/killed"));
    assert!(
        run(dir.path(), &["sae", "train", "whole.qexp", "s"])
            .status
            .success()
    );

    let binary = assert_cmd::cargo::cargo_bin("qexp");
    let mut child = std::process::Command::new(&binary)
        .args(["sae", "train", "killed.qexp", "s"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoints = dir.path().join("saes/killed.checkpoints");
    let started = Instant::now();
    // Kill it once a few checkpoints exist, in the middle of its run.
    while !std::fs::read_dir(&checkpoints).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| *e.file_name().to_string_lossy() >= *"step_000020000")
    }) {
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !dir.path().join("saes/killed/cfg.json").exists(),
        "killed early"
    );

    let output = run(dir.path(), &["sae", "train", "killed.qexp", "s"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read(dir.path().join("saes/killed/sae_weights.safetensors")).unwrap(),
        std::fs::read(dir.path().join("saes/whole/sae_weights.safetensors")).unwrap(),
        "the resumed SAE is the uninterrupted one"
    );
}

#[test]
fn weights_changed_after_export_are_refused_by_name() {
    let dir = project();
    write(
        dir.path(),
        "exp.qexp",
        &format!("{HEADER}table s = sanity_check(\"the the\")\n"),
    );
    assert!(run(dir.path(), &["run", "exp.qexp"]).status.success());
    let data = dir.path().join("models/tiny/model.onnx.data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    fails_with(
        dir.path(),
        &["run", "exp.qexp"],
        1,
        "models/tiny/model.onnx.data has changed since it was exported",
    );

    std::fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    let output = run(dir.path(), &["run", "exp.qexp"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model.onnx.data has changed"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one plain line: {stderr}");
}

#[test]
fn no_input_crashes_hangs_or_exhausts_memory() {
    let dir = project();
    let long_chain = |op: &str, n: usize| {
        format!(
            "dataset d = prompts([\"a\"])\ntable t = per_token(d) | derive(x = loss{})\n",
            op.repeat(n)
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            format!("let x = {}true\n", "not ".repeat(10_000)),
            "chains 10000 operators",
        ),
        (long_chain(" + loss", 10_000), "operators; at most 256"),
        (
            format!("let x = {}1\n", "-".repeat(50_000)),
            "chains 50000 operators",
        ),
        (
            format!(
                "{}table t = sanity_check()\n{}",
                (0..30)
                    .map(|i| format!("for x{i} in [1, 2] {{\n"))
                    .collect::<String>(),
                "}\n".repeat(30)
            ),
            "unroll to more than 10000 statements",
        ),
        (
            format!("{TRAIN})\n").replace("d_sae = 16", "d_sae = 1e12"),
            "out of range",
        ),
        (
            format!("{TRAIN})\n").replace("d_sae = 16", "d_sae = -5"),
            "out of range",
        ),
        (
            format!("{TRAIN})\n").replace("tokens = 200", "tokens = 1e15"),
            "out of range",
        ),
        (
            "table g = generate(\"the\", max_new_tokens = 1e9)\n".into(),
            "out of range",
        ),
        (
            "table g = generate(\"the\", max_new_tokens = 5000)\n".into(),
            "does not fit the model's context",
        ),
        (
            format!(
                "variant v {{\n    zero(blocks.1.attn.hook_{})\n}}\n",
                "q".repeat(100_000)
            ),
            "unknown hook point",
        ),
    ];
    for (body, expected) in &cases {
        let started = Instant::now();
        check_refuses(dir.path(), body, expected);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{expected}: took {:?}",
            started.elapsed()
        );
    }

    // A GGUF declaring 2^32 tensors in 88 bytes.
    let mut gguf = b"GGUF".to_vec();
    gguf.extend(3u32.to_le_bytes());
    gguf.extend((1u64 << 32).to_le_bytes());
    gguf.extend(0u64.to_le_bytes());
    gguf.resize(88, 0);
    write(dir.path(), "huge.gguf", "");
    std::fs::write(dir.path().join("huge.gguf"), gguf).unwrap();
    let output = run(dir.path(), &["export", "huge.gguf", "-o", "models/huge"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("more than the file can describe"));

    // FIFOs where files belong: refused at once, not read forever.
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let output = run(dir.path(), &["check", "fifo"]);
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("not a regular file"));
        write(
            dir.path(),
            "exp.qexp",
            &format!("{HEADER}dataset d = text(\"fifo\")\ntable t = per_token(d)\n"),
        );
        let output = run(dir.path(), &["run", "exp.qexp"]);
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("not a regular file"));
    }
}

#[test]
fn nonsense_arguments_are_located_errors() {
    let dir = project();
    for (body, expected) in [
        (
            "table g = generate(\"the\", temperature = -1)\n",
            "`temperature`: -1 is out of range: use 0 to 100",
        ),
        (
            "table g = generate(\"the\", max_new_tokens = -1)\n",
            "`max_new_tokens`: -1 is out of range",
        ),
        (
            "table c = composition_scores(mode = Q) | top(-1)\n",
            "`n`: -1 is out of range",
        ),
        (&format!("{TRAIN}, lr = -1)\n"), "`lr`: -1 is out of range"),
        (
            &format!("{TRAIN})\n").replace("batch_size = 8", "batch_size = 0"),
            "`batch_size`: 0 is out of range",
        ),
        (
            "dataset d = text(\"a.txt\", separator = \"\")\ntable t = per_token(d)\n",
            "`separator`: this must not be empty",
        ),
        (
            "table s = sanity_check(\"a\\qb\")\n",
            "unknown escape `\\q`",
        ),
        (
            "table a = attention(\"the cat\", L1H1, pos = 1e15)\n",
            "position 1000000000000000 is outside every prompt: the model's context is 128 tokens",
        ),
    ] {
        check_refuses(dir.path(), body, expected);
    }

    let long_name = "x".repeat(200);
    write(
        dir.path(),
        "probe.qexp",
        &format!("experiment {long_name}\nmodel \"models/tiny\"\n"),
    );
    let output = run(dir.path(), &["check", "probe.qexp"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("report folders take at most 100"));

    // An SAE whose cfg.json names a head the model does not have.
    let sae = dir.path().join("saes/bad_head");
    std::fs::create_dir_all(&sae).unwrap();
    let cfg = std::fs::read_to_string(fixture("tests/fixtures/saes/standard/cfg.json")).unwrap();
    std::fs::write(
        sae.join("cfg.json"),
        cfg.replace("\"hook_head_index\": 2", "\"hook_head_index\": 999"),
    )
    .unwrap();
    std::fs::copy(
        fixture("tests/fixtures/saes/standard/sae_weights.safetensors"),
        sae.join("sae_weights.safetensors"),
    )
    .unwrap();
    check_refuses(
        dir.path(),
        "sae s = load(\"saes/bad_head\")\n",
        "names head 999 of `blocks.1.attn.hook_q`, which has heads 0..3",
    );

    // A division by zero in a derive is blamed on the derive, not on the model.
    write(
        dir.path(),
        "exp.qexp",
        &format!(
            "{HEADER}dataset d = prompts([\"the cat sat\"])\ntable t = per_token(d) | derive(r = loss / 0)\n"
        ),
    );
    fails_with(
        dir.path(),
        &["run", "exp.qexp"],
        1,
        "`derive(r = (loss / 0))` gives inf on row 0",
    );
}

#[test]
fn an_sae_with_nan_weights_is_named_on_load() {
    let dir = project();
    let sae = dir.path().join("saes/nan");
    std::fs::create_dir_all(&sae).unwrap();
    std::fs::copy(
        fixture("tests/fixtures/saes/standard/cfg.json"),
        sae.join("cfg.json"),
    )
    .unwrap();
    // Overwrite the first float of the file's data (after its JSON header) with NaN.
    let mut weights = std::fs::read(fixture(
        "tests/fixtures/saes/standard/sae_weights.safetensors",
    ))
    .unwrap();
    let header = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    weights[8 + header..8 + header + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(sae.join("sae_weights.safetensors"), weights).unwrap();
    write(
        dir.path(),
        "exp.qexp",
        &format!(
            "{HEADER}sae s = load(\"saes/nan\")\ntable a = feature_activations(s, \"the cat\")\n"
        ),
    );
    fails_with(
        dir.path(),
        &["run", "exp.qexp"],
        1,
        "saes/nan/sae_weights.safetensors",
    );
    fails_with(dir.path(), &["run", "exp.qexp"], 1, "non-finite");
}

#[test]
fn reports_are_safe_to_open_and_files_are_shared_as_the_umask_says() {
    let dir = project();
    // A byte-order mark from a Windows editor is not a syntax error.
    write(
        dir.path(),
        "exp.qexp",
        &format!("\u{feff}{HEADER}table g = generate(\"=HYPERLINK(1)\", max_new_tokens = 1)\n"),
    );
    let output = run(dir.path(), &["run", "exp.qexp"]);
    assert!(output.status.success(), "{output:?}");
    let csv = std::fs::read_to_string(dir.path().join("reports/probe/results/g.csv")).unwrap();
    assert!(csv.contains("'=HYPERLINK(1)"), "{csv}");

    write(dir.path(), "train.qexp", &format!("{HEADER}{TRAIN})\n"));
    assert!(
        run(
            dir.path(),
            &["sae", "train", "train.qexp", "s", "--out", "saes/s"]
        )
        .status
        .success()
    );
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::PermissionsExt;
        let umask = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
            .unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("saes/s"), 0o777 & !umask);
        assert_eq!(mode("saes/s/sae_weights.safetensors"), 0o666 & !umask);
        assert_eq!(mode("reports/probe"), 0o777 & !umask);
    }
}

#[test]
fn a_save_path_bound_with_let_is_checked_too() {
    let dir = project();
    std::fs::create_dir(dir.path().join("mine")).unwrap();
    write(dir.path(), "mine/data.csv", "1,2,3");
    check_refuses(
        dir.path(),
        &format!("let WHERE = \"mine\"\n{TRAIN}, save = WHERE)\n"),
        "cannot save here: refusing to replace mine",
    );
    assert!(dir.path().join("mine/data.csv").exists());
}
