//! Lays out a [`Transformer`] as an ONNX graph whose intermediate tensors are hook points
//! named as in TransformerLens.
//!
//! Attention is spelled out op by op (no fused attention kernel), so q, k, v, the scores,
//! the pattern and z all exist as tensors that a variant can read or rewrite.

use ndarray::{Array2, ArrayD};

use super::ExportError;
use super::graph::{GraphBuilder, attr_int, attr_ints};
use crate::manifest::{
    ATTENTION_MASK, INPUT_IDS, LOGITS, POSITIONS, attention_keys, attention_values,
};
use crate::model::{
    Mlp, Normalization, Positional, RopeScaling, Transformer, TransformerConfig, weight_names,
};
use crate::onnx::BOOL;

/// Masked attention scores are set to the lowest finite f32 (as HF does) rather than
/// TransformerLens' -inf, so a row with every key masked gives a uniform pattern, not NaN.
const MASKED_SCORE: f32 = f32::MIN;

/// Tensors every layer reads, computed once per forward pass.
struct Shared {
    positions: String,
    /// `[batch, 1, query_pos, key_pos]` boolean masks, global first, then one per window.
    global_mask: String,
    windowed_masks: Vec<(usize, String)>,
    masked_score: String,
    rotary: Option<(String, String)>,
}

pub(super) fn build(t: &Transformer, b: &mut GraphBuilder) -> Result<(), ExportError> {
    let cfg = &t.config;
    let weights = Weights { t };
    b.set_scope("inputs");
    let shared = shared_tensors(cfg, b)?;

    b.set_scope("embed");
    let w_e = weights.write(b, weight_names::W_E)?;
    let mut embed = b.op("Gather", &[&w_e, INPUT_IDS], vec![attr_int("axis", 0)]);
    if let Some(scale) = cfg.embed_scale {
        let scale = b.float_scalar(scale);
        embed = b.op("Mul", &[&embed, &scale], vec![]);
    }
    let embed = b.hook(
        "hook_embed",
        &embed,
        &["batch", "pos", "d_model"],
        "token embedding (W_E row of each token)",
    );
    let mut resid = embed.clone();
    if cfg.positional == Positional::Learned {
        let w_pos = weights.write(b, weight_names::W_POS)?;
        let pos = b.op(
            "Gather",
            &[&w_pos, &shared.positions],
            vec![attr_int("axis", 0)],
        );
        let axes = b.ints(&[0]);
        let pos = b.op("Unsqueeze", &[&pos, &axes], vec![]);
        let shape = b.op("Shape", &[&embed], vec![]);
        let pos = b.op("Expand", &[&pos, &shape], vec![]);
        let pos = b.hook(
            "hook_pos_embed",
            &pos,
            &["batch", "pos", "d_model"],
            "learned position embedding (W_pos row of each position)",
        );
        resid = b.op("Add", &[&embed, &pos], vec![]);
    }

    for layer in 0..cfg.n_layers {
        resid = block(cfg, &weights, b, &shared, layer, &resid)?;
    }

    b.set_scope("ln_final");
    let normalized = norm(cfg, &weights, b, &resid, "ln_final")?;
    b.set_scope("unembed");
    let unembed = if cfg.tied_embeddings {
        // ONNX Runtime folds this transpose of a constant once, at session load.
        let w_e = weight_names::W_E;
        b.op("Transpose", &[w_e], vec![attr_ints("perm", &[1, 0])])
    } else {
        weights.write(b, weight_names::W_U)?
    };
    let mut logits = b.op("MatMul", &[&normalized, &unembed], vec![]);
    if cfg.bias.unembed {
        let b_u = weights.write(b, weight_names::B_U)?;
        logits = b.op("Add", &[&logits, &b_u], vec![]);
    }
    if let Some(cap) = cfg.final_softcap {
        logits = soft_cap(b, &logits, cap);
    }
    b.op_into("Identity", &[&logits], LOGITS, vec![]);
    Ok(())
}

