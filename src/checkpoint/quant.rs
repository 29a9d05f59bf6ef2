//! GGML tensor encodings and their dequantization to f32.
//!
//! The block formats follow ggml's reference definitions: a block of 32 values shares one
//! f16 scale `d` (and, for Q4_1, an f16 minimum `m`).

use half::{bf16, f16};

const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    /// `x = (q - 8) * d`, q a 4-bit nibble: 2 bytes of scale + 16 bytes of nibbles.
    Q4_0,
    /// `x = q * d + m`: 2 + 2 + 16 bytes.
    Q4_1,
    /// `x = q * d`, q a signed byte: 2 + 32 bytes.
    Q8_0,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
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
            Self::Q8_0 => 8,
            Self::Bf16 => 30,
        }
    }

    /// Bytes taken by `elements` values, or `None` when a block format gets a count that
    /// is not a whole number of blocks.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        let per_block = |bytes: u64| {
            elements
                .is_multiple_of(BLOCK as u64)
                .then(|| elements / BLOCK as u64 * bytes)
        };
        match self {
            Self::F32 => elements.checked_mul(4),
            Self::F16 | Self::Bf16 => elements.checked_mul(2),
            Self::Q4_0 => per_block(18),
            Self::Q4_1 => per_block(20),
            Self::Q8_0 => per_block(34),
        }
    }

    /// Decodes `elements` values from `bytes`, which must be exactly
    /// `byte_len(elements)` long (the caller checked it against the file).
    pub fn dequantize(self, bytes: &[u8], elements: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(elements);
        match self {
            Self::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Self::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Self::Bf16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Self::Q4_0 => {
                for block in bytes.chunks_exact(18) {
                    let d = scale(block, 0);
                    let qs = &block[2..18];
                    out.extend(qs.iter().map(|q| (f32::from(q & 0x0f) - 8.0) * d));
                    out.extend(qs.iter().map(|q| (f32::from(q >> 4) - 8.0) * d));
                }
            }
            Self::Q4_1 => {
                for block in bytes.chunks_exact(20) {
                    let d = scale(block, 0);
                    let m = scale(block, 2);
                    let qs = &block[4..20];
                    out.extend(qs.iter().map(|q| f32::from(q & 0x0f) * d + m));
                    out.extend(qs.iter().map(|q| f32::from(q >> 4) * d + m));
                }
            }
            Self::Q8_0 => {
                for block in bytes.chunks_exact(34) {
                    let d = scale(block, 0);
                    out.extend(block[2..34].iter().map(|&q| f32::from(q as i8) * d));
                }
            }
        }
        out
    }
}

fn scale(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// ggml's name for a type id, for error messages about types qexp does not read.
pub fn type_name(id: u32) -> &'static str {
    match id {
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16..=23 => "an IQ quantization",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
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
