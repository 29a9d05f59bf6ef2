//! A rerun that differs from the last only by kernel noise (another CPU's instruction
//! set, another thread count, another batch size) leaves every report file as it was:
//! numbers within their column's tolerance keep their earlier value, and the SAE is
//! read from its pin. `QEXP_TEST_PERTURB_OUTPUTS` scales every model output by
//! 1 ± 1e-6, standing in for another CPU.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::qexp;

const TEXT: &str = "the cat sat on the mat and the dog sat on the log\n%\na dog ran to the cat and the cat ran to the mat\n%\nthe mat sat on the log and the log sat on the dog\n%\na cat and a dog and a mat and a log\n%\nthe dog ran and the cat sat and the log ran\n";

fn experiment(batch_size: usize) -> String {
    format!(
        r#"experiment repro
model "models/tiny" (batch_size = {batch_size})
dataset lines = text("lines.txt", separator = "\n%\n")
sae s = train(hook = blocks.1.attn.hook_q[head = 2], dataset = lines, d_sae = 16, tokens = 400, batch_size = 8, save = "pins/s")
variant ablated {{
    zero(blocks.1.attn.hook_z[head = 2])
}}
table tokens = per_token(lines, head = L1H2, sae = s, variants = [ablated]) | derive(loss_diff = ablated_loss - loss)
table top = tokens | sort(loss_diff, desc) | top(5)
table quality = sae_metrics(s, lines, baseline = ablated)
table stats = feature_stats(s, lines) | sort(max_activation, desc) | top(5)
table next = test_prompt("the cat sat on the", " the", variants = [ablated])
table pattern = attention("the cat sat on the mat", L1H2, pos = -1)
table comp = composition_scores(mode = Q)
plot spread = histogram(tokens, x = loss_diff, bins = 10)
dashboards pages = feature_dashboards(s, [0, 1, 2, 3], lines)
expect "ablating the head raises the loss somewhere" = tokens | any(loss_diff > 0, show = [spread])
expect "most tokens' reconstruction keeps half the variance" = tokens | share(explained_variance > 0.5, at_least = 0.5)
"#
    )
}

/// Every file of the report but run.json (timings, threads), by path.
fn report_files(report: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut folders = vec![report.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.file_name().unwrap() != "run.json" {
                let name = path.strip_prefix(report).unwrap().display().to_string();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn noise_from_another_cpu_threads_or_batch_size_never_reaches_the_report() {
    let dir = common::project_with_tiny_model();
    std::fs::write(dir.path().join("lines.txt"), TEXT).unwrap();
    let run = |batch_size: usize, threads: &str, perturb: Option<&str>| {
        std::fs::write(dir.path().join("repro.qexp"), experiment(batch_size)).unwrap();
        let mut command = qexp(dir.path());
        command.args([
            "run",
            "repro.qexp",
            "--allow-failed-claims",
            "--threads",
            threads,
        ]);
        if let Some(relative) = perturb {
            command.env("QEXP_TEST_PERTURB_OUTPUTS", relative);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        report_files(&dir.path().join("reports/repro"))
    };
    let first = run(4, "2", None);
    assert!(first.contains_key("results/tokens.csv"));
    assert!(first.contains_key("results/claims.csv"));
    assert!(first.keys().any(|f| f.starts_with("dashboards/")));

    for (batch_size, threads, perturb) in [
        (4, "1", Some("1e-6")),
        (2, "2", Some("-1e-6")),
        (1, "1", Some("2e-6")),
    ] {
        let again = run(batch_size, threads, perturb);
        let changed: Vec<&String> = first
            .keys()
            .filter(|f| again.get(*f) != first.get(*f))
            .collect();
        assert!(
            changed.is_empty() && again.len() == first.len(),
            "batch_size {batch_size}, {threads} threads, perturbed by {perturb:?}: changed {changed:?}"
        );
    }

    // A real change is not hidden: 1e-2 moves losses far beyond their tolerance.
    let moved = run(4, "2", Some("1e-2"));
    assert_ne!(
        moved.get("results/tokens.csv"),
        first.get("results/tokens.csv")
    );
}