fn shared_tensors(cfg: &TransformerConfig, b: &mut GraphBuilder) -> Result<Shared, ExportError> {
    let shape = b.op("Shape", &[INPUT_IDS], vec![]);
    let one = b.ints(&[1]);
    let two = b.ints(&[2]);
    let zero_axis = b.ints(&[0]);
    let seq_len = b.op("Slice", &[&shape, &one, &two, &zero_axis], vec![]);
    let seq_len = b.op("Squeeze", &[&seq_len, &zero_axis], vec![]);
    let start = b.int_scalar(0);
    let step = b.int_scalar(1);
    // Named, so a key/value cache can shift it by the cached length: positions are
    // absolute, and the keys are every position the attention mask covers.
    b.op_into("Range", &[&start, &seq_len, &step], POSITIONS, vec![]);
    let positions = POSITIONS.to_owned();
    let mask_shape = b.op("Shape", &[ATTENTION_MASK], vec![]);
    let key_len = b.op("Slice", &[&mask_shape, &one, &two, &zero_axis], vec![]);
    let key_len = b.op("Squeeze", &[&key_len, &zero_axis], vec![]);
    let key_positions = b.op("Range", &[&start, &key_len, &step], vec![]);

    let axis_1 = b.ints(&[1]);
    let query_pos = b.op("Unsqueeze", &[&positions, &axis_1], vec![]);
    let key_pos = b.op("Unsqueeze", &[&key_positions, &zero_axis], vec![]);
    let causal = b.op("LessOrEqual", &[&key_pos, &query_pos], vec![]);
    let axes_1_2 = b.ints(&[1, 2]);
    let keys = b.op("Unsqueeze", &[ATTENTION_MASK, &axes_1_2], vec![]);
    let keys = b.op("Cast", &[&keys], vec![attr_int("to", i64::from(BOOL))]);
    let global_mask = b.op("And", &[&causal, &keys], vec![]);

    let mut windowed_masks = Vec::new();
    let distance = b.op("Sub", &[&query_pos, &key_pos], vec![]);
    for window in cfg.attention_windows.iter().flatten() {
        if windowed_masks.iter().any(|(w, _)| w == window) {
            continue;
        }
        let limit = b.int_scalar(*window as i64);
        let near = b.op("Less", &[&distance, &limit], vec![]);
        let mask = b.op("And", &[&global_mask, &near], vec![]);
        windowed_masks.push((*window, mask));
    }
    let masked_score = b.float_scalar(MASKED_SCORE);

    let rotary = match cfg.positional {
        Positional::Rotary { base, scaling, .. } => {
            let width = cfg.positional.rotary_dim(cfg.d_head);
            let (cos, sin) = rotary_tables(cfg.n_ctx, width, base, scaling);
            b.weight("rotary.cos", &cos)?;
            b.weight("rotary.sin", &sin)?;
            let shape = b.ints(&[1, -1, 1, width as i64]);
            let mut gather = |table: &str| {
                let rows = b.op("Gather", &[table, &positions], vec![attr_int("axis", 0)]);
                b.op("Reshape", &[&rows, &shape], vec![])
            };
            Some((gather("rotary.cos"), gather("rotary.sin")))
        }
        Positional::Learned => None,
    };

    Ok(Shared {
        positions,
        global_mask,
        windowed_masks,
        masked_score,
        rotary,
    })
}

/// HF's rotary tables in the rotate-half layout over the `width` rotated dimensions of a
/// head: for position p and dimension i, angle = p / base^(2(i mod w/2)/w). Computed in
/// f64, then rounded.
fn rotary_tables(
    n_ctx: usize,
    width: usize,
    base: f32,
    scaling: Option<RopeScaling>,
) -> (ArrayD<f32>, ArrayD<f32>) {
    let half = width / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / f64::from(base).powf((2 * i) as f64 / width as f64))
        .map(|f| scaling.map_or(f, |s| s.apply(f)))
        .collect();
    let angle = |p: usize, i: usize| p as f64 * inv_freq[i % half];
    let cos = Array2::from_shape_fn((n_ctx, width), |(p, i)| angle(p, i).cos() as f32);
    let sin = Array2::from_shape_fn((n_ctx, width), |(p, i)| angle(p, i).sin() as f32);
    (cos.into_dyn(), sin.into_dyn())
}

/// Writes weights on first use, so the data file holds exactly what the graph reads.
struct Weights<'a> {
    t: &'a Transformer,
}

