//! Exported tiny models against Hugging Face transformers' own forward pass (fixtures
//! made by tests/fixtures/make_references.py). Real positions only: the reference pads
//! the second row as qexp does, but what padded positions hold is nobody's business.

mod common;

use common::{Reference, assert_close, export_to_temp, fixture, runtime};
use ndarray::{Array2, ArrayD, s};
use qexp::checkpoint::Checkpoint;
use qexp::model::WeightStorage;
use qexp::runtime::{Batch, HookedModel};
use std::collections::BTreeMap;

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

/// Exports `checkpoint` and compares logits with transformers' on the reference rows in
/// `reference` (a fixture path), and, where asked, the residual stream entering each
/// block and each layer's attention pattern; returns the model's manifest and those
/// hooks' values for checks of their own.
fn matches_transformers(
    checkpoint: &str,
    reference: &str,
    with_hooks: bool,
) -> (qexp::manifest::Manifest, BTreeMap<String, ArrayD<f32>>) {
    let (_dir, model_dir) = export_to_temp(&fixture(checkpoint));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let mut reference = Reference::open(&fixture(reference));
    let batch = reference_batch(&mut reference);
    let all_hooks = [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
        "blocks.0.attn.hook_pattern",
        "blocks.1.attn.hook_pattern",
    ];
    let hooks: &[&str] = if with_hooks { &all_hooks } else { &[] };
    let forward = model.forward(&batch, true, hooks).unwrap();
    let logits = forward.logits.unwrap();
    let expected = reference.f32("logits");
    for (row, &len) in batch.lengths.iter().enumerate() {
        assert_close(
            &format!("{checkpoint} logits of row {row}"),
            logits.slice(s![row, ..len, ..]).into_dyn(),
            expected.slice(s![row, ..len, ..]).into_dyn(),
            TOLERANCE,
        );
        for hook in hooks.iter().filter(|h| h.ends_with("resid_pre")) {
            assert_close(
                &format!("{checkpoint} {hook}"),
                forward.hooks[*hook].slice(s![row, ..len, ..]).into_dyn(),
                reference.f32(hook).slice(s![row, ..len, ..]).into_dyn(),
                TOLERANCE,
            );
        }
        for hook in hooks.iter().filter(|h| h.ends_with("pattern")) {
            assert_close(
                &format!("{checkpoint} {hook}"),
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
    (model.manifest.clone(), forward.hooks)
}

/// The GGUF fixture in `folder` against transformers (which read the GGUF itself, or
/// the folder it was converted from).
fn gguf_matches_transformers(folder: &str, with_hooks: bool) -> qexp::manifest::Manifest {
    let gguf = format!("{folder}/model.gguf");
    matches_transformers(&gguf, &format!("{folder}/reference.npz"), with_hooks).0
}

#[test]
fn tiny_llama_gguf_with_every_quant_type_matches_transformers() {
    gguf_matches_transformers("tiny_llama", false);
}

#[test]
fn tiny_qwen2_gguf_with_biases_and_unpermuted_rows_matches_transformers() {
    let manifest = gguf_matches_transformers("tiny_qwen2_gguf", false);
    assert!(manifest.config.bias.qkv);
    assert!(
        !manifest.special_tokens.prepend_bos,
        "Qwen's GGUF says add_bos_token = false"
    );
}

/// Exports the Hugging Face folder `name` and compares it with transformers' own
/// forward pass; returns the hooks' values.
fn hf_folder_matches_transformers(name: &str) -> BTreeMap<String, ArrayD<f32>> {
    matches_transformers(name, &format!("{name}/reference.npz"), true).1
}

/// A folder's GGUF conversion (by llama.cpp's converter, in f32) reads as the folder
/// does: the same config, every weight equal bit for bit, the same special tokens, and
/// the rebuilt tokenizer splitting text as the folder's `tokenizer.json` does.
fn gguf_reads_as_its_folder(name: &str) {
    let folder = Checkpoint::load(&fixture(name)).unwrap();
    let gguf = Checkpoint::load(&fixture(&format!("{name}/model.gguf"))).unwrap();
    assert_eq!(gguf.transformer.config, folder.transformer.config, "{name}");
    let names = |c: &Checkpoint| c.transformer.weights.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&gguf), names(&folder), "{name}: weight names");
    for (weight, value) in &folder.transformer.weights {
        assert_eq!(&gguf.transformer.weights[weight], value, "{name}: {weight}");
    }
    assert_eq!(gguf.special_tokens, folder.special_tokens, "{name}");
    for text in ["Once upon a time, the hen", "in the end <|im_end|>  twice"] {
        let ids = |c: &Checkpoint| c.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids(&gguf), ids(&folder), "{name}: {text:?}");
    }
}

