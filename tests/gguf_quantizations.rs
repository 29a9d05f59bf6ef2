//! Every quantization type qexp reads beyond those of the tiny Llama fixture, against
//! gguf-py's own dequantization (llama.cpp's Python package): random blocks of Q5_0,
//! Q5_1 and the k-quants that Q4_K_M-style downloads are made of, each stored beside
//! what gguf-py decodes it to (tests/fixtures/make_gguf_family_references.py).

mod common;

use common::fixture;
use qexp::checkpoint::GgufFile;

#[test]
fn q5_and_k_quant_blocks_decode_to_gguf_pys_values_exactly() {
    let file = GgufFile::open(&fixture("quant_blocks/blocks.gguf")).unwrap();
    for name in ["Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"] {
        let (shape, values) = file.tensor(name).unwrap();
        let (expected_shape, expected) = file.tensor(&format!("{name}.expected")).unwrap();
        assert_eq!(shape, expected_shape, "{name}");
        assert_eq!(values.len(), 512, "{name}");
        let differing = values
            .iter()
            .zip(&expected)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(differing, None, "{name}: first value that differs");
    }
}
