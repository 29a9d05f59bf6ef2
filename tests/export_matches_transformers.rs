//! Exported tiny models against Hugging Face transformers' own forward pass (fixtures
//! made by tests/fixtures/make_references.py). Real positions only: the reference pads
//! the second row as qexp does, but what padded positions hold is nobody's business.

mod common;

use common::{Reference, assert_close, export_to_temp, fixture, runtime};
use ndarray::{Array2, s};
use qexp::runtime::{Batch, HookedModel};

/// Same tolerance for both tiny models: f32 throughout, so only summation order differs.
const TOLERANCE: f32 = 1e-4;

fn reference_batch(reference: &mut Reference) -> Batch {
    let ids = reference
        .i64("input_ids")
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let mask: Array2<i64> = reference
        .i64("attention_mask")
        .into_dimensionality()
        .unwrap();
    let sequences: Vec<Vec<u32>> = ids
        .outer_iter()
        .zip(mask.outer_iter())
        .map(|(row, m)| {
            row.iter()
                .zip(m)
                .filter(|(_, m)| **m == 1)
                .map(|(t, _)| *t as u32)
                .collect()
        })
        .collect();
    Batch::right_padded(&sequences, 0)
}

#[test]
fn tiny_llama_gguf_with_every_quant_type_matches_transformers() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let mut reference = Reference::open(&fixture("tiny_llama/reference.npz"));
    let batch = reference_batch(&mut reference);
    let expected = reference.f32("logits");
    let logits = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
    for (row, &len) in batch.lengths.iter().enumerate() {
        assert_close(
            &format!("logits of row {row}"),
            logits.slice(s![row, ..len, ..]).into_dyn(),
            expected.slice(s![row, ..len, ..]).into_dyn(),
            TOLERANCE,
        );
    }
}

#[test]
fn tiny_gpt_neo_matches_transformers_in_logits_residuals_and_local_attention() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_gpt_neo"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let mut reference = Reference::open(&fixture("tiny_gpt_neo/reference.npz"));
    let batch = reference_batch(&mut reference);
    let hooks = [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
        "blocks.0.attn.hook_pattern",
        "blocks.1.attn.hook_pattern",
    ];
    let forward = model.forward(&batch, true, &hooks).unwrap();
    let logits = forward.logits.unwrap();
    let expected = reference.f32("logits");
    for (row, &len) in batch.lengths.iter().enumerate() {
        assert_close(
            "logits",
            logits.slice(s![row, ..len, ..]).into_dyn(),
            expected.slice(s![row, ..len, ..]).into_dyn(),
            TOLERANCE,
        );
        for hook in &hooks[..2] {
            assert_close(
                hook,
                forward.hooks[*hook].slice(s![row, ..len, ..]).into_dyn(),
                reference.f32(hook).slice(s![row, ..len, ..]).into_dyn(),
                TOLERANCE,
            );
        }
        for hook in &hooks[2..] {
            assert_close(
                hook,
                forward.hooks[*hook]
                    .slice(s![row, .., ..len, ..len])
                    .into_dyn(),
                reference
                    .f32(hook)
                    .slice(s![row, .., ..len, ..len])
                    .into_dyn(),
                TOLERANCE,
            );
        }
    }
    // Layer 1 is local with a window of 4: query 10 sees keys 7..=10 only.
    let local = &forward.hooks["blocks.1.attn.hook_pattern"];
    let row = local.slice(s![0, 0, 10, ..]);
    assert!(
        row.iter().take(7).all(|&p| p == 0.0),
        "keys before the window get no attention: {row}"
    );
    assert!(row.slice(s![7..11]).iter().all(|&p| p > 0.0));
}
