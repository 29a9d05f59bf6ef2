//! Steering: a vector added along a hook's last axis, at the target's head and positions.

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
        let added = e.nodes.vector(&self.vector);
        let steered = e.op("Add", &[clean, &added]);
        Ok(e.where_selected(selected.as_deref(), &steered, clean))
    }
}