impl Weights<'_> {
    fn write(&self, b: &mut GraphBuilder, name: &str) -> Result<String, ExportError> {
        let array = self.t.weights.get(name).ok_or_else(|| {
            ExportError::Internal(format!("the checkpoint reader did not provide `{name}`"))
        })?;
        Ok(b.model_weight(name, array)?)
    }
}

fn block(
    cfg: &TransformerConfig,
    weights: &Weights<'_>,
    b: &mut GraphBuilder,
    shared: &Shared,
    layer: usize,
    resid: &str,
) -> Result<String, ExportError> {
    let name = |suffix: &str| weight_names::block(layer, suffix);
    b.set_scope(name("attn"));
    let resid_pre = b.hook(
        &name("hook_resid_pre"),
        resid,
        &["batch", "pos", "d_model"],
        "residual stream entering the block",
    );
    let ln1 = norm(cfg, weights, b, &resid_pre, &name("ln1"))?;
    let attn_out = attention(cfg, weights, b, shared, layer, &ln1)?;
    let attn_out = sublayer_output(cfg, weights, b, &attn_out, layer, "ln1_post", "attn")?;
    let resid_post = if cfg.parallel_attn_mlp {
        // Both sublayers read the block's input; there is no stream between them.
        b.set_scope(name("mlp"));
        let ln2 = norm(cfg, weights, b, &resid_pre, &name("ln2"))?;
        let mlp_out = mlp(cfg, weights, b, layer, &ln2)?;
        let mlp_out = sublayer_output(cfg, weights, b, &mlp_out, layer, "ln2_post", "mlp")?;
        let both = b.op("Add", &[&attn_out, &mlp_out], vec![]);
        b.op("Add", &[&resid_pre, &both], vec![])
    } else {
        let resid_mid = b.op("Add", &[&resid_pre, &attn_out], vec![]);
        let resid_mid = b.hook(
            &name("hook_resid_mid"),
            &resid_mid,
            &["batch", "pos", "d_model"],
            "residual stream after attention, before the MLP",
        );
        b.set_scope(name("mlp"));
        let ln2 = norm(cfg, weights, b, &resid_mid, &name("ln2"))?;
        let mlp_out = mlp(cfg, weights, b, layer, &ln2)?;
        let mlp_out = sublayer_output(cfg, weights, b, &mlp_out, layer, "ln2_post", "mlp")?;
        b.op("Add", &[&resid_mid, &mlp_out], vec![])
    };
    Ok(b.hook(
        &name("hook_resid_post"),
        &resid_post,
        &["batch", "pos", "d_model"],
        "residual stream leaving the block",
    ))
}

/// What a sublayer adds to the stream, hooked as `hook_attn_out` or `hook_mlp_out`: its
/// output, through its post-norm (`ln1_post`, `ln2_post`) where the model has one.
fn sublayer_output(
    cfg: &TransformerConfig,
    weights: &Weights<'_>,
    b: &mut GraphBuilder,
    out: &str,
    layer: usize,
    post_norm: &str,
    sublayer: &str,
) -> Result<String, ExportError> {
    let out = if cfg.post_norms {
        norm(cfg, weights, b, out, &weight_names::block(layer, post_norm))?
    } else {
        out.to_owned()
    };
    Ok(b.hook(
        &weight_names::block(layer, &format!("hook_{sublayer}_out")),
        &out,
        &["batch", "pos", "d_model"],
        if sublayer == "attn" {
            "attention output added to the residual stream"
        } else {
            "MLP output added to the residual stream"
        },
    ))
}

/// `cap * tanh(x / cap)`: Gemma-2's soft cap on attention scores and logits.
fn soft_cap(b: &mut GraphBuilder, x: &str, cap: f32) -> String {
    let cap = b.float_scalar(cap);
    let scaled = b.op("Div", &[x, &cap], vec![]);
    let squashed = b.op("Tanh", &[&scaled], vec![]);
    b.op("Mul", &[&squashed, &cap], vec![])
}

/// The model's LayerNorm or RMSNorm over the residual stream (`prefix` is `blocks.0.ln1`).
fn norm(
    cfg: &TransformerConfig,
    weights: &Weights<'_>,
    b: &mut GraphBuilder,
    x: &str,
    prefix: &str,
) -> Result<String, ExportError> {
    let dims = ["batch", "pos", "d_model"];
    norm_over_last_axis(
        cfg.normalization,
        cfg.norm_eps,
        weights,
        b,
        x,
        prefix,
        &dims,
    )
}

