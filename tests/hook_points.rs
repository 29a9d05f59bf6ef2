//! Hook tensors are what their names say, on both architectures.

mod common;

use common::{assert_close, export_to_temp, fixture, runtime};
use ndarray::{Axis, s};
use qexp::manifest::Manifest;
use qexp::runtime::HookedModel;

const TOLERANCE: f32 = 1e-4;

fn check_hook_identities(checkpoint: &str) {
    let (_dir, model_dir) = export_to_temp(&fixture(checkpoint));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model
        .batch(&[vec![1, 70, 71, 72, 73, 74, 75, 76], vec![1, 90, 91]])
        .unwrap();
    let has_bias = model.manifest.config.bias.attn_out;
    let parallel = model.manifest.config.parallel_attn_mlp;
    let post_norms = model.manifest.config.post_norms;
    let mut hooks = vec![
        "blocks.1.ln1_post.hook_scale",
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_post",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_mlp_out",
        "blocks.1.attn.hook_result",
        "blocks.1.attn.hook_pattern",
        "blocks.1.attn.hook_z",
    ];
    if !parallel {
        hooks.push("blocks.1.hook_resid_mid");
    }
    if !post_norms {
        hooks.remove(0);
    }
    let f = model.forward(&batch, false, &hooks).unwrap().hooks;

    let pattern = &f["blocks.1.attn.hook_pattern"];
    for row in pattern.slice(s![0, .., .., ..]).lanes(Axis(2)) {
        assert!((row.sum() - 1.0).abs() < 1e-5, "pattern rows sum to 1");
    }
    let (heads, width) = (pattern.shape()[1], pattern.shape()[2]);
    for head in 0..heads {
        for q in 0..width {
            for k in q + 1..width {
                assert_eq!(
                    pattern[[0, head, q, k]],
                    0.0,
                    "causal: query {q} never sees key {k}"
                );
            }
        }
    }

    let mut summed = f["blocks.1.attn.hook_result"].sum_axis(Axis(2));
    if post_norms {
        // Gemma-2: the heads' sum passes through ln1_post before it joins the stream.
        let scale = &f["blocks.1.ln1_post.hook_scale"];
        let weight = model.weight("blocks.1.ln1_post.w").unwrap();
        summed = &summed / scale * &weight;
    }
    let summed = if has_bias {
        let manifest = Manifest::read(&model_dir).unwrap();
        assert!(manifest.hook("blocks.1.attn.hook_result").is_some());
        // hook_attn_out - sum(result) is then b_O at every position: constant across rows.
        let diff = &f["blocks.1.hook_attn_out"] - &summed;
        let first = diff.slice(s![0, 0, ..]).to_owned();
        for position in diff.slice(s![0, .., ..]).outer_iter() {
            assert_close(
                "b_O is the same everywhere",
                position.into_dyn(),
                first.view().into_dyn(),
                TOLERANCE,
            );
        }
        summed + &first
    } else {
        summed
    };
    assert_close(
        "sum of hook_result over heads",
        summed.view(),
        f["blocks.1.hook_attn_out"].view(),
        TOLERANCE,
    );

    let mid = &f["blocks.1.hook_resid_pre"] + &f["blocks.1.hook_attn_out"];
    if parallel {
        // Attention and MLP both read resid_pre; there is no stream between them.
        let manifest = Manifest::read(&model_dir).unwrap();
        assert!(manifest.hook("blocks.1.hook_resid_mid").is_none());
        assert_close(
            "resid_post = resid_pre + attn_out + mlp_out",
            (&mid + &f["blocks.1.hook_mlp_out"]).view(),
            f["blocks.1.hook_resid_post"].view(),
            TOLERANCE,
        );
        return;
    }
    assert_close(
        "resid_mid = resid_pre + attn_out",
        mid.view(),
        f["blocks.1.hook_resid_mid"].view(),
        TOLERANCE,
    );
    let post = &f["blocks.1.hook_resid_mid"] + &f["blocks.1.hook_mlp_out"];
    assert_close(
        "resid_post = resid_mid + mlp_out",
        post.view(),
        f["blocks.1.hook_resid_post"].view(),
        TOLERANCE,
    );
}

#[test]
fn llama_hooks_obey_their_identities() {
    check_hook_identities("tiny_llama/model.gguf");
}

#[test]
fn gpt_neo_hooks_obey_their_identities() {
    check_hook_identities("tiny_gpt_neo");
}

#[test]
fn hugging_face_family_hooks_obey_their_identities() {
    for family in [
        "tiny_gpt2",
        "tiny_pythia",
        "tiny_llama_hf",
        "tiny_mistral",
        "tiny_qwen2",
        "tiny_qwen3",
        "tiny_gemma2",
        "tiny_gemma2_gguf/model.gguf",
        "tiny_pythia/model.gguf",
    ] {
        check_hook_identities(family);
    }
}

