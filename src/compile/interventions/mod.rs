//! Interventions as graph rewrites. Every hook point is an Identity node whose output
//! carries the hook's name; an intervention renames that output to `<hook>/clean` and
//! inserts nodes that compute the hook's name from it, so everything downstream reads the
//! edited value and nothing else changes.

mod ablate;
mod lift;
mod patch;
mod sae;
mod steer;

pub use ablate::{Constant, Zero};
pub use lift::{Feed, lift_values, stack_rows};
pub use patch::Patch;
pub use sae::SaeEdit;
pub use steer::{Add, AddAtFront};

use super::CompileError;
use crate::hooks::{Axes, axes};
use crate::manifest::{ATTENTION_MASK, INPUT_IDS, POSITIONS};
use crate::onnx::build::{Nodes, attr_int};
use crate::onnx::{AttributeProto, ModelProto, ValueInfoProto};

/// Which part of a hook an intervention touches.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub hook: String,
    /// A head index on hooks with a head axis; `None` for all heads.
    pub head: Option<usize>,
    /// A position (negative counts back from each row's last real token); `None` for all.
    pub pos: Option<i64>,
}

/// An edit of one hook; each kind is a [`Pass`] in its own file.
#[derive(Debug, Clone)]
pub enum Intervention {
    Zero(Zero),
    Constant(Constant),
    Sae(SaeEdit),
    Add(Add),
    AddAtFront(AddAtFront),
    Patch(Patch),
}

impl Intervention {
    /// Whether `lift` takes its values out of the graph as inputs: every edit's but an
    /// SAE's (whose weights the kernels can pre-pack only as constants).
    pub fn values_lifted(&self) -> bool {
        match self {
            Intervention::Zero(_)
            | Intervention::Constant(_)
            | Intervention::Add(_)
            | Intervention::AddAtFront(_)
            | Intervention::Patch(_) => true,
            Intervention::Sae(_) => false,
        }
    }

    /// Whether it edits a position counted back from the end of each sequence. Such an
    /// edit moves as a sequence grows, so a token's hook values depend on how many
    /// tokens follow it, and a key/value cache would keep stale ones.
    pub fn counts_from_end(&self) -> bool {
        let from_end = |pos: Option<i64>| pos.is_some_and(|p| p < 0);
        from_end(self.pass().target().pos)
            || matches!(self, Intervention::Sae(edit) if from_end(edit.scale_pos))
    }

    fn pass(&self) -> &dyn Pass {
        match self {
            Intervention::Zero(p) => p,
            Intervention::Constant(p) => p,
            Intervention::Sae(p) => p,
            Intervention::Add(p) => p,
            Intervention::AddAtFront(p) => p,
            Intervention::Patch(p) => p,
        }
    }
}

/// One kind of hook edit: the nodes that compute the hook's new value from its clean one.
pub trait Pass {
    fn target(&self) -> &Target;

    /// Adds the nodes that compute the edited value from `clean`; returns its name.
    fn build(&self, edit: &mut Edit, clean: &str) -> Result<String, CompileError>;

    /// Graph inputs the edit reads (a patch's source values), for a hook of `axes`.
    fn inputs(&self, _axes: &Axes) -> Vec<ValueInfoProto> {
        Vec::new()
    }
}

/// The nodes one intervention adds, named under its prefix, and where in the hook's
/// tensor it works.
pub struct Edit {
    pub nodes: Nodes,
    pub axes: Axes,
    /// The size of the hook's head axis (when it has one).
    pub n_heads: usize,
    /// Whether the graph names its tokens' positions (models exported since qexp had a
    /// key/value cache): then positions are read from there, so they stay absolute
    /// when a cache shifts them.
    pub named_positions: bool,
}

impl Edit {
    pub(super) fn op(&mut self, op_type: &str, inputs: &[&str]) -> String {
        self.nodes.op(op_type, inputs, vec![])
    }

    pub(super) fn op_with(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.nodes.op(op_type, inputs, attributes)
    }

