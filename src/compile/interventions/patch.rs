//! Activation patching: the target replaced by a value fed at run time through a new
//! graph input, the hook's value from another run.

use super::{Edit, Pass, Target};
use crate::compile::CompileError;
use crate::hooks::Axes;
use crate::onnx::{FLOAT, ValueInfoProto, build::value_info};

/// Replace the target with the graph input `input`, which has the hook's full shape;
/// only the target's head and positions are taken from it.
#[derive(Debug, Clone)]
pub struct Patch {
    pub target: Target,
    pub input: String,
}

impl Pass for Patch {
    fn target(&self) -> &Target {
        &self.target
    }

    fn build(&self, e: &mut Edit, clean: &str) -> Result<String, CompileError> {
        let (axes, n_heads) = (e.axes, e.n_heads);
        Ok(match e.selection(&self.target, &axes, n_heads) {
            None => e.op("Identity", &[&self.input]),
            Some(mask) => e.op("Where", &[&mask, &self.input, clean]),
        })
    }

    fn inputs(&self, axes: &Axes) -> Vec<ValueInfoProto> {
        let dims: Vec<String> = (0..axes.rank)
            .map(|d| format!("{}_dim{d}", self.input))
            .collect();
        let dims: Vec<&str> = dims.iter().map(String::as_str).collect();
        vec![value_info(&self.input, FLOAT, &dims)]
    }
}
