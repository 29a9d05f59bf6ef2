//! Interventions as graph rewrites. Every hook point is an Identity node whose output
//! carries the hook's name; an intervention renames that output to `<hook>/clean` and
//! inserts nodes that compute the hook's name from it, so everything downstream reads the
//! edited value and nothing else changes.

use ndarray::ArrayD;

use super::CompileError;
use crate::hooks::{Axes, axes};
use crate::manifest::{ATTENTION_MASK, INPUT_IDS};
use crate::onnx::{AttributeProto, FLOAT, ModelProto, NodeProto, TensorProto, attribute_proto};

/// Which part of a hook an intervention touches.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub hook: String,
    /// A head index on hooks with a head axis; `None` for all heads.
    pub head: Option<usize>,
    /// A position (negative counts back from each row's last real token); `None` for all.
    pub pos: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum Intervention {
    /// Replace the target with zeros.
    Zero(Target),
    /// Replace the target with a constant (a mean activation), broadcast over batch and
    /// positions: its shape is the hook's shape without those two axes.
    Constant { target: Target, value: ArrayD<f32> },
    /// Run an SAE on the target (a head's slice, or the hook's last axis) inside the graph.
    Sae(SaeEdit),
    /// Add a vector (a steering direction) along the hook's last axis, at the target's
    /// head and positions.
    Add {
        target: Target,
        vector: ndarray::Array1<f32>,
    },
    /// Replace the target with a value fed at run time through a new graph input named
    /// `input`, with the hook's full shape: the hook's value from another run (activation
    /// patching). Only the target's head and positions are taken from it.
    Patch { target: Target, input: String },
}

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

/// A copy of `model` with `interventions` applied in order.
pub fn apply(
    model: &ModelProto,
    interventions: &[Intervention],
    n_heads_of: impl Fn(&str) -> usize,
) -> Result<ModelProto, CompileError> {
    let mut model = model.clone();
    for (index, intervention) in interventions.iter().enumerate() {
        let graph = model.graph.as_mut().ok_or(CompileError::NoGraph)?;
        let target = match intervention {
            Intervention::Zero(t)
            | Intervention::Constant { target: t, .. }
            | Intervention::Add { target: t, .. }
            | Intervention::Patch { target: t, .. } => t,
            Intervention::Sae(edit) => &edit.target,
        };
        let position = graph
            .node
            .iter()
            .position(|n| {
                n.op_type.as_deref() == Some("Identity") && n.output.first() == Some(&target.hook)
            })
            .ok_or_else(|| CompileError::UnknownTensor {
                name: target.hook.clone(),
            })?;
        let clean = format!("{}/clean{index}", target.hook);
        graph.node[position].output[0] = clean.clone();
        graph.node[position].name = Some(clean.clone());

        let mut pass = Pass {
            prefix: format!("{}/edit{index}", target.hook),
            nodes: Vec::new(),
            initializers: Vec::new(),
            counter: 0,
        };
        let axes = axes(&target.hook);
        let n_heads = n_heads_of(&target.hook);
        let edited = match intervention {
            Intervention::Sae(edit) => pass.sae(edit, &clean, &axes, n_heads)?,
            other => {
                let selected = pass.selection(target, &axes, n_heads);
                pass.masked_edit(other, &clean, selected.as_deref())
            }
        };
        pass.nodes
            .push(node("Identity", &[&edited], &target.hook, vec![]));
        let Pass {
            nodes,
            initializers,
            ..
        } = pass;
        graph.node.splice(position + 1..position + 1, nodes);
        graph.initializer.extend(initializers);
        if let Intervention::Patch { input, .. } = intervention {
            let rank = axes.rank;
            let dims: Vec<String> = (0..rank).map(|d| format!("{input}_dim{d}")).collect();
            let dims: Vec<&str> = dims.iter().map(String::as_str).collect();
            graph
                .input
                .push(crate::export::graph::value_info(input, FLOAT, &dims));
        }
    }
    Ok(model)
}

/// Nodes and constants one intervention adds, named under its prefix.
struct Pass {
    prefix: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

impl Pass {
    fn name(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{}/{what}_{}", self.prefix, self.counter)
    }

    fn op(&mut self, op_type: &str, inputs: &[&str]) -> String {
        self.op_with(op_type, inputs, vec![])
    }

