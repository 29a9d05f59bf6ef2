//! Interventions compiled into the graph, each checked against an independent
//! computation on the tiny Llama.

mod common;

use common::{assert_close, export_to_temp, fixture, runtime};
use ndarray::{ArrayD, Axis, s};
use qexp::checkpoint::Checkpoint;
use qexp::compile::{self, Intervention, Target, interventions};
use qexp::runtime::HookedModel;

const HEAD: usize = 2;
const D_HEAD: usize = 16;

fn target(hook: &str, head: Option<usize>, pos: Option<i64>) -> Target {
    Target {
        hook: hook.into(),
        head,
        pos,
    }
}

fn variant(
    model: &HookedModel<'_>,
    edits: &[Intervention],
    outputs: &[&str],
) -> qexp::onnx::ModelProto {
    let edited = interventions::apply(model.graph(), edits, |_| 4).unwrap();
    compile::select_outputs(&edited, outputs).unwrap()
}

#[test]
fn zero_ablating_a_heads_z_equals_zeroing_its_rows_of_w_o() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let mut checkpoint = Checkpoint::load(&fixture("tiny_llama/model.gguf")).unwrap();
    let w_o = checkpoint
        .transformer
        .weights
        .get_mut("blocks.1.attn.W_O")
        .unwrap();
    w_o.slice_mut(s![HEAD * D_HEAD..(HEAD + 1) * D_HEAD, ..])
        .fill(0.0);
    let edited_dir = tempfile::tempdir().unwrap();
    qexp::export::export_checkpoint(&checkpoint, &edited_dir.path().join("m")).unwrap();

    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let mut edited = HookedModel::load(&runtime, &edited_dir.path().join("m")).unwrap();
    let batch = model
        .batch(&[vec![1, 70, 71, 72, 73, 74], vec![1, 90, 91]])
        .unwrap();

    let graph = variant(
        &model,
        &[Intervention::Zero(interventions::Zero {
            target: target("blocks.1.attn.hook_z", Some(HEAD), None),
        })],
        &["logits"],
    );
    let ablated = model
        .forward_graph("zero", &graph, &batch)
        .unwrap()
        .logits
        .unwrap();
    let reference = edited.forward(&batch, true, &[]).unwrap().logits.unwrap();
    let clean = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
    assert_close(
        "zero-ablated logits",
        ablated.view().into_dyn(),
        reference.view().into_dyn(),
        1e-5,
    );
    assert!(
        (&ablated - &clean).mapv(f32::abs).sum() > 1e-2,
        "the ablation changes something"
    );
}

#[test]
fn a_negative_position_means_each_rows_own_last_token() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model
        .batch(&[vec![1, 70, 71, 72, 73, 74], vec![1, 90, 91]])
        .unwrap();
    let graph = variant(
        &model,
        &[Intervention::Zero(interventions::Zero {
            target: target("blocks.0.hook_resid_post", None, Some(-1)),
        })],
        &["logits", "blocks.0.hook_resid_post"],
    );
    let edited = model.forward_graph("last", &graph, &batch).unwrap();
    let clean = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
    let logits = edited.logits.unwrap();
    let resid = &edited.hooks["blocks.0.hook_resid_post"];
    for (row, &len) in batch.lengths.iter().enumerate() {
        assert!(
            resid.slice(s![row, len - 1, ..]).iter().all(|&x| x == 0.0),
            "row {row}: last real token zeroed"
        );
        assert!(
            resid.slice(s![row, 0, ..]).iter().any(|&x| x != 0.0),
            "row {row}: first token untouched"
        );
        // Causal attention: every earlier position's logits are exactly the clean ones.
        assert_close(
            "earlier positions",
            logits.slice(s![row, ..len - 1, ..]).into_dyn(),
            clean.slice(s![row, ..len - 1, ..]).into_dyn(),
            1e-6,
        );
    }
}

