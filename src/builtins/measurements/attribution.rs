//! What feature attribution needs, shared by `feature_attribution` and
//! `feature_attribution_at`: a query SAE on the head, the head's hooks, and the rotary
//! tables that split its attention score over the SAE's features.

use ndarray::{ArrayD, Axis, s};

use crate::builtins::args::HeadArg;
use crate::builtins::measurements::{Graph, Reads};
use crate::hooks;
use crate::plan::Plan;
use crate::runtime::Forward;
use crate::sae::Sae;
use crate::session::{Failure, SaeSplice, Session, argmax_attention};

/// A head's hooks and rotary tables, for splitting its attention scores over features.
pub(crate) struct ScoreContext {
    pub q_hook: String,
    pub key_hook: String,
    pub pattern_hook: String,
    pub head: usize,
    pub kv_head: usize,
    pub rotation: Option<(ArrayD<f32>, ArrayD<f32>)>,
    pub attn_scale: f32,
}

/// The key hook the scores read: rotated keys on a rotary model.
pub(crate) fn key_suffix(rotary: bool) -> &'static str {
    if rotary { hooks::ROT_K } else { hooks::K }
}

/// What attribution reads from the clean model: the head's query, keys and pattern.
pub(crate) fn reads(plan: &Plan, head: &HeadArg) -> Reads {
    let mut reads = Reads::default();
    reads
        .add(Graph::Clean, head.hook(hooks::Q))
        .add(Graph::Clean, head.hook(key_suffix(plan.model.rotary)))
        .add(Graph::Clean, head.hook(hooks::PATTERN));
    reads
}

/// The SAE `sae`, which must read `head`'s query, and what splitting that head's scores
/// needs.
pub(crate) fn inputs(
    s: &mut Session,
    sae: &str,
    head: &HeadArg,
) -> Result<(std::sync::Arc<Sae>, ScoreContext), Failure> {
    let (layer, head) = head.resolve(&s.values)?;
    let SaeSplice {
        sae: model_sae,
        target,
        ..
    } = s.sae_splice(sae)?;
    let q_hook = hooks::block(layer, hooks::Q);
    if target.hook != q_hook || target.head != Some(head) {
        return Err(format!(
            "SAE `{sae}` reads `{}`{}; attribution to features needs an SAE on L{layer}H{head}'s query (`{q_hook}[head = {head}]`)",
            target.hook,
            target
                .head
                .map(|h| format!("[head = {h}]"))
                .unwrap_or_default(),
        ));
    }
    Ok((model_sae, score_context(s, layer, head)?))
}

pub(crate) fn score_context(
    s: &Session,
    layer: usize,
    head: usize,
) -> Result<ScoreContext, Failure> {
    let config = &s.model.manifest.config;
    let rotary = matches!(config.positional, crate::model::Positional::Rotary { .. });
    let rotation = if rotary {
        Some((
            s.model.weight("rotary.cos").map_err(Session::runtime)?,
            s.model.weight("rotary.sin").map_err(Session::runtime)?,
        ))
    } else {
        None
    };
    Ok(ScoreContext {
        q_hook: hooks::block(layer, hooks::Q),
        key_hook: hooks::block(layer, key_suffix(rotary)),
        pattern_hook: hooks::block(layer, hooks::PATTERN),
        head,
        kv_head: head / config.gqa_group(),
        rotation,
        attn_scale: config.attn_scale,
    })
}

impl ScoreContext {
    pub(crate) fn outputs(&self) -> [&str; 3] {
        [&self.q_hook, &self.key_hook, &self.pattern_hook]
    }

    /// At batch row `row`, query `query`: the key position (given, or where the head
    /// attends most) and each active feature's `(feature, activation, share of the
    /// score)`, the share in the query's own space (the SAE's output scale applied).
    pub(crate) fn shares(
        &self,
        sae: &Sae,
        forward: &Forward,
        row: usize,
        query: usize,
        key_pos: Option<usize>,
    ) -> (usize, Vec<(usize, f32, f64)>) {
        use crate::analysis::score_attribution::{Rotation, feature_contributions};
        let key_pos = key_pos.unwrap_or_else(|| {
            argmax_attention(&forward.hooks[&self.pattern_hook], row, self.head, query).0
        });
        let x = forward.hooks[&self.q_hook]
            .slice(s![row, query, self.head, ..])
            .to_owned();
        let acts = sae.encode(x.view().insert_axis(Axis(0)));
        let key = forward.hooks[&self.key_hook].slice(s![row, key_pos, self.kv_head, ..]);
        let rotation = self.rotation.as_ref().map(|(cos, sin)| Rotation {
            cos: cos.slice(s![query, ..]),
            sin: sin.slice(s![query, ..]),
        });
        // A feature's decoded direction is in the SAE's normalized space; in the query's
        // space it is scaled by the token's output scale.
        let output_scale = f64::from(sae.output_scale(x.view()));
        let shares = feature_contributions(
            acts.row(0),
            sae.w_dec.view(),
            rotation.as_ref(),
            key,
            self.attn_scale,
        )
        .into_iter()
        .map(|(f, a, share)| (f, a, share * output_scale))
        .collect();
        (key_pos, shares)
    }
}