    fn op_with(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        let output = self.name(op_type);
        self.nodes.push(node(op_type, inputs, &output, attributes));
        output
    }

    /// An initializer named under this pass, of `data_type`, filled in by `fill`.
    fn constant(
        &mut self,
        shape: &[i64],
        data_type: i32,
        fill: impl FnOnce(&mut TensorProto),
    ) -> String {
        let name = self.name("const");
        let mut tensor = TensorProto {
            name: Some(name.clone()),
            dims: shape.to_vec(),
            data_type: Some(data_type),
            ..Default::default()
        };
        fill(&mut tensor);
        self.initializers.push(tensor);
        name
    }

    fn float_const(&mut self, shape: &[i64], values: &[f32]) -> String {
        self.constant(shape, FLOAT, |t| t.float_data = values.to_vec())
    }

    fn int_const(&mut self, shape: &[i64], values: &[i64]) -> String {
        self.constant(shape, crate::onnx::INT64, |t| {
            t.int64_data = values.to_vec()
        })
    }

    fn bool_const(&mut self, shape: &[i64], values: &[bool]) -> String {
        self.constant(shape, crate::onnx::BOOL, |t| {
            t.int32_data = values.iter().map(|&b| i32::from(b)).collect()
        })
    }

    /// A zero, constant or added vector, applied where `selected` is true (everywhere
    /// when it is `None`).
    fn masked_edit(
        &mut self,
        intervention: &Intervention,
        clean: &str,
        selected: Option<&str>,
    ) -> String {
        match intervention {
            Intervention::Zero(_) => match selected {
                None => {
                    let zero = self.float_const(&[], &[0.0]);
                    self.op("Mul", &[clean, &zero])
                }
                Some(mask) => {
                    let keep = self.op("Not", &[mask]);
                    let zeros = self.float_const(&[], &[0.0]);
                    self.op("Where", &[&keep, clean, &zeros])
                }
            },
            Intervention::Constant { value, .. } => {
                let mut shape = vec![1, 1];
                shape.extend(value.shape().iter().map(|&d| d as i64));
                let standard = value.as_standard_layout();
                let constant =
                    self.float_const(&shape, standard.as_slice().expect("standard layout"));
                match selected {
                    None => {
                        let shape_of = self.op("Shape", &[clean]);
                        self.op("Expand", &[&constant, &shape_of])
                    }
                    Some(mask) => self.op("Where", &[mask, &constant, clean]),
                }
            }
            Intervention::Add { vector, .. } => {
                let added = self.vector_const(vector);
                let steered = self.op("Add", &[clean, &added]);
                match selected {
                    None => steered,
                    Some(mask) => self.op("Where", &[mask, &steered, clean]),
                }
            }
            Intervention::Patch { input, .. } => match selected {
                None => self.op("Identity", &[input]),
                Some(mask) => self.op("Where", &[mask, input, clean]),
            },
            Intervention::Sae(_) => unreachable!("SAEs have their own pass"),
        }
    }

    fn matrix_const(&mut self, m: &ndarray::Array2<f32>) -> String {
        let standard = m.as_standard_layout();
        self.float_const(
            &[m.nrows() as i64, m.ncols() as i64],
            standard.as_slice().expect("standard layout"),
        )
    }

    fn vector_const(&mut self, v: &ndarray::Array1<f32>) -> String {
        self.float_const(&[v.len() as i64], &v.to_vec())
    }

