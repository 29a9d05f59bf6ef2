//! The report in a real browser: headless Chromium (Debian's `chromium`) opens a report
//! of the tiny model, runs its script without console errors, draws the tables, sorts
//! one when its header is clicked (through the page's `#sort=` link) and takes a
//! screenshot. Without Chromium the test says so and passes, unless
//! QEXP_REQUIRE_BROWSER=1 (CI installs Chromium and sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Chromium as this machine's closed network needs it (no background connections).
fn headless(browser: &Path, profile: &Path) -> Command {
    let mut command = Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

fn report() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let qexp = env!("CARGO_BIN_EXE_qexp");
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama/model.gguf");
    let status = Command::new(qexp)
        .current_dir(dir.path())
        .args(["export", gguf.to_str().unwrap(), "-o", "models/tiny"])
        .output()
        .unwrap();
    assert!(status.status.success());
    std::fs::write(
        dir.path().join("b.qexp"),
        "experiment browser\nmodel \"models/tiny\"\ndataset d = prompts([\"the cat sat on the mat and the dog sat on the log\", \"<script>alert(1)</script> a dog\"])\nvariant z {\n zero(blocks.1.attn.hook_z[head = 2])\n}\ntable tokens = per_token(d, head = L1H2, variants = [z])\nplot spread = histogram(tokens, x = loss, bins = 10)\n",
    )
    .unwrap();
    let run = Command::new(qexp)
        .current_dir(dir.path())
        .args(["run", "b.qexp"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let index = dir.path().join("reports/browser/index.html");
    (dir, index)
}

#[test]
fn the_report_runs_in_chromium_sorts_on_click_and_screenshots() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("QEXP_REQUIRE_BROWSER").is_err(),
            "QEXP_REQUIRE_BROWSER is set but Chromium is not installed"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium)");
        return;
    };
    let (dir, index) = report();
    let profile = dir.path().join("profile");
    let url = format!("file://{}#sort=tokens.loss", index.display());
    let output = headless(&browser, &profile)
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let (dom, log) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(output.status.success(), "{log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(!log.contains("Uncaught"), "{log}");
    assert!(!dom.contains("<script>alert"), "prompt text stays text");

    // The tokens table was drawn and, clicked once on `loss`, sorted by it, largest first.
    let body = dom
        .split("data-name=\"tokens\"")
        .nth(1)
        .and_then(|t| t.split("<tbody>").nth(1))
        .and_then(|t| t.split("</tbody>").next())
        .expect("the tokens table has a body");
    assert!(body.contains("<tr>"), "rows drawn");
    let header = dom
        .split("data-name=\"tokens\"")
        .nth(1)
        .and_then(|t| t.split("</thead>").next())
        .unwrap();
    let columns: Vec<&str> = header
        .split("<th ")
        .skip(1)
        .map(|th| {
            th.split('>')
                .nth(1)
                .unwrap_or("")
                .split('<')
                .next()
                .unwrap_or("")
        })
        .collect();
    let loss_column = columns
        .iter()
        .position(|c| *c == "loss")
        .expect("a loss column");
    assert!(
        header.contains("class=\"desc\""),
        "the clicked header shows its order"
    );
    let losses: Vec<f64> = body
        .split("<tr>")
        .skip(1)
        .map(|row| {
            let cell = row.split("<td").nth(loss_column + 1).unwrap();
            cell.split('>')
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(losses.len() > 5, "{losses:?}");
    assert!(
        losses.windows(2).all(|w| w[0] >= w[1]),
        "sorted: {losses:?}"
    );

    let shot = dir.path().join("report.png");
    let output = headless(&browser, &profile)
        .args([
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,1600",
            &format!("file://{}", index.display()),
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