#[test]
fn a_constant_replaces_exactly_the_chosen_head() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model.batch(&[vec![1, 70, 71, 72]]).unwrap();
    let value = ArrayD::from_shape_fn(vec![4, D_HEAD], |i| (i[0] * 100 + i[1]) as f32 / 100.0);
    let edit = Intervention::Constant(interventions::Constant {
        target: target("blocks.1.attn.hook_z", Some(HEAD), None),
        value: value.clone(),
    });
    let graph = variant(&model, &[edit], &["blocks.1.attn.hook_z"]);
    let z = model
        .forward_graph("mean", &graph, &batch)
        .unwrap()
        .hooks
        .remove("blocks.1.attn.hook_z")
        .unwrap();
    let clean = model
        .forward(&batch, false, &["blocks.1.attn.hook_z"])
        .unwrap()
        .hooks
        .remove("blocks.1.attn.hook_z")
        .unwrap();
    for pos in 0..4 {
        assert_close(
            "the chosen head holds the constant",
            z.slice(s![0, pos, HEAD, ..]).into_dyn(),
            value.index_axis(Axis(0), HEAD).into_dyn(),
            0.0,
        );
        for head in (0..4).filter(|&h| h != HEAD) {
            assert_close(
                "other heads untouched",
                z.slice(s![0, pos, head, ..]).into_dyn(),
                clean.slice(s![0, pos, head, ..]).into_dyn(),
                0.0,
            );
        }
    }
}

fn sae_edit(error_term: bool, scale: Vec<(usize, f32)>, scale_pos: Option<i64>) -> Intervention {
    Intervention::Sae(qexp::compile::SaeEdit {
        target: target("blocks.1.attn.hook_q", Some(HEAD), None),
        sae: std::sync::Arc::new(qexp::sae::load(&fixture("saes/standard")).unwrap()),
        error_term,
        scale,
        scale_pos,
        acts_output: "sae.acts".into(),
    })
}

#[test]
fn an_sae_in_the_graph_computes_what_saelens_computes_and_splices_as_asked() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model
        .batch(&[vec![1, 70, 71, 72, 73], vec![1, 90]])
        .unwrap();
    let clean = model
        .forward(&batch, true, &["blocks.1.attn.hook_q"])
        .unwrap();
    let q = &clean.hooks["blocks.1.attn.hook_q"];
    let sae = qexp::sae::load(&fixture("saes/standard")).unwrap();

    // With the error term and no edit the model is unchanged; the activations are SAELens'.
    let graph = variant(
        &model,
        &[sae_edit(true, vec![], None)],
        &["logits", "sae.acts"],
    );
    let spliced = model.forward_graph("error-term", &graph, &batch).unwrap();
    assert_close(
        "logits with the error term",
        spliced.logits.as_ref().unwrap().view().into_dyn(),
        clean.logits.as_ref().unwrap().view().into_dyn(),
        1e-5,
    );
    let acts = &spliced.hooks["sae.acts"];
    for (row, &len) in batch.lengths.iter().enumerate() {
        let x = q.slice(s![row, ..len, HEAD, ..]).to_owned();
        let expected = sae.encode(x.view());
        assert_close(
            "feature activations",
            acts.slice(s![row, ..len, ..]).into_dyn(),
            expected.view().into_dyn(),
            1e-5,
        );
    }

    // Removing every feature without the error term leaves b_dec.
    let all_removed: Vec<(usize, f32)> = (0..32).map(|f| (f, 0.0)).collect();
    let graph = variant(
        &model,
        &[sae_edit(false, all_removed, None)],
        &["blocks.1.attn.hook_q"],
    );
    let edited = model.forward_graph("all-removed", &graph, &batch).unwrap();
    let head_q = edited.hooks["blocks.1.attn.hook_q"]
        .slice(s![0, .., HEAD, ..])
        .to_owned();
    for row in head_q.rows() {
        assert_close(
            "b_dec only",
            row.into_dyn(),
            sae.b_dec.view().into_dyn(),
            1e-6,
        );
    }

    // Removing the two most active features at the last position, keeping the error
    // term: x - sum act_f W_dec[f] there, and nothing elsewhere.
    let x = q.slice(s![0, .., HEAD, ..]).to_owned();
    let acts = sae.encode(x.view());
    let last = 4;
    let mut order: Vec<usize> = (0..32).collect();
    order.sort_by(|&a, &b| acts[[last, b]].total_cmp(&acts[[last, a]]));
    let chosen = [order[0], order[1]];
    assert!(
        acts[[last, chosen[1]]] > 0.0,
        "the test removes active features"
    );
    let graph = variant(
        &model,
        &[sae_edit(
            true,
            chosen.iter().map(|&f| (f, 0.0)).collect(),
            Some(-1),
        )],
        &["blocks.1.attn.hook_q"],
    );
    let edited = model.forward_graph("two-removed", &graph, &batch).unwrap();
    let mut expected = x.row(last).to_owned();
    for f in chosen {
        expected -= &(&sae.w_dec.row(f) * acts[[last, f]]);
    }
    let got = edited.hooks["blocks.1.attn.hook_q"]
        .slice(s![0, last, HEAD, ..])
        .to_owned();
    assert_close(
        "features removed at the last position",
        got.view().into_dyn(),
        expected.view().into_dyn(),
        1e-5,
    );
    let earlier = edited.hooks["blocks.1.attn.hook_q"]
        .slice(s![0, ..last, HEAD, ..])
        .to_owned();
    assert_close(
        "earlier positions untouched",
        earlier.view().into_dyn(),
        q.slice(s![0, ..last, HEAD, ..]).into_dyn(),
        1e-6,
    );
}

