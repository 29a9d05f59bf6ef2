//! A small builder for ONNX graphs: nodes with readable generated names, constants, and
//! weights written as external data (so `model.onnx` stays a few hundred KB and can be
//! rewritten per experiment variant without touching the weights).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use ndarray::ArrayD;

use crate::manifest::HookInfo;
use crate::onnx::{
    AttributeProto, GraphProto, NodeProto, StringStringEntryProto, TensorProto, TypeProto,
    ValueInfoProto, attribute_proto, tensor_proto, tensor_shape_proto, type_proto,
};
use crate::onnx::{FLOAT, INT64};

/// External data is aligned to the page size so ONNX Runtime can map it instead of copying.
const DATA_ALIGNMENT: u64 = 4096;

/// Writes initializers' bytes to the side file `model.onnx.data`.
pub struct ExternalData {
    file_name: String,
    out: BufWriter<File>,
    offset: u64,
}

impl ExternalData {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            file_name: path
                .file_name()
                .expect("the data path names a file")
                .to_string_lossy()
                .into_owned(),
            out: BufWriter::with_capacity(1 << 20, File::create(path)?),
            offset: 0,
        })
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<(u64, u64)> {
        let padding = self.offset.next_multiple_of(DATA_ALIGNMENT) - self.offset;
        self.out.write_all(&vec![0; padding as usize])?;
        let start = self.offset + padding;
        self.out.write_all(bytes)?;
        self.offset = start + bytes.len() as u64;
        Ok((start, bytes.len() as u64))
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}

pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    data: ExternalData,
    /// Small constants are shared by value so the graph does not repeat `[0, 2, 1, 3]`.
    constants: HashMap<(Vec<i64>, bool), String>,
    scope: String,
    counter: usize,
    pub hooks: Vec<HookInfo>,
}

impl GraphBuilder {
    pub fn new(data: ExternalData) -> Self {
        Self {
            nodes: Vec::new(),
            initializers: Vec::new(),
            data,
            constants: HashMap::new(),
            scope: String::new(),
            counter: 0,
            hooks: Vec::new(),
        }
    }

    /// Prefix for the names of nodes made from now on (`blocks.3.attn`), so a graph
    /// viewer shows where each node belongs.
    pub fn set_scope(&mut self, scope: impl Into<String>) {
        self.scope = scope.into();
    }

    /// Adds a node with one output and returns the output's name.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.counter += 1;
        let output = format!("{}/{}_{}", self.scope, op_type, self.counter);
        self.op_into(op_type, inputs, &output, attributes);
        output
    }

    /// Adds a node with `N` outputs (Split) and returns their names.
    pub fn op_n<const N: usize>(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> [String; N] {
        self.counter += 1;
        let outputs: [String; N] =
            std::array::from_fn(|i| format!("{}/{}_{}:{i}", self.scope, op_type, self.counter));
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.to_vec(),
            name: Some(outputs[0].clone()),
            op_type: Some(op_type.to_owned()),
            attribute: attributes,
            ..Default::default()
        });
        outputs
    }

    /// Adds a node whose output has a chosen name.
    pub fn op_into(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        output: &str,
        attributes: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.to_owned()],
            name: Some(output.to_owned()),
            op_type: Some(op_type.to_owned()),
            attribute: attributes,
            ..Default::default()
        });
    }

    /// Names `source` as a hook point: an Identity node whose output carries the
    /// TransformerLens name. Downstream nodes read the hook, so an intervention that
    /// rewrites the hook's value reaches everything after it. ONNX Runtime removes the
    /// Identity when the hook is not a graph output, so unused hooks cost nothing.
    pub fn hook(&mut self, name: &str, source: &str, shape: &[&str], meaning: &str) -> String {
        // Every exported hook is in the vocabulary the checker and compile passes use.
        assert!(
            crate::hooks::is_known(name),
            "`{name}` is not in the hook vocabulary (src/hooks.rs)"
        );
        self.op_into("Identity", &[source], name, vec![]);
        self.hooks.push(HookInfo {
            name: name.to_owned(),
            shape: shape.iter().map(|s| (*s).to_owned()).collect(),
            meaning: meaning.to_owned(),
        });
        name.to_owned()
    }

    /// A weight stored in the external data file under its own (TransformerLens) name.
    pub fn weight(&mut self, name: &str, array: &ArrayD<f32>) -> std::io::Result<String> {
        let standard = array.as_standard_layout();
        let values = standard.as_slice().expect("standard layout is contiguous");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (offset, length) = self.data.append(&bytes)?;
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: Some(key.to_owned()),
            value: Some(value),
        };
        self.initializers.push(TensorProto {
            name: Some(name.to_owned()),
            dims: array.shape().iter().map(|&d| d as i64).collect(),
            data_type: Some(FLOAT),
            data_location: Some(tensor_proto::DataLocation::External as i32),
            external_data: vec![
                entry("location", self.data.file_name.clone()),
                entry("offset", offset.to_string()),
                entry("length", length.to_string()),
            ],
            ..Default::default()
        });
        Ok(name.to_owned())
    }

    /// An int64 constant, 1-D (or a scalar when `scalar`), stored inline.
    fn int_constant(&mut self, values: &[i64], scalar: bool) -> String {
        if let Some(name) = self.constants.get(&(values.to_vec(), scalar)) {
            return name.clone();
        }
        let name = format!("const_i64_{}", self.constants.len());
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: if scalar {
                vec![]
            } else {
                vec![values.len() as i64]
            },
            data_type: Some(INT64),
            int64_data: values.to_vec(),
            ..Default::default()
        });
        self.constants
            .insert((values.to_vec(), scalar), name.clone());
        name
    }

    pub fn ints(&mut self, values: &[i64]) -> String {
        self.int_constant(values, false)
    }

    pub fn int_scalar(&mut self, value: i64) -> String {
        self.int_constant(&[value], true)
    }

    /// A float scalar constant, stored inline.
    pub fn float_scalar(&mut self, value: f32) -> String {
        self.counter += 1;
        let name = format!("const_f32_{}", self.counter);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![],
            data_type: Some(FLOAT),
            float_data: vec![value],
            ..Default::default()
        });
        name
    }

    pub fn finish(
        self,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
    ) -> std::io::Result<(GraphProto, Vec<HookInfo>)> {
        self.data.finish()?;
        let graph = GraphProto {
            node: self.nodes,
            name: Some("qexp_hooked_transformer".into()),
            initializer: self.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        };
        Ok((graph, self.hooks))
    }
}

pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// A tensor value description with named (symbolic) or fixed dimensions.
pub fn value_info(name: &str, elem_type: i32, dims: &[&str]) -> ValueInfoProto {
    let dim = |d: &&str| tensor_shape_proto::Dimension {
        value: Some(match d.parse::<i64>() {
            Ok(n) => tensor_shape_proto::dimension::Value::DimValue(n),
            Err(_) => tensor_shape_proto::dimension::Value::DimParam((*d).to_owned()),
        }),
        ..Default::default()
    };
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type),
                shape: Some(crate::onnx::TensorShapeProto {
                    dim: dims.iter().map(dim).collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
