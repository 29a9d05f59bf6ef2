//! Hook-point names and head shorthands, for checking references before a model is
//! loaded (exact against the manifest when there is one, by pattern when not).

use crate::manifest::Manifest;
use crate::plan::HookRef;

/// Hook points inside `blocks.L.` (TransformerLens names).
const BLOCK_HOOKS: &[&str] = &[
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
];
const MODEL_HOOKS: &[&str] = &[
    "hook_embed",
    "hook_pos_embed",
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
];
/// Block hooks whose third axis is the head (the pattern's second).
const PER_HEAD: &[&str] = &[
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
];

/// `L1H11` -> (1, 11).
pub fn parse_head(text: &str) -> Option<(usize, usize)> {
    let rest = text.strip_prefix('L')?;
    let (layer, head) = rest.split_once('H')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (all_digits(layer) && all_digits(head))
        .then(|| Some((layer.parse().ok()?, head.parse().ok()?)))?
}

/// With no manifest: every name of the layer `path` mentions (layer 0 if none), so a
/// name of the right shape passes and a misspelt one gets a suggestion.
pub fn generic_names(path: &str) -> Vec<String> {
    let layer = path
        .strip_prefix("blocks.")
        .and_then(|rest| rest.split('.').next())
        .filter(|l| l.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("0");
    MODEL_HOOKS
        .iter()
        .map(|h| (*h).to_owned())
        .chain(BLOCK_HOOKS.iter().map(|h| format!("blocks.{layer}.{h}")))
        .collect()
}

/// The layer of a `blocks.L.` hook.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn block_suffix(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("blocks.")?;
    let (_, suffix) = rest.split_once('.')?;
    Some(suffix)
}

/// `None` if the hook has no head axis; `Some(None)` if it has one of unknown size.
pub fn head_count(name: &str, manifest: Option<&Manifest>) -> Option<Option<usize>> {
    let suffix = block_suffix(name)?;
    if !PER_HEAD.contains(&suffix) {
        return None;
    }
    Some(manifest.map(|m| match suffix {
        "attn.hook_k" | "attn.hook_v" | "attn.hook_rot_k" => m.config.n_kv_heads,
        _ => m.config.n_heads,
    }))
}

/// The width an SAE on this hook reads: the last axis for a selected head (d_head, or
/// d_model for `hook_result`), else every non-batch, non-position axis together.
pub fn width(hook: &HookRef, manifest: Option<&Manifest>) -> Option<usize> {
    let m = manifest?;
    let info = m.hook(&hook.name)?;
    let dim = |d: &str| -> Option<usize> {
        d.parse().ok().or(match d {
            "d_model" => Some(m.config.d_model),
            _ => None,
        })
    };
    let dims: Vec<usize> = info
        .shape
        .iter()
        .skip(2)
        .map(|d| dim(d))
        .collect::<Option<Vec<_>>>()?;
    if hook.head.is_some() || hook.head_from.is_some() {
        dims.last().copied()
    } else {
        Some(dims.iter().product())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_shorthand() {
        assert_eq!(parse_head("L1H11"), Some((1, 11)));
        assert_eq!(parse_head("L1H"), None);
        assert_eq!(parse_head("loss"), None);
    }
}
