//! Generation with a key/value cache: a sequence run in pieces, each piece reading the
//! keys and values the earlier ones left, gives the logits of one pass over the whole
//! sequence, on every family's layout (learned and rotary positions, partial rotary,
//! sliding windows, q/k norms, soft caps) and under interventions; and generating with
//! the cache gives the tokens that rerunning the sequence at every step gives.

mod common;

use common::{assert_close, export_to_temp, fixture, max_abs_difference, runtime};
use ndarray::{Array1, Array2, ArrayD};
use qexp::compile::interventions::{self, Add, AddAtFront, Intervention, Target, Zero};
use qexp::compile::kv_cache;
use qexp::runtime::{Batch, GenerationGraph, HookedModel, Sampling};

const CHECKPOINTS: &[&str] = &[
    "tiny_llama/model.gguf",
    "tiny_gpt2",
    "tiny_gpt_neo",
    "tiny_pythia",
    "tiny_mistral",
    "tiny_qwen3",
    "tiny_gemma2",
];

const SEQUENCE: [u32; 9] = [1, 70, 71, 72, 73, 74, 90, 91, 92];

fn target(hook: &str, head: Option<usize>, pos: Option<i64>) -> Target {
    Target {
        hook: hook.to_owned(),
        head,
        pos,
    }
}

/// Edits a cache keeps exact: everywhere, one head, an absolute position, the front
/// positions (which the first piece and a later one share).
fn edits(model: &HookedModel<'_>) -> Vec<Intervention> {
    let d_model = model.manifest.config.d_model;
    let vector = Array1::from_shape_fn(d_model, |i| ((i % 7) as f32 - 3.0) * 0.3);
    let rows = Array2::from_shape_fn((3, d_model), |(r, i)| ((r + i) % 5) as f32 * 0.2);
    vec![
        Intervention::Add(Add {
            target: target("blocks.0.hook_resid_pre", None, None),
            vector,
        }),
        Intervention::AddAtFront(AddAtFront {
            target: target("blocks.1.hook_resid_pre", None, None),
            rows,
        }),
        Intervention::Zero(Zero {
            target: target("blocks.0.attn.hook_z", Some(1), None),
        }),
        Intervention::Zero(Zero {
            target: target("blocks.1.attn.hook_v", Some(0), Some(4)),
        }),
    ]
}

fn edited(model: &HookedModel<'_>) -> qexp::onnx::ModelProto {
    let heads = model.manifest.config.n_heads;
    let kv_heads = model.manifest.config.n_kv_heads;
    interventions::apply(model.graph(), &edits(model), |hook| {
        if hook.ends_with("hook_v") {
            kv_heads
        } else {
            heads
        }
    })
    .unwrap()
}

/// The logits of `graph` over [`SEQUENCE`] in one pass, and run in pieces of the given
/// lengths with the cache carried between them.
fn whole_and_in_pieces(
    model: &mut HookedModel<'_>,
    key: &str,
    graph: &qexp::onnx::ModelProto,
    pieces: &[usize],
) -> (ArrayD<f32>, ArrayD<f32>) {
    let whole_graph = qexp::compile::select_outputs(graph, &["logits"]).unwrap();
    let batch = model.batch(&[SEQUENCE.to_vec()]).unwrap();
    let whole = model
        .forward_graph(&format!("{key}|whole"), &whole_graph, &batch)
        .unwrap()
        .logits
        .unwrap()
        .into_dyn();

    let config = model.manifest.config.clone();
    let cached = kv_cache::with_kv_cache(graph, config.n_layers).unwrap();
    let empty = ArrayD::zeros(vec![1, 0, config.n_kv_heads, config.d_head]);
    let (mut past, presents): (Vec<_>, Vec<_>) = kv_cache::cache_names(config.n_layers)
        .into_iter()
        .map(|(past, present)| ((past, empty.clone()), present))
        .unzip();
    let outputs: Vec<&str> = std::iter::once("logits")
        .chain(presents.iter().map(String::as_str))
        .collect();
    let cached = qexp::compile::select_outputs(&cached, &outputs).unwrap();

    let mut logits = Vec::new();
    let mut start = 0;
    for &length in pieces {
        let piece = &SEQUENCE[start..start + length];
        let batch = Batch {
            input_ids: Array2::from_shape_fn((1, length), |(_, i)| i64::from(piece[i])),
            attention_mask: Array2::ones((1, start + length)),
            lengths: vec![length],
        };
        let mut forward = model
            .forward_graph_fed(&format!("{key}|cached"), &cached, &batch, &past)
            .unwrap();
        for ((_, value), present) in past.iter_mut().zip(&presents) {
            *value = forward.hooks.remove(present).unwrap();
            assert_eq!(
                value.shape()[1],
                start + length,
                "{present} holds every token"
            );
        }
        logits.push(forward.logits.unwrap());
        start += length;
    }
    assert_eq!(start, SEQUENCE.len());
    let views: Vec<_> = logits.iter().map(|l| l.view()).collect();
    let joined = ndarray::concatenate(ndarray::Axis(1), &views).unwrap();
    (whole, joined.into_dyn())
}

fn check_pieces(checkpoint: &str) {
    let (_dir, model_dir) = export_to_temp(&fixture(checkpoint));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    assert!(kv_cache::supports(model.graph()), "{checkpoint}");
    let clean = model.graph().clone();
    let variant = edited(&model);
    for (key, graph) in [("clean", &clean), ("variant", &variant)] {
        // The first piece ends inside the front rows; single tokens, then a longer piece.
        let (whole, pieces) = whole_and_in_pieces(&mut model, key, graph, &[2, 1, 1, 3, 2]);
        let what = format!("{checkpoint} {key}: cached pieces against one pass");
        assert_close(&what, pieces.view(), whole.view(), 1e-4);
    }
    // The edits change the logits: the comparison above is not of two clean runs.
    let (clean_logits, _) = whole_and_in_pieces(&mut model, "clean", &clean, &[9]);
    let (variant_logits, _) = whole_and_in_pieces(&mut model, "variant", &variant, &[9]);
    let moved = max_abs_difference(clean_logits.view(), variant_logits.view());
    assert!(
        moved > 1e-3,
        "{checkpoint}: the edits moved the logits by {moved}"
    );
}

