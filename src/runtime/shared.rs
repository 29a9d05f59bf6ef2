//! A model's weights held once for every ONNX Runtime session made from it: the clean
//! model's sessions (one per set of outputs) and every variant's. Each session is given
//! the same values with `AddInitializer` (and each packed session one container of
//! pre-packed weights), so a variant costs its own nodes and buffers, not a copy of the
//! model.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::RuntimeError;
use crate::compile::four_bit::{self, FourBitLayout, FourBitWeight};
use crate::onnx::{ModelProto, TensorProto, tensor_proto};

pub(super) struct SharedWeights {
    pub values: HashMap<String, Arc<ort::value::DynValue>>,
    pub prepacked: ort::session::builder::PrepackedWeights,
    /// The weights stored as 4-bit blocks, found when a graph first asks (generation).
    four_bit: std::cell::OnceCell<FourBitWeights>,
}

/// The weights whose values are 4-bit blocks (see [`crate::compile::four_bit`]): each
/// one's layout, and the initializers its products read instead of it.
pub(super) struct FourBitWeights {
    pub layouts: HashMap<String, FourBitLayout>,
    values: HashMap<String, Arc<ort::value::DynValue>>,
}

/// A weight the graph reads transposed (a tied unembedding, `Transpose(W_E)`): ONNX
/// Runtime would fold the transpose into a new constant in every session, so it is made
/// a shared initializer named `output` instead.
#[derive(Debug, Clone)]
pub(super) struct Transposed {
    pub input: String,
    pub output: String,
}

impl SharedWeights {
    /// Every external float weight of `graph`, read from `dir`, and the transposes.
    pub fn read(
        dir: &Path,
        graph: &ModelProto,
        transposed: &[Transposed],
        storage: crate::model::WeightStorage,
    ) -> Result<SharedWeights, RuntimeError> {
        let mut arrays = HashMap::new();
        for tensor in graph.graph.iter().flat_map(|g| &g.initializer) {
            let Some(name) = tensor.name.as_deref() else {
                continue;
            };
            if is_external_f32(tensor) && !transposed.iter().any(|t| t.output == name) {
                arrays.insert(
                    name.to_owned(),
                    super::read_weight(dir, graph, name, storage)?,
                );
            }
        }
        // Transposed from the weight already read, not read from the file again.
        for t in transposed {
            let array = arrays
                .get(&t.input)
                .ok_or_else(|| RuntimeError::ModelFile {
                    path: dir.join(crate::manifest::GRAPH_FILE),
                    message: format!("has no weight `{}` to transpose", t.input),
                })?
                .t()
                .as_standard_layout()
                .into_owned();
            arrays.insert(t.output.clone(), array);
        }
        let values = arrays
            .into_iter()
            .map(|(name, array)| {
                let value = ort::value::Tensor::from_array(array)
                    .map_err(RuntimeError::ort(format!("holding weight `{name}`")))?;
                Ok((name, Arc::new(value.into_dyn())))
            })
            .collect::<Result<_, RuntimeError>>()?;
        Ok(SharedWeights {
            values,
            prepacked: ort::session::builder::PrepackedWeights::new(),
            four_bit: std::cell::OnceCell::new(),
        })
    }

    /// The shared value of initializer `name`: a weight, or a 4-bit weight's blocks.
    pub fn value(&self, name: &str) -> Option<&Arc<ort::value::DynValue>> {
        self.values.get(name).or_else(|| {
            self.four_bit
                .get()
                .and_then(|four_bit| four_bit.values.get(name))
        })
    }

    /// The weights stored as 4-bit blocks, found on first call (a pass over every
    /// matrix, which stops at the first block of one that is not).
    pub fn four_bit(&self) -> Result<&FourBitWeights, RuntimeError> {
        if let Some(four_bit) = self.four_bit.get() {
            return Ok(four_bit);
        }
        let mut layouts = HashMap::new();
        let mut values = HashMap::new();
        for (name, value) in &self.values {
            let Ok(array) = value.try_extract_array::<f32>() else {
                continue;
            };
            let Ok(matrix) = array.into_dimensionality::<ndarray::Ix2>() else {
                continue;
            };
            let Some(weight) = FourBitWeight::find(matrix) else {
                continue;
            };
            let held = |e| RuntimeError::ort(format!("holding the 4-bit blocks of `{name}`"))(e);
            values.insert(
                four_bit::packed_name(name),
                shared_value(weight.packed).map_err(held)?,
            );
            values.insert(
                four_bit::scales_name(name),
                shared_value(weight.scales).map_err(held)?,
            );
            if let Some(offsets) = weight.offsets {
                values.insert(
                    four_bit::offsets_name(name),
                    shared_value(offsets).map_err(held)?,
                );
            }
            layouts.insert(name.clone(), weight.layout);
        }
        Ok(self
            .four_bit
            .get_or_init(|| FourBitWeights { layouts, values }))
    }
}

/// `array` as a value sessions are given.
fn shared_value<T, D>(array: ndarray::Array<T, D>) -> Result<Arc<ort::value::DynValue>, ort::Error>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
    D: ndarray::Dimension + 'static,
{
    Ok(Arc::new(ort::value::Tensor::from_array(array)?.into_dyn()))
}

