//! Steering: a vector added along a hook's last axis, at the target's head and positions;
//! or, as ActAdd does, one vector per position added at the front of every sequence.

use super::{Edit, Pass, Target};
use crate::compile::CompileError;

/// Add `vector` (a steering direction) to the target.
#[derive(Debug, Clone)]
pub struct Add {
    pub target: Target,
    pub vector: ndarray::Array1<f32>,
}

impl Pass for Add {
    fn target(&self) -> &Target {
        &self.target
    }

    fn build(&self, e: &mut Edit, clean: &str) -> Result<String, CompileError> {
        let (axes, n_heads) = (e.axes, e.n_heads);
        let selected = e.selection(&self.target, &axes, n_heads);
        // At the hook's rank, batch axis first: variants' vectors then stack as rows of
        // one batch (see `lift`).
        let mut shape = vec![1i64; axes.rank.max(1) - 1];
        shape.push(self.vector.len() as i64);
        let added = e.nodes.floats(&shape, &self.vector.to_vec());
        let steered = e.op("Add", &[clean, &added]);
        Ok(e.where_selected(selected.as_deref(), &steered, clean))
    }
}

/// Add row `i` of `rows` to position `i` of a `[batch, pos, d]` hook, for the first
/// `rows.nrows()` positions of every sequence (fewer where a sequence is shorter):
/// ActAdd's injection of a prompt pair's difference at the front of the stream.
#[derive(Debug, Clone)]
pub struct AddAtFront {
    pub target: Target,
    pub rows: ndarray::Array2<f32>,
}

impl Pass for AddAtFront {
    fn target(&self) -> &Target {
        &self.target
    }

    fn build(&self, e: &mut Edit, clean: &str) -> Result<String, CompileError> {
        if e.axes.head.is_some() || e.axes.pos != 1 || e.axes.rank != 3 {
            return Err(CompileError::Unsupported(format!(
                "adding at the front positions of `{}` (it is not laid out [batch, pos, d])",
                self.target.hook
            )));
        }
        let rows = e.nodes.matrix(&self.rows);
        // The rows padded with zeros to cover the last position, then gathered at each
        // position, so [p, d] broadcasts over the batch (and a cache's new tokens, at
        // later positions, get the zeros).
        let positions = e.positions();
        let zero = e.nodes.ints(&[1], &[0]);
        let (from_end, to_end) = (e.nodes.ints(&[1], &[-1]), e.nodes.ints(&[1], &[i64::MAX]));
        let last = e.op("Slice", &[&positions, &from_end, &to_end, &zero]);
        let one = e.nodes.ints(&[1], &[1]);
        let needed = e.op("Add", &[&last, &one]);
        // The row count read from the rows, not written in: variants with more or fewer
        // rows then share one graph (see `lift`).
        let count = e.op_with(
            "Shape",
            &[&rows],
            vec![crate::onnx::build::attr_int("end", 1)],
        );
        let short = e.op("Sub", &[&needed, &count]);
        let extra = e.op("Max", &[&short, &zero]);
        let (before, after) = (e.nodes.ints(&[2], &[0, 0]), e.nodes.ints(&[1], &[0]));
        let pads = e.op_with(
            "Concat",
            &[&before, &extra, &after],
            vec![crate::onnx::build::attr_int("axis", 0)],
        );
        let padded = e.op("Pad", &[&rows, &pads]);
        let front = e.op_with(
            "Gather",
            &[&padded, &positions],
            vec![crate::onnx::build::attr_int("axis", 0)],
        );
        Ok(e.op("Add", &[clean, &front]))
    }
}
