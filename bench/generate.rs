//! qexp's side of the generation benchmark (bench/generate.sh runs it next to
//! TransformerLens): 50 greedy tokens after a short and a long prompt, by the clean
//! model and with
//! a steering vector added to `blocks.6.hook_resid_pre` at every position, each with the
//! key/value cache and by rerunning the sequence at every step (how qexp generated
//! before it had a cache). Prints one JSON object: median seconds of three runs after a
//! warm-up (which compiles the sessions), and whether both ways made the same tokens.
//!
//!     cargo run --release --example bench_generate -- models/smollm2-135m

use std::path::PathBuf;
use std::time::Instant;

use qexp::compile::interventions::{self, Add, Intervention, Target};
use qexp::runtime::{Device, GenerationGraph, HookedModel, Runtime, Sampling};

const PROMPTS: [(&str, &str); 2] = [
    ("short", "I hate you because"),
    (
        "long",
        "Once upon a time, in a small village at the edge of a great forest, there lived an old \
         woman who kept bees. Every morning she walked along the river to the meadow where her \
         hives stood in a long row, and every evening she came back with honey for anyone who \
         knocked at her door. The children of the village loved her, because she told them \
         stories about the animals of the forest: the fox who lost his shadow, the owl who \
         could not sleep at night, and the bear who wanted to learn how to dance. One winter \
         the snow fell for seven days without stopping, and on the eighth day the old woman \
         did not come to the meadow. The children went to her house and",
    ),
];
const NEW_TOKENS: usize = 50;
const STEERED_HOOK: &str = "blocks.6.hook_resid_pre";

/// The steering vector, by a formula bench/generate_tl.py repeats.
fn steering_vector(d_model: usize) -> ndarray::Array1<f32> {
    ndarray::Array1::from_shape_fn(d_model, |i| 2.0 * (i as f32 * 0.37).sin())
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "models/smollm2-135m".into()),
    );
    let runtime = Runtime::new(Device::Cpu)?;
    let mut model = HookedModel::load(&runtime, &dir)?;
    let steer = Intervention::Add(Add {
        target: Target {
            hook: STEERED_HOOK.into(),
            head: None,
            pos: None,
        },
        vector: steering_vector(model.manifest.config.d_model),
    });
    let clean = model.graph().clone();
    let steered = interventions::apply(model.graph(), &[steer], |_| 0)?;

    let mut prompts = Vec::new();
    for (label, prompt) in PROMPTS {
        let tokens = model.to_tokens(prompt, model.manifest.special_tokens.prepend_bos)?;
        let mut rows = Vec::new();
        for (name, graph) in [("clean", &clean), ("steered", &steered)] {
            let mut outputs = Vec::new();
            let mut seconds = Vec::new();
            for cacheable in [true, false] {
                let key = format!("{name}-{cacheable}");
                let mut run = || {
                    let graph = GenerationGraph {
                        key: &key,
                        edited: graph,
                        cacheable,
                    };
                    model.generate_with(&tokens, NEW_TOKENS, Sampling::Greedy, false, Some(graph))
                };
                let made = run()?;
                let mut times = Vec::new();
                for _ in 0..3 {
                    let start = Instant::now();
                    run()?;
                    times.push(start.elapsed().as_secs_f64());
                }
                times.sort_by(f64::total_cmp);
                seconds.push(times[1]);
                outputs.push(made);
            }
            rows.push(format!(
                r#""{name}": {{"kv_cache": {:.4}, "rerun": {:.4}, "same_tokens": {}, "tokens": {:?}}}"#,
                seconds[0],
                seconds[1],
                outputs[0] == outputs[1],
                outputs[0],
            ));
        }
        prompts.push(format!(
            r#""{label}": {{"prompt": {tokens:?}, {}}}"#,
            rows.join(", ")
        ));
    }
    println!(r#"{{"new_tokens": {NEW_TOKENS}, {}}}"#, prompts.join(", "));
    Ok(())
}
