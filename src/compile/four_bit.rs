//! Matrix products on the 4-bit blocks a weight was quantized to.
//!
//! A weight read from a GGUF file in Q4_0, Q4_1 or Q4_K is, once widened to f32, still
//! made of 32-row blocks of each column with 16 evenly spaced levels: `d * (q - 8)`
//! (Q4_0), `d * q + m` (Q4_1; Q4_K likewise, its `d` and `m` from a super-block's scales),
//! `q` in `0..=15`. [`FourBitWeight::find`] recovers the levels (or says the weight is
//! not such a thing), and [`with_four_bit_weights`] has a graph multiply by them with
//! ONNX Runtime's `MatMulNBits`, which reads half a byte per weight instead of four.
//! Generation, one token per step, is bound by reading the weights, so this is where it
//! pays. The kernel's products are computed in f32 from the same levels; they differ
//! from the f32 product only in rounding and the order of the additions.
//!
//! `MatMulNBits` computes `(q - 8) * scale` per block. Q4_1's blocks also have an offset
//! (`d * q + m = (q - 8) * d + (m + 8d)`), added as `sum of the block's inputs * offset`:
//! one small product per weight, from the input's 32-wide sums.

use std::collections::{HashMap, HashSet};

use ndarray::{Array1, Array2, Array3, ArrayView2};
use rayon::prelude::*;

use super::CompileError;
use crate::onnx::build::{Nodes, attr_int};
use crate::onnx::{FLOAT, ModelProto, OperatorSetIdProto, StringStringEntryProto};

/// Rows of a column that share one scale.
pub const BLOCK: usize = 32;

/// The operator domain of `MatMulNBits`.
const MICROSOFT: &str = "com.microsoft";

/// A `[K, N]` weight as `MatMulNBits` reads it.
#[derive(Debug, Clone)]
pub struct FourBitWeight {
    pub layout: FourBitLayout,
    /// `[N, K / 32, 16]`: each column's blocks, two levels a byte, the even row in the
    /// low half.
    pub packed: Array3<u8>,
    /// `[N * K / 32]`: each block's step between levels, column by column.
    pub scales: Array1<f32>,
    /// `[K / 32, N]`: each block's value at level 8, where any block has one.
    pub offsets: Option<Array2<f32>>,
}

/// The shape of a [`FourBitWeight`], which is all a graph rewrite needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FourBitLayout {
    pub k: usize,
    pub n: usize,
    pub has_offsets: bool,
}

/// One block's levels: `value = (q - 8) * scale + offset`.
struct Block {
    levels: [u8; BLOCK],
    scale: f32,
    offset: f32,
}

impl FourBitWeight {
    /// The blocks `weight` (`[K, N]`) is made of, or `None` when any block of any column
    /// is not 16 evenly spaced levels (to within f32 rounding of the scale): a weight
    /// trained or stored in floats never is.
    pub fn find(weight: ArrayView2<'_, f32>) -> Option<Self> {
        let (k, n) = weight.dim();
        if k == 0 || n == 0 || !k.is_multiple_of(BLOCK) {
            return None;
        }
        let rows = weight.as_standard_layout();
        let rows = rows.as_slice().expect("a standard layout is contiguous");
        // 32 rows of every column at a time: a column's block is strided, but read from
        // memory the block's other columns keep in cache.
        let block_rows: Vec<Vec<Block>> = rows
            .par_chunks(BLOCK * n)
            .map(|chunk| {
                let mut values = [0.0f32; BLOCK];
                let mut form = Form::Symmetric;
                (0..n)
                    .map(|column| {
                        for (i, value) in values.iter_mut().enumerate() {
                            *value = chunk[i * n + column];
                        }
                        block_levels(&values, &mut form)
                    })
                    .collect()
            })
            .collect::<Option<_>>()?;
        let blocks = k / BLOCK;
        let mut packed = Array3::zeros((n, blocks, BLOCK / 2));
        let mut scales = Array1::zeros(n * blocks);
        let mut offsets = Array2::zeros((blocks, n));
        for (b, row) in block_rows.iter().enumerate() {
            for (column, block) in row.iter().enumerate() {
                for pair in 0..BLOCK / 2 {
                    packed[[column, b, pair]] =
                        block.levels[2 * pair] | (block.levels[2 * pair + 1] << 4);
                }
                scales[column * blocks + b] = block.scale;
                offsets[[b, column]] = block.offset;
            }
        }
        let has_offsets = offsets.iter().any(|&o| o != 0.0);
        Some(FourBitWeight {
            layout: FourBitLayout { k, n, has_offsets },
            packed,
            scales,
            offsets: has_offsets.then_some(offsets),
        })
    }
}

