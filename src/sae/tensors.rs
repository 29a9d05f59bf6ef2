//! f32 tensors in safetensors files, for SAE weights and training checkpoints. Reads f32,
//! f16 and bf16 (SAELens writes any of them); writes f32.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::ArrayD;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

pub fn write(path: &Path, tensors: &[(&str, ArrayD<f32>)]) -> Result<(), String> {
    let bytes: Vec<(&str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, array)| {
            let bytes = array.iter().flat_map(|v| v.to_le_bytes()).collect();
            (*name, array.shape().to_vec(), bytes)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (*name, view))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| e.to_string())?;
    // safetensors creates the file private (0600); a saved SAE is shared like any file.
    crate::output::set_default_permissions(path, false).map_err(|e| e.to_string())
}

pub fn read(path: &Path) -> Result<BTreeMap<String, ArrayD<f32>>, String> {
    let bytes = crate::files::read(path).map_err(|e| e.to_string())?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => return Err(format!("`{name}` has dtype {other:?}")),
            };
            let array = ArrayD::from_shape_vec(view.shape().to_vec(), values)
                .map_err(|e| format!("`{name}`: {e}"))?;
            Ok((name, array))
        })
        .collect()
}
