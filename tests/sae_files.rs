//! SAEs saved by the real SAELens package (tests/fixtures/make_sae_reference.py): qexp
//! reads them and computes the same feature activations and reconstructions.

mod common;

use common::{Reference, assert_close, fixture};
use ndarray::Ix2;
use qexp::sae::{self, Architecture};

#[test]
fn standard_topk_and_jumprelu_saes_encode_and_decode_as_saelens_does() {
    let mut reference = Reference::open(&fixture("saes/reference.npz"));
    let x = reference.f32("x").into_dimensionality::<Ix2>().unwrap();
    for name in ["standard", "topk", "jumprelu"] {
        let sae = sae::load(&fixture(&format!("saes/{name}"))).unwrap();
        assert_eq!((sae.d_in, sae.d_sae), (16, 32));
        let hook = sae.hook.as_ref().unwrap();
        assert_eq!(
            (hook.name.as_str(), hook.head),
            ("blocks.1.attn.hook_q", Some(2))
        );
        let acts = sae.encode(x.view());
        assert_close(
            &format!("{name} activations"),
            acts.view().into_dyn(),
            reference.f32(&format!("{name}_acts")).view(),
            1e-5,
        );
        let recon = sae.decode(acts.view());
        assert_close(
            &format!("{name} reconstruction"),
            recon.view().into_dyn(),
            reference.f32(&format!("{name}_recon")).view(),
            1e-5,
        );
    }
    assert_eq!(
        sae::load(&fixture("saes/topk")).unwrap().architecture,
        Architecture::TopK { k: 4 }
    );
}

#[test]
fn broken_sae_folders_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("saes/jumprelu/cfg.json"),
        dir.path().join("cfg.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("saes/standard/sae_weights.safetensors"),
        dir.path().join("sae_weights.safetensors"),
    )
    .unwrap();
    let error = sae::load(dir.path()).unwrap_err().to_string();
    assert!(error.contains("no tensor `threshold`"), "{error}");

    std::fs::write(
        dir.path().join("cfg.json"),
        r#"{"d_in": 16, "d_sae": 32, "architecture": "gated"}"#,
    )
    .unwrap();
    let error = sae::load(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("qexp reads standard (ReLU), topk and jumprelu SAEs"),
        "{error}"
    );

    std::fs::write(dir.path().join("cfg.json"), r#"{"d_in": 8, "d_sae": 32}"#).unwrap();
    let error = sae::load(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("`W_enc` has shape [16, 32], the config says [8, 32]"),
        "{error}"
    );

    std::fs::write(dir.path().join("cfg.json"), r#"{"d_in": 16, "d_sae": 32, "hook_point": "blocks.1.attn.hook_q", "hook_point_head_index": 2}"#).unwrap();
    let old = sae::load(dir.path()).unwrap();
    assert_eq!(old.hook.unwrap().head, Some(2), "pre-6.0 flat configs");
}

#[test]
fn run_time_normalized_saes_encode_and_reconstruct_as_saelens_does() {
    let mut reference = Reference::open(&fixture("saes/reference_normalized.npz"));
    let x = reference.f32("x").into_dimensionality::<Ix2>().unwrap();
    for (name, normalization) in [
        (
            "constant_norm_rescale",
            sae::Normalization::ConstantNormRescale,
        ),
        ("layer_norm", sae::Normalization::LayerNorm),
    ] {
        let sae = sae::load(&fixture(&format!("saes/{name}"))).unwrap();
        assert_eq!(sae.normalization, normalization);
        let acts = sae.encode(x.view());
        assert_close(
            &format!("{name} activations"),
            acts.view().into_dyn(),
            reference.f32(&format!("{name}_acts")).view(),
            1e-5,
        );
        assert_close(
            &format!("{name} reconstruction"),
            sae.reconstruct(x.view(), acts.view()).view().into_dyn(),
            reference.f32(&format!("{name}_recon")).view(),
            1e-5,
        );
    }
}

#[test]
fn gemma_scope_params_npz_loads_as_saelens_gemma_scope_loader_reads_it() {
    let mut reference = Reference::open(&fixture("saes/gemma_scope_reference.npz"));
    let x = reference.f32("x").into_dimensionality::<Ix2>().unwrap();
    let folder = fixture("saes/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_5");
    // The folder and the file itself both load.
    for path in [folder.clone(), folder.join("params.npz")] {
        let sae = sae::load(&path).unwrap();
        assert_eq!((sae.d_in, sae.d_sae), (32, 64));
        assert_eq!(sae.architecture, Architecture::JumpRelu);
        assert!(!sae.apply_b_dec_to_input, "Gemma Scope subtracts no b_dec");
        assert_eq!(
            sae.hook.as_ref().map(|h| h.name.as_str()),
            Some("blocks.1.hook_resid_post"),
            "the hook SAELens reads from the release and layer folders"
        );
        let acts = sae.encode(x.view());
        assert_close(
            "Gemma Scope activations",
            acts.view().into_dyn(),
            reference.f32("acts").view(),
            1e-5,
        );
        assert_close(
            "Gemma Scope reconstruction",
            sae.decode(acts.view()).view().into_dyn(),
            reference.f32("recon").view(),
            1e-5,
        );
    }
    let shape = sae::read_shape(&folder).unwrap();
    assert_eq!((shape.d_in, shape.d_sae), (32, 64));
}

#[test]
fn a_gemma_scope_sae_splices_into_gemma2_with_its_hook_from_the_path_or_the_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path();
    common::qexp(project)
        .args([
            "export",
            fixture("tiny_gemma2").to_str().unwrap(),
            "-o",
            "models/gemma2",
        ])
        .assert()
        .success();
    let release = project.join("saes/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_5");
    std::fs::create_dir_all(&release).unwrap();
    let params = fixture("saes/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_5/params.npz");
    std::fs::copy(&params, release.join("params.npz")).unwrap();
    std::fs::copy(&params, project.join("elsewhere.npz")).unwrap();
    std::fs::write(
        project.join("gs.qexp"),
        r#"experiment gs
model "models/gemma2"
dataset d = prompts(["the cat sat on the mat", "a dog ran"])
sae scope = load("saes/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_5")
sae early = load("elsewhere.npz", hook = blocks.0.hook_resid_post)
table scope_metrics = sae_metrics(scope, d)
table early_metrics = sae_metrics(early, d)
"#,
    )
    .unwrap();
    common::qexp(project)
        .args(["run", "gs.qexp"])
        .assert()
        .success();
    let plan = common::qexp(project)
        .args(["plan", "gs.qexp"])
        .output()
        .unwrap();
    let plan = String::from_utf8(plan.stdout).unwrap();
    assert!(plan.contains("blocks.1.hook_resid_post"), "{plan}");
    assert!(plan.contains("blocks.0.hook_resid_post"), "{plan}");

    // Without a hook in its path or the experiment, the check says where to name it.
    std::fs::write(
        project.join("bare.qexp"),
        "experiment bare\nmodel \"models/gemma2\"\ndataset d = prompts([\"the cat\"])\n\
         sae s = load(\"elsewhere.npz\")\ntable m = sae_metrics(s, d)\n",
    )
    .unwrap();
    let output = common::qexp(project)
        .args(["run", "bare.qexp"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success());
    assert!(
        stderr.contains("hook = blocks.L.hook_resid_post"),
        "{stderr}"
    );
}