/// The two forms llama.cpp's plain quantizers leave a block in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Q4_0's `d * (q - 8)`: the largest magnitude at level 0.
    Symmetric,
    /// Q4_1's and Q4_K's `d * q + m`: the least value at level 0, the greatest at 15.
    FromMinimum,
}

/// A block's levels, in the form that fits: `first` (the form the previous block had,
/// since a weight's blocks share one), then the other. Quantizers that choose the scale
/// otherwise (an importance matrix's) may leave the extreme levels unused: then the step
/// is the smallest gap between the block's values, refined over its whole span.
fn block_levels(values: &[f32], first: &mut Form) -> Option<Block> {
    let least = values.iter().copied().fold(f32::INFINITY, f32::min);
    let greatest = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let magnitude = least.abs().max(greatest.abs());
    let fit = |form| match form {
        Form::Symmetric => {
            let largest = if greatest.abs() > least.abs() {
                greatest
            } else {
                least
            };
            levels_of(values, magnitude, -largest / 8.0, 0.0)
        }
        Form::FromMinimum => {
            let step = (greatest - least) / 15.0;
            levels_of(values, magnitude, step, least + 8.0 * step)
        }
    };
    let second = match first {
        Form::Symmetric => Form::FromMinimum,
        Form::FromMinimum => Form::Symmetric,
    };
    if let Some(block) = fit(*first) {
        return Some(block);
    }
    if let Some(block) = fit(second) {
        *first = second;
        return Some(block);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let gap = sorted
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .filter(|&gap| gap > 0.0)
        .fold(f32::INFINITY, f32::min);
    let span = ((greatest - least) / gap).round();
    if !(1.0..=15.0).contains(&span) {
        return None;
    }
    let step = (greatest - least) / span;
    levels_of(values, magnitude, step, 0.0)
        .or_else(|| levels_of(values, magnitude, -step, 0.0))
        .or_else(|| levels_of(values, magnitude, step, least + 8.0 * step))
}

/// The levels of `values` as `(q - 8) * scale + offset`, if every value is one to within
/// f32 rounding of `magnitude`, the largest of them.
fn levels_of(values: &[f32], magnitude: f32, scale: f32, offset: f32) -> Option<Block> {
    if !scale.is_finite() || !offset.is_finite() {
        return None;
    }
    let tolerance = 8.0 * f32::EPSILON * magnitude;
    let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    // Adding and taking away 1.5 * 2^23 rounds to a whole number in f32 arithmetic alone,
    // so the loop has no branches or integer conversions and vectorizes: a value off the
    // levels (or past either end, clamped) fails the check however it was rounded.
    const ROUND: f32 = 12_582_912.0;
    let mut rounded = [0.0f32; BLOCK];
    let mut fits = true;
    for (q, &value) in rounded.iter_mut().zip(values) {
        *q = (((value - offset) * inverse + 8.0 + ROUND) - ROUND).clamp(0.0, 15.0);
        fits &= ((*q - 8.0) * scale + offset - value).abs() <= tolerance;
    }
    fits.then(|| Block {
        levels: rounded.map(|q| q as u8),
        scale,
        offset,
    })
}

/// The initializer holding weight `weight`'s packed levels.
pub fn packed_name(weight: &str) -> String {
    format!("{weight}.q4_levels")
}

/// The initializer holding weight `weight`'s block scales.
pub fn scales_name(weight: &str) -> String {
    format!("{weight}.q4_scales")
}

/// The initializer holding weight `weight`'s block offsets.
pub fn offsets_name(weight: &str) -> String {
    format!("{weight}.q4_offsets")
}

/// A copy of `model` whose products `MatMul(x, W)` by a weight in `weights` run on its
/// blocks instead. The blocks' initializers are declared over the weight's stored bytes
/// (shorter than them) for the graph to be valid: the session must be given their values
/// (named by [`packed_name`], [`scales_name`] and [`offsets_name`]). A weight no product
/// reads any more leaves the graph. `x` is `[batch, pos, K]`, as every product by a
/// weight in an exported graph is.
pub fn with_four_bit_weights(
    model: &ModelProto,
    weights: &HashMap<String, FourBitLayout>,
) -> Result<ModelProto, CompileError> {
    let mut model = model.clone();
    let graph = model.graph.as_mut().ok_or(CompileError::NoGraph)?;
    let mut nodes = Nodes::new("four_bit");
    let mut block_sums: HashMap<String, String> = HashMap::new();
    let mut rewritten: HashSet<String> = HashSet::new();
    let mut rewired = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        let layout = (node.op_type.as_deref() == Some("MatMul") && node.input.len() == 2)
            .then(|| weights.get(&node.input[1]))
            .flatten();
        let Some(&layout) = layout else {
            rewired.push(node);
            continue;
        };
        let (x, weight, output) = (&node.input[0], &node.input[1], &node.output[0]);
        nodes.set_prefix(node.name.clone().unwrap_or_else(|| output.clone()));
        if !layout.has_offsets {
            multiply(&mut nodes, x, weight, layout, output);
        } else {
            let product = nodes.fresh("MatMulNBits");
            multiply(&mut nodes, x, weight, layout, &product);
            let sums = match block_sums.get(x) {
                Some(sums) => sums.clone(),
                None => {
                    let shape = nodes.ints(&[4], &[0, 0, (layout.k / BLOCK) as i64, -1]);
                    let blocks = nodes.op("Reshape", &[x, &shape], vec![]);
                    let axes = nodes.ints(&[1], &[-1]);
                    let sums = nodes.op(
                        "ReduceSum",
                        &[&blocks, &axes],
                        vec![attr_int("keepdims", 0)],
                    );
                    block_sums.insert(x.clone(), sums.clone());
                    sums
                }
            };
            let offsets = nodes.op("MatMul", &[&sums, &offsets_name(weight)], vec![]);
            nodes.op_into("Add", &[&product, &offsets], output, vec![]);
        }
        rewired.append(&mut nodes.nodes);
        rewritten.insert(weight.clone());
    }
    graph.node = rewired;
    graph.initializer.extend(nodes.initializers);

    let still_read: HashSet<&String> = graph.node.iter().flat_map(|n| &n.input).collect();
    let mut declared = Vec::new();
    for tensor in &graph.initializer {
        let Some(name) = tensor.name.as_ref().filter(|n| rewritten.contains(*n)) else {
            continue;
        };
        let layout = weights[name];
        let blocks = (layout.k / BLOCK) as i64;
        let n = layout.n as i64;
        let mut over = |new_name: String, dims: Vec<i64>, data_type: i32, bytes: i64| {
            let mut t = tensor.clone();
            t.name = Some(new_name);
            t.dims = dims;
            t.data_type = Some(data_type);
            set_length(&mut t.external_data, bytes);
            declared.push(t);
        };
        over(
            packed_name(name),
            vec![n, blocks, (BLOCK / 2) as i64],
            crate::onnx::tensor_proto::DataType::Uint8 as i32,
            n * blocks * (BLOCK / 2) as i64,
        );
        over(scales_name(name), vec![n * blocks], FLOAT, n * blocks * 4);
        if layout.has_offsets {
            over(offsets_name(name), vec![blocks, n], FLOAT, n * blocks * 4);
        }
    }
    graph.initializer.retain(|t| {
        t.name
            .as_ref()
            .is_none_or(|name| !rewritten.contains(name) || still_read.contains(name))
    });
    graph.initializer.extend(declared);
    if !model
        .opset_import
        .iter()
        .any(|o| o.domain.as_deref() == Some(MICROSOFT))
    {
        model.opset_import.push(OperatorSetIdProto {
            domain: Some(MICROSOFT.into()),
            version: Some(1),
        });
    }
    Ok(model)
}