    /// `edited` where `selected` is true and `clean` elsewhere (`edited` everywhere when
    /// nothing is selected).
    pub(super) fn where_selected(
        &mut self,
        selected: Option<&str>,
        edited: &str,
        clean: &str,
    ) -> String {
        match selected {
            None => edited.to_owned(),
            Some(mask) => self.op("Where", &[mask, edited, clean]),
        }
    }

    /// Each of the batch's positions, `[pos]`: absolute ones (a cache's new tokens
    /// come after the cached ones) where the graph names them.
    pub(super) fn positions(&mut self) -> String {
        if self.named_positions {
            return POSITIONS.to_owned();
        }
        let shape = self.op("Shape", &[INPUT_IDS]);
        let (one, two, zero) = (
            self.nodes.ints(&[1], &[1]),
            self.nodes.ints(&[1], &[2]),
            self.nodes.ints(&[1], &[0]),
        );
        let length = self.op("Slice", &[&shape, &one, &two, &zero]);
        let length = self.op("Squeeze", &[&length, &zero]);
        let (start, step) = (self.nodes.ints(&[], &[0]), self.nodes.ints(&[], &[1]));
        self.op("Range", &[&start, &length, &step])
    }

    /// A boolean tensor, broadcastable to the hook, true where the intervention applies;
    /// `None` when it applies everywhere.
    pub(super) fn selection(
        &mut self,
        target: &Target,
        axes: &Axes,
        n_heads: usize,
    ) -> Option<String> {
        let head = match (target.head, axes.head) {
            (Some(head), Some(axis)) => {
                let mut shape = vec![1i64; axes.rank];
                shape[axis] = n_heads as i64;
                let values: Vec<bool> = (0..n_heads).map(|h| h == head).collect();
                Some(self.nodes.bools(&shape, &values))
            }
            _ => None,
        };
        let pos = target.pos.map(|pos| {
            // positions [1, p] against each row's target index [b, 1] -> [b, p].
            let positions = self.positions();
            let zero = self.nodes.ints(&[1], &[0]);
            let positions = self.op("Unsqueeze", &[&positions, &zero]);
            let index = if pos >= 0 {
                self.nodes.ints(&[1, 1], &[pos])
            } else {
                let axis = self.nodes.ints(&[1], &[1]);
                let lengths = self.op_with(
                    "ReduceSum",
                    &[ATTENTION_MASK, &axis],
                    vec![attr_int("keepdims", 1)],
                );
                let offset = self.nodes.ints(&[1, 1], &[pos]);
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
            let axes_const = self.nodes.ints(&[unsqueeze.len() as i64], &unsqueeze);
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

/// A copy of `model` with `interventions` applied in order.
pub fn apply(
    model: &ModelProto,
    interventions: &[Intervention],
    n_heads_of: impl Fn(&str) -> usize,
) -> Result<ModelProto, CompileError> {
    let mut model = model.clone();
    let named_positions = model.graph.as_ref().is_some_and(|g| {
        g.node
            .iter()
            .any(|n| n.output.iter().any(|o| o == POSITIONS))
    });
    for (index, intervention) in interventions.iter().enumerate() {
        let graph = model.graph.as_mut().ok_or(CompileError::NoGraph)?;
        let pass = intervention.pass();
        let target = pass.target();
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

        let mut edit = Edit {
            nodes: Nodes::new(format!("{}/edit{index}", target.hook)),
            axes: axes(&target.hook),
            n_heads: n_heads_of(&target.hook),
            named_positions,
        };
        let edited = pass.build(&mut edit, &clean)?;
        edit.nodes
            .op_into("Identity", &[&edited], &target.hook, vec![]);
        let Nodes {
            nodes,
            initializers,
            ..
        } = edit.nodes;
        graph.node.splice(position + 1..position + 1, nodes);
        graph.initializer.extend(initializers);
        graph.input.extend(pass.inputs(&edit.axes));
    }
    Ok(model)
}
