//! qexp's side of the forward-pass benchmark (bench/run.sh runs it next to eager
//! PyTorch). Prints one JSON object: median seconds per configuration, for the hooked
//! export with no hook requested, the same graph with every hook point removed, and
//! with all 30 layers' `hook_q` requested.
//!
//!     cargo run --release --example bench_forward -- models/smollm2-135m

use std::path::PathBuf;
use std::time::Instant;

use qexp::onnx::ModelProto;
use qexp::runtime::{Device, HookedModel, Runtime};

const CONFIGS: [(usize, usize); 3] = [(1, 8), (1, 32), (8, 128)];

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "models/smollm2-135m".into()),
    );
    let runtime = Runtime::new(Device::Cpu)?;
    let mut model = HookedModel::load(&runtime, &dir)?;
    let plain = without_hook_points(&qexp::compile::select_outputs(model.graph(), &["logits"])?);
    let q_hooks: Vec<String> = (0..model.manifest.config.n_layers)
        .map(|l| format!("blocks.{l}.attn.hook_q"))
        .collect();
    let q_hooks: Vec<&str> = q_hooks.iter().map(String::as_str).collect();

    let mut rows = Vec::new();
    for (batch_size, pos) in CONFIGS {
        // Deterministic ordinary tokens (ids past the 17 specials).
        let sequences: Vec<Vec<u32>> = (0..batch_size)
            .map(|b| {
                (0..pos)
                    .map(|p| 100 + ((b * 7919 + p * 104_729) % 40_000) as u32)
                    .collect()
            })
            .collect();
        let batch = model.batch(&sequences)?;
        let runs = if batch_size * pos >= 1024 { 5 } else { 20 };
        let hooked = median_seconds(runs, || model.forward(&batch, true, &[]).map(drop))?;
        let stripped = median_seconds(runs, || {
            model.forward_graph("no-hooks", &plain, &batch).map(drop)
        })?;
        let with_q = median_seconds(runs, || model.forward(&batch, true, &q_hooks).map(drop))?;
        rows.push(format!(
            r#"{{"batch": {batch_size}, "pos": {pos}, "hooked": {hooked:.6}, "no_hook_points": {stripped:.6}, "hooked_with_30_hook_q": {with_q:.6}}}"#
        ));
    }
    let c = &model.manifest.config;
    let matmul_params = c.n_layers
        * (c.d_model * c.n_heads * c.d_head * 2
            + c.d_model * c.n_kv_heads * c.d_head * 2
            + 3 * c.d_model * c.d_mlp)
        + c.d_model * c.d_vocab;
    println!(
        r#"{{"threads": {}, "n_layers": {}, "n_heads": {}, "d_head": {}, "matmul_params": {matmul_params}, "configs": [{}]}}"#,
        std::thread::available_parallelism().map_or(1, usize::from),
        c.n_layers,
        c.n_heads,
        c.d_head,
        rows.join(", ")
    );
    Ok(())
}

fn median_seconds(
    runs: usize,
    mut f: impl FnMut() -> Result<(), qexp::runtime::RuntimeError>,
) -> anyhow::Result<f64> {
    f()?; // session creation and the first allocation are not what we measure
    f()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[runs / 2])
}

/// The same graph with every hook point's Identity node removed and its readers wired
/// to the Identity's input: the model as a plain export would have it.
fn without_hook_points(model: &ModelProto) -> ModelProto {
    let mut model = model.clone();
    let graph = model.graph.as_mut().expect("exported models have a graph");
    let mut source_of = std::collections::HashMap::new();
    graph.node.retain(|node| {
        let is_hook = node.op_type.as_deref() == Some("Identity") && node.output[0] != "logits";
        if is_hook {
            source_of.insert(node.output[0].clone(), node.input[0].clone());
        }
        !is_hook
    });
    let resolve = |name: &String| {
        let mut name = name.clone();
        while let Some(source) = source_of.get(&name) {
            name = source.clone();
        }
        name
    };
    for node in &mut graph.node {
        for input in &mut node.input {
            *input = resolve(input);
        }
    }
    model
}