/// `output = x @ W` on `W`'s levels and scales, without its offsets.
fn multiply(nodes: &mut Nodes, x: &str, weight: &str, layout: FourBitLayout, output: &str) {
    let mut node = crate::onnx::build::node(
        "MatMulNBits",
        &[x, &packed_name(weight), &scales_name(weight)],
        output,
        vec![
            attr_int("K", layout.k as i64),
            attr_int("N", layout.n as i64),
            attr_int("bits", 4),
            attr_int("block_size", BLOCK as i64),
            // f32 products (4 would quantize the inputs to 8 bits too).
            attr_int("accuracy_level", 0),
        ],
    );
    node.domain = Some(MICROSOFT.into());
    nodes.nodes.push(node);
}

/// Sets (or adds) the `length` of an external-data declaration.
fn set_length(entries: &mut Vec<StringStringEntryProto>, bytes: i64) {
    entries.retain(|e| e.key.as_deref() != Some("length"));
    entries.push(StringStringEntryProto {
        key: Some("length".into()),
        value: Some(bytes.to_string()),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::quant::GgmlType;
    use crate::onnx::{GraphProto, TensorProto, tensor_proto};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// `n` columns of `k` rows in `format`'s blocks, random scales and levels, as the
    /// GGUF reader widens them: `[K, N]`, and each column's levels.
    fn quantized(format: GgmlType, k: usize, n: usize, seed: u64) -> (Array2<f32>, Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut bytes = Vec::new();
        let mut levels = Vec::new();
        for _ in 0..n * k / BLOCK {
            let scale = half::f16::from_f32(rng.random_range(-0.05..0.05));
            bytes.extend(scale.to_le_bytes());
            if format == GgmlType::Q4_1 {
                let least = half::f16::from_f32(rng.random_range(-0.5..0.0));
                bytes.extend(least.to_le_bytes());
            }
            // Q8_0 stores a byte a value; the 4-bit formats two.
            let payload = if format == GgmlType::Q8_0 {
                BLOCK
            } else {
                BLOCK / 2
            };
            let packed: Vec<u8> = (0..payload).map(|_| rng.random()).collect();
            levels.extend(packed.iter().map(|b| b & 0x0f));
            levels.extend(packed.iter().map(|b| b >> 4));
            bytes.extend(packed);
        }
        let rows = Array2::from_shape_vec((n, k), format.dequantize(&bytes, n * k)).unwrap();
        (rows.t().as_standard_layout().into_owned(), levels)
    }

    /// Each weight `find` gives back, as `(q - 8) * scale + offset`, `[K, N]`.
    fn widened(weight: &FourBitWeight) -> Array2<f32> {
        let FourBitLayout { k, n, .. } = weight.layout;
        let blocks = k / BLOCK;
        Array2::from_shape_fn((k, n), |(row, column)| {
            let (b, i) = (row / BLOCK, row % BLOCK);
            let byte = weight.packed[[column, b, i / 2]];
            let level = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            let offset = weight.offsets.as_ref().map_or(0.0, |o| o[[b, column]]);
            (f32::from(level) - 8.0) * weight.scales[column * blocks + b] + offset
        })
    }

    /// The largest difference between the weight `find` gives back and `values`.
    fn largest_error(weight: &FourBitWeight, values: &Array2<f32>) -> f32 {
        (&widened(weight) - values)
            .iter()
            .fold(0.0f32, |a, d| a.max(d.abs()))
    }

    #[test]
    fn q4_0_blocks_come_back_as_their_levels_without_offsets() {
        let (values, levels) = quantized(GgmlType::Q4_0, 64, 5, 1);
        let weight = FourBitWeight::find(values.view()).expect("Q4_0 blocks");
        assert_eq!(
            weight.layout,
            FourBitLayout {
                k: 64,
                n: 5,
                has_offsets: false
            }
        );
        assert_eq!(widened(&weight), values);
        // Rows 0..16 of a block are the low halves of its bytes, 16..32 the high ones.
        let found: Vec<u8> = weight
            .packed
            .iter()
            .flat_map(|b| [b & 0x0f, b >> 4])
            .collect();
        let column_major: Vec<u8> = (0..5)
            .flat_map(|column| (0..64).map(move |row| (row / BLOCK, row % BLOCK, column)))
            .map(|(b, i, column)| {
                let block = column * 2 + b;
                let (half, pair) = (i / 16, i % 16);
                levels[block * BLOCK + half * 16 + pair]
            })
            .collect();
        assert_eq!(found, column_major);
    }

    #[test]
    fn q4_1_blocks_come_back_with_their_offsets() {
        let (values, _) = quantized(GgmlType::Q4_1, 96, 7, 2);
        let weight = FourBitWeight::find(values.view()).expect("Q4_1 blocks");
        assert!(weight.layout.has_offsets);
        let error = largest_error(&weight, &values);
        assert!(error < 1e-6, "{error}");
    }

    #[test]
    fn q4_k_blocks_are_sixteen_levels_per_32_rows_too() {
        // A Q4_K super-block: 256 values, a 6-bit scale and minimum per 32 of them.
        let mut rng = StdRng::seed_from_u64(7);
        let (k, n) = (256, 3);
        let mut bytes = Vec::new();
        for _ in 0..n {
            bytes.extend(half::f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
            bytes.extend(half::f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
            bytes.extend((0..12 + 128).map(|_| rng.random::<u8>()));
        }
        let rows =
            Array2::from_shape_vec((n, k), GgmlType::Q4_K.dequantize(&bytes, n * k)).unwrap();
        let values = rows.t().as_standard_layout().into_owned();
        let weight = FourBitWeight::find(values.view()).expect("Q4_K blocks");
        let error = largest_error(&weight, &values);
        assert!(error < 1e-6, "{error}");
    }

    #[test]
    fn weights_that_are_not_sixteen_levels_stay_floats() {
        let mut rng = StdRng::seed_from_u64(3);
        let floats = Array2::from_shape_fn((64, 4), |_| rng.random_range(-1.0f32..1.0));
        assert!(FourBitWeight::find(floats.view()).is_none());
        // Q8_0's 255 levels are not 16.
        let (eight_bit, _) = quantized(GgmlType::Q8_0, 64, 4, 4);
        assert!(FourBitWeight::find(eight_bit.view()).is_none());
        // One block of floats in a 4-bit weight keeps the whole weight in floats.
        let (mut values, _) = quantized(GgmlType::Q4_0, 64, 4, 5);
        values[[40, 2]] += 1e-3;
        assert!(FourBitWeight::find(values.view()).is_none());
        // Columns must split into whole blocks.
        let (values, _) = quantized(GgmlType::Q4_0, 64, 3, 6);
        let rows = values.t().as_standard_layout().into_owned();
        let short = rows.slice(ndarray::s![.., ..48]).t().to_owned();
        assert!(FourBitWeight::find(short.view()).is_none());
    }

    #[test]
    fn a_block_quantized_without_its_extreme_levels_is_found_by_its_gaps() {
        // Levels 3..=12 only (an importance matrix's scale can leave the ends unused).
        let values: Vec<f32> = (0..BLOCK)
            .map(|i| 0.25 * (3 + i % 10) as f32 - 1.0)
            .collect();
        let block = block_levels(&values, &mut Form::Symmetric).expect("evenly spaced");
        for (&level, &value) in block.levels.iter().zip(&values) {
            let back = (f32::from(level) - 8.0) * block.scale + block.offset;
            assert!((back - value).abs() < 1e-6);
        }
    }

    fn weight_tensor(name: &str) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims: vec![64, 96],
            data_type: Some(FLOAT),
            data_location: Some(tensor_proto::DataLocation::External as i32),
            external_data: vec![
                StringStringEntryProto {
                    key: Some("location".into()),
                    value: Some("model.onnx.data".into()),
                },
                StringStringEntryProto {
                    key: Some("offset".into()),
                    value: Some("4096".into()),
                },
                StringStringEntryProto {
                    key: Some("length".into()),
                    value: Some("24576".into()),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn products_by_four_bit_weights_become_matmulnbits_sharing_the_block_sums() {
        let node = |op: &str, inputs: &[&str], output: &str| {
            crate::onnx::build::node(op, inputs, output, vec![])
        };
        let model = ModelProto {
            graph: Some(GraphProto {
                node: vec![
                    node("MatMul", &["x", "gate"], "g"),
                    node("MatMul", &["x", "up"], "u"),
                    node("MatMul", &["x", "floats"], "f"),
                    node("Reshape", &["up", "shape"], "kept"),
                ],
                initializer: vec![
                    weight_tensor("gate"),
                    weight_tensor("up"),
                    weight_tensor("floats"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let layout = |has_offsets| FourBitLayout {
            k: 64,
            n: 96,
            has_offsets,
        };
        let weights = HashMap::from([
            ("gate".to_owned(), layout(true)),
            ("up".to_owned(), layout(false)),
        ]);
        let rewritten = with_four_bit_weights(&model, &weights).unwrap();
        let graph = rewritten.graph.as_ref().unwrap();
        let ops = |op: &'static str| {
            graph
                .node
                .iter()
                .filter(move |n| n.op_type.as_deref() == Some(op))
        };
        assert_eq!(ops("MatMulNBits").count(), 2);
        assert!(ops("MatMulNBits").all(|n| n.domain.as_deref() == Some(MICROSOFT)));
        // The offsets' product reads the input's 32-wide sums, made once.
        assert_eq!(ops("ReduceSum").count(), 1);
        assert_eq!(ops("MatMul").count(), 2); // the floats' product and gate's offsets
        let producer = |output: &str| {
            graph
                .node
                .iter()
                .find(|n| n.output[0] == output)
                .unwrap()
                .op_type
                .clone()
        };
        assert_eq!(producer("g").as_deref(), Some("Add"));
        assert_eq!(producer("u").as_deref(), Some("MatMulNBits"));

        let declared = |name: &str| {
            graph
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(name))
        };
        // `gate` is read by no one now; `up` still is (the Reshape), and stays.
        assert!(declared("gate").is_none());
        assert!(declared("up").is_some() && declared("floats").is_some());
        let levels = declared("gate.q4_levels").unwrap();
        assert_eq!(levels.dims, [96, 2, 16]);
        let length = |t: &TensorProto| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some("length"))
                .unwrap()
                .value
                .clone()
        };
        assert_eq!(length(levels).as_deref(), Some("3072"));
        assert_eq!(declared("gate.q4_scales").unwrap().dims, [192]);
        assert_eq!(declared("gate.q4_offsets").unwrap().dims, [2, 96]);
        assert!(declared("up.q4_offsets").is_none());
        assert!(
            rewritten
                .opset_import
                .iter()
                .any(|o| o.domain.as_deref() == Some(MICROSOFT))
        );
    }
}
