//! Writing an SAE in SAELens' layout (6.x `cfg.json` with `metadata`, and
//! `sae_weights.safetensors` in f32), so SAELens' `SAE.load_from_disk` and qexp both read
//! it. The folder is written beside the target and swapped in whole, and only over a
//! folder qexp saved an SAE to before (see `output`).

use std::path::Path;

use super::{Architecture, Normalization, Sae, SaeError, tensors};
use crate::output::{Kind, Staging};

pub fn save(sae: &Sae, dir: &Path) -> Result<(), SaeError> {
    save_with(sae, dir, &[])
}

/// [`save`], with `extra` files (name, text) written into the same folder, so they are
/// swapped in together with the weights.
pub(super) fn save_with(sae: &Sae, dir: &Path, extra: &[(&str, &str)]) -> Result<(), SaeError> {
    let failed = |message: String| SaeError::Write {
        path: dir.to_owned(),
        message,
    };
    let staging = Staging::new(dir, Kind::Sae).map_err(|e| failed(e.to_string()))?;
    write_into(sae, staging.path()).map_err(failed)?;
    for (name, text) in extra {
        std::fs::write(staging.path().join(name), text).map_err(|e| failed(e.to_string()))?;
    }
    staging.commit().map_err(|e| failed(e.to_string()))
}

/// Writes the SAE's files into the existing folder `dir` (a staging folder).
pub(super) fn write_into(sae: &Sae, dir: &Path) -> Result<(), String> {
    let mut weights = vec![
        ("W_enc", sae.w_enc.clone().into_dyn()),
        ("b_enc", sae.b_enc.clone().into_dyn()),
        ("W_dec", sae.w_dec.clone().into_dyn()),
        ("b_dec", sae.b_dec.clone().into_dyn()),
    ];
    if let Some(threshold) = &sae.threshold {
        weights.push(("threshold", threshold.clone().into_dyn()));
    }
    tensors::write(&dir.join("sae_weights.safetensors"), &weights)?;
    let text = serde_json::to_string_pretty(&config_json(sae)).expect("JSON values serialize");
    std::fs::write(dir.join("cfg.json"), text + "\n").map_err(|e| e.to_string())
}

/// SAELens 6.x's config for this SAE.
fn config_json(sae: &Sae) -> serde_json::Value {
    let architecture = match sae.architecture {
        Architecture::Standard => "standard",
        Architecture::TopK { .. } => "topk",
        Architecture::JumpRelu => "jumprelu",
    };
    let mut cfg = serde_json::json!({
        "architecture": architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": match sae.normalization {
            Normalization::None => "none",
            Normalization::ConstantNormRescale => "constant_norm_rescale",
            Normalization::LayerNorm => "layer_norm",
        },
        "reshape_activations": "none",
        // SAELens reads `metadata` only from configs that say they are 6.x; this is the
        // oldest layout the file follows, not a claim about who wrote it.
        "metadata": {
            "sae_lens_version": "6.0.0",
            "hook_name": sae.hook.as_ref().map(|h| h.name.clone()),
            "hook_head_index": sae.hook.as_ref().and_then(|h| h.head),
            "trained_with": format!("qexp {}", env!("CARGO_PKG_VERSION")),
        },
    });
    if let Architecture::TopK { k } = sae.architecture {
        cfg["k"] = k.into();
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookRef;
    use ndarray::{Array1, Array2};

    fn sae(architecture: Architecture) -> Sae {
        let (d_in, d_sae) = (3, 5);
        Sae {
            d_in,
            d_sae,
            architecture,
            apply_b_dec_to_input: true,
            normalization: Normalization::LayerNorm,
            hook: Some(HookRef {
                name: "blocks.1.attn.hook_q".into(),
                head: Some(4),
                head_from: None,
                pos: None,
            }),
            w_enc: Array2::from_shape_fn((d_in, d_sae), |(i, j)| (i * 7 + j) as f32 * 0.1 - 0.5),
            b_enc: Array1::from_shape_fn(d_sae, |j| j as f32 * -0.01),
            w_dec: Array2::from_shape_fn((d_sae, d_in), |(i, j)| (i + 3 * j) as f32 * 0.05),
            b_dec: Array1::from_shape_fn(d_in, |i| i as f32),
            threshold: (architecture == Architecture::JumpRelu)
                .then(|| Array1::from_elem(d_sae, 0.2)),
        }
    }

    #[test]
    fn a_saved_sae_loads_back_the_same() {
        for architecture in [
            Architecture::Standard,
            Architecture::TopK { k: 2 },
            Architecture::JumpRelu,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sae");
            let original = sae(architecture);
            save(&original, &path).unwrap();
            let loaded = super::super::load(&path).unwrap();
            assert_eq!(loaded.architecture, architecture);
            assert_eq!(loaded.hook, original.hook);
            assert_eq!(loaded.normalization, original.normalization);
            assert_eq!(loaded.w_enc, original.w_enc);
            assert_eq!(loaded.b_enc, original.b_enc);
            assert_eq!(loaded.w_dec, original.w_dec);
            assert_eq!(loaded.b_dec, original.b_dec);
            assert_eq!(loaded.threshold, original.threshold);
        }
    }

    #[test]
    fn saving_over_an_sae_replaces_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sae");
        save(&sae(Architecture::Standard), &path).unwrap();
        save(&sae(Architecture::TopK { k: 3 }), &path).unwrap();
        let loaded = super::super::load(&path).unwrap();
        assert_eq!(loaded.architecture, Architecture::TopK { k: 3 });
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no staging left"
        );
    }

    #[test]
    fn saving_over_a_folder_qexp_did_not_make_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("thesis.tex"), "years of work").unwrap();
        assert!(save(&sae(Architecture::Standard), dir.path()).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("thesis.tex")).unwrap(),
            "years of work"
        );
    }
}
