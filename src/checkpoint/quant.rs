//! GGML tensor encodings and their dequantization to f32.
//!
//! The block formats follow ggml's reference definitions. The simple ones hold 32 values
//! under one f16 scale `d` (and for the `_1` kinds an f16 minimum `m`); the k-quants
//! hold 256 values in a super-block whose f16 scale (and minimum) multiplies one small
//! integer scale per sub-block of 16 or 32 values. Q4_K_M, Q5_K_M and the other
//! "mixes" a GGUF download names are these types assigned tensor by tensor.

use half::{bf16, f16};

const BLOCK: usize = 32;
/// Values in a k-quant super-block.
const SUPER: usize = 256;

// ggml's own names, which `Debug` prints in a model's description (`Q4_K`).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    /// `x = (q - 8) * d`, q a 4-bit nibble: 2 bytes of scale + 16 bytes of nibbles.
    Q4_0,
    /// `x = q * d + m`: 2 + 2 + 16 bytes.
    Q4_1,
    /// `x = (q - 16) * d`, q 4 bits from a nibble and a fifth from a 32-bit mask: 2 + 4 + 16.
    Q5_0,
    /// `x = q * d + m`, q 5 bits as in Q5_0: 2 + 2 + 4 + 16.
    Q5_1,
    /// `x = q * d`, q a signed byte: 2 + 32 bytes.
    Q8_0,
    /// 2-bit values, 16 sub-blocks with a 4-bit scale and a 4-bit minimum each.
    Q2_K,
    /// 3-bit values (two bits packed, the third in a mask), 16 signed 6-bit scales.
    Q3_K,
    /// 4-bit values, 8 sub-blocks of 32 with 6-bit scales and minimums.
    Q4_K,
    /// 5-bit values (four bits packed, the fifth in a mask), scales as Q4_K.
    Q5_K,
    /// 6-bit values (four bits packed, two more packed apart), 16 signed 8-bit scales.
    Q6_K,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Bf16 => 30,
        }
    }

    /// Values per block and bytes per block.
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (BLOCK, 18),
            Self::Q4_1 => (BLOCK, 20),
            Self::Q5_0 => (BLOCK, 22),
            Self::Q5_1 => (BLOCK, 24),
            Self::Q8_0 => (BLOCK, 34),
            Self::Q2_K => (SUPER, 84),
            Self::Q3_K => (SUPER, 110),
            Self::Q4_K => (SUPER, 144),
            Self::Q5_K => (SUPER, 176),
            Self::Q6_K => (SUPER, 210),
        }
    }

    /// Bytes taken by `elements` values, or `None` when a block format gets a count that
    /// is not a whole number of blocks.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        let (values, bytes) = self.block();
        elements
            .is_multiple_of(values as u64)
            .then(|| elements / values as u64)
            .and_then(|blocks| blocks.checked_mul(bytes as u64))
    }

    /// Decodes `elements` values from `bytes`, which must be exactly
    /// `byte_len(elements)` long (the caller checked it against the file).
    pub fn dequantize(self, bytes: &[u8], elements: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(elements);
        let (_, block_bytes) = self.block();
        let blocks = bytes.chunks_exact(block_bytes);
        match self {
            Self::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Self::F16 => out.extend(blocks.map(|b| scale(b, 0))),
            Self::Bf16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
            Self::Q4_0 => {
                for block in blocks {
                    let d = scale(block, 0);
                    let qs = &block[2..18];
                    out.extend(qs.iter().map(|q| (f32::from(q & 0x0f) - 8.0) * d));
                    out.extend(qs.iter().map(|q| (f32::from(q >> 4) - 8.0) * d));
                }
            }
            Self::Q4_1 => {
                for block in blocks {
                    let d = scale(block, 0);
                    let m = scale(block, 2);
                    let qs = &block[4..20];
                    out.extend(qs.iter().map(|q| f32::from(q & 0x0f) * d + m));
                    out.extend(qs.iter().map(|q| f32::from(q >> 4) * d + m));
                }
            }
            Self::Q5_0 => {
                for block in blocks {
                    let d = scale(block, 0);
                    for q in five_bit(&block[2..6], &block[6..22]) {
                        out.push((f32::from(q) - 16.0) * d);
                    }
                }
            }
            Self::Q5_1 => {
                for block in blocks {
                    let (d, m) = (scale(block, 0), scale(block, 2));
                    for q in five_bit(&block[4..8], &block[8..24]) {
                        out.push(f32::from(q) * d + m);
                    }
                }
            }
            Self::Q8_0 => {
                for block in blocks {
                    let d = scale(block, 0);
                    out.extend(block[2..34].iter().map(|&q| f32::from(q as i8) * d));
                }
            }
            Self::Q2_K => blocks.for_each(|block| q2_k(block, &mut out)),
            Self::Q3_K => blocks.for_each(|block| q3_k(block, &mut out)),
            Self::Q4_K => blocks.for_each(|block| q4_k(block, &mut out)),
            Self::Q5_K => blocks.for_each(|block| q5_k(block, &mut out)),
            Self::Q6_K => blocks.for_each(|block| q6_k(block, &mut out)),
        }
        out
    }
}

