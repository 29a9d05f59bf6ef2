//! Output selection and dead-node pruning.

use std::collections::HashSet;

use crate::onnx::ModelProto;
use crate::onnx::build::float_output;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompileError {
    #[error("the model has no tensor named `{name}`; `qexp hooks MODEL` lists its hook points")]
    UnknownTensor { name: String },
    #[error("the model file has no graph (is model.onnx truncated?)")]
    NoGraph,
    #[error("{0} is not supported")]
    Unsupported(String),
}

/// A copy of `model` whose outputs are exactly `outputs` (in that order), with every node,
/// initializer and input that none of them depends on removed.
pub fn select_outputs(model: &ModelProto, outputs: &[&str]) -> Result<ModelProto, CompileError> {
    let graph = model.graph.as_ref().ok_or(CompileError::NoGraph)?;
    let produced: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(graph.input.iter().filter_map(|i| i.name.as_deref()))
        .collect();
    if let Some(missing) = outputs.iter().find(|o| !produced.contains(**o)) {
        return Err(CompileError::UnknownTensor {
            name: (*missing).to_owned(),
        });
    }

    // Nodes are stored in topological order (the exporter writes them so, and ONNX
    // requires it), so one backwards sweep finds every node an output depends on.
    let mut needed: HashSet<String> = outputs.iter().map(|o| (*o).to_owned()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }

    let mut pruned = graph.clone();
    pruned.node = graph
        .node
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(n, _)| n.clone())
        .collect();
    pruned
        .initializer
        .retain(|t| t.name.as_ref().is_some_and(|n| needed.contains(n)));
    pruned
        .input
        .retain(|i| i.name.as_ref().is_some_and(|n| needed.contains(n)));
    pruned.value_info.clear();
    pruned.output = outputs
        .iter()
        .map(|name| {
            graph
                .output
                .iter()
                .find(|o| o.name.as_deref() == Some(*name))
                .cloned()
                .unwrap_or_else(|| float_output(name))
        })
        .collect();

    let mut model = model.clone();
    model.graph = Some(pruned);
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{GraphProto, NodeProto};

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        crate::onnx::build::node(op, inputs, output, vec![])
    }

    fn chain() -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: vec![
                    node("Relu", &["x"], "a"),
                    node("Neg", &["a"], "b"),
                    node("Exp", &["a"], "c"),
                ],
                input: vec![float_output("x"), float_output("unused")],
                output: vec![float_output("b")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_only_what_the_outputs_need() {
        let pruned = select_outputs(&chain(), &["c"]).unwrap();
        let graph = pruned.graph.unwrap();
        let ops: Vec<_> = graph
            .node
            .iter()
            .map(|n| n.op_type.clone().unwrap())
            .collect();
        assert_eq!(ops, ["Relu", "Exp"]);
        let inputs: Vec<_> = graph
            .input
            .iter()
            .map(|i| i.name.clone().unwrap())
            .collect();
        assert_eq!(inputs, ["x"]);
        assert_eq!(graph.output[0].name.as_deref(), Some("c"));
    }

    #[test]
    fn unknown_outputs_are_named_in_the_error() {
        let error = select_outputs(&chain(), &["blocks.0.attn.hook_qq"]).unwrap_err();
        assert_eq!(
            error,
            CompileError::UnknownTensor {
                name: "blocks.0.attn.hook_qq".into()
            }
        );
    }
}
