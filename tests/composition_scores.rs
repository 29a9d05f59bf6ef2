//! Composition scores against TransformerLens' own code on both tiny models: the raw
//! checkpoint weights (tests/fixtures/make_composition_reference.py) and the weights as
//! TransformerLens' loader processes them by default
//! (tests/fixtures/make_processed_composition_reference.py).

mod common;

use common::{Reference, export_to_temp, fixture, runtime};
use qexp::analysis::composition::{Mode, Processing, Score, composition_scores};
use qexp::runtime::HookedModel;

/// qexp's Q, K and V scores of the model exported from `checkpoint`.
fn scores(checkpoint: &str, processing: Processing) -> Vec<(&'static str, Vec<Score>)> {
    let (_dir, model_dir) = export_to_temp(&fixture(checkpoint));
    let runtime = runtime();
    let model = HookedModel::load(&runtime, &model_dir).unwrap();
    [(Mode::Q, "Q"), (Mode::K, "K"), (Mode::V, "V")]
        .into_iter()
        .map(|(mode, key)| {
            let scores = composition_scores(
                &model.manifest.config,
                mode,
                processing,
                |_, _| true,
                |w| model.weight(w),
            )
            .unwrap();
            assert_eq!(scores.len(), 16, "every pair from layer 0 to layer 1");
            (key, scores)
        })
        .collect()
}

fn assert_matches(checkpoint: &str, processing: Processing, reference: &str) {
    let mut reference = Reference::open(&fixture(reference));
    for (key, scores) in scores(checkpoint, processing) {
        let expected = reference.f64(key);
        for s in &scores {
            let want = expected[[s.layer1, s.head1, s.layer2, s.head2]];
            // The reference is float32 arithmetic; qexp works in float64.
            assert!(
                (s.score - want).abs() < 1e-5 * want.abs().max(1.0),
                "{checkpoint} {key}: L{}H{} -> L{}H{}: qexp {} vs TransformerLens {want}",
                s.layer1,
                s.head1,
                s.layer2,
                s.head2,
                s.score
            );
        }
    }
}

#[test]
fn raw_weights_match_transformer_lens() {
    assert_matches(
        "tiny_llama/model.gguf",
        Processing::NONE,
        "tiny_llama/composition_reference.npz",
    );
}

#[test]
fn processed_weights_match_transformer_lens_defaults_on_an_rms_norm_model() {
    assert_matches(
        "tiny_llama/model.gguf",
        Processing::TRANSFORMER_LENS,
        "tiny_llama/processed_composition_reference.npz",
    );
}

#[test]
fn processed_weights_match_transformer_lens_defaults_on_a_layer_norm_model() {
    assert_matches(
        "tiny_gpt_neo",
        Processing::TRANSFORMER_LENS,
        "tiny_gpt_neo/processed_composition_reference.npz",
    );
}

/// Each processing step changes the scores of the LayerNorm model, so the comparisons
/// above would catch a step left out.
#[test]
fn each_processing_step_changes_layer_norm_scores() {
    let q = |processing| scores("tiny_gpt_neo", processing).remove(0).1;
    let full = q(Processing::TRANSFORMER_LENS);
    for partial in [
        Processing::NONE,
        Processing {
            center_writing_weights: false,
            ..Processing::TRANSFORMER_LENS
        },
        Processing {
            fold_ln: false,
            ..Processing::TRANSFORMER_LENS
        },
    ] {
        let largest = q(partial)
            .iter()
            .zip(&full)
            .map(|(a, b)| (a.score - b.score).abs())
            .fold(0.0, f64::max);
        assert!(largest > 1e-3, "{partial:?} differs by only {largest}");
    }
}
