//! qexp's side of the SAE-training benchmark (bench/sae_train.sh runs it next to
//! SAELens' trainer). The activations are SmolLM2's `blocks.1.attn.hook_q`, head 4, over
//! the first fortunes of data/training.txt, computed once with qexp and cached in
//! bench/.data/acts.npy so both trainers read the same numbers. Prints one JSON object.
//!
//!     cargo run --release --example bench_sae_train -- TOKENS BATCH_SIZE

use std::path::Path;
use std::time::Instant;

use ndarray::{Array2, s};
use ndarray_npy::{read_npy, write_npy};
use qexp::runtime::{Device, HookedModel, Runtime};
use qexp::sae::Architecture;
use qexp::sae::train::{TrainConfig, train};

const ACTIVATIONS: usize = 200_000;
const CACHE: &str = "bench/.data/acts.npy";

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (tokens, batch_size) = (
        args.first().copied().unwrap_or(1_000_000),
        args.get(1).copied().unwrap_or(4096),
    );
    let acts: Array2<f32> = if Path::new(CACHE).exists() {
        read_npy(CACHE)?
    } else {
        let acts = activations()?;
        std::fs::create_dir_all("bench/.data")?;
        write_npy(CACHE, &acts)?;
        acts
    };
    let config = TrainConfig {
        d_sae: 4096,
        architecture: Architecture::Standard,
        l1_coefficient: 2.0,
        lr: 2e-3,
        batch_size,
        tokens,
        seed: 42,
        normalize_activations: false,
        resample_dead: false,
    };
    let start = Instant::now();
    let (_, summary) = train(acts.view(), &config, None, |_| {})?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "activations": acts.nrows(),
            "tokens": summary.tokens,
            "batch_size": batch_size,
            "seconds": seconds,
            "explained_variance": summary.explained_variance,
            "l0": summary.l0,
        })
    );
    Ok(())
}

/// The first `ACTIVATIONS` tokens' queries of L1H4 over the fortunes.
fn activations() -> anyhow::Result<Array2<f32>> {
    let runtime = Runtime::new(Device::Cpu)?;
    let mut model = HookedModel::load(&runtime, Path::new("models/smollm2-135m"))?;
    let text = std::fs::read_to_string("data/training.txt")?;
    let mut rows: Vec<f32> = Vec::with_capacity(ACTIVATIONS * 64);
    let mut prompts = text.split("\n%\n").filter(|f| !f.trim().is_empty());
    while rows.len() < ACTIVATIONS * 64 {
        let chunk: Vec<Vec<u32>> = prompts
            .by_ref()
            .take(16)
            .map(|p| model.to_tokens(p, true))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|mut t| {
                t.truncate(512);
                t
            })
            .collect();
        if chunk.is_empty() {
            break;
        }
        let batch = model.batch(&chunk)?;
        let q = model
            .forward(&batch, false, &["blocks.1.attn.hook_q"])?
            .hooks
            .remove("blocks.1.attn.hook_q")
            .expect("requested");
        for (row, &len) in batch.lengths.iter().enumerate() {
            for pos in 0..len {
                rows.extend(q.slice(s![row, pos, 4, ..]).iter());
            }
        }
    }
    rows.truncate(ACTIVATIONS * 64);
    Ok(Array2::from_shape_vec((rows.len() / 64, 64), rows)?)
}