#[test]
fn qwen3_query_and_key_norms_are_hooks_between_the_projection_and_the_rotary() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_qwen3"));
    let manifest = Manifest::read(&model_dir).unwrap();
    let shape = |name: &str| manifest.hook(name).map(|h| h.shape.join(","));
    assert_eq!(
        shape("blocks.0.attn.q_norm.hook_scale").as_deref(),
        Some("batch,pos,4,1")
    );
    assert_eq!(
        shape("blocks.0.attn.k_norm.hook_normalized").as_deref(),
        Some("batch,pos,2,16")
    );
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model.batch(&[vec![1, 70, 71, 72]]).unwrap();
    let hooks = [
        "blocks.0.attn.hook_q",
        "blocks.0.attn.q_norm.hook_scale",
        "blocks.0.attn.q_norm.hook_normalized",
    ];
    let f = model.forward(&batch, false, &hooks).unwrap().hooks;
    // hook_normalized is hook_q divided by its own RMS over each head's 16 dimensions.
    let q = &f["blocks.0.attn.hook_q"];
    let rms = q
        .mapv(|x| x * x)
        .mean_axis(Axis(3))
        .unwrap()
        .mapv(|m| (m + 1e-6).sqrt())
        .insert_axis(Axis(3));
    assert_close(
        "q_norm.hook_scale is the RMS of hook_q",
        rms.view(),
        f["blocks.0.attn.q_norm.hook_scale"].view(),
        TOLERANCE,
    );
    assert_close(
        "q_norm.hook_normalized = hook_q / hook_scale",
        (q / &rms).view(),
        f["blocks.0.attn.q_norm.hook_normalized"].view(),
        TOLERANCE,
    );
}

#[test]
fn manifest_lists_transformer_lens_hook_names_with_shapes() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let manifest = Manifest::read(&model_dir).unwrap();
    let shape = |name: &str| {
        manifest
            .hook(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .shape
            .join(",")
    };
    assert_eq!(shape("hook_embed"), "batch,pos,d_model");
    assert_eq!(shape("blocks.0.attn.hook_q"), "batch,pos,4,16");
    assert_eq!(shape("blocks.0.attn.hook_k"), "batch,pos,2,16");
    assert_eq!(shape("blocks.0.attn.hook_rot_q"), "batch,pos,4,16");
    assert_eq!(
        shape("blocks.1.attn.hook_pattern"),
        "batch,4,query_pos,key_pos"
    );
    assert_eq!(shape("blocks.1.attn.hook_result"), "batch,pos,4,d_model");
    assert_eq!(shape("blocks.1.mlp.hook_post"), "batch,pos,96");
    assert_eq!(shape("ln_final.hook_normalized"), "batch,pos,d_model");
    for name in [
        "blocks.1.ln1.hook_normalized",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_resid_post",
    ] {
        assert!(manifest.hook(name).is_some(), "{name} missing");
    }
}

#[test]
fn asking_for_one_early_hook_runs_a_pruned_graph() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model.batch(&[vec![1, 70, 71]]).unwrap();
    let forward = model
        .forward(&batch, false, &["blocks.0.attn.hook_q"])
        .unwrap();
    assert!(forward.logits.is_none());
    assert_eq!(
        forward.hooks["blocks.0.attn.hook_q"].shape(),
        &[1, 3, 4, 16]
    );
    let error = model
        .forward(&batch, false, &["blocks.0.attn.hook_qq"])
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no tensor named `blocks.0.attn.hook_qq`"),
        "{error}"
    );
}

#[test]
fn seeded_temperature_sampling_repeats_and_greedy_is_the_argmax() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let prompt = [1, 70, 71, 72];
    let sampling = qexp::runtime::Sampling::Temperature {
        temperature: 1.0,
        seed: 11,
    };
    let first = model.generate(&prompt, 8, sampling, false).unwrap();
    let again = model.generate(&prompt, 8, sampling, false).unwrap();
    assert_eq!(first, again, "same seed, same tokens");
    assert_eq!(first.len(), 8);

    let greedy = model
        .generate(&prompt, 1, qexp::runtime::Sampling::Greedy, false)
        .unwrap();
    let batch = model.batch(&[prompt.to_vec()]).unwrap();
    let logits = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
    let last = logits.slice(s![0, 3, ..]);
    let best = last
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(greedy, vec![best as u32]);
}

#[test]
fn more_hook_sets_than_sessions_kept_give_the_same_values_when_read_again() {
    // The clean model keeps a few output-keyed sessions; reading more hook sets than
    // that evicts the oldest, and reading it again compiles it anew, same numbers.
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model.batch(&[vec![1, 70, 71]]).unwrap();
    let hooks = [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post",
        "blocks.1.attn.hook_q",
    ];
    let read = |model: &mut HookedModel, hook: &str| {
        model
            .forward(&batch, false, &[hook])
            .unwrap()
            .hooks
            .remove(hook)
            .unwrap()
    };
    let first: Vec<_> = hooks.iter().map(|h| read(&mut model, h)).collect();
    for (hook, before) in hooks.iter().zip(&first) {
        assert_eq!(&read(&mut model, hook), before, "{hook}");
    }
}