fn scale(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// Q5_0/Q5_1's 32 values: value `j` takes the low nibble of byte `j` (the high nibble of
/// byte `j - 16` for the second half) and its fifth bit from bit `j` of the mask.
fn five_bit(mask: &[u8], nibbles: &[u8]) -> impl Iterator<Item = u8> {
    let high = u32::from_le_bytes([mask[0], mask[1], mask[2], mask[3]]);
    (0..BLOCK).map(move |j| {
        let low = if j < 16 {
            nibbles[j] & 0x0f
        } else {
            nibbles[j - 16] >> 4
        };
        low | ((((high >> j) & 1) as u8) << 4)
    })
}

/// Q2_K: 16 bytes of sub-block scales (low nibble a scale, high nibble a minimum), 64
/// bytes of 2-bit values, then `d` and `dmin`. Each half of 128 values reads 32 bytes
/// four times, two bits further up each time; each run of 16 values has its own scale.
fn q2_k(block: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&block[..16], &block[16..80]);
    let (d, dmin) = (scale(block, 80), scale(block, 82));
    let mut sub = 0;
    for half in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for bytes in half.chunks_exact(16) {
                let dl = d * f32::from(scales[sub] & 0x0f);
                let ml = dmin * f32::from(scales[sub] >> 4);
                sub += 1;
                out.extend(bytes.iter().map(|q| dl * f32::from((q >> shift) & 3) - ml));
            }
        }
    }
}

