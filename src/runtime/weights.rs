//! Reading a model's weights by name from `model.onnx.data`, for analyses that need no
//! forward pass (composition scores, direct logit attribution).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ndarray::ArrayD;

use super::RuntimeError;
use crate::onnx::{ModelProto, tensor_proto};

/// The weight `name` (TransformerLens naming, `[in, out]` layout), read from the external
/// data file the graph's initializer points at.
pub fn read_weight(
    dir: &Path,
    graph: &ModelProto,
    name: &str,
    storage: crate::model::WeightStorage,
) -> Result<ArrayD<f32>, RuntimeError> {
    let missing = || RuntimeError::ModelFile {
        path: dir.join("model.onnx"),
        message: format!("has no weight `{name}`"),
    };
    let tensor = graph
        .graph
        .as_ref()
        .and_then(|g| {
            g.initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(name))
        })
        .ok_or_else(missing)?;
    let shape: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
    if tensor.data_location != Some(tensor_proto::DataLocation::External as i32) {
        return ArrayD::from_shape_vec(shape, tensor.float_data.clone()).map_err(|_| missing());
    }
    let entry = |key: &str| {
        tensor
            .external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .and_then(|e| e.value.clone())
    };
    let location = entry("location").ok_or_else(missing)?;
    let offset: u64 = entry("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let length: usize = entry("length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(missing)?;
    let path = dir.join(&location);
    let io = |e: std::io::Error| RuntimeError::ModelFile {
        path: path.clone(),
        message: e.to_string(),
    };
    let mut file = std::fs::File::open(&path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut bytes = vec![0u8; length];
    file.read_exact(&mut bytes).map_err(io)?;
    // A 16-bit weight whose cast the runtime dropped (`drop_weight_casts`) is declared
    // f32 in memory but holds two bytes a value: the manifest says which kind.
    let count: usize = shape.iter().product();
    let stored = if length == 2 * count && !storage.is_float32() {
        storage
    } else {
        crate::model::WeightStorage::Float32
    };
    let values = stored.decode(&bytes);
    ArrayD::from_shape_vec(shape, values).map_err(|_| RuntimeError::ModelFile {
        path: path.clone(),
        message: format!(
            "weight `{name}` has {length} bytes, not what its shape needs; export the model again"
        ),
    })
}
