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
