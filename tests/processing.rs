//! `qexp export --transformer-lens` against TransformerLens' own processing of the same
//! tiny models (fixtures made by tests/fixtures/make_processed_weights_reference.py):
//! every processed weight, the logits and the residual stream, within float32 noise.

mod common;

use common::{Reference, assert_close, fixture, runtime};
use ndarray::{Array3, ArrayD, Ix1, Ix2, s};
use qexp::processing::Step;
use qexp::runtime::{Batch, HookedModel};

const TOLERANCE: f32 = 1e-4;

/// Our `[d_model, heads * d_head]` reading matrix as TransformerLens' `[heads, d_model, d_head]`.
fn reading_per_head(w: ArrayD<f32>, heads: usize) -> ArrayD<f32> {
    let w = w.into_dimensionality::<Ix2>().unwrap();
    let d_head = w.ncols() / heads;
    Array3::from_shape_fn((heads, w.nrows(), d_head), |(h, i, j)| {
        w[[i, h * d_head + j]]
    })
    .into_dyn()
}

/// Our `[heads * d_head, d_model]` W_O as TransformerLens' `[heads, d_head, d_model]`.
fn writing_per_head(w: ArrayD<f32>, heads: usize) -> ArrayD<f32> {
    let w = w.into_dimensionality::<Ix2>().unwrap();
    let d_head = w.nrows() / heads;
    Array3::from_shape_fn((heads, d_head, w.ncols()), |(h, j, k)| {
        w[[h * d_head + j, k]]
    })
    .into_dyn()
}

fn check_against_transformer_lens(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let scope = qexp::output::Scope::within(dir.path(), false).unwrap();
    let summary =
        qexp::export::export_processed(&fixture(name), &model_dir, &scope, &Step::TRANSFORMER_LENS)
            .unwrap();
    let runtime = runtime();
    let model = HookedModel::load(&runtime, &model_dir).unwrap();
    let config = model.manifest.config.clone();
    assert_eq!(model.manifest.processing, summary.manifest.processing);
    let mut reference = Reference::open(&fixture(&format!("{name}/tl_processed.npz")));

    // A weight the model does not have is zero, as TransformerLens holds it.
    let ours = |weight: &str, like: &ArrayD<f32>| {
        model
            .weight(weight)
            .unwrap_or_else(|_| ArrayD::zeros(like.shape()))
    };
    let w_e = reference.f32("W_E");
    assert_close(
        &format!("{name} W_E"),
        ours("embed.W_E", &w_e).view(),
        w_e.view(),
        TOLERANCE,
    );
    let w_u = reference.f32("W_U");
    assert_close(
        &format!("{name} W_U"),
        ours("unembed.W_U", &w_u).view(),
        w_u.view(),
        TOLERANCE,
    );
    let b_u = reference.f32("b_U");
    assert_close(
        &format!("{name} b_U"),
        ours("unembed.b_U", &b_u).view(),
        b_u.view(),
        TOLERANCE,
    );
    for layer in 0..config.n_layers {
        let key = |w: &str| format!("blocks.{layer}.{w}");
        for (w, heads) in [
            ("attn.W_Q", config.n_heads),
            ("attn.W_K", config.n_kv_heads),
            ("attn.W_V", config.n_kv_heads),
        ] {
            let expected = reference.f32(&key(w));
            let got = reading_per_head(model.weight(&key(w)).unwrap(), heads);
            assert_close(
                &format!("{name} {}", key(w)),
                got.view(),
                expected.view(),
                TOLERANCE,
            );
        }
        for (b, heads) in [
            ("attn.b_Q", config.n_heads),
            ("attn.b_K", config.n_kv_heads),
            ("attn.b_V", config.n_kv_heads),
        ] {
            let expected = reference.f32(&key(b));
            let flat = ArrayD::<f32>::zeros(vec![heads * config.d_head]);
            let got = ours(&key(b), &flat).into_dimensionality::<Ix1>().unwrap();
            let got = got.into_shape_with_order(expected.shape()).unwrap();
            assert_close(
                &format!("{name} {}", key(b)),
                got.view(),
                expected.view(),
                TOLERANCE,
            );
        }
        let expected = reference.f32(&key("attn.W_O"));
        let got = writing_per_head(model.weight(&key("attn.W_O")).unwrap(), config.n_heads);
        assert_close(
            &format!("{name} W_O"),
            got.view(),
            expected.view(),
            TOLERANCE,
        );
        let expected = reference.f32(&key("attn.b_O"));
        let got = ours(&key("attn.b_O"), &expected);
        assert_close(
            &format!("{name} b_O"),
            got.view(),
            expected.view(),
            TOLERANCE,
        );
        for w in ["mlp.W_in", "mlp.W_out"] {
            let expected = reference.f32(&key(w));
            let got = model.weight(&key(w)).unwrap();
            assert_close(
                &format!("{name} {}", key(w)),
                got.view(),
                expected.view(),
                TOLERANCE,
            );
        }
    }

    let ids = reference.i64("input_ids");
    let row: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    let mut model = model;
    let batch = Batch::right_padded(&[row], 0);
    let hooks = [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
        "blocks.1.ln1.hook_normalized",
    ];
    let forward = model.forward(&batch, true, &hooks).unwrap();
    let logits = forward.logits.unwrap();
    let expected = reference.f32("logits");
    assert_close(
        &format!("{name} logits"),
        logits.slice(s![0, .., ..]).into_dyn(),
        expected.slice(s![0, .., ..]).into_dyn(),
        TOLERANCE,
    );
    for hook in hooks {
        assert_close(
            &format!("{name} {hook}"),
            forward.hooks[hook].view(),
            reference.f32(hook).view(),
            TOLERANCE,
        );
    }
}