/// LayerNorm or RMSNorm over the last axis of `x` (shaped `dims`), with TransformerLens'
/// hooks: `hook_scale` is the divisor, `hook_normalized` the LayerNorm output after its
/// weight and bias, or the RMSNorm output before its weight (as TransformerLens places
/// them).
fn norm_over_last_axis(
    kind: Normalization,
    eps: f32,
    weights: &Weights<'_>,
    b: &mut GraphBuilder,
    x: &str,
    prefix: &str,
    dims: &[&str],
) -> Result<String, ExportError> {
    let mean = |b: &mut GraphBuilder, x: &str| {
        b.op(
            "ReduceMean",
            &[x],
            vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
        )
    };
    let w = weights.write(b, &format!("{prefix}.w"))?;
    let eps = b.float_scalar(eps);
    let centred = match kind {
        Normalization::LayerNorm => {
            let mu = mean(b, x);
            b.op("Sub", &[x, &mu], vec![])
        }
        Normalization::RmsNorm => x.to_owned(),
    };
    let squared = b.op("Mul", &[&centred, &centred], vec![]);
    let variance = mean(b, &squared);
    let variance = b.op("Add", &[&variance, &eps], vec![]);
    let scale = b.op("Sqrt", &[&variance], vec![]);
    let mut scale_dims = dims.to_vec();
    *scale_dims.last_mut().expect("a norm's input has an axis") = "1";
    let scale = b.hook(
        &format!("{prefix}.hook_scale"),
        &scale,
        &scale_dims,
        "the norm's divisor: sqrt(mean square + eps)",
    );
    let normalized = b.op("Div", &[&centred, &scale], vec![]);
    Ok(match kind {
        Normalization::LayerNorm => {
            let bias = weights.write(b, &format!("{prefix}.b"))?;
            let scaled = b.op("Mul", &[&normalized, &w], vec![]);
            let shifted = b.op("Add", &[&scaled, &bias], vec![]);
            b.hook(
                &format!("{prefix}.hook_normalized"),
                &shifted,
                dims,
                "LayerNorm output, after its weight and bias",
            )
        }
        Normalization::RmsNorm => {
            let normalized = b.hook(
                &format!("{prefix}.hook_normalized"),
                &normalized,
                dims,
                "RMSNorm output before its weight (x / scale)",
            );
            b.op("Mul", &[&normalized, &w], vec![])
        }
    })
}

