//! Ablations: a hook's target replaced by zeros, or by a constant (a mean activation).

use ndarray::ArrayD;

use super::{Edit, Pass, Target};
use crate::compile::CompileError;

/// Replace the target with zeros.
#[derive(Debug, Clone)]
pub struct Zero {
    pub target: Target,
}

impl Pass for Zero {
    fn target(&self) -> &Target {
        &self.target
    }

    fn build(&self, e: &mut Edit, clean: &str) -> Result<String, CompileError> {
        let (axes, n_heads) = (e.axes, e.n_heads);
        Ok(match e.selection(&self.target, &axes, n_heads) {
            None => {
                let zero = e.nodes.floats(&[], &[0.0]);
                e.op("Mul", &[clean, &zero])
            }
            Some(mask) => {
                let keep = e.op("Not", &[&mask]);
                let zeros = e.nodes.floats(&[], &[0.0]);
                e.op("Where", &[&keep, clean, &zeros])
            }
        })
    }
}

/// Replace the target with a constant (a mean activation), broadcast over batch and
/// positions: its shape is the hook's shape without those two axes.
#[derive(Debug, Clone)]
pub struct Constant {
    pub target: Target,
    pub value: ArrayD<f32>,
}

impl Pass for Constant {
    fn target(&self) -> &Target {
        &self.target
    }

    fn build(&self, e: &mut Edit, clean: &str) -> Result<String, CompileError> {
        let (axes, n_heads) = (e.axes, e.n_heads);
        let selected = e.selection(&self.target, &axes, n_heads);
        let mut shape = vec![1, 1];
        shape.extend(self.value.shape().iter().map(|&d| d as i64));
        let standard = self.value.as_standard_layout();
        let constant = e
            .nodes
            .floats(&shape, standard.as_slice().expect("standard layout"));
        Ok(match selected {
            None => {
                let shape_of = e.op("Shape", &[clean]);
                e.op("Expand", &[&constant, &shape_of])
            }
            Some(mask) => e.op("Where", &[&mask, &constant, clean]),
        })
    }
}