/// Whether a graph initializer is a float tensor stored in the external data file (the
/// weights; small constants the compile passes add are stored inline).
pub(super) fn is_external_f32(tensor: &TensorProto) -> bool {
    tensor.data_location == Some(tensor_proto::DataLocation::External as i32)
        && tensor.data_type == Some(tensor_proto::DataType::Float as i32)
}

/// Drops each `Cast` to f32 of a 16-bit weight (how `--dtype f16|bf16` exports store
/// them) and declares the weight itself f32 under the cast's output name: every session
/// is then given the widened array with the other shared weights, read once, instead of
/// ONNX Runtime folding the cast into an f32 copy per session. The declaration keeps the
/// 16-bit bytes' location; ONNX Runtime never reads an initializer it is given.
pub(super) fn drop_weight_casts(model: &mut ModelProto) {
    let Some(graph) = model.graph.as_mut() else {
        return;
    };
    let sixteen_bit = [
        tensor_proto::DataType::Float16 as i32,
        tensor_proto::DataType::Bfloat16 as i32,
    ];
    let stored: std::collections::HashSet<String> = graph
        .initializer
        .iter()
        .filter(|t| {
            t.data_location == Some(tensor_proto::DataLocation::External as i32)
                && t.data_type.is_some_and(|d| sixteen_bit.contains(&d))
        })
        .filter_map(|t| t.name.clone())
        .collect();
    let mut renames = std::collections::HashMap::new();
    graph.node.retain(|node| {
        let casts_stored = node.op_type.as_deref() == Some("Cast")
            && node.input.len() == 1
            && stored.contains(&node.input[0]);
        if casts_stored {
            renames.insert(node.input[0].clone(), node.output[0].clone());
        }
        !casts_stored
    });
    for tensor in &mut graph.initializer {
        if let Some(output) = tensor.name.as_ref().and_then(|n| renames.get(n)) {
            tensor.name = Some(output.clone());
            tensor.data_type = Some(tensor_proto::DataType::Float as i32);
        }
    }
}

/// Replaces each `Transpose(perm = [1, 0])` of an external 2-D weight by an initializer
/// of the transpose's output name. Its TensorProto names the weight's bytes in the data
/// file (the same size) only so the graph stays valid: every session is given the
/// transposed values under that name, which ONNX Runtime uses instead of reading them.
pub(super) fn fold_weight_transposes(model: &mut ModelProto) -> Vec<Transposed> {
    let Some(graph) = model.graph.as_mut() else {
        return Vec::new();
    };
    let mut folded = Vec::new();
    let mut added = Vec::new();
    graph.node.retain(|node| {
        let is_transpose = node.op_type.as_deref() == Some("Transpose")
            && node.input.len() == 1
            && node.output.len() == 1
            && node
                .attribute
                .iter()
                .all(|a| a.name.as_deref() != Some("perm") || a.ints == [1, 0]);
        let weight = node
            .input
            .first()
            .and_then(|input| graph_initializer(&graph.initializer, input));
        match (is_transpose, weight) {
            (true, Some(weight)) if is_external_f32(weight) && weight.dims.len() == 2 => {
                let mut tensor = weight.clone();
                tensor.name = Some(node.output[0].clone());
                tensor.dims = vec![weight.dims[1], weight.dims[0]];
                added.push(tensor);
                folded.push(Transposed {
                    input: node.input[0].clone(),
                    output: node.output[0].clone(),
                });
                false
            }
            _ => true,
        }
    });
    graph.initializer.extend(added);
    folded
}

fn graph_initializer<'a>(initializers: &'a [TensorProto], name: &str) -> Option<&'a TensorProto> {
    initializers
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{GraphProto, NodeProto, StringStringEntryProto};

    fn weight(name: &str, dims: &[i64], external: bool) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(tensor_proto::DataType::Float as i32),
            data_location: external.then_some(tensor_proto::DataLocation::External as i32),
            external_data: vec![StringStringEntryProto {
                key: Some("location".into()),
                value: Some("model.onnx.data".into()),
            }],
            ..Default::default()
        }
    }

    fn transpose(input: &str, output: &str) -> NodeProto {
        NodeProto {
            input: vec![input.into()],
            output: vec![output.into()],
            op_type: Some("Transpose".into()),
            attribute: vec![crate::onnx::build::attr_ints("perm", &[1, 0])],
            ..Default::default()
        }
    }

    #[test]
    fn a_transposed_external_weight_becomes_an_initializer_of_its_own() {
        let mut model = ModelProto {
            graph: Some(GraphProto {
                node: vec![
                    transpose("embed.W_E", "unembed/Transpose_0"),
                    transpose("inline", "other/Transpose_0"),
                ],
                initializer: vec![
                    weight("embed.W_E", &[5, 3], true),
                    weight("inline", &[2, 2], false),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let folded = fold_weight_transposes(&mut model);
        assert_eq!(folded.len(), 1);
        assert_eq!(
            (folded[0].input.as_str(), folded[0].output.as_str()),
            ("embed.W_E", "unembed/Transpose_0")
        );
        let graph = model.graph.unwrap();
        // The inline constant's transpose stays a node (ONNX Runtime folds it cheaply).
        assert_eq!(graph.node.len(), 1);
        assert_eq!(graph.node[0].input, ["inline"]);
        let added = graph_initializer(&graph.initializer, "unembed/Transpose_0").unwrap();
        assert_eq!(added.dims, [3, 5]);
        assert!(is_external_f32(added));
    }
}
