//! The hook vocabulary, in one place: TransformerLens' hook-point names, which of them
//! have a head axis (counting query heads or key/value heads) and where their head and
//! position axes are, and the `L1H11` head shorthand. Export registers its hooks from
//! these names (and refuses any other), the checker resolves references with them,
//! compile selects heads and positions by their axes, and measurements name the hooks
//! they read through them.

use crate::manifest::Manifest;

/// Which heads a hook's head axis counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    None,
    /// One slice per query head.
    Query,
    /// One slice per key/value head (fewer under grouped-query attention).
    KeyValue,
}

/// How a hook's tensor is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, pos, width]`: the residual stream and everything shaped like it.
    Stream,
    /// `[batch, pos, head, width]`.
    PerHead,
    /// `[batch, head, query_pos, key_pos]`: scores and patterns.
    QueryKey,
}

/// One hook point inside `blocks.L.`.
#[derive(Debug, Clone, Copy)]
pub struct HookPoint {
    pub suffix: &'static str,
    pub heads: Heads,
    pub layout: Layout,
}

const fn stream(suffix: &'static str) -> HookPoint {
    HookPoint {
        suffix,
        heads: Heads::None,
        layout: Layout::Stream,
    }
}

const fn per_head(suffix: &'static str, heads: Heads) -> HookPoint {
    HookPoint {
        suffix,
        heads,
        layout: Layout::PerHead,
    }
}

const fn query_key(suffix: &'static str) -> HookPoint {
    HookPoint {
        suffix,
        heads: Heads::Query,
        layout: Layout::QueryKey,
    }
}

pub const RESID_PRE: &str = "hook_resid_pre";
pub const RESID_MID: &str = "hook_resid_mid";
pub const RESID_POST: &str = "hook_resid_post";
pub const ATTN_OUT: &str = "hook_attn_out";
pub const MLP_OUT: &str = "hook_mlp_out";
pub const Q: &str = "attn.hook_q";
pub const K: &str = "attn.hook_k";
pub const V: &str = "attn.hook_v";
pub const ROT_Q: &str = "attn.hook_rot_q";
pub const ROT_K: &str = "attn.hook_rot_k";
pub const ATTN_SCORES: &str = "attn.hook_attn_scores";
pub const PATTERN: &str = "attn.hook_pattern";
pub const Z: &str = "attn.hook_z";
pub const RESULT: &str = "attn.hook_result";

/// Hook points inside `blocks.L.` (TransformerLens names).
pub const BLOCK_HOOKS: &[HookPoint] = &[
    stream(RESID_PRE),
    stream(RESID_MID),
    stream(RESID_POST),
    stream(ATTN_OUT),
    stream(MLP_OUT),
    stream("ln1.hook_scale"),
    stream("ln1.hook_normalized"),
    stream("ln2.hook_scale"),
    stream("ln2.hook_normalized"),
    stream("ln1_post.hook_scale"),
    stream("ln1_post.hook_normalized"),
    stream("ln2_post.hook_scale"),
    stream("ln2_post.hook_normalized"),
    per_head(Q, Heads::Query),
    per_head(K, Heads::KeyValue),
    per_head(V, Heads::KeyValue),
    per_head(ROT_Q, Heads::Query),
    per_head(ROT_K, Heads::KeyValue),
    per_head("attn.q_norm.hook_scale", Heads::Query),
    per_head("attn.q_norm.hook_normalized", Heads::Query),
    per_head("attn.k_norm.hook_scale", Heads::KeyValue),
    per_head("attn.k_norm.hook_normalized", Heads::KeyValue),
    query_key(ATTN_SCORES),
    query_key(PATTERN),
    per_head(Z, Heads::Query),
    per_head(RESULT, Heads::Query),
    stream("mlp.hook_pre"),
    stream("mlp.hook_pre_linear"),
    stream("mlp.hook_post"),
];

pub const EMBED: &str = "hook_embed";
pub const POS_EMBED: &str = "hook_pos_embed";
pub const FINAL_SCALE: &str = "ln_final.hook_scale";
pub const FINAL_NORMALIZED: &str = "ln_final.hook_normalized";
/// The model's output, which graphs expose like a hook.
pub const LOGITS: &str = "logits";

/// Hook points outside the blocks.
pub const MODEL_HOOKS: &[&str] = &[EMBED, POS_EMBED, FINAL_SCALE, FINAL_NORMALIZED];

/// `blocks.{layer}.{suffix}`.
pub fn block(layer: usize, suffix: &str) -> String {
    format!("blocks.{layer}.{suffix}")
}

/// `suffix` in every block of a model of `n_layers`; when the layer count is unknown
/// (the model was not read), one placeholder name that says so, for `qexp plan`.
pub fn every_block(n_layers: Option<usize>, suffix: &str) -> Vec<String> {
    match n_layers {
        Some(n) => (0..n).map(|layer| block(layer, suffix)).collect(),
        None => vec![format!("blocks.<every layer>.{suffix}")],
    }
}

/// Whether `name` is a hook point of the vocabulary (any layer).
pub fn is_known(name: &str) -> bool {
    MODEL_HOOKS.contains(&name) || (layer_of(name).is_some() && point(name).is_some())
}

/// The block hook point `name` is (`blocks.3.attn.hook_q` -> `attn.hook_q`'s entry).
pub fn point(name: &str) -> Option<&'static HookPoint> {
    let suffix = block_suffix(name)?;
    BLOCK_HOOKS.iter().find(|p| p.suffix == suffix)
}

/// The axes of a hook's tensor that interventions select on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Axes {
    pub rank: usize,
    pub head: Option<usize>,
    pub pos: usize,
}

/// Where `name`'s head and (query) position axes are.
pub fn axes(name: &str) -> Axes {
    match point(name).map(|p| p.layout) {
        Some(Layout::QueryKey) => Axes {
            rank: 4,
            head: Some(1),
            pos: 2,
        },
        Some(Layout::PerHead) => Axes {
            rank: 4,
            head: Some(2),
            pos: 1,
        },
        Some(Layout::Stream) | None => Axes {
            rank: 3,
            head: None,
            pos: 1,
        },
    }
}

/// Whether a hook's shape depends on the prompt's length beyond its position axis (so it
/// has no mean over tokens).
pub fn has_key_axis(name: &str) -> bool {
    point(name).is_some_and(|p| p.layout == Layout::QueryKey)
}

/// A reference to a hook point: a name, optionally one head and one position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRef {
    pub name: String,
    pub head: Option<usize>,
    /// A head chosen at run time (`head = HEAD` with `let HEAD = best_head(...)`).
    pub head_from: Option<String>,
    /// `None` for every position.
    pub pos: Option<i64>,
}

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
        .chain(
            BLOCK_HOOKS
                .iter()
                .map(|h| format!("blocks.{layer}.{}", h.suffix)),
        )
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
    let heads = point(name)?.heads;
    if heads == Heads::None {
        return None;
    }
    Some(manifest.map(|m| match heads {
        Heads::KeyValue => m.config.n_kv_heads,
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

    #[test]
    fn axes_follow_the_layout() {
        assert_eq!(axes("blocks.0.attn.hook_pattern").head, Some(1));
        assert_eq!(axes("blocks.0.attn.hook_z").head, Some(2));
        assert_eq!(axes("blocks.0.hook_resid_pre").head, None);
        assert!(is_known("blocks.12.attn.hook_rot_k"));
        assert!(is_known("ln_final.hook_scale"));
        assert!(!is_known("blocks.1.attn.hook_qq"));
        assert!(!is_known("blocks.x.attn.hook_q"));
    }
}