#[test]
fn gpt2_processed_as_transformer_lens_does_matches_its_weights_and_logits() {
    check_against_transformer_lens("tiny_gpt2");
}

#[test]
fn gpt_neo_without_qkv_biases_gains_the_folded_layer_norm_bias() {
    check_against_transformer_lens("tiny_gpt_neo");
}

#[test]
fn rms_norm_models_fold_weights_only_and_are_not_centred() {
    check_against_transformer_lens("tiny_llama_hf");
    check_against_transformer_lens("tiny_qwen2");
}

#[test]
fn processing_keeps_the_models_predictions_and_is_recorded() {
    // Centring the unembedding moves every logit of a position by one constant: the
    // log-probabilities of the processed export equal the plain export's.
    let runtime = runtime();
    let plain_dir = tempfile::tempdir().unwrap();
    let scope = qexp::output::Scope::within(plain_dir.path(), false).unwrap();
    let fixture_dir = fixture("tiny_gpt2");
    qexp::export::export(&fixture_dir, &plain_dir.path().join("m"), &scope).unwrap();
    let processed = qexp::export::export_processed(
        &fixture_dir,
        &plain_dir.path().join("p"),
        &scope,
        &[Step::CenterUnembed, Step::FoldLn],
    )
    .unwrap();
    assert_eq!(
        processed.manifest.processing,
        vec![Step::FoldLn, Step::CenterUnembed],
        "applied in TransformerLens' order whatever order they were asked in"
    );
    let log_probs = |dir: &str| {
        let mut model = HookedModel::load(&runtime, &plain_dir.path().join(dir)).unwrap();
        let batch = model.batch(&[vec![0, 70, 71, 72, 73]]).unwrap();
        let logits = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
        let mut rows = logits.slice(s![0, .., ..]).to_owned();
        for mut row in rows.rows_mut() {
            let max = row.fold(f32::MIN, |a, &b| a.max(b));
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            row.mapv_inplace(|v| v - max - sum.ln());
        }
        rows.into_dyn()
    };
    assert_close(
        "log-probabilities",
        log_probs("p").view(),
        log_probs("m").view(),
        TOLERANCE,
    );
}

#[test]
fn the_command_line_says_what_was_processed_and_what_an_rms_norm_model_skips() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::qexp(dir.path())
        .args([
            "export",
            fixture("tiny_llama_hf").to_str().unwrap(),
            "-o",
            "models/llama",
            "--transformer-lens",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "weights processed as TransformerLens does: fold_ln, center_unembed, fold_value_biases"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("not applied (an RMSNorm does not remove the mean they rely on, as in TransformerLens): center_writing_weights"),
        "{stdout}"
    );
    // `qexp hooks` ends with what the weights take once loaded (untied: no extra copy).
    let hooks = common::qexp(dir.path())
        .args(["hooks", "models/llama"])
        .output()
        .unwrap();
    let hooks = String::from_utf8(hooks.stdout).unwrap();
    let last = hooks.lines().last().unwrap();
    let manifest = std::fs::read_to_string(dir.path().join("models/llama/manifest.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let parameters = parsed["parameters"].as_u64().unwrap();
    assert!(
        last.contains(&format!(
            "weights: {parameters} parameters, {:.1} MB in memory as f32 once loaded",
            parameters as f64 * 4.0 / 1e6
        )),
        "{last}"
    );
    assert!(
        manifest.contains("\"processing\": [\n    \"fold_ln\",\n    \"center_unembed\",\n    \"fold_value_biases\"\n  ]"),
        "{manifest}"
    );
}