    /// The SAE's encoder, edit and decoder on the target slice; returns the new hook value.
    fn sae(
        &mut self,
        edit: &SaeEdit,
        clean: &str,
        axes: &Axes,
        n_heads: usize,
    ) -> Result<String, CompileError> {
        use crate::sae::Architecture;
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
                let index = self.int_const(&[], &[head as i64]);
                self.op_with(
                    "Gather",
                    &[clean, &index],
                    vec![attr_int("axis", axis as i64)],
                )
            }
            None => clean.to_owned(),
        };
        // Run-time normalization: `(x - shift) * in_scale` in, `y * out_scale + shift` out,
        // per token (see `Sae::reconstruct`).
        let normalization = self.normalization(sae, &x);
        let normalized = match &normalization {
            Some((in_scale, _, shift)) => {
                let centred = match shift {
                    Some(shift) => self.op("Sub", &[&x, shift]),
                    None => x.clone(),
                };
                self.op("Mul", &[&centred, in_scale])
            }
            None => x.clone(),
        };
        let input = if sae.apply_b_dec_to_input {
            let b_dec = self.vector_const(&sae.b_dec);
            self.op("Sub", &[&normalized, &b_dec])
        } else {
            normalized
        };
        let w_enc = self.matrix_const(&sae.w_enc);
        let b_enc = self.vector_const(&sae.b_enc);
        let pre = self.op("MatMul", &[&input, &w_enc]);
        let pre = self.op("Add", &[&pre, &b_enc]);
        let acts = match sae.architecture {
            Architecture::Standard => self.op("Relu", &[&pre]),
            Architecture::JumpRelu => {
                let threshold = self.vector_const(
                    sae.threshold
                        .as_ref()
                        .expect("JumpReLU SAEs load a threshold"),
                );
                let above = self.op("Greater", &[&pre, &threshold]);
                let relu = self.op("Relu", &[&pre]);
                let zero = self.float_const(&[], &[0.0]);
                self.op("Where", &[&above, &relu, &zero])
            }
            Architecture::TopK { k } => {
                let k = self.int_const(&[1], &[k as i64]);
                let values = self.name("TopK_values");
                let indices = self.name("TopK_indices");
                self.nodes.push(NodeProto {
                    input: vec![pre.clone(), k],
                    output: vec![values.clone(), indices.clone()],
                    name: Some(values.clone()),
                    op_type: Some("TopK".into()),
                    attribute: vec![attr_int("axis", -1)],
                    ..Default::default()
                });
                let values = self.op("Relu", &[&values]);
                let zero = self.float_const(&[], &[0.0]);
                let zeros = self.op("Mul", &[&pre, &zero]);
                self.op_with(
                    "ScatterElements",
                    &[&zeros, &indices, &values],
                    vec![attr_int("axis", -1)],
                )
            }
        };
        self.nodes
            .push(node("Identity", &[&acts], &edit.acts_output, vec![]));