fn attention(
    cfg: &TransformerConfig,
    weights: &Weights<'_>,
    b: &mut GraphBuilder,
    shared: &Shared,
    layer: usize,
    x: &str,
) -> Result<String, ExportError> {
    let name = |suffix: &str| weight_names::block(layer, suffix);
    let (n_heads, n_kv, d_head) = (cfg.n_heads as i64, cfg.n_kv_heads as i64, cfg.d_head as i64);
    let heads = n_heads.to_string();
    let kv_heads = n_kv.to_string();
    let d_head_s = d_head.to_string();

    let project =
        |b: &mut GraphBuilder, w: &str, bias: &str, heads: i64| -> Result<String, ExportError> {
            let w = weights.write(b, &name(w))?;
            let mut y = b.op("MatMul", &[x, &w], vec![]);
            if cfg.bias.qkv {
                let bias = weights.write(b, &name(bias))?;
                y = b.op("Add", &[&y, &bias], vec![]);
            }
            let shape = b.ints(&[0, 0, heads, d_head]);
            Ok(b.op("Reshape", &[&y, &shape], vec![]))
        };
    let q = project(b, "attn.W_Q", "attn.b_Q", n_heads)?;
    let k = project(b, "attn.W_K", "attn.b_K", n_kv)?;
    let v = project(b, "attn.W_V", "attn.b_V", n_kv)?;
    let mut q = b.hook(
        &name("attn.hook_q"),
        &q,
        &["batch", "pos", &heads, &d_head_s],
        "queries, per head",
    );
    let mut k = b.hook(
        &name("attn.hook_k"),
        &k,
        &["batch", "pos", &kv_heads, &d_head_s],
        "keys, per key/value head",
    );
    let v = b.hook(
        &name("attn.hook_v"),
        &v,
        &["batch", "pos", &kv_heads, &d_head_s],
        "values, per key/value head",
    );

    if cfg.qk_norm {
        // Qwen3's per-head RMSNorm, between hook_q/hook_k and the rotary embedding, where
        // TransformerLens' `use_qk_norm` puts it.
        let (q_dims, k_dims) = (
            ["batch", "pos", &heads, &d_head_s],
            ["batch", "pos", &kv_heads, &d_head_s],
        );
        let rms = Normalization::RmsNorm;
        q = norm_over_last_axis(
            rms,
            cfg.norm_eps,
            weights,
            b,
            &q,
            &name("attn.q_norm"),
            &q_dims,
        )?;
        k = norm_over_last_axis(
            rms,
            cfg.norm_eps,
            weights,
            b,
            &k,
            &name("attn.k_norm"),
            &k_dims,
        )?;
    }

    if let Some((cos, sin)) = &shared.rotary {
        let width = cfg.positional.rotary_dim(cfg.d_head) as i64;
        let rotated_q = rotate(b, &q, cos, sin, width, d_head);
        let rotated_k = rotate(b, &k, cos, sin, width, d_head);
        q = b.hook(
            &name("attn.hook_rot_q"),
            &rotated_q,
            &["batch", "pos", &heads, &d_head_s],
            "queries after the rotary embedding",
        );
        k = b.hook(
            &name("attn.hook_rot_k"),
            &rotated_k,
            &["batch", "pos", &kv_heads, &d_head_s],
            "keys after the rotary embedding",
        );
    }

    // Scores as [batch, kv_head, group, query_pos, key_pos]: each key/value head serves
    // `group` query heads, so grouped-query attention needs no copies of k or v.
    // Named, so a key/value cache can put the cached positions in front.
    b.op_into("Identity", &[&k], &attention_keys(layer), vec![]);
    b.op_into("Identity", &[&v], &attention_values(layer), vec![]);
    let (k, v) = (attention_keys(layer), attention_values(layer));

    let group = cfg.gqa_group() as i64;
    let q_t = b.op("Transpose", &[&q], vec![attr_ints("perm", &[0, 2, 1, 3])]);
    let q_grouped_shape = b.ints(&[0, n_kv, group, -1, d_head]);
    let q_grouped = b.op("Reshape", &[&q_t, &q_grouped_shape], vec![]);
    let k_t = b.op("Transpose", &[&k], vec![attr_ints("perm", &[0, 2, 3, 1])]);
    let axis_2 = b.ints(&[2]);
    let k_grouped = b.op("Unsqueeze", &[&k_t, &axis_2], vec![]);
    let scores = b.op("MatMul", &[&q_grouped, &k_grouped], vec![]);
    let scores = if cfg.attn_scale == 1.0 {
        scores
    } else {
        let scale = b.float_scalar(cfg.attn_scale);
        b.op("Mul", &[&scores, &scale], vec![])
    };
    let scores = match cfg.attn_softcap {
        Some(cap) => soft_cap(b, &scores, cap),
        None => scores,
    };
    let scores_shape = b.op("Shape", &[&scores], vec![]);
    // [batch, n_kv, group, q, k] -> [batch, n_heads, q, k]: take q and k from the shape.
    let three = b.ints(&[3]);
    let five = b.ints(&[5]);
    let zero = b.ints(&[0]);
    let qk_dims = b.op("Slice", &[&scores_shape, &three, &five, &zero], vec![]);
    let lead = b.ints(&[0, n_heads]);
    let heads_shape = b.op("Concat", &[&lead, &qk_dims], vec![attr_int("axis", 0)]);
    let scores = b.op("Reshape", &[&scores, &heads_shape], vec![]);
    let mask = match cfg.attention_windows[layer] {
        None => &shared.global_mask,
        Some(window) => {
            &shared
                .windowed_masks
                .iter()
                .find(|(w, _)| *w == window)
                .expect("every window has a mask")
                .1
        }
    };
    let scores = b.op("Where", &[mask, &scores, &shared.masked_score], vec![]);
    let pattern_dims = ["batch", heads.as_str(), "query_pos", "key_pos"];
    let scores = b.hook(
        &name("attn.hook_attn_scores"),
        &scores,
        &pattern_dims,
        "scaled, masked attention scores",
    );
    let pattern = b.op("Softmax", &[&scores], vec![attr_int("axis", -1)]);
    let pattern = b.hook(
        &name("attn.hook_pattern"),
        &pattern,
        &pattern_dims,
        "attention pattern (softmax over key positions)",
    );

    let grouped_lead = b.ints(&[0, n_kv, group]);
    let grouped_shape = b.op(
        "Concat",
        &[&grouped_lead, &qk_dims],
        vec![attr_int("axis", 0)],
    );
    let pattern_grouped = b.op("Reshape", &[&pattern, &grouped_shape], vec![]);
    let v_t = b.op("Transpose", &[&v], vec![attr_ints("perm", &[0, 2, 1, 3])]);
    let v_grouped = b.op("Unsqueeze", &[&v_t, &axis_2], vec![]);
    let z = b.op("MatMul", &[&pattern_grouped, &v_grouped], vec![]);
    let z_shape = b.ints(&[0, n_heads, -1, d_head]);
    let z = b.op("Reshape", &[&z, &z_shape], vec![]);
    let z = b.op("Transpose", &[&z], vec![attr_ints("perm", &[0, 2, 1, 3])]);
    let z = b.hook(
        &name("attn.hook_z"),
        &z,
        &["batch", "pos", &heads, &d_head_s],
        "attention-weighted values, per head",
    );

    let w_o = weights.write(b, &name("attn.W_O"))?;
    let flat_shape = b.ints(&[0, 0, n_heads * d_head]);
    let z_flat = b.op("Reshape", &[&z, &flat_shape], vec![]);
    let mut out = b.op("MatMul", &[&z_flat, &w_o], vec![]);
    if cfg.bias.attn_out {
        let b_o = weights.write(b, &name("attn.b_O"))?;
        out = b.op("Add", &[&out, &b_o], vec![]);
    }

    // Each head's own write to the residual stream, z_h @ W_O[h]. A side branch, as
    // TransformerLens' `use_attn_result`: computed only when a variant asks for it.
    let per_head_w_o_shape = b.ints(&[n_heads, d_head, cfg.d_model as i64]);
    let w_o_heads = b.op("Reshape", &[&w_o, &per_head_w_o_shape], vec![]);
    let axis_3 = b.ints(&[3]);
    let z_rows = b.op("Unsqueeze", &[&z, &axis_3], vec![]);
    let result = b.op("MatMul", &[&z_rows, &w_o_heads], vec![]);
    let result = b.op("Squeeze", &[&result, &axis_3], vec![]);
    b.hook(
        &name("attn.hook_result"),
        &result,
        &["batch", "pos", &heads, "d_model"],
        "each head's output z_h @ W_O[h] (sums over heads, plus b_O, to hook_attn_out)",
    );
    Ok(out)
}

