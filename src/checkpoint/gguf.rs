//! A reader for GGUF files (versions 2 and 3): metadata, tensor directory, and tensors
//! dequantized to f32.
//!
//! The file is memory-mapped; every offset and length is checked against the file size
//! before it is read, so a truncated or corrupt file is an error, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::CheckpointError;
use super::quant::{self, GgmlType};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Guards against a corrupt count asking us to allocate the universe.
const MAX_ELEMENTS: u64 = 1 << 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// GGML order: `dims[0]` is the fastest-varying (the input dimension of a matrix).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: u64,
}

impl TensorInfo {
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let file = crate::files::open(path).map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: the map is read-only and the file is not modified while qexp reads it;
        // a concurrent writer could only make us read garbage, which every reader checks.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        })?;
        let corrupt = |what: String| CheckpointError::Corrupt {
            path: path.to_owned(),
            what,
        };
        let mut cursor = Cursor { bytes: &map, at: 0 };
        let magic = cursor.take(4).map_err(&corrupt)?;
        if magic != MAGIC {
            return Err(corrupt(
                "it does not start with the GGUF magic bytes".into(),
            ));
        }
        let version = cursor.u32().map_err(&corrupt)?;
        if !(2..=3).contains(&version) {
            return Err(corrupt(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let tensor_count = cursor.u64().map_err(&corrupt)?;
        let kv_count = cursor.u64().map_err(&corrupt)?;
        if tensor_count > MAX_ELEMENTS || kv_count > MAX_ELEMENTS {
            return Err(corrupt("its header counts are implausibly large".into()));
        }

        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = cursor.string().map_err(&corrupt)?;
            let value_type = cursor.u32().map_err(&corrupt)?;
            let value = cursor.value(value_type, 0).map_err(&corrupt)?;
            metadata.insert(key, value);
        }

        // A tensor's description takes at least 24 bytes (name length, dimension count,
        // type, offset): a count the file cannot hold is corrupt, not a reason to allocate.
        if tensor_count > (cursor.bytes.len() - cursor.at) as u64 / 24 {
            return Err(corrupt(format!(
                "its header declares {tensor_count} tensors, more than the file can describe"
            )));
        }
        let mut infos = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = cursor.string().map_err(&corrupt)?;
            let n_dims = cursor.u32().map_err(&corrupt)?;
            if n_dims > 4 {
                return Err(corrupt(format!(
                    "tensor `{name}` claims {n_dims} dimensions"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| cursor.u64())
                .collect::<Result<Vec<_>, _>>()
                .map_err(&corrupt)?;
            let type_id = cursor.u32().map_err(&corrupt)?;
            let relative_offset = cursor.u64().map_err(&corrupt)?;
            infos.push((name, dims, type_id, relative_offset));
        }

        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .filter(|&a| a > 0)
            .unwrap_or(DEFAULT_ALIGNMENT);
        let data_start = (cursor.at as u64).div_ceil(alignment) * alignment;

        let mut tensors = BTreeMap::new();
        for (name, dims, type_id, relative_offset) in infos {
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                CheckpointError::Unsupported {
                    path: path.to_owned(),
                    what: format!(
                        "tensor `{name}` uses GGML type {} ({type_id}); qexp reads F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1, Q6_K, Q5_K, Q4_K, Q3_K and Q2_K; convert the file with llama.cpp to one of them",
                        quant::type_name(type_id)
                    ),
                }
            })?;
            let info = TensorInfo {
                dims,
                ggml_type,
                offset: data_start + relative_offset,
            };
            let elements = info.element_count();
            let bytes = ggml_type.byte_len(elements).ok_or_else(|| {
                corrupt(format!(
                    "tensor `{name}` has {elements} elements, not a whole number of {ggml_type:?} blocks"
                ))
            })?;
            let end = info.offset.checked_add(bytes);
            if end.is_none_or(|end| end > map.len() as u64) {
                return Err(corrupt(format!(
                    "tensor `{name}` runs past the end of the file (the file is truncated?)"
                )));
            }
            tensors.insert(name, info);
        }

        Ok(Self {
            path: path.to_owned(),
            map,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A tensor dequantized to f32, in row-major order with the GGML dims reversed
    /// (so a matrix comes back as `[rows, columns]` = `[out, in]`).
    pub fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), CheckpointError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })?;
        let elements = info.element_count();
        let len = info
            .ggml_type
            .byte_len(elements)
            .expect("checked when the file was opened") as usize;
        let start = info.offset as usize;
        let values = info
            .ggml_type
            .dequantize(&self.map[start..start + len], elements as usize);
        let shape = info.dims.iter().rev().map(|&d| d as usize).collect();
        Ok((shape, values))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
}

/// Reads little-endian primitives with bounds checks; errors are plain strings that
/// [`GgufFile::open`] wraps with the file's path.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "its header ends early (needed {n} bytes at offset {}; the file is truncated?)",
                    self.at
                )
            })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| "a string length overflows".to_owned())?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<Value, String> {
        Ok(match value_type {
            0 => Value::U64(u64::from(self.array::<1>()?[0])),
            1 => Value::I64(i64::from(i8::from_le_bytes(self.array()?))),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.array()?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.array()?))),
            4 => Value::U64(u64::from(self.u32()?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.array()?))),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.array()?))),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("metadata arrays nest too deeply".into());
                }
                let item_type = self.u32()?;
                let count = self.u64()?;
                // Each item takes at least one byte, so a count beyond the remaining bytes
                // is corrupt; checking first avoids a huge allocation.
                if count > (self.bytes.len() - self.at) as u64 {
                    return Err("a metadata array is longer than the file".into());
                }
                let items = (0..count)
                    .map(|_| self.value(item_type, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}
