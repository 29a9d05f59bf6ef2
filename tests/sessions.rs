//! ONNX Runtime sessions as a run uses them: built without pre-packed weights (a sweep's
//! many sessions would each pack every weight matrix, and the packed copy doubles the
//! weights in memory), and built again packed once they run small passes repeatedly,
//! where packing on every call costs as much as the products. Packed or not, a session
//! gives the same numbers.

mod common;

use common::{export_to_temp, fixture, runtime};
use qexp::runtime::HookedModel;

#[test]
fn a_session_running_small_passes_is_packed_once_and_gives_the_same_numbers() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let small = model.batch(&[vec![1, 70, 71, 72, 73, 74]]).unwrap();
    let hooks = ["blocks.1.attn.hook_z"];

    let first = model.forward(&small, true, &hooks).unwrap();
    assert_eq!((model.sessions_built(), model.sessions_packed()), (1, 0));
    let mut passes = vec![first];
    for _ in 0..5 {
        passes.push(model.forward(&small, true, &hooks).unwrap());
    }
    assert_eq!(
        (model.sessions_built(), model.sessions_packed()),
        (1, 1),
        "built once unpacked, then packed once, and never again"
    );
    for pass in &passes[1..] {
        assert_eq!(pass.logits, passes[0].logits);
        assert_eq!(pass.hooks, passes[0].hooks);
    }

    // A large pass never makes a session hot: no rebuild however often it runs.
    let rows: Vec<Vec<u32>> = (0..8)
        .map(|r| (0..12).map(|t| 60 + r + t).collect())
        .collect();
    let large = model.batch(&rows).unwrap();
    for _ in 0..5 {
        model.forward(&large, true, &[]).unwrap();
    }
    assert_eq!(
        (model.sessions_built(), model.sessions_packed()),
        (2, 1),
        "one session for the logits alone, never packed"
    );
}
