//! Export's ONNX graph builder: the shared node builder (`onnx::build`), plus shared
//! small constants, hook registration, and weights written as external data (so `model.onnx` stays a few hundred KB and can be
//! rewritten per experiment variant without touching the weights).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use ndarray::ArrayD;

use crate::manifest::HookInfo;
use crate::onnx::build::Nodes;
pub use crate::onnx::build::{attr_int, attr_ints, value_info};
use crate::onnx::{
    AttributeProto, FLOAT, GraphProto, INT64, StringStringEntryProto, TensorProto, ValueInfoProto,
    tensor_proto,
};

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
    nodes: Nodes,
    data: ExternalData,
    /// Small constants are shared by value so the graph does not repeat `[0, 2, 1, 3]`.
    constants: HashMap<(Vec<i64>, bool), String>,
    pub hooks: Vec<HookInfo>,
    /// How model weights are stored ([`Self::model_weight`]); constants stay f32.
    pub storage: crate::model::WeightStorage,
}

impl GraphBuilder {
    pub fn new(data: ExternalData) -> Self {
        Self {
            nodes: Nodes::default(),
            data,
            constants: HashMap::new(),
            hooks: Vec::new(),
            storage: crate::model::WeightStorage::Float32,
        }
    }

    /// A model weight, stored as [`Self::storage`] says. A 16-bit weight is the
    /// initializer `name:float16` (or `:bfloat16`) with a `Cast` to f32 named `name`, so
    /// the file is a valid ONNX model for any tool and the graph reads `name` as before;
    /// qexp's runtime drops the cast and widens the weight once at load.
    pub fn model_weight(&mut self, name: &str, array: &ArrayD<f32>) -> std::io::Result<String> {
        use crate::model::WeightStorage;
        let suffix = match self.storage {
            WeightStorage::Float32 => return self.weight(name, array),
            WeightStorage::Float16 => "float16",
            WeightStorage::Bfloat16 => "bfloat16",
        };
        let stored = format!("{name}:{suffix}");
        self.external(&stored, array, self.storage)?;
        self.op_into(
            "Cast",
            &[stored.as_str()],
            name,
            vec![attr_int("to", i64::from(FLOAT))],
        );
        Ok(name.to_owned())
    }

    /// Prefix for the names of nodes made from now on (`blocks.3.attn`), so a graph
    /// viewer shows where each node belongs.
    pub fn set_scope(&mut self, scope: impl Into<String>) {
        self.nodes.set_prefix(scope);
    }

    /// Adds a node with one output and returns the output's name.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.nodes.op(op_type, inputs, attributes)
    }

    /// Adds a node with `N` outputs (Split) and returns their names.
    pub fn op_n<const N: usize>(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> [String; N] {
        self.nodes.op_n(op_type, inputs, attributes)
    }

    /// Adds a node whose output has a chosen name.
    pub fn op_into(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        output: &str,
        attributes: Vec<AttributeProto>,
    ) {
        self.nodes.op_into(op_type, inputs, output, attributes);
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
        self.external(name, array, crate::model::WeightStorage::Float32)?;
        Ok(name.to_owned())
    }

    /// `array` appended to the external data file as `storage` says, declared as the
    /// initializer `name` of the matching ONNX type.
    fn external(
        &mut self,
        name: &str,
        array: &ArrayD<f32>,
        storage: crate::model::WeightStorage,
    ) -> std::io::Result<()> {
        use crate::model::WeightStorage;
        let standard = array.as_standard_layout();
        let values = standard.as_slice().expect("standard layout is contiguous");
        let data_type = match storage {
            WeightStorage::Float32 => FLOAT,
            WeightStorage::Float16 => tensor_proto::DataType::Float16 as i32,
            WeightStorage::Bfloat16 => tensor_proto::DataType::Bfloat16 as i32,
        };
        let bytes = storage.encode(values);
        let (offset, length) = self.data.append(&bytes)?;
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: Some(key.to_owned()),
            value: Some(value),
        };
        self.nodes.initializers.push(TensorProto {
            name: Some(name.to_owned()),
            dims: array.shape().iter().map(|&d| d as i64).collect(),
            data_type: Some(data_type),
            data_location: Some(tensor_proto::DataLocation::External as i32),
            external_data: vec![
                entry("location", self.data.file_name.clone()),
                entry("offset", offset.to_string()),
                entry("length", length.to_string()),
            ],
            ..Default::default()
        });
        Ok(())
    }

    /// An int64 constant, 1-D (or a scalar when `scalar`), stored inline.
    fn int_constant(&mut self, values: &[i64], scalar: bool) -> String {
        if let Some(name) = self.constants.get(&(values.to_vec(), scalar)) {
            return name.clone();
        }
        let name = format!("const_i64_{}", self.constants.len());
        let shape = if scalar {
            vec![]
        } else {
            vec![values.len() as i64]
        };
        self.nodes.initializer(name.clone(), &shape, INT64, |t| {
            t.int64_data = values.to_vec()
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
        let name = format!("const_f32_{}", self.nodes.next_id());
        self.nodes
            .initializer(name, &[], FLOAT, |t| t.float_data = vec![value])
    }

    pub fn finish(
        self,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
    ) -> std::io::Result<(GraphProto, Vec<HookInfo>)> {
        self.data.finish()?;
        let graph = GraphProto {
            node: self.nodes.nodes,
            name: Some("qexp_hooked_transformer".into()),
            initializer: self.nodes.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        };
        Ok((graph, self.hooks))
    }
}