#[test]
fn steering_adds_the_scaled_decoder_direction_to_one_head() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model.batch(&[vec![1, 70, 71, 72]]).unwrap();
    let sae = qexp::sae::load(&fixture("saes/standard")).unwrap();
    let direction = sae.w_dec.row(5).mapv(|w| w * 3.0);
    let edit = Intervention::Add(interventions::Add {
        target: target("blocks.1.attn.hook_q", Some(HEAD), None),
        vector: direction.clone(),
    });
    let graph = variant(&model, &[edit], &["blocks.1.attn.hook_q"]);
    let steered = model
        .forward_graph("steer", &graph, &batch)
        .unwrap()
        .hooks
        .remove("blocks.1.attn.hook_q")
        .unwrap();
    let clean = model
        .forward(&batch, false, &["blocks.1.attn.hook_q"])
        .unwrap()
        .hooks
        .remove("blocks.1.attn.hook_q")
        .unwrap();
    for pos in 0..4 {
        let expected = &clean.slice(s![0, pos, HEAD, ..]) + &direction;
        assert_close(
            "steered head",
            steered.slice(s![0, pos, HEAD, ..]).into_dyn(),
            expected.view().into_dyn(),
            1e-6,
        );
        assert_close(
            "other head",
            steered.slice(s![0, pos, 0, ..]).into_dyn(),
            clean.slice(s![0, pos, 0, ..]).into_dyn(),
            0.0,
        );
    }
}

#[test]
fn normalized_saes_in_the_graph_match_their_cpu_reconstruction() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model
        .batch(&[vec![1, 70, 71, 72, 73], vec![1, 90]])
        .unwrap();
    let q_hook = "blocks.1.attn.hook_q";
    let clean = model.forward(&batch, true, &[q_hook]).unwrap();
    for name in ["constant_norm_rescale", "layer_norm"] {
        let sae = std::sync::Arc::new(qexp::sae::load(&fixture(&format!("saes/{name}"))).unwrap());
        let edit = |error_term: bool, scale: Vec<(usize, f32)>| {
            Intervention::Sae(qexp::compile::SaeEdit {
                target: target(q_hook, Some(HEAD), None),
                sae: sae.clone(),
                error_term,
                scale,
                scale_pos: None,
                acts_output: "sae.acts".into(),
            })
        };
        // Spliced without the error term: the head's query is the reconstruction.
        let graph = variant(&model, &[edit(false, vec![])], &[q_hook, "sae.acts"]);
        let spliced = model
            .forward_graph(&format!("{name}-splice"), &graph, &batch)
            .unwrap();
        // Removing feature 0 and 1 with the error term: x plus the change, scaled back.
        let removed = vec![(0, 0.0), (1, 0.0)];
        let graph = variant(&model, &[edit(true, removed.clone())], &[q_hook]);
        let edited = model
            .forward_graph(&format!("{name}-removed"), &graph, &batch)
            .unwrap();
        for (row, &len) in batch.lengths.iter().enumerate() {
            let x = clean.hooks[q_hook]
                .slice(s![row, ..len, HEAD, ..])
                .to_owned();
            let acts = sae.encode(x.view());
            assert_close(
                &format!("{name} activations"),
                spliced.hooks["sae.acts"]
                    .slice(s![row, ..len, ..])
                    .into_dyn(),
                acts.view().into_dyn(),
                1e-4,
            );
            assert_close(
                &format!("{name} reconstruction"),
                spliced.hooks[q_hook]
                    .slice(s![row, ..len, HEAD, ..])
                    .into_dyn(),
                sae.reconstruct(x.view(), acts.view()).view().into_dyn(),
                1e-4,
            );
            let mut kept = acts.clone();
            kept.column_mut(0).fill(0.0);
            kept.column_mut(1).fill(0.0);
            let expected = &x
                + &(sae.reconstruct(x.view(), kept.view())
                    - sae.reconstruct(x.view(), acts.view()));
            assert_close(
                &format!("{name} removal with the error term"),
                edited.hooks[q_hook]
                    .slice(s![row, ..len, HEAD, ..])
                    .into_dyn(),
                expected.view().into_dyn(),
                1e-4,
            );
        }
    }
}

