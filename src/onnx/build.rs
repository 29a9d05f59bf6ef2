//! Building ONNX nodes and inline constants with readable generated names
//! (`<prefix>/<op>_<n>`). Export's `GraphBuilder` and each compile pass wrap one
//! [`Nodes`]; neither builds a `NodeProto` by hand.

use super::{
    AttributeProto, BOOL, FLOAT, INT64, NodeProto, TensorProto, TypeProto, ValueInfoProto,
    attribute_proto, tensor_shape_proto, type_proto,
};

/// Nodes and inline initializers made under one name prefix.
#[derive(Debug, Default)]
pub struct Nodes {
    prefix: String,
    counter: usize,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
}

impl Nodes {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    /// The prefix of names made from now on (`blocks.3.attn`), so a graph viewer shows
    /// where each node belongs.
    pub fn set_prefix(&mut self, prefix: impl Into<String>) {
        self.prefix = prefix.into();
    }

    /// The next number of this builder's names (shared by every name it makes).
    pub fn next_id(&mut self) -> usize {
        self.counter += 1;
        self.counter
    }

    /// A fresh name: `<prefix>/<what>_<n>`.
    pub fn fresh(&mut self, what: &str) -> String {
        let id = self.next_id();
        format!("{}/{what}_{id}", self.prefix)
    }

    /// Adds a node with one output and returns the output's name.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        let output = self.fresh(op_type);
        self.op_into(op_type, inputs, &output, attributes);
        output
    }

    /// Adds a node with `N` outputs (Split, TopK) and returns their names.
    pub fn op_n<const N: usize>(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> [String; N] {
        let id = self.next_id();
        let outputs: [String; N] =
            std::array::from_fn(|i| format!("{}/{op_type}_{id}:{i}", self.prefix));
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
        self.nodes.push(node(op_type, inputs, output, attributes));
    }

    /// An inline initializer named `name`.
    pub fn initializer(
        &mut self,
        name: String,
        shape: &[i64],
        data_type: i32,
        fill: impl FnOnce(&mut TensorProto),
    ) -> String {
        let mut tensor = TensorProto {
            name: Some(name.clone()),
            dims: shape.to_vec(),
            data_type: Some(data_type),
            ..Default::default()
        };
        fill(&mut tensor);
        self.initializers.push(tensor);
        name
    }

    /// An inline constant under a fresh name.
    fn constant(
        &mut self,
        shape: &[i64],
        data_type: i32,
        fill: impl FnOnce(&mut TensorProto),
    ) -> String {
        let name = self.fresh("const");
        self.initializer(name, shape, data_type, fill)
    }

    pub fn floats(&mut self, shape: &[i64], values: &[f32]) -> String {
        self.constant(shape, FLOAT, |t| t.float_data = values.to_vec())
    }

    pub fn ints(&mut self, shape: &[i64], values: &[i64]) -> String {
        self.constant(shape, INT64, |t| t.int64_data = values.to_vec())
    }

    pub fn bools(&mut self, shape: &[i64], values: &[bool]) -> String {
        self.constant(shape, BOOL, |t| {
            t.int32_data = values.iter().map(|&b| i32::from(b)).collect()
        })
    }

    pub fn matrix(&mut self, m: &ndarray::Array2<f32>) -> String {
        let standard = m.as_standard_layout();
        self.floats(
            &[m.nrows() as i64, m.ncols() as i64],
            standard.as_slice().expect("standard layout is contiguous"),
        )
    }

    pub fn vector(&mut self, v: &ndarray::Array1<f32>) -> String {
        self.floats(&[v.len() as i64], &v.to_vec())
    }
}

/// A node with one named output (its name too).
pub fn node(
    op_type: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        name: Some(output.to_owned()),
        op_type: Some(op_type.to_owned()),
        attribute,
        ..Default::default()
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
                shape: Some(super::TensorShapeProto {
                    dim: dims.iter().map(dim).collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An output declaration with a type and no shape: ONNX Runtime infers the shape.
pub fn float_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(FLOAT),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