#[test]
fn gpt2_pythia_and_qwen3_gguf_files_read_as_the_folders_they_were_converted_from() {
    for name in ["tiny_gpt2", "tiny_pythia", "tiny_qwen3"] {
        gguf_reads_as_its_folder(name);
    }
}

#[test]
fn tiny_gpt2_gguf_matches_transformers() {
    let manifest = gguf_matches_transformers("tiny_gpt2", true);
    assert!(manifest.config.tied_embeddings);
    assert!(
        manifest.special_tokens.prepend_bos,
        "TransformerLens' default for GPT-2"
    );
}

#[test]
fn tiny_pythia_gguf_with_regrouped_qkv_matches_transformers() {
    let manifest = gguf_matches_transformers("tiny_pythia", true);
    assert!(manifest.config.parallel_attn_mlp);
}

#[test]
fn tiny_qwen3_gguf_with_query_key_norms_matches_transformers() {
    let manifest = gguf_matches_transformers("tiny_qwen3", true);
    assert!(manifest.config.qk_norm);
}

#[test]
fn tiny_gemma2_gguf_matches_transformers_in_logits_residuals_and_alternating_windows() {
    let (manifest, hooks) = matches_transformers(
        "tiny_gemma2_gguf/model.gguf",
        "tiny_gemma2_gguf/reference.npz",
        true,
    );
    assert_eq!(manifest.config.attention_windows, vec![Some(4), None]);
    assert!(
        manifest.special_tokens.prepend_bos,
        "SentencePiece vocabularies add BOS"
    );
    assert_window_of_four(&hooks["blocks.0.attn.hook_pattern"]);
}

#[test]
fn a_gemma2_gguf_sentencepiece_vocabulary_tokenizes_as_sentencepiece_does() {
    // Texts and ids written by SentencePiece itself when the fixture was made: spaces,
    // a tab and a newline, digits split, turn tokens matched whole, and characters
    // outside the vocabulary as byte tokens.
    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
    }
    let path = fixture("tiny_gemma2_gguf/tokens.json");
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_gemma2_gguf/model.gguf"));
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
    for case in &cases {
        let encoding = tokenizer.encode(case.text.as_str(), false).unwrap();
        assert_eq!(encoding.get_ids(), case.ids, "{:?}", case.text);
        assert_eq!(
            tokenizer.decode(encoding.get_ids(), false).unwrap(),
            case.text,
            "decoding {:?}",
            case.text
        );
    }
}

/// Query 10 of row 0 in a layer whose window is 4 sees keys 7..=10 only.
fn assert_window_of_four(pattern: &ArrayD<f32>) {
    let row = pattern.slice(s![0, 0, 10, ..]);
    assert!(
        row.iter().take(7).all(|&p| p == 0.0),
        "keys before the window get no attention: {row}"
    );
    assert!(row.slice(s![7..11]).iter().all(|&p| p > 0.0));
}

#[test]
fn tiny_gpt_neo_matches_transformers_in_logits_residuals_and_local_attention() {
    let hooks = hf_folder_matches_transformers("tiny_gpt_neo");
    // Layer 1 is local with a window of 4.
    assert_window_of_four(&hooks["blocks.1.attn.hook_pattern"]);
}

#[test]
fn tiny_gpt2_with_fused_conv1d_attention_matches_transformers() {
    hf_folder_matches_transformers("tiny_gpt2");
}

#[test]
fn tiny_pythia_with_parallel_blocks_and_partial_rotary_matches_transformers() {
    hf_folder_matches_transformers("tiny_pythia");
}

#[test]
fn tiny_llama_folder_with_attention_biases_in_shards_matches_transformers() {
    hf_folder_matches_transformers("tiny_llama_hf");
}

