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

/// The feeds of variants that share one lifted graph, stacked so that one pass runs
/// them all: variant `i`'s values fill rows `i * rows..(i + 1) * rows` of the batch.
/// A value the same for every variant is fed once as it is; one that differs must be
/// laid out at its hook's rank with a batch axis of 1 (head masks, means and steering
/// vectors are), and is repeated down its variant's rows. `None` when some value is
/// not (ActAdd's rows, one per position) or the variants' inputs differ: those
/// variants run one pass each.
pub fn stack_rows(per_variant: &[Vec<Feed>], rows: usize) -> Option<Vec<Feed>> {
    let first = per_variant.first()?;
    let mut stacked = Vec::with_capacity(first.len());
    for (index, (name, value)) in first.iter().enumerate() {
        let values: Vec<&ArrayD<f32>> = per_variant
            .iter()
            .map(|feeds| feeds.get(index).filter(|(n, _)| n == name).map(|(_, v)| v))
            .collect::<Option<_>>()?;
        if values.iter().all(|v| *v == value) {
            stacked.push((name.clone(), value.clone()));
            continue;
        }
        let hook = name.split("/edit").next().unwrap_or_default();
        let rank = crate::hooks::axes(hook).rank;
        if values
            .iter()
            .any(|v| v.ndim() != rank || v.shape()[0] != 1 || v.shape() != value.shape())
        {
            return None;
        }
        let views: Vec<_> = values
            .iter()
            .flat_map(|v| std::iter::repeat_n(v.view(), rows))
            .collect();
        stacked.push((
            name.clone(),
            ndarray::concatenate(ndarray::Axis(0), &views).ok()?,
        ));
    }
    Some(stacked)
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::stack_rows;

    fn feed(name: &str, shape: &[usize], values: Vec<f32>) -> super::Feed {
        (
            name.to_owned(),
            ArrayD::from_shape_vec(IxDyn(shape), values).unwrap(),
        )
    }

    #[test]
    fn values_that_differ_fill_each_variant_s_rows_and_shared_ones_are_fed_once() {
        let mask = "blocks.0.attn.hook_z/edit0/const_1:as_float";
        let zero = "blocks.0.attn.hook_z/edit0/const_2";
        let variant = |head: usize| {
            let mut values = vec![0.0; 3];
            values[head] = 1.0;
            vec![
                feed(mask, &[1, 1, 3, 1], values),
                feed(zero, &[], vec![0.0]),
            ]
        };
        let stacked = stack_rows(&[variant(0), variant(2)], 2).unwrap();
        assert_eq!(stacked[0].1.shape(), [4, 1, 3, 1]);
        let heads: Vec<Vec<f32>> = stacked[0]
            .1
            .outer_iter()
            .map(|row| row.iter().copied().collect())
            .collect();
        assert_eq!(heads[1], [1.0, 0.0, 0.0]);
        assert_eq!(heads[2], [0.0, 0.0, 1.0]);
        assert_eq!(stacked[1], feed(zero, &[], vec![0.0]));
    }

    #[test]
    fn values_not_laid_out_at_the_hook_s_rank_cannot_share_a_pass() {
        // ActAdd's rows, one per position: [p, d], not [1, p, d].
        let rows = "blocks.0.hook_resid_pre/edit0/const_1";
        let a = vec![feed(rows, &[2, 2], vec![1.0, 2.0, 3.0, 4.0])];
        let b = vec![feed(rows, &[2, 2], vec![5.0, 6.0, 7.0, 8.0])];
        assert!(stack_rows(&[a.clone(), b], 1).is_none());
        assert!(
            stack_rows(&[a.clone(), a], 1).is_some(),
            "the same rows are fed once"
        );
    }
}
