//! An SAE run inside the graph at a hook (or one head of it): encoder, the edit
//! (feature scaling or removal at chosen positions), decoder, with the SAE's run-time
//! normalization; its activations exposed as an output, and the hook replaced by the
//! reconstruction or, with the error term, by the activation plus the edit's change.

use super::{Edit, Pass, Target};
use crate::compile::CompileError;
use crate::hooks::Axes;
use crate::onnx::build::{attr_int, node};
use crate::onnx::{AttributeProto, NodeProto, attribute_proto};

/// An SAE at a hook: its activations exposed as `acts_output`; optionally chosen features
/// scaled (0 removes them) at chosen positions; the hook replaced by the reconstruction,
/// or, with `error_term`, by the activation plus the change the edit makes
/// (`x + (edited_acts - acts) @ W_dec`), so an SAE with no edit changes nothing.
#[derive(Debug, Clone)]
pub struct SaeEdit {
    pub target: Target,
    pub sae: std::sync::Arc<crate::sae::Sae>,
    pub error_term: bool,
    /// `(feature, factor)` pairs.
    pub scale: Vec<(usize, f32)>,
    /// Where the scaling applies; `None` for every position.
    pub scale_pos: Option<i64>,
    pub acts_output: String,
}

impl Pass for SaeEdit {
    fn target(&self) -> &Target {
        &self.target
    }

    /// The SAE's encoder, edit and decoder on the target slice; returns the new hook value.
    fn build(&self, e: &mut Edit, clean: &str) -> Result<String, CompileError> {
        use crate::sae::Architecture;
        let edit = self;
        let (axes, n_heads) = (e.axes, e.n_heads);
        let axes = &axes;
        let sae = &edit.sae;
        let head_axis = match (edit.target.head, axes.head) {
            (Some(head), Some(axis)) if axis == 2 => Some((head, axis)),
            (Some(_), _) => {
                return Err(CompileError::Unsupported(format!(
                    "an SAE on a head of `{}`",
                    edit.target.hook
                )));
            }
            (None, _) if axes.rank != 3 => {
                return Err(CompileError::Unsupported(format!(
                    "an SAE on all heads of `{}`; choose a head",
                    edit.target.hook
                )));
            }
            (None, _) => None,
        };
        let x = match head_axis {
            Some((head, axis)) => {
                let index = e.nodes.ints(&[], &[head as i64]);
                e.op_with(
                    "Gather",
                    &[clean, &index],
                    vec![attr_int("axis", axis as i64)],
                )
            }
            None => clean.to_owned(),
        };
        // Run-time normalization: `(x - shift) * in_scale` in, `y * out_scale + shift` out,
        // per token (see `Sae::reconstruct`).
        let normalization = normalization(e, sae, &x);
        let normalized = match &normalization {
            Some((in_scale, _, shift)) => {
                let centred = match shift {
                    Some(shift) => e.op("Sub", &[&x, shift]),
                    None => x.clone(),
                };
                e.op("Mul", &[&centred, in_scale])
            }
            None => x.clone(),
        };
        let input = if sae.apply_b_dec_to_input {
            let b_dec = e.nodes.vector(&sae.b_dec);
            e.op("Sub", &[&normalized, &b_dec])
        } else {
            normalized
        };
        let w_enc = e.nodes.matrix(&sae.w_enc);
        let b_enc = e.nodes.vector(&sae.b_enc);
        let pre = e.op("MatMul", &[&input, &w_enc]);
        let pre = e.op("Add", &[&pre, &b_enc]);
        let acts = match sae.architecture {
            Architecture::Standard => e.op("Relu", &[&pre]),
            Architecture::JumpRelu => {
                let threshold = e.nodes.vector(
                    sae.threshold
                        .as_ref()
                        .expect("JumpReLU SAEs load a threshold"),
                );
                let above = e.op("Greater", &[&pre, &threshold]);
                let relu = e.op("Relu", &[&pre]);
                let zero = e.nodes.floats(&[], &[0.0]);
                e.op("Where", &[&above, &relu, &zero])
            }
            Architecture::TopK { k } => {
                let k = e.nodes.ints(&[1], &[k as i64]);
                let values = e.nodes.fresh("TopK_values");
                let indices = e.nodes.fresh("TopK_indices");
                e.nodes.nodes.push(NodeProto {
                    input: vec![pre.clone(), k],
                    output: vec![values.clone(), indices.clone()],
                    name: Some(values.clone()),
                    op_type: Some("TopK".into()),
                    attribute: vec![attr_int("axis", -1)],
                    ..Default::default()
                });
                let values = e.op("Relu", &[&values]);
                let zero = e.nodes.floats(&[], &[0.0]);
                let zeros = e.op("Mul", &[&pre, &zero]);
                e.op_with(
                    "ScatterElements",
                    &[&zeros, &indices, &values],
                    vec![attr_int("axis", -1)],
                )
            }
        };
        e.nodes
            .nodes
            .push(node("Identity", &[&acts], &edit.acts_output, vec![]));

        let edited_acts = if edit.scale.is_empty() {
            acts.clone()
        } else {
            let mut factors = vec![1.0f32; sae.d_sae];
            for &(feature, factor) in &edit.scale {
                factors[feature] = factor;
            }
            let factors = e.nodes.floats(&[sae.d_sae as i64], &factors);
            let scaled = e.op("Mul", &[&acts, &factors]);
            match edit.scale_pos {
                None => scaled,
                Some(pos) => {
                    let rows = Target {
                        hook: String::new(),
                        head: None,
                        pos: Some(pos),
                    };
                    let mask = e
                        .selection(
                            &rows,
                            &Axes {
                                rank: 3,
                                head: None,
                                pos: 1,
                            },
                            1,
                        )
                        .expect("a position selects");
                    e.op("Where", &[&mask, &scaled, &acts])
                }
            }
        };
        let w_dec = e.nodes.matrix(&sae.w_dec);
        let out = if edit.error_term {
            let change = e.op("Sub", &[&edited_acts, &acts]);
            let change = e.op("MatMul", &[&change, &w_dec]);
            // A change in the SAE's space is a change of `out_scale` times it in x's.
            let change = match &normalization {
                Some((_, out_scale, _)) => e.op("Mul", &[&change, out_scale]),
                None => change,
            };
            e.op("Add", &[&x, &change])
        } else {
            let b_dec = e.nodes.vector(&sae.b_dec);
            let recon = e.op("MatMul", &[&edited_acts, &w_dec]);
            let recon = e.op("Add", &[&recon, &b_dec]);
            match &normalization {
                Some((_, out_scale, shift)) => {
                    let scaled = e.op("Mul", &[&recon, out_scale]);
                    match shift {
                        Some(shift) => e.op("Add", &[&scaled, shift]),
                        None => scaled,
                    }
                }
                None => recon,
            }
        };
        Ok(match head_axis {
            Some((head, axis)) => {
                let axis_const = e.nodes.ints(&[1], &[axis as i64]);
                let out = e.op("Unsqueeze", &[&out, &axis_const]);
                let mut shape = vec![1i64; axes.rank];
                shape[axis] = n_heads as i64;
                let values: Vec<bool> = (0..n_heads).map(|h| h == head).collect();
                let mask = e.nodes.bools(&shape, &values);
                e.op("Where", &[&mask, &out, clean])
            }
            None => out,
        })
    }
}