#[test]
fn tiny_llama_with_llama3_rotary_scaling_matches_transformers() {
    hf_folder_matches_transformers("tiny_llama3_rope");
}

#[test]
fn tiny_mistral_with_a_sliding_window_matches_transformers() {
    let hooks = hf_folder_matches_transformers("tiny_mistral");
    assert_window_of_four(&hooks["blocks.0.attn.hook_pattern"]);
    assert_window_of_four(&hooks["blocks.1.attn.hook_pattern"]);
}

#[test]
fn tiny_gemma2_with_post_norms_soft_caps_and_alternating_windows_matches_transformers() {
    let hooks = hf_folder_matches_transformers("tiny_gemma2");
    assert_window_of_four(&hooks["blocks.0.attn.hook_pattern"]);
    // Layer 1 is global: query 10 sees every key before it.
    let global = hooks["blocks.1.attn.hook_pattern"]
        .slice(s![0, 0, 10, ..11])
        .to_owned();
    assert!(global.iter().all(|&p| p > 0.0), "{global}");
}

#[test]
fn tiny_qwen2_with_qkv_biases_matches_transformers() {
    hf_folder_matches_transformers("tiny_qwen2");
}

#[test]
fn tiny_qwen3_with_query_key_norms_matches_transformers() {
    hf_folder_matches_transformers("tiny_qwen3");
}

/// Exports `name` with its weights stored as `storage` and returns the largest logit
/// difference from transformers on the reference rows, after checking that the weights
/// read back are the f32 export's rounded to that storage, and that the file shrank.
fn half_precision_logit_error(name: &str, storage: WeightStorage) -> f32 {
    let dir = tempfile::tempdir().unwrap();
    let scope = qexp::output::Scope::within(dir.path(), false).unwrap();
    let (full, half) = (dir.path().join("f32"), dir.path().join("half"));
    qexp::export::export_with(&fixture(name), &full, &scope, &[], WeightStorage::Float32).unwrap();
    let summary = qexp::export::export_with(&fixture(name), &half, &scope, &[], storage).unwrap();
    assert_eq!(summary.manifest.weight_storage, storage);
    let size = |d: &std::path::Path| std::fs::metadata(d.join("model.onnx.data")).unwrap().len();
    // Each weight starts on a page of its own, which dominates models this small; a
    // real model's file halves.
    assert!(
        size(&half) < size(&full),
        "{name}: {} bytes stored as {storage:?}, {} as f32",
        size(&half),
        size(&full)
    );
    let runtime = runtime();
    let full_model = HookedModel::load(&runtime, &full).unwrap();
    let mut model = HookedModel::load(&runtime, &half).unwrap();
    let rounded = |x: f32| storage.decode(&storage.encode(&[x]))[0];
    let w_q = "blocks.1.attn.W_Q";
    assert_eq!(
        model.weight(w_q).unwrap(),
        full_model.weight(w_q).unwrap().mapv(rounded),
        "{name}: a weight reads back as its f32 value rounded to {storage:?}"
    );
    let mut reference = Reference::open(&fixture(&format!("{name}/reference.npz")));
    let batch = reference_batch(&mut reference);
    let expected = reference.f32("logits");
    let logits = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
    let mut worst = 0.0f32;
    for (row, &len) in batch.lengths.iter().enumerate() {
        let got = logits.slice(s![row, ..len, ..]);
        let want = expected.slice(s![row, ..len, ..]);
        for (a, b) in got.iter().zip(want.iter()) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

#[test]
fn half_precision_exports_halve_the_weights_and_stay_within_their_stated_tolerance() {
    // The README's figures: f16 within 5e-2 of transformers' f32 logits, bf16 within 0.5
    // (0.28 at worst here), on these random models (weights ~N(0, 0.3), logits up to ~10).
    for name in ["tiny_gpt2", "tiny_llama_hf", "tiny_gemma2"] {
        let f16 = half_precision_logit_error(name, WeightStorage::Float16);
        let bf16 = half_precision_logit_error(name, WeightStorage::Bfloat16);
        println!("{name}: f16 {f16}, bf16 {bf16}");
        assert!(f16 < 5e-2, "{name}: f16 logits {f16} off");
        assert!(bf16 < 0.5, "{name}: bf16 logits {bf16} off");
    }
}
