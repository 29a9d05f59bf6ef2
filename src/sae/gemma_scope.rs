//! Gemma Scope's SAEs as Google publishes them: one `params.npz` per SAE (`W_enc [d_in,
//! d_sae]`, `W_dec [d_sae, d_in]`, `b_enc`, `b_dec`, `threshold`), JumpReLU, no input
//! bias subtracted, in a tree that names the hook:
//! `gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz`.
//!
//! There is no config file, so the hook is read from that path as SAELens' Gemma Scope
//! loader reads it (`res` -> `blocks.L.hook_resid_post`, `res` + `embedding` ->
//! `hook_embed`, `mlp` -> `blocks.L.hook_mlp_out`); an experiment's `load(..., hook = ...)`
//! names it for a file kept elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn, OwnedRepr};
use ndarray_npy::NpzReader;

use super::{Architecture, Normalization, Sae, SaeError, SaeShape};
use crate::hooks::HookRef;

const PARAMS_FILE: &str = "params.npz";

/// The `params.npz` that `path` is, or that the folder `path` holds instead of an SAELens
/// `cfg.json`.
pub(super) fn params_file(path: &Path) -> Option<PathBuf> {
    if path.is_file() && path.extension().is_some_and(|e| e == "npz") {
        return Some(path.to_owned());
    }
    let inside = path.join(PARAMS_FILE);
    (path.is_dir() && !path.join("cfg.json").exists() && inside.is_file()).then_some(inside)
}

fn invalid(path: &Path, message: String) -> SaeError {
    SaeError::Invalid {
        path: path.to_owned(),
        message,
    }
}

fn open(path: &Path) -> Result<NpzReader<std::fs::File>, SaeError> {
    let file = crate::files::open(path).map_err(|e| SaeError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    NpzReader::new(file).map_err(|e| invalid(path, format!("not a readable .npz file: {e}")))
}

/// One array by its Gemma Scope name, under either capitalization of the weights
/// (`W_enc` or `w_enc`, as SAELens accepts both), as f32.
fn array(
    npz: &mut NpzReader<std::fs::File>,
    path: &Path,
    name: &str,
) -> Result<ArrayD<f32>, SaeError> {
    let names = npz
        .names()
        .map_err(|e| invalid(path, format!("cannot list its arrays: {e}")))?;
    let lower = name.to_lowercase();
    let found = names
        .iter()
        .find(|n| {
            let bare = n.strip_suffix(".npy").unwrap_or(n);
            bare == name || bare == lower
        })
        .ok_or_else(|| {
            invalid(
                path,
                format!("no array `{name}` (has {})", names.join(", ")),
            )
        })?
        .clone();
    npz.by_name::<OwnedRepr<f32>, IxDyn>(&found)
        .map_err(|e| invalid(path, format!("`{name}` is not a float32 array: {e}")))
}

/// The hook SAELens' Gemma Scope loader reads from the release and folder names.
fn hook_from_path(path: &Path) -> Option<HookRef> {
    let text = path.to_string_lossy();
    let release = path
        .ancestors()
        .filter_map(|a| a.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .find(|n| n.starts_with("gemma-scope"))?;
    let layer = text
        .split('/')
        .find_map(|part| part.strip_prefix("layer_")?.parse::<usize>().ok());
    let name = if release.contains("res") && text.contains("embedding") {
        "hook_embed".to_owned()
    } else if release.contains("res") {
        format!("blocks.{}.hook_resid_post", layer?)
    } else if release.contains("mlp") {
        format!("blocks.{}.hook_mlp_out", layer?)
    } else {
        return None;
    };
    Some(HookRef {
        name,
        head: None,
        head_from: None,
        pos: None,
    })
}

pub(super) fn read_shape(path: &Path) -> Result<SaeShape, SaeError> {
    let mut npz = open(path)?;
    // The two vectors give both sizes without reading the matrices.
    let b_dec = array(&mut npz, path, "b_dec")?;
    let threshold = array(&mut npz, path, "threshold")?;
    Ok(SaeShape {
        d_in: b_dec.len(),
        d_sae: threshold.len(),
        hook: hook_from_path(path),
    })
}

pub(super) fn load(path: &Path) -> Result<Sae, SaeError> {
    let mut npz = open(path)?;
    let mut tensors = BTreeMap::new();
    for name in ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"] {
        tensors.insert(name.to_owned(), array(&mut npz, path, name)?);
    }
    let d_in = tensors["b_dec"].len();
    let d_sae = tensors["threshold"].len();
    // SAELens: an embedding SAE was trained on the embedding before Gemma's
    // sqrt(d_model) scale, so its encoder is divided by it and its decoder multiplied.
    if path.to_string_lossy().contains("embedding") {
        let scale = (d_in as f32).sqrt();
        tensors
            .get_mut("W_enc")
            .expect("read above")
            .mapv_inplace(|w| w / scale);
        tensors
            .get_mut("W_dec")
            .expect("read above")
            .mapv_inplace(|w| w * scale);
    }
    Sae::from_tensors(
        tensors,
        path,
        Sae {
            d_in,
            d_sae,
            architecture: Architecture::JumpRelu,
            apply_b_dec_to_input: false,
            normalization: Normalization::None,
            hook: hook_from_path(path),
            w_enc: ndarray::Array2::zeros((0, 0)),
            b_enc: ndarray::Array1::zeros(0),
            w_dec: ndarray::Array2::zeros((0, 0)),
            b_dec: ndarray::Array1::zeros(0),
            threshold: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_comes_from_the_release_and_layer_as_saelens_reads_them() {
        let hook = |p: &str| hook_from_path(Path::new(p)).map(|h| h.name);
        assert_eq!(
            hook("dl/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz").as_deref(),
            Some("blocks.12.hook_resid_post")
        );
        assert_eq!(
            hook("gemma-scope-9b-pt-mlp/layer_3/width_131k/average_l0_9").as_deref(),
            Some("blocks.3.hook_mlp_out")
        );
        assert_eq!(
            hook("gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6").as_deref(),
            Some("hook_embed")
        );
        assert_eq!(
            hook("gemma-scope-2b-pt-att/layer_3/width_16k/x").as_deref(),
            None,
            "attention SAEs read hook_z flattened over heads, which qexp does not reshape"
        );
        assert_eq!(hook("elsewhere/params.npz"), None);
    }
}
