//! Sparse autoencoders in SAELens' folder layout. For now: reading the shape a checker
//! needs from `cfg.json` (both the current `metadata` layout and pre-6.0 flat configs).

use std::path::Path;

use serde::Deserialize;

use crate::check::SaeShape;
use crate::plan::HookRef;

#[derive(Debug, Deserialize)]
struct Config {
    d_in: usize,
    d_sae: usize,
    #[serde(default)]
    hook_name: Option<String>,
    #[serde(default)]
    hook_head_index: Option<usize>,
    /// Pre-6.0 SAELens names.
    #[serde(default)]
    hook_point: Option<String>,
    #[serde(default)]
    hook_point_head_index: Option<usize>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    hook_name: Option<String>,
    #[serde(default)]
    hook_head_index: Option<usize>,
}

/// d_in, d_sae and the hook of the SAE folder `dir`, or why they cannot be read.
pub fn read_shape(dir: &Path) -> Result<SaeShape, String> {
    let path = dir.join("cfg.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config: Config = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not an SAELens config: {e}", path.display()))?;
    let metadata = config.metadata.as_ref();
    let hook = metadata
        .and_then(|m| m.hook_name.clone())
        .or(config.hook_name)
        .or(config.hook_point)
        .map(|name| HookRef {
            name,
            head: metadata
                .and_then(|m| m.hook_head_index)
                .or(config.hook_head_index)
                .or(config.hook_point_head_index),
            head_from: None,
            pos: None,
        });
    Ok(SaeShape {
        d_in: config.d_in,
        d_sae: config.d_sae,
        hook,
    })
}