/// `x * cos + rotate_half(x) * sin`, with `rotate_half([a, b]) = [-b, a]` over the first
/// `width` dimensions of the last axis; the other `d_head - width` pass through.
fn rotate(b: &mut GraphBuilder, x: &str, cos: &str, sin: &str, width: i64, d_head: i64) -> String {
    if width < d_head {
        let parts = b.ints(&[width, d_head - width]);
        let [turned, kept] = b.op_n("Split", &[x, &parts], vec![attr_int("axis", -1)]);
        let turned = rotate(b, &turned, cos, sin, width, width);
        return b.op("Concat", &[&turned, &kept], vec![attr_int("axis", -1)]);
    }
    let halves = b.ints(&[d_head / 2, d_head / 2]);
    let [first, second] = b.op_n("Split", &[x, &halves], vec![attr_int("axis", -1)]);
    let neg_second = b.op("Neg", &[&second], vec![]);
    let rotated = b.op("Concat", &[&neg_second, &first], vec![attr_int("axis", -1)]);
    let unrotated_part = b.op("Mul", &[x, cos], vec![]);
    let rotated_part = b.op("Mul", &[&rotated, sin], vec![]);
    b.op("Add", &[&unrotated_part, &rotated_part], vec![])
}

fn mlp(
    cfg: &TransformerConfig,
    weights: &Weights<'_>,
    b: &mut GraphBuilder,
    layer: usize,
    x: &str,
) -> Result<String, ExportError> {
    let name = |suffix: &str| weight_names::block(layer, suffix);
    let w_in = weights.write(b, &name("mlp.W_in"))?;
    let w_out = weights.write(b, &name("mlp.W_out"))?;
    let d_mlp = cfg.d_mlp.to_string();
    let dims = ["batch", "pos", d_mlp.as_str()];
    let post = match cfg.mlp {
        Mlp::GatedSilu | Mlp::GatedGeluTanh => {
            let w_gate = weights.write(b, &name("mlp.W_gate"))?;
            let gate = b.op("MatMul", &[x, &w_gate], vec![]);
            let gate = b.hook(
                &name("mlp.hook_pre"),
                &gate,
                &dims,
                "gate pre-activation x @ W_gate",
            );
            let up = b.op("MatMul", &[x, &w_in], vec![]);
            let up = b.hook(
                &name("mlp.hook_pre_linear"),
                &up,
                &dims,
                "linear branch x @ W_in",
            );
            let activated = if cfg.mlp == Mlp::GatedGeluTanh {
                gelu_tanh(b, &gate)
            } else {
                let sigmoid = b.op("Sigmoid", &[&gate], vec![]);
                b.op("Mul", &[&gate, &sigmoid], vec![])
            };
            b.op("Mul", &[&activated, &up], vec![])
        }
        Mlp::GeluNew | Mlp::Gelu => {
            let mut pre = b.op("MatMul", &[x, &w_in], vec![]);
            if cfg.bias.mlp {
                let b_in = weights.write(b, &name("mlp.b_in"))?;
                pre = b.op("Add", &[&pre, &b_in], vec![]);
            }
            let pre = b.hook(
                &name("mlp.hook_pre"),
                &pre,
                &dims,
                "pre-activation x @ W_in + b_in",
            );
            if cfg.mlp == Mlp::Gelu {
                gelu_exact(b, &pre)
            } else {
                gelu_tanh(b, &pre)
            }
        }
    };
    let post = b.hook(
        &name("mlp.hook_post"),
        &post,
        &dims,
        "activation, the input of W_out",
    );
    let mut out = b.op("MatMul", &[&post, &w_out], vec![]);
    if cfg.bias.mlp {
        let b_out = weights.write(b, &name("mlp.b_out"))?;
        out = b.op("Add", &[&out, &b_out], vec![]);
    }
    Ok(out)
}

