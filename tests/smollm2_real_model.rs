//! The real SmolLM2-135M-Instruct, exported from its Q4_1 GGUF, against HF transformers
//! (tests/fixtures/smollm2/reference.npz). Runs when the model folder exists —
//! `scripts/test.sh` makes it, and sets QEXP_REQUIRE_REAL_MODEL=1 so CI cannot skip it.
//! Its tokenizer is also checked against SmolLM2's own tokenizer configuration on text
//! with digits (tests/fixtures/smollm2/tokenizer_reference.json).

mod common;

use std::path::PathBuf;

use common::{Reference, assert_close, fixture, runtime};
use ndarray::{Ix1, Ix2, s};
use qexp::runtime::{HookedModel, Sampling};

/// The bound for the real model; quantized weights are exact after
/// dequantization, so this is f32 summation-order noise over 30 layers.
const TOLERANCE: f32 = 1e-3;

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QEXP_SMOLLM2_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m"));
    if dir.join("manifest.json").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("QEXP_REQUIRE_REAL_MODEL").is_none(),
        "QEXP_REQUIRE_REAL_MODEL is set but {} holds no exported model",
        dir.display()
    );
    eprintln!(
        "skipping: no SmolLM2 model folder at {} (scripts/test.sh exports it)",
        dir.display()
    );
    None
}

fn prompts() -> Vec<String> {
    std::fs::read_to_string(fixture("smollm2/prompts.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn smollm2_tokens_logits_and_greedy_continuation_match_transformers() {
    let Some(dir) = model_dir() else { return };
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &dir).unwrap();
    let mut reference = Reference::open(&fixture("smollm2/reference.npz"));
    let columns: Vec<usize> = reference
        .i64("columns")
        .iter()
        .map(|&c| c as usize)
        .collect();
    let prompts = prompts();

    let mut sequences = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let tokens = model.to_tokens(prompt, false).unwrap();
        let expected: Vec<u32> = reference
            .i64(&format!("ids_{i}"))
            .iter()
            .map(|&t| t as u32)
            .collect();
        assert_eq!(tokens, expected, "tokens of {prompt:?}");
        sequences.push(tokens);
    }

    // One prompt at a time, then all four in one padded batch: both must match.
    let batched = model
        .forward(&model.batch(&sequences).unwrap(), true, &[])
        .unwrap()
        .logits
        .unwrap();
    for (i, tokens) in sequences.iter().enumerate() {
        let single = model
            .forward(
                &model.batch(std::slice::from_ref(tokens)).unwrap(),
                true,
                &[],
            )
            .unwrap();
        let single = single.logits.unwrap();
        let expected_columns = reference
            .f32(&format!("logits_{i}"))
            .into_dimensionality::<Ix2>()
            .unwrap();
        let expected_last = reference
            .f32(&format!("last_{i}"))
            .into_dimensionality::<Ix1>()
            .unwrap();
        let n = tokens.len();
        for (what, row, logits) in [("single", 0, &single), ("batched", i, &batched)] {
            let picked = ndarray::Array2::from_shape_fn((n, columns.len()), |(p, c)| {
                logits[[row, p, columns[c]]]
            });
            assert_close(
                &format!("{what} logits of prompt {i} on 512 columns"),
                picked.view().into_dyn(),
                expected_columns.view().into_dyn(),
                TOLERANCE,
            );
            assert_close(
                &format!("{what} last-position logits of prompt {i}"),
                logits.slice(s![row, n - 1, ..]).into_dyn(),
                expected_last.view().into_dyn(),
                TOLERANCE,
            );
        }
    }

    let continuation = model
        .generate(&sequences[0], 20, Sampling::Greedy, false)
        .unwrap();
    let expected: Vec<u32> = reference
        .i64("greedy_20")
        .iter()
        .map(|&t| t as u32)
        .collect();
    assert_eq!(
        continuation,
        expected,
        "greedy continuation of {:?}: {:?}",
        prompts[0],
        model.to_string(&continuation)
    );
}

/// SmolLM2's tokenizer splits every digit before its byte-level BPE (its tokenizer.json's
/// `Digits` pre-tokenizer, kept in the GGUF as type `smollm`), so whitespace before a
/// digit stays one token; transformers' GGUF loader drops that split, and the fixture
/// holds texts where the two differ.
#[test]
fn smollm2_tokens_of_text_with_digits_match_its_own_tokenizer() {
    let Some(dir) = model_dir() else { return };
    let runtime = runtime();
    let model = HookedModel::load(&runtime, &dir).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("smollm2/tokenizer_reference.json")).unwrap(),
    )
    .unwrap();
    let ids = |value: &serde_json::Value| -> Vec<u32> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_u64().unwrap() as u32)
            .collect()
    };
    let mut differing = 0;
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        assert_eq!(model.to_tokens(text, false).unwrap(), expected, "{text:?}");
        differing += usize::from(expected != ids(&case["transformers_gguf_ids"]));
    }
    assert!(
        differing > 0,
        "the fixture should hold texts that transformers' GGUF loader tokenizes differently"
    );
}