/// The per-token statistics of an SAE's run-time normalization of `x` (last axis):
/// `(in_scale, out_scale, shift)` as tensors with a kept last axis of 1, or `None`.
fn normalization(
    e: &mut Edit,
    sae: &crate::sae::Sae,
    x: &str,
) -> Option<(String, String, Option<String>)> {
    use crate::sae::{LAYER_NORM_EPS, Normalization};
    let last = e.nodes.ints(&[1], &[-1]);
    let keep = || vec![attr_int("keepdims", 1)];
    let axes_last = || {
        vec![
            AttributeProto {
                name: Some("axes".into()),
                r#type: Some(attribute_proto::AttributeType::Ints as i32),
                ints: vec![-1],
                ..Default::default()
            },
            attr_int("keepdims", 1),
        ]
    };
    match sae.normalization {
        Normalization::None => None,
        Normalization::ConstantNormRescale => {
            // Opset 17: ReduceL2 and ReduceMean take their axes as an attribute,
            // ReduceSum as an input.
            let norm = e.op_with("ReduceL2", &[x], axes_last());
            let root_d = e.nodes.floats(&[], &[(sae.d_in as f32).sqrt()]);
            let in_scale = e.op("Div", &[&root_d, &norm]);
            let out_scale = e.op("Div", &[&norm, &root_d]);
            Some((in_scale, out_scale, None))
        }
        Normalization::LayerNorm => {
            let mean = e.op_with("ReduceMean", &[x], axes_last());
            let centred = e.op("Sub", &[x, &mean]);
            let squares = e.op("Mul", &[&centred, &centred]);
            let sum = e.op_with("ReduceSum", &[&squares, &last], keep());
            // The unbiased variance, as torch's `std` computes it.
            let n_minus_one = e.nodes.floats(&[], &[sae.d_in as f32 - 1.0]);
            let variance = e.op("Div", &[&sum, &n_minus_one]);
            let std = e.op("Sqrt", &[&variance]);
            let eps = e.nodes.floats(&[], &[LAYER_NORM_EPS]);
            let denominator = e.op("Add", &[&std, &eps]);
            let one = e.nodes.floats(&[], &[1.0]);
            let in_scale = e.op("Div", &[&one, &denominator]);
            Some((in_scale, std, Some(mean)))
        }
    }
}
