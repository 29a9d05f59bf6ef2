//! A key/value cache for generation: the graph rewritten to take each layer's keys and
//! values of the tokens seen so far as inputs and to return them with the new tokens'
//! appended, so each generated token runs through the model alone instead of with its
//! whole prefix.
//!
//! The exported graph names the three things a cache changes (see `manifest`): the
//! tokens' positions (shifted by the cached length, so rotary and learned positions and
//! the causal mask see absolute positions; the keys are whatever the attention mask
//! covers), and each layer's keys and values as attention reads them (the cached ones put
//! in front). Interventions are applied before or after this pass alike: they read the
//! same absolute positions, and hooks keep the new tokens only (scores and patterns span
//! every key).

use super::CompileError;
use crate::manifest::{POSITIONS, attention_keys, attention_values};
use crate::onnx::build::{Nodes, attr_int, float_output, node, value_info};
use crate::onnx::{FLOAT, GraphProto, ModelProto, NodeProto};

/// Input with layer `layer`'s cached keys, `[batch, past, kv_head, d_head]`.
pub fn past_keys(layer: usize) -> String {
    format!("past_key_values.{layer}.key")
}

/// Input with layer `layer`'s cached values, laid out as [`past_keys`].
pub fn past_values(layer: usize) -> String {
    format!("past_key_values.{layer}.value")
}

/// Output with layer `layer`'s keys, cached and new: the next step's [`past_keys`].
pub fn present_keys(layer: usize) -> String {
    format!("present.{layer}.key")
}

/// Output with layer `layer`'s values, cached and new.
pub fn present_values(layer: usize) -> String {
    format!("present.{layer}.value")
}

/// Every cache input with the output that feeds it at the next step, `(past, present)`:
/// each layer's keys, then its values.
pub fn cache_names(n_layers: usize) -> Vec<(String, String)> {
    (0..n_layers)
        .flat_map(|layer| {
            [
                (past_keys(layer), present_keys(layer)),
                (past_values(layer), present_values(layer)),
            ]
        })
        .collect()
}

/// Whether `model` names what a cache needs (models exported by older versions of qexp
/// do not; they generate without one).
pub fn supports(model: &ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        let has = |name: &str| g.node.iter().any(|n| n.output.iter().any(|o| o == name));
        has(POSITIONS) && has(&attention_keys(0)) && has(&attention_values(0))
    })
}

/// A copy of `model` with a key/value cache for its `n_layers` layers. Its outputs are
/// the model's, plus every [`present_keys`] and [`present_values`]; prune with
/// `select_outputs` as usual.
pub fn with_kv_cache(model: &ModelProto, n_layers: usize) -> Result<ModelProto, CompileError> {
    if !supports(model) {
        return Err(CompileError::Unsupported(
            "a key/value cache on a model exported by an older qexp (export it again)".into(),
        ));
    }
    let mut model = model.clone();
    let graph = model.graph.as_mut().ok_or(CompileError::NoGraph)?;
    let mut nodes = Nodes::new("kv_cache");

    // The cached length, from the first layer's cached keys.
    let shape = nodes.op("Shape", &[&past_keys(0)], vec![]);
    let (one, two, zero) = (
        nodes.ints(&[1], &[1]),
        nodes.ints(&[1], &[2]),
        nodes.ints(&[1], &[0]),
    );
    let cached = nodes.op("Slice", &[&shape, &one, &two, &zero], vec![]);
    let cached = nodes.op("Squeeze", &[&cached, &zero], vec![]);

    // `positions` counted from the first new token becomes `positions/new`, and
    // `positions` is it shifted by the cached length.
    let new_positions = format!("{POSITIONS}/new");
    rename_output(graph, POSITIONS, &new_positions)?;
    let shifted = node("Add", &[&new_positions, &cached], POSITIONS, vec![]);
    insert_after(graph, &new_positions, vec![shifted]);

    for layer in 0..n_layers {
        for (tensor, past, present) in [
            (attention_keys(layer), past_keys(layer), present_keys(layer)),
            (
                attention_values(layer),
                past_values(layer),
                present_values(layer),
            ),
        ] {
            // `tensor = Identity(new)` becomes `present = Concat(past, new)`,
            // `tensor = Identity(present)`: attention reads every position.
            let index = producer(graph, &tensor)?;
            let new = graph.node[index].input[0].clone();
            let concat = node(
                "Concat",
                &[&past, &new],
                &present,
                vec![attr_int("axis", 1)],
            );
            graph.node[index].input[0] = present.clone();
            graph.node.insert(index, concat);
            let dims = ["batch", "past", "kv_heads", "d_head"];
            graph.input.push(value_info(&past, FLOAT, &dims));
            graph.output.push(float_output(&present));
        }
    }
    // The cached length reads only an input: its nodes go first.
    graph.node.splice(0..0, nodes.nodes);
    graph.initializer.extend(nodes.initializers);
    Ok(model)
}

/// Index of the node whose output is `name`.
fn producer(graph: &GraphProto, name: &str) -> Result<usize, CompileError> {
    graph
        .node
        .iter()
        .position(|n| n.output.iter().any(|o| o == name))
        .ok_or_else(|| CompileError::UnknownTensor {
            name: name.to_owned(),
        })
}

fn rename_output(graph: &mut GraphProto, from: &str, to: &str) -> Result<(), CompileError> {
    let index = producer(graph, from)?;
    let node = &mut graph.node[index];
    for output in &mut node.output {
        if output == from {
            *output = to.to_owned();
        }
    }
    // Node names are unique too; the exporter names a node after its output.
    if node.name.as_deref() == Some(from) {
        node.name = Some(to.to_owned());
    }
    Ok(())
}

fn insert_after(graph: &mut GraphProto, name: &str, nodes: Vec<NodeProto>) {
    let index = producer(graph, name).expect("renamed above") + 1;
    graph.node.splice(index..index, nodes);
}