/// The exact GELU, `0.5 x (1 + erf(x / sqrt(2)))` (opset 17 has no Gelu operator).
fn gelu_exact(b: &mut GraphBuilder, x: &str) -> String {
    let inv_sqrt_2 = b.float_scalar(std::f32::consts::FRAC_1_SQRT_2);
    let half = b.float_scalar(0.5);
    let one = b.float_scalar(1.0);
    let scaled = b.op("Mul", &[x, &inv_sqrt_2], vec![]);
    let erf = b.op("Erf", &[&scaled], vec![]);
    let gate = b.op("Add", &[&erf, &one], vec![]);
    let halved = b.op("Mul", &[x, &half], vec![]);
    b.op("Mul", &[&halved, &gate], vec![])
}

/// GPT-2's `gelu_new`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
fn gelu_tanh(b: &mut GraphBuilder, x: &str) -> String {
    let cubic = b.float_scalar(0.044_715);
    let sqrt_2_over_pi = b.float_scalar((2.0 / std::f64::consts::PI).sqrt() as f32);
    let half = b.float_scalar(0.5);
    let one = b.float_scalar(1.0);
    let x2 = b.op("Mul", &[x, x], vec![]);
    let x3 = b.op("Mul", &[&x2, x], vec![]);
    let term = b.op("Mul", &[&x3, &cubic], vec![]);
    let inner = b.op("Add", &[x, &term], vec![]);
    let inner = b.op("Mul", &[&inner, &sqrt_2_over_pi], vec![]);
    let tanh = b.op("Tanh", &[&inner], vec![]);
    let gate = b.op("Add", &[&tanh, &one], vec![]);
    let halved = b.op("Mul", &[x, &half], vec![]);
    b.op("Mul", &[&halved, &gate], vec![])
}
