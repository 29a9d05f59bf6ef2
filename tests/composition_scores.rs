//! Composition scores against TransformerLens' own code (fixture made by
//! tests/fixtures/make_composition_reference.py) on the tiny GQA Llama.

mod common;

use common::{Reference, export_to_temp, fixture, runtime};
use qexp::analysis::composition::{Mode, composition_scores};
use qexp::runtime::HookedModel;

#[test]
fn q_k_and_v_composition_match_transformer_lens() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let model = HookedModel::load(&runtime, &model_dir).unwrap();
    let mut reference = Reference::open(&fixture("tiny_llama/composition_reference.npz"));
    for (mode, key) in [(Mode::Q, "Q"), (Mode::K, "K"), (Mode::V, "V")] {
        let expected = reference.f64(key);
        let scores = composition_scores(
            &model.manifest.config,
            mode,
            false,
            |_, _| true,
            |w| model.weight(w),
        )
        .unwrap();
        assert_eq!(scores.len(), 16, "every pair from layer 0 to layer 1");
        for s in &scores {
            let want = expected[[s.layer1, s.head1, s.layer2, s.head2]];
            // The reference is float32 arithmetic; qexp works in float64.
            assert!(
                (s.score - want).abs() < 1e-5 * want.abs().max(1.0),
                "{key}: L{}H{} -> L{}H{}: qexp {} vs TransformerLens {want}",
                s.layer1,
                s.head1,
                s.layer2,
                s.head2,
                s.score
            );
        }
    }
}
