//! Helpers shared by the integration tests: fixture paths, exporting into a temp folder,
//! reading reference arrays, and comparing with a named tolerance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD, Dimension};
use ndarray_npy::NpzReader;
use qexp::runtime::{Device, Runtime};

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// The `qexp` binary, run in `dir` (a project folder), as a user runs it.
pub fn qexp(dir: &Path) -> assert_cmd::Command {
    let mut command = assert_cmd::Command::cargo_bin("qexp").unwrap();
    command.current_dir(dir);
    command
}

/// A temporary project folder with the tiny Llama exported to `models/tiny` by
/// `qexp export`.
pub fn project_with_tiny_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let gguf = fixture("tiny_llama/model.gguf");
    qexp(dir.path())
        .args(["export", gguf.to_str().unwrap(), "-o", "models/tiny"])
        .assert()
        .success();
    dir
}

pub fn runtime() -> Runtime {
    Runtime::new(Device::Cpu)
        .expect("ONNX Runtime loads (run `bash scripts/test.sh`, which installs it)")
}

/// Exports a checkpoint into a fresh temporary folder and returns both.
pub fn export_to_temp(checkpoint: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let scope = qexp::output::Scope::within(dir.path(), false).unwrap();
    qexp::export::export(checkpoint, &model, &scope).expect("export succeeds");
    (dir, model)
}

/// The checked plan of `source`, with the tiny model's manifest from `model_dir`
/// (plus whatever `context` already holds); panics with the rendered diagnostics.
pub fn checked(
    source: &str,
    model_dir: &Path,
    mut context: qexp::check::Context,
) -> qexp::plan::Plan {
    context.manifest = qexp::manifest::Manifest::read(model_dir).ok();
    let file = qexp::syntax::parse(source)
        .unwrap_or_else(|d| panic!("{}", qexp::syntax::render(&d, "t", source)));
    qexp::check::check(&file, &context)
        .unwrap_or_else(|d| panic!("{}", qexp::syntax::render(&d, "t", source)))
}

/// Output paths anywhere: the library tests write into temporary folders.
pub fn anywhere() -> qexp::output::Scope {
    qexp::output::Scope::within(Path::new("/"), true).unwrap()
}

pub struct Reference(NpzReader<std::fs::File>);

impl Reference {
    pub fn open(path: &Path) -> Self {
        Self(NpzReader::new(std::fs::File::open(path).unwrap()).unwrap())
    }

    pub fn f32(&mut self, name: &str) -> ArrayD<f32> {
        self.0
            .by_name(&format!("{name}.npy"))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    pub fn f64(&mut self, name: &str) -> ArrayD<f64> {
        self.0
            .by_name(&format!("{name}.npy"))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    pub fn i64(&mut self, name: &str) -> ArrayD<i64> {
        self.0
            .by_name(&format!("{name}.npy"))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

/// The largest absolute difference between two arrays of one shape (NaN if any is).
pub fn max_abs_difference(a: ArrayViewD<'_, f32>, b: ArrayViewD<'_, f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |worst, d| {
            if d.is_nan() || worst.is_nan() {
                f32::NAN
            } else {
                worst.max(d)
            }
        })
}

/// Asserts `actual` is within `tolerance` of `expected` everywhere, naming the first
/// outlier (index, both values) when it is not.
pub fn assert_close(
    what: &str,
    actual: ArrayViewD<'_, f32>,
    expected: ArrayViewD<'_, f32>,
    tolerance: f32,
) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes differ");
    let mut worst = (0.0f32, Vec::new(), 0.0, 0.0);
    for ((index, &a), &e) in actual.indexed_iter().zip(expected.iter()) {
        let diff = (a - e).abs();
        if diff > worst.0 || diff.is_nan() {
            worst = (diff, index.slice().to_vec(), a, e);
        }
    }
    assert!(
        worst.0 <= tolerance,
        "{what}: max abs difference {} > {tolerance} at {:?} (qexp {}, reference {})",
        worst.0,
        worst.1,
        worst.2,
        worst.3
    );
}

/// Seven prompts of uneven lengths; a per-token table under a variant, a head chosen by
/// a `let` and an SAE, then tables and a claim made from it.
pub fn sharded_experiment() -> String {
    let sae = fixture("saes/standard");
    format!(
        r#"experiment sharded
model "models/tiny" (batch_size = 3)
dataset d = prompts(["the cat sat on the mat", "a dog ran", "the the the the the the the the", "one", "a b c d e f", "cat dog", "the mat sat on the cat and the dog ran far"])
sae s = load("{}")
variant ablated {{
    zero(blocks.0.attn.hook_z[head = 1])
}}
table comp = composition_scores(mode = Q)
let BEST = best_head(comp, by = score, layer = layer2, head = head2)
table tokens = per_token(d, head = BEST, sae = s, variants = [ablated]) | filter(pos > 0)
table worst = tokens | sort(loss, order = desc) | top(3)
table mean_loss = tokens | aggregate(loss = mean(loss), ev = mean(explained_variance))
expect "every token has a loss" = tokens | all(loss > 0)
"#,
        sae.display()
    )
}