        let edited_acts = if edit.scale.is_empty() {
            acts.clone()
        } else {
            let mut factors = vec![1.0f32; sae.d_sae];
            for &(feature, factor) in &edit.scale {
                factors[feature] = factor;
            }
            let factors = self.float_const(&[sae.d_sae as i64], &factors);
            let scaled = self.op("Mul", &[&acts, &factors]);
            match edit.scale_pos {
                None => scaled,
                Some(pos) => {
                    let rows = Target {
                        hook: String::new(),
                        head: None,
                        pos: Some(pos),
                    };
                    let mask = self
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
                    self.op("Where", &[&mask, &scaled, &acts])
                }
            }
        };
        let w_dec = self.matrix_const(&sae.w_dec);
        let out = if edit.error_term {
            let change = self.op("Sub", &[&edited_acts, &acts]);
            let change = self.op("MatMul", &[&change, &w_dec]);
            // A change in the SAE's space is a change of `out_scale` times it in x's.
            let change = match &normalization {
                Some((_, out_scale, _)) => self.op("Mul", &[&change, out_scale]),
                None => change,
            };
            self.op("Add", &[&x, &change])
        } else {
            let b_dec = self.vector_const(&sae.b_dec);
            let recon = self.op("MatMul", &[&edited_acts, &w_dec]);
            let recon = self.op("Add", &[&recon, &b_dec]);
            match &normalization {
                Some((_, out_scale, shift)) => {
                    let scaled = self.op("Mul", &[&recon, out_scale]);
                    match shift {
                        Some(shift) => self.op("Add", &[&scaled, shift]),
                        None => scaled,
                    }
                }
                None => recon,
            }
        };
        Ok(match head_axis {
            Some((head, axis)) => {
                let axis_const = self.int_const(&[1], &[axis as i64]);
                let out = self.op("Unsqueeze", &[&out, &axis_const]);
                let mut shape = vec![1i64; axes.rank];
                shape[axis] = n_heads as i64;
                let values: Vec<bool> = (0..n_heads).map(|h| h == head).collect();
                let mask = self.bool_const(&shape, &values);
                self.op("Where", &[&mask, &out, clean])
            }
            None => out,
        })
    }

    /// The per-token statistics of an SAE's run-time normalization of `x` (last axis):
    /// `(in_scale, out_scale, shift)` as tensors with a kept last axis of 1, or `None`.
    fn normalization(
        &mut self,
        sae: &crate::sae::Sae,
        x: &str,
    ) -> Option<(String, String, Option<String>)> {
        use crate::sae::{LAYER_NORM_EPS, Normalization};
        let last = self.int_const(&[1], &[-1]);
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
                let norm = self.op_with("ReduceL2", &[x], axes_last());
                let root_d = self.float_const(&[], &[(sae.d_in as f32).sqrt()]);
                let in_scale = self.op("Div", &[&root_d, &norm]);
                let out_scale = self.op("Div", &[&norm, &root_d]);
                Some((in_scale, out_scale, None))
            }
            Normalization::LayerNorm => {
                let mean = self.op_with("ReduceMean", &[x], axes_last());
                let centred = self.op("Sub", &[x, &mean]);
                let squares = self.op("Mul", &[&centred, &centred]);
                let sum = self.op_with("ReduceSum", &[&squares, &last], keep());
                // The unbiased variance, as torch's `std` computes it.
                let n_minus_one = self.float_const(&[], &[sae.d_in as f32 - 1.0]);
                let variance = self.op("Div", &[&sum, &n_minus_one]);
                let std = self.op("Sqrt", &[&variance]);
                let eps = self.float_const(&[], &[LAYER_NORM_EPS]);
                let denominator = self.op("Add", &[&std, &eps]);
                let one = self.float_const(&[], &[1.0]);
                let in_scale = self.op("Div", &[&one, &denominator]);
                Some((in_scale, std, Some(mean)))
            }
        }
    }

    /// A boolean tensor, broadcastable to the hook, true where the intervention applies;
    /// `None` when it applies everywhere.
    fn selection(&mut self, target: &Target, axes: &Axes, n_heads: usize) -> Option<String> {
        let head = match (target.head, axes.head) {
            (Some(head), Some(axis)) => {
                let mut shape = vec![1i64; axes.rank];
                shape[axis] = n_heads as i64;
                let values: Vec<bool> = (0..n_heads).map(|h| h == head).collect();
                Some(self.bool_const(&shape, &values))
            }
            _ => None,
        };
        let pos = target.pos.map(|pos| {
            // positions [1, p] against each row's target index [b, 1] -> [b, p].
            let shape = self.op("Shape", &[INPUT_IDS]);
            let (one, two, zero) = (
                self.int_const(&[1], &[1]),
                self.int_const(&[1], &[2]),
                self.int_const(&[1], &[0]),
            );
            let length = self.op("Slice", &[&shape, &one, &two, &zero]);
            let length = self.op("Squeeze", &[&length, &zero]);
            let (start, step) = (self.int_const(&[], &[0]), self.int_const(&[], &[1]));
            let positions = self.op("Range", &[&start, &length, &step]);
            let positions = self.op("Unsqueeze", &[&positions, &zero]);
            let index = if pos >= 0 {
                self.int_const(&[1, 1], &[pos])
            } else {
                let axis = self.int_const(&[1], &[1]);
                let lengths = self.op_with(
                    "ReduceSum",
                    &[ATTENTION_MASK, &axis],
                    vec![attr_int("keepdims", 1)],
                );
                let offset = self.int_const(&[1, 1], &[pos]);
                self.op("Add", &[&lengths, &offset])
            };
            let matches = self.op("Equal", &[&positions, &index]);
            // [b, p] -> the hook's rank, positions on their axis.
            let mut unsqueeze: Vec<i64> = (0..axes.rank as i64)
                .filter(|&a| a != 0 && a != axes.pos as i64)
                .collect();
            if axes.pos != 1 {
                // [b, p] puts positions on axis 1; for query positions on axis 2, insert
                // the head axis before them.
                unsqueeze = vec![1, 3];
            }
            let axes_const = self.int_const(&[unsqueeze.len() as i64], &unsqueeze);
            self.op("Unsqueeze", &[&matches, &axes_const])
        });
        match (head, pos) {
            (None, None) => None,
            (Some(h), None) => Some(h),
            (None, Some(p)) => Some(p),
            (Some(h), Some(p)) => Some(self.op("And", &[&h, &p])),
        }
    }
}

fn node(op_type: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        name: Some(output.to_owned()),
        op_type: Some(op_type.to_owned()),
        attribute,
        ..Default::default()
    }
}

fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}