#[test]
fn a_sequence_run_in_pieces_with_the_cache_gives_one_pass_logits_on_every_family() {
    for checkpoint in CHECKPOINTS {
        check_pieces(checkpoint);
    }
}

#[test]
fn generating_with_the_cache_gives_the_tokens_rerunning_gives() {
    // tiny_mistral's weights are floats; most of tiny_llama's GGUF is 4-bit blocks,
    // which its cached steps multiply by as they are.
    for checkpoint in ["tiny_mistral", "tiny_llama/model.gguf"] {
        cached_and_rerun_tokens_agree(checkpoint);
    }
}

fn cached_and_rerun_tokens_agree(checkpoint: &str) {
    let (_dir, model_dir) = export_to_temp(&fixture(checkpoint));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let prompt = &SEQUENCE[..4];
    let sampling = Sampling::Temperature {
        temperature: 1.0,
        seed: 5,
    };
    let clean = model.graph().clone();
    let variant = edited(&model);
    for (key, graph) in [("clean", &clean), ("variant", &variant)] {
        for sampling in [Sampling::Greedy, sampling] {
            let mut run = |cacheable: bool| {
                let graph = GenerationGraph {
                    key: &format!("{key}{cacheable}"),
                    edited: graph,
                    cacheable,
                };
                model
                    .generate_with(prompt, 24, sampling, false, Some(graph))
                    .unwrap()
            };
            let (cached, rerun) = (run(true), run(false));
            assert_eq!(cached, rerun, "{checkpoint}: {key}, {sampling:?}");
            assert_eq!(cached.len(), 24);
        }
    }
    // The clean model's own generation takes the cache too, with the same tokens.
    let plain = model.generate(prompt, 24, sampling, false).unwrap();
    let graph = GenerationGraph {
        key: "rerun",
        edited: &clean,
        cacheable: false,
    };
    let rerun = model
        .generate_with(prompt, 24, sampling, false, Some(graph))
        .unwrap();
    assert_eq!(plain, rerun);
}

#[test]
fn products_by_a_ggufs_four_bit_weights_run_on_its_blocks() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    // The file's Q4_0 and Q4_1 tensors, and not its Q8_0 and F16 ones (the embedding,
    // layer 0's W_V and W_O, layer 1's W_K and W_V, both W_out).
    assert_eq!(
        model.four_bit_weights().unwrap(),
        [
            "blocks.0.attn.W_K",
            "blocks.0.attn.W_Q",
            "blocks.0.mlp.W_gate",
            "blocks.0.mlp.W_in",
            "blocks.1.attn.W_O",
            "blocks.1.attn.W_Q",
            "blocks.1.mlp.W_gate",
            "blocks.1.mlp.W_in",
        ]
    );
    let floats = qexp::compile::select_outputs(model.graph(), &["logits"]).unwrap();
    let four_bit = model.with_four_bit_weights(floats.clone()).unwrap();
    let products = |graph: &qexp::onnx::ModelProto, op: &str| {
        graph
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some(op))
            .count()
    };
    assert_eq!(products(&four_bit, "MatMulNBits"), 8);
    assert_eq!(products(&floats, "MatMulNBits"), 0);

    let sequence = [SEQUENCE.to_vec()];
    let batch = model.batch(&sequence).unwrap();
    let mut logits = |key: &str, graph: &qexp::onnx::ModelProto| {
        model.prepare_graph(key, graph).unwrap();
        let forward = model.forward_cached(key, &batch, &[]).unwrap().unwrap();
        forward.logits.unwrap().into_dyn()
    };
    let (expected, found) = (logits("floats", &floats), logits("four_bit", &four_bit));
    // The same levels times the same inputs, added up in another order: within the
    // tolerance the export is held to against transformers (logits here are ~10).
    assert_close(
        "logits on 4-bit blocks",
        found.view(),
        expected.view(),
        1e-4,
    );
}

#[test]
fn an_edit_counted_from_the_end_is_not_cacheable() {
    let from_end = Intervention::Zero(Zero {
        target: target("blocks.0.hook_resid_pre", None, Some(-1)),
    });
    let fixed = Intervention::Zero(Zero {
        target: target("blocks.0.hook_resid_pre", None, Some(2)),
    });
    assert!(from_end.counts_from_end());
    assert!(!fixed.counts_from_end());
}

#[test]
fn a_model_folder_without_the_cache_names_generates_by_rerunning() {
    // Older exports name no `positions`: the same tokens come, by the slower way.
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let mut old = model.graph().clone();
    for node in &mut old.graph.as_mut().unwrap().node {
        for name in node.input.iter_mut().chain(node.output.iter_mut()) {
            if name == "positions" {
                *name = "inputs/Range".to_owned();
            }
        }
    }
    assert!(!kv_cache::supports(&old));
    assert!(kv_cache::with_kv_cache(&old, 2).is_err());
    let graph = GenerationGraph {
        key: "old",
        edited: &old,
        cacheable: true,
    };
    let prompt = &SEQUENCE[..3];
    let made = model
        .generate_with(prompt, 10, Sampling::Greedy, false, Some(graph))
        .unwrap();
    assert_eq!(
        made,
        model.generate(prompt, 10, Sampling::Greedy, false).unwrap()
    );
}