/// The variants of one sweep: every head of a layer zeroed, replaced by a constant, or
/// steered, and ActAdd's front rows of two lengths.
fn sweep_families(model: &HookedModel<'_>) -> Vec<Vec<Vec<Intervention>>> {
    let d_model = model.manifest.config.d_model;
    let heads = 4;
    let zero = (0..heads)
        .map(|head| {
            vec![Intervention::Zero(interventions::Zero {
                target: target("blocks.1.attn.hook_z", Some(head), None),
            })]
        })
        .collect();
    let constant = (0..heads)
        .map(|head| {
            let value = ArrayD::from_shape_fn(vec![D_HEAD], |i| (i[0] + head) as f32 * 0.1);
            vec![Intervention::Constant(interventions::Constant {
                target: target("blocks.0.attn.hook_z", Some(head), Some(2)),
                value,
            })]
        })
        .collect();
    let steer = (0..heads)
        .map(|k| {
            let vector = ndarray::Array1::from_shape_fn(d_model, |i| ((i * k) % 5) as f32 * 0.3);
            vec![
                Intervention::Zero(interventions::Zero {
                    target: target("blocks.0.attn.hook_z", Some(k), Some(-1)),
                }),
                Intervention::Add(interventions::Add {
                    target: target("blocks.1.hook_resid_pre", None, None),
                    vector,
                }),
            ]
        })
        .collect();
    let front = [2, 3]
        .into_iter()
        .map(|rows| {
            let rows = ndarray::Array2::from_shape_fn((rows, d_model), |(r, i)| {
                ((r + 2 * i) % 7) as f32 * 0.2
            });
            vec![Intervention::AddAtFront(interventions::AddAtFront {
                target: target("blocks.0.hook_resid_post", None, None),
                rows,
            })]
        })
        .collect();
    let patch = (0..heads)
        .map(|head| {
            vec![Intervention::Patch(interventions::Patch {
                target: target("blocks.1.attn.hook_z", Some(head), None),
                input: "patch0:blocks.1.attn.hook_z".into(),
            })]
        })
        .collect();
    vec![zero, constant, steer, front, patch]
}

/// The values a patch family's input is fed: any tensor of `hook_z`'s shape.
fn patch_values(batch: &qexp::runtime::Batch) -> Vec<(String, ArrayD<f32>)> {
    let shape = vec![batch.len(), batch.input_ids.ncols(), 4, D_HEAD];
    let values = ArrayD::from_shape_fn(shape, |i| (i[1] + 3 * i[2] + i[3]) as f32 * 0.05);
    vec![("patch0:blocks.1.attn.hook_z".to_owned(), values)]
}

#[test]
fn variants_differing_only_in_values_share_one_graph_and_give_the_same_numbers() {
    use prost::Message;
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model
        .batch(&[vec![1, 70, 71, 72, 73, 74], vec![1, 90, 91]])
        .unwrap();
    let outputs = ["logits", "blocks.1.hook_resid_post"];
    for (family, variants) in sweep_families(&model).into_iter().enumerate() {
        let mut structures = std::collections::BTreeSet::new();
        let mut moved = 0.0f32;
        for (index, edits) in variants.iter().enumerate() {
            let graph = variant(&model, edits, &outputs);
            let (lifted, feeds) = interventions::lift_values(&graph, edits);
            assert!(!feeds.is_empty(), "family {family}: values lifted");
            structures.insert(lifted.encode_to_vec());
            let patched = patch_values(&batch);
            let baked = model
                .forward_graph_fed(&format!("baked{family}-{index}"), &graph, &batch, &patched)
                .unwrap();
            let feeds: Vec<_> = feeds.into_iter().chain(patched).collect();
            let fed = model
                .forward_graph_fed(&format!("lifted{family}"), &lifted, &batch, &feeds)
                .unwrap();
            assert_eq!(baked.logits, fed.logits, "family {family}, variant {index}");
            assert_eq!(baked.hooks, fed.hooks, "family {family}, variant {index}");
            let clean = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
            let change = common::max_abs_difference(
                clean.view().into_dyn(),
                baked.logits.as_ref().unwrap().view().into_dyn(),
            );
            moved = moved.max(change);
        }
        assert_eq!(structures.len(), 1, "family {family}: one graph for all");
        assert!(
            moved > 1e-4,
            "family {family}: the variants change the logits"
        );
    }
}
