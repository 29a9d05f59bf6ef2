//! An edited graph with its interventions' values (which head, ablation masks and
//! constants, steering vectors) taken out as graph inputs, so variants that differ only
//! in those values compile to the same graph and share one session: a sweep over the
//! heads of a layer is one session fed nine masks, not nine sessions.
//!
//! What stays in the graph is the structure: the hooks edited, the kinds of edit, which
//! axes they select on, positions (integers, which shape the nodes ONNX Runtime folds).
//! A patch's head selection is lifted too (its values already come in as an input).
//! SAE edits keep their values inside (an SAE's weights are matrices the kernels can
//! pre-pack, which only constants allow, in sessions that run small passes often).

use ndarray::ArrayD;

use super::Intervention;
use crate::onnx::build::{attr_int, node, value_info};
use crate::onnx::{BOOL, FLOAT, ModelProto};

/// A graph input and the value fed to it.
pub type Feed = (String, ArrayD<f32>);

/// `model` (compiled from `interventions` by `apply`, then pruned) with the float and
/// boolean constants of its ablations, steering edits and patches turned into graph
/// inputs, and
/// the values to feed them. Booleans are fed as 0/1 floats and cast back in the graph.
pub fn lift_values(model: &ModelProto, interventions: &[Intervention]) -> (ModelProto, Vec<Feed>) {
    let prefixes: Vec<String> = interventions
        .iter()
        .enumerate()
        .filter(|(_, edit)| edit.values_lifted())
        .map(|(index, edit)| format!("{}/edit{index}/", edit.pass().target().hook))
        .collect();
    let mut model = model.clone();
    let mut feeds = Vec::new();
    let Some(graph) = model.graph.as_mut() else {
        return (model, feeds);
    };
    let mut casts = Vec::new();
    let mut kept = Vec::with_capacity(graph.initializer.len());
    for tensor in std::mem::take(&mut graph.initializer) {
        let name = tensor.name.clone().unwrap_or_default();
        let lifted = prefixes.iter().any(|p| name.starts_with(p.as_str()));
        let shape: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        let values: Vec<f32> = match tensor.data_type {
            Some(FLOAT) if lifted && tensor.raw_data.is_none() => tensor.float_data.clone(),
            Some(BOOL) if lifted && tensor.raw_data.is_none() => {
                tensor.int32_data.iter().map(|&b| b as f32).collect()
            }
            _ => {
                kept.push(tensor);
                continue;
            }
        };
        let Ok(value) = ArrayD::from_shape_vec(shape, values) else {
            kept.push(tensor);
            continue;
        };
        // Symbolic dimensions: variants whose values differ in size (ActAdd's rows)
        // still share the graph.
        let dims: Vec<String> = (0..value.ndim()).map(|d| format!("{name}:{d}")).collect();
        let dims: Vec<&str> = dims.iter().map(String::as_str).collect();
        let input = if tensor.data_type == Some(BOOL) {
            let fed = format!("{name}:as_float");
            casts.push(node(
                "Cast",
                &[&fed],
                &name,
                vec![attr_int("to", i64::from(BOOL))],
            ));
            fed
        } else {
            name
        };
        graph.input.push(value_info(&input, FLOAT, &dims));
        feeds.push((input, value));
    }
    graph.initializer = kept;
    graph.node.splice(0..0, casts);
    (model, feeds)
}