/// Q3_K: a 32-byte mask of third bits, 64 bytes of 2-bit values, 12 bytes of sixteen
/// 6-bit scales (offset by 32), then `d`. Values are laid out as Q2_K's; a value whose
/// mask bit is clear is 4 lower.
fn q3_k(block: &[u8], out: &mut Vec<f32>) {
    let (mask, qs, packed) = (&block[..32], &block[32..96], &block[96..108]);
    let d = scale(block, 108);
    let scales: [i32; 16] = std::array::from_fn(|i| {
        let low = if i < 8 {
            packed[i] & 0x0f
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        i32::from(low | (high << 4)) - 32
    });
    let mut sub = 0;
    for (h, half) in qs.chunks_exact(32).enumerate() {
        for (s, shift) in [0u8, 2, 4, 6].into_iter().enumerate() {
            let bit = 1u8 << (h * 4 + s);
            for (part, bytes) in half.chunks_exact(16).enumerate() {
                let dl = d * scales[sub] as f32;
                sub += 1;
                let masks = &mask[part * 16..part * 16 + 16];
                out.extend(bytes.iter().zip(masks).map(|(q, m)| {
                    let low = i32::from((q >> shift) & 3);
                    let q = if m & bit == 0 { low - 4 } else { low };
                    dl * q as f32
                }));
            }
        }
    }
}

/// The 6-bit scale and minimum of sub-block `j` of 8, packed into 12 bytes by Q4_K and
/// Q5_K: the first four whole in the low six bits, the last four split over a nibble and
/// the spare top bits of the first eight bytes.
fn scale_min_k4(j: usize, packed: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

/// Q4_K: `d`, `dmin`, 12 bytes of scales and minimums, 128 bytes of nibbles. Each run of
/// 32 bytes gives 32 values from its low nibbles, then 32 from its high nibbles.
fn q4_k(block: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (scale(block, 0), scale(block, 2));
    let (packed, qs) = (&block[4..16], &block[16..144]);
    for (i, bytes) in qs.chunks_exact(32).enumerate() {
        for (k, shift) in [0u8, 4].into_iter().enumerate() {
            let (sc, m) = scale_min_k4(2 * i + k, packed);
            let (d1, m1) = (d * sc, dmin * m);
            out.extend(
                bytes
                    .iter()
                    .map(|q| d1 * f32::from((q >> shift) & 0x0f) - m1),
            );
        }
    }
}

/// Q5_K: as Q4_K with a 32-byte mask of fifth bits before the nibbles; run `r` of 32
/// values takes bit `r` of each mask byte.
fn q5_k(block: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (scale(block, 0), scale(block, 2));
    let (packed, mask, qs) = (&block[4..16], &block[16..48], &block[48..176]);
    for (i, bytes) in qs.chunks_exact(32).enumerate() {
        for (k, shift) in [0u8, 4].into_iter().enumerate() {
            let run = 2 * i + k;
            let (sc, m) = scale_min_k4(run, packed);
            let (d1, m1) = (d * sc, dmin * m);
            out.extend(bytes.iter().zip(mask).map(|(q, h)| {
                let q = ((q >> shift) & 0x0f) | (((h >> run) & 1) << 4);
                d1 * f32::from(q) - m1
            }));
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 signed scales, `d`.
/// Each half of 128 values reads 64 nibble bytes and 32 pair bytes: values `l`,
/// `l + 32`, `l + 64`, `l + 96` take the low nibbles of bytes `l` and `l + 32`, then
/// their high nibbles, with bit pairs 0, 1, 2, 3 of pair byte `l`.
fn q6_k(block: &[u8], out: &mut Vec<f32>) {
    let (low, high, scales) = (&block[..128], &block[128..192], &block[192..208]);
    let d = scale(block, 208);
    for half in 0..2 {
        let (ql, qh) = (
            &low[half * 64..half * 64 + 64],
            &high[half * 32..half * 32 + 32],
        );
        let sc = &scales[half * 8..half * 8 + 8];
        for quarter in 0..4 {
            let (nibble_bytes, shift) = match quarter {
                0 => (&ql[..32], 0),
                1 => (&ql[32..], 0),
                2 => (&ql[..32], 4),
                _ => (&ql[32..], 4),
            };
            for l in 0..32 {
                let q = ((nibble_bytes[l] >> shift) & 0x0f) | (((qh[l] >> (2 * quarter)) & 3) << 4);
                let s = f32::from(sc[quarter * 2 + l / 16] as i8);
                out.push(d * s * f32::from(q as i8 - 32));
            }
        }
    }
}

/// ggml's name for a type id, for error messages about types qexp does not read.
pub fn type_name(id: u32) -> &'static str {
    match id {
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_puts_low_nibbles_first_then_high_nibbles() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let values = GgmlType::Q4_0.dequantize(&block, 32);
        assert_eq!(values[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(values[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(values[16], 3.5); // high nibble of byte 0 is 15
        assert_eq!(values[31], -4.0);
    }

    #[test]
    fn q4_1_adds_the_block_minimum() {
        let mut block = f16_bytes(2.0).to_vec();
        block.extend(f16_bytes(-1.0));
        block.extend([0x21u8; 16]);
        let values = GgmlType::Q4_1.dequantize(&block, 32);
        assert_eq!(values[0], 1.0); // 1 * 2 - 1
        assert_eq!(values[16], 3.0); // 2 * 2 - 1
    }

    #[test]
    fn q8_0_reads_signed_bytes() {
        let mut block = f16_bytes(0.25).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let values = GgmlType::Q8_0.dequantize(&block, 32);
        assert_eq!(values[0], -4.0);
        assert_eq!(values[31], 3.75);
    }

    #[test]
    fn block_formats_reject_partial_blocks() {
        assert_eq!(GgmlType::Q8_0.byte_len(33), None);
        assert_eq!(GgmlType::Q4_1.byte_len(64), Some(40));
        assert_eq!(GgmlType::F16.byte_len(3), Some(6));
    }
}
