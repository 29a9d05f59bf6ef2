//! Measurements through the whole pipeline (source -> plan -> run) on the tiny Llama,
//! each column checked against a direct computation.

mod common;

use std::path::Path;

use common::{export_to_temp, fixture, runtime};
use ndarray::s;
use qexp::checkpoint::Checkpoint;
use qexp::execute::{self, Cell, Section, Table};
use qexp::runtime::{HookedModel, log_softmax_row, token_losses};

const PROMPTS: [&str; 2] = ["the cat sat on the mat", "a dog"];

/// Runs `body` after a preamble declaring the tiny model and dataset `d` (the two
/// prompts); every section of the results.
fn run_sections(model_dir: &Path, body: &str) -> Vec<Section> {
    let source = format!(
        "experiment m\nmodel \"{}\"\ndataset d = prompts([\"{}\", \"{}\"])\n{body}\n",
        model_dir.display(),
        PROMPTS[0],
        PROMPTS[1]
    );
    let plan = common::checked(&source, model_dir, Default::default());
    execute::execute(&plan, &runtime(), &common::anywhere())
        .unwrap()
        .sections
}

/// The table a run made under `name`.
fn table_named(results: &execute::Results, name: &str) -> Table {
    results
        .sections
        .iter()
        .find_map(|s| match s {
            Section::Table(t) if t.name == name => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no table {name}"))
}

/// The tables `body` makes.
fn run(model_dir: &Path, body: &str) -> Vec<Table> {
    run_sections(model_dir, body)
        .into_iter()
        .filter_map(|s| match s {
            Section::Table(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// The feature dashboards `body` makes (its only dashboards step).
fn run_dashboards(model_dir: &Path, body: &str) -> qexp::execute::Dashboards {
    run_sections(model_dir, body)
        .into_iter()
        .find_map(|s| match s {
            Section::Dashboards(d) => Some(d),
            _ => None,
        })
        .expect("a dashboards step")
}

/// A forward pass with the SAE spliced into L1H2's query (no error term), features in
/// `scale` scaled: the graph the pipeline compiles for `splice`, built by hand.
fn spliced(
    model: &mut HookedModel,
    sae: &std::sync::Arc<qexp::sae::Sae>,
    scale: Vec<(usize, f32)>,
    batch: &qexp::runtime::Batch,
    outputs: &[&str],
    key: &str,
) -> qexp::runtime::Forward {
    use qexp::compile::{self, Intervention, SaeEdit, Target, interventions};
    let edit = Intervention::Sae(SaeEdit {
        target: Target {
            hook: "blocks.1.attn.hook_q".into(),
            head: Some(2),
            pos: None,
        },
        sae: sae.clone(),
        error_term: false,
        scale,
        scale_pos: None,
        acts_output: "a".into(),
    });
    let graph = compile::select_outputs(
        &interventions::apply(model.graph(), &[edit], |_| 4).unwrap(),
        outputs,
    )
    .unwrap();
    model.forward_graph(key, &graph, batch).unwrap()
}

fn number(table: &Table, row: usize, column: &str) -> f64 {
    match &table.rows[row][table
        .column(column)
        .unwrap_or_else(|| panic!("no column {column}"))]
    {
        Cell::Number(x) => *x,
        Cell::Integer(n) => *n as f64,
        other => panic!("{column}: {other:?}"),
    }
}

#[test]
fn per_token_losses_kl_and_argmax_attention_match_direct_computation() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let tables = run(
        &model_dir,
        "variant ablated {\n zero(blocks.1.attn.hook_z[head = 2])\n}\ntable t = per_token(d, head = L1H2, variants = [ablated]) | derive(loss_diff = ablated_loss - loss)",
    );
    let t = &tables[0];

    // The same numbers, computed directly: clean, and with W_O's rows for head 2 zeroed.
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let mut checkpoint = Checkpoint::load(&fixture("tiny_llama/model.gguf")).unwrap();
    checkpoint
        .transformer
        .weights
        .get_mut("blocks.1.attn.W_O")
        .unwrap()
        .slice_mut(s![32..48, ..])
        .fill(0.0);
    let edited_dir = tempfile::tempdir().unwrap();
    qexp::export::export_checkpoint(&checkpoint, &edited_dir.path().join("m")).unwrap();
    let mut edited = HookedModel::load(&runtime, &edited_dir.path().join("m")).unwrap();
    let sequences: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| model.to_tokens(p, false).unwrap())
        .collect();
    let batch = model.batch(&sequences).unwrap();
    let clean = model
        .forward(&batch, true, &["blocks.1.attn.hook_pattern"])
        .unwrap();
    let ablated = edited.forward(&batch, true, &[]).unwrap().logits.unwrap();
    let clean_logits = clean.logits.unwrap();
    let (clean_losses, ablated_losses) = (
        token_losses(&clean_logits, &batch),
        token_losses(&ablated, &batch),
    );

    let mut row = 0;
    for (b, tokens) in sequences.iter().enumerate() {
        for pos in 0..tokens.len() - 1 {
            assert_eq!(number(t, row, "batch"), b as f64);
            assert_eq!(number(t, row, "pos"), pos as f64);
            assert!((number(t, row, "loss") - f64::from(clean_losses[b][pos])).abs() < 1e-6);
            assert!(
                (number(t, row, "ablated_loss") - f64::from(ablated_losses[b][pos])).abs() < 1e-4
            );
            let diff = number(t, row, "ablated_loss") - number(t, row, "loss");
            assert!((number(t, row, "loss_diff") - diff).abs() < 1e-12);

            let p = log_softmax_row(clean_logits.slice(s![b, pos, ..]));
            let q = log_softmax_row(ablated.slice(s![b, pos, ..]));
            let kl: f64 = p.iter().zip(&q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum();
            assert!(
                (number(t, row, "ablated_kl_divergence") - kl).abs() < 1e-4,
                "KL at {b}/{pos}"
            );

            let pattern = clean.hooks["blocks.1.attn.hook_pattern"]
                .slice(s![b, 2, pos, ..=pos])
                .to_owned();
            let best = pattern
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .unwrap();
            assert_eq!(number(t, row, "max_idx_pos"), best.0 as f64);
            assert!((number(t, row, "max_idx_tok_value") - f64::from(*best.1)).abs() < 1e-7);
            row += 1;
        }
    }
    assert_eq!(row, t.rows.len());
}

#[test]
fn test_prompt_ranks_tokens_and_attention_reads_the_pattern_row() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let tables = run(
        &model_dir,
        "variant ablated {\n zero(blocks.1.attn.hook_z[head = 2])\n}\ntable next = test_prompt(\"the cat\", \" the\", variants = [ablated], top_k = 5)\ntable attn = attention(\"the cat sat\", L1H2, pos = -1, variants = [ablated])",
    );
    let (next, attn) = (&tables[0], &tables[1]);
    assert_eq!(next.rows.len(), 10, "top 5 for clean and for the variant");
    for rows in next.rows.chunks(5) {
        let logits: Vec<f64> = (0..5)
            .map(|i| match &rows[i][3] {
                Cell::Number(x) => *x,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            logits.windows(2).all(|w| w[0] >= w[1]),
            "sorted by logit: {logits:?}"
        );
    }
    let probabilities: f64 = (0..attn.rows.len()).map(|r| number(attn, r, "attn")).sum();
    assert!(
        (probabilities - 1.0).abs() < 1e-5,
        "the last query's pattern row sums to 1"
    );
    // Zeroing the head's output leaves its own pattern unchanged.
    for r in 0..attn.rows.len() {
        assert!((number(attn, r, "attn") - number(attn, r, "ablated_attn")).abs() < 1e-7);
    }
}

#[test]
fn direct_logits_of_every_component_sum_to_the_logits() {
    use ndarray::{Array1, Ix1, Ix2};
    use qexp::analysis::logit_attribution::{Unembed, direct_logits};
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let batch = model.batch(&[vec![1, 70, 71, 72, 73]]).unwrap();
    let hooks = [
        "hook_embed",
        "blocks.0.attn.hook_result",
        "blocks.1.attn.hook_result",
        "blocks.0.hook_mlp_out",
        "blocks.1.hook_mlp_out",
        "ln_final.hook_scale",
    ];
    let f = model.forward(&batch, true, &hooks).unwrap();
    let (ln_w, w_e) = (
        model.weight("ln_final.w").unwrap(),
        model.weight("embed.W_E").unwrap(),
    );
    let (ln_w, w_e) = (
        ln_w.into_dimensionality::<Ix1>().unwrap(),
        w_e.into_dimensionality::<Ix2>().unwrap(),
    );
    let unembed = Unembed::TiedEmbedding(w_e.view());
    let last = 4;
    let scale = f.hooks["ln_final.hook_scale"][[0, last, 0]];
    let normalization = model.manifest.config.normalization;
    let mut total = Array1::<f64>::zeros(w_e.nrows());
    let mut add = |component: ndarray::ArrayView1<'_, f32>| {
        total += &direct_logits(component, scale, ln_w.view(), normalization, &unembed)
    };
    add(f.hooks["hook_embed"].slice(s![0, last, ..]));
    for layer in 0..2 {
        for head in 0..4 {
            add(f.hooks[&format!("blocks.{layer}.attn.hook_result")].slice(s![0, last, head, ..]));
        }
        add(f.hooks[&format!("blocks.{layer}.hook_mlp_out")].slice(s![0, last, ..]));
    }
    let logits = f.logits.unwrap();
    for v in 0..total.len() {
        assert!(
            (total[v] - f64::from(logits[[0, last, v]])).abs() < 1e-3,
            "token {v}: {} vs {}",
            total[v],
            logits[[0, last, v]]
        );
    }
}

#[test]
fn direct_logit_attribution_table_ranks_the_top_tokens_by_ablation_effect() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let tables = run(
        &model_dir,
        "variant ablated {\n zero(blocks.1.attn.hook_z[head = 2])\n}\ntable dla = direct_logit_attribution(\"the cat sat\", L1H2, ablation = ablated, top = 5)",
    );
    let t = &tables[0];
    assert_eq!(
        t.columns,
        [
            "token",
            "direct_logit_attribution",
            "ablation_effect",
            "rank"
        ]
    );
    assert!(
        (5..=10).contains(&t.rows.len()),
        "the clean and ablated top 5, merged"
    );
    let effects: Vec<f64> = (0..t.rows.len())
        .map(|r| number(t, r, "ablation_effect"))
        .collect();
    assert!(
        effects.windows(2).all(|w| w[0] >= w[1]),
        "sorted by the ablation's effect: {effects:?}"
    );
}

#[test]
fn mean_ablation_uses_the_mean_over_the_datasets_real_tokens() {
    use qexp::compile::{self, Intervention, Target, interventions};
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let tables = run(
        &model_dir,
        "variant mean_ablated {\n mean(blocks.1.attn.hook_z[head = 2], d)\n}\ntable t = per_token(d, variants = [mean_ablated])",
    );
    let t = &tables[0];

    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let sequences: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| model.to_tokens(p, false).unwrap())
        .collect();
    let batch = model.batch(&sequences).unwrap();
    let z = model
        .forward(&batch, false, &["blocks.1.attn.hook_z"])
        .unwrap()
        .hooks
        .remove("blocks.1.attn.hook_z")
        .unwrap();
    let mut mean = ndarray::Array2::<f64>::zeros((4, 16));
    let mut count = 0.0;
    for (row, &len) in batch.lengths.iter().enumerate() {
        for pos in 0..len {
            mean += &z.slice(s![row, pos, .., ..]).mapv(f64::from);
            count += 1.0;
        }
    }
    let mean = (mean / count).mapv(|x| x as f32).into_dyn();
    let edit = Intervention::Constant(interventions::Constant {
        target: Target {
            hook: "blocks.1.attn.hook_z".into(),
            head: Some(2),
            pos: None,
        },
        value: mean,
    });
    let graph = compile::select_outputs(
        &interventions::apply(model.graph(), &[edit], |_| 4).unwrap(),
        &["logits"],
    )
    .unwrap();
    let logits = model
        .forward_graph("manual-mean", &graph, &batch)
        .unwrap()
        .logits
        .unwrap();
    let losses = token_losses(&logits, &batch);
    let expected: Vec<f32> = losses.into_iter().flatten().collect();
    assert_eq!(expected.len(), t.rows.len());
    for (row, loss) in expected.iter().enumerate() {
        assert!((number(t, row, "mean_ablated_loss") - f64::from(*loss)).abs() < 1e-4);
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error_unless_the_dataset_cuts_it() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let long = "x ".repeat(100);
    let source = |max: &str| {
        format!(
            "experiment m\nmodel \"{}\"\ndataset d = prompts([\"{long}\"]{max})\ntable t = per_token(d)\n",
            model_dir.display()
        )
    };
    let plan = |text: String| {
        qexp::check::check(&qexp::syntax::parse(&text).unwrap(), &Default::default()).unwrap()
    };
    let error = execute::execute(&plan(source("")), &runtime(), &common::anywhere()).unwrap_err();
    let message = format!("{error}");
    assert!(
        message.contains("more than the model's context of 128"),
        "{message}"
    );
    assert!(message.contains("table t"), "names the step: {message}");
    let results = execute::execute(
        &plan(source(", max_tokens = 64")),
        &runtime(),
        &common::anywhere(),
    )
    .unwrap();
    let Section::Table(t) = &results.sections[0] else {
        panic!()
    };
    assert_eq!(t.rows.len(), 63);
}

#[test]
fn loaded_saes_give_feature_activations_and_splice_into_variants() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae_dir = fixture("saes/standard");
    let tables = run(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\nvariant spliced {{\n splice(s)\n}}\nvariant removed {{\n remove_features(s, [0, 1, 2], pos = -1)\n}}\ntable acts = feature_activations(s, \"the cat sat\", pos = -1)\ntable next = test_prompt(\"the cat sat\", \" the\", variants = [spliced, removed], top_k = 3)",
            sae_dir.display()
        ),
    );
    let acts = &tables[0];
    assert_eq!(acts.rows.len(), 32);

    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let tokens = model.to_tokens("the cat sat", false).unwrap();
    let batch = model.batch(std::slice::from_ref(&tokens)).unwrap();
    let q = model
        .forward(&batch, false, &["blocks.1.attn.hook_q"])
        .unwrap()
        .hooks
        .remove("blocks.1.attn.hook_q")
        .unwrap();
    let x = q
        .slice(s![0, tokens.len() - 1, 2, ..])
        .to_owned()
        .insert_axis(ndarray::Axis(0));
    let expected = qexp::sae::load(&sae_dir).unwrap().encode(x.view());
    for f in 0..32 {
        assert!((number(acts, f, "activation") - f64::from(expected[[0, f]])).abs() < 1e-5);
    }
    let next = &tables[1];
    assert_eq!(
        next.rows.len(),
        9,
        "clean, spliced and removed, three tokens each"
    );
}

#[test]
fn sae_metrics_match_a_direct_computation() {
    use qexp::compile::{self, Intervention, SaeEdit, Target, interventions};
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae_dir = fixture("saes/standard");
    let tables = run(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ntable m = sae_metrics(s, d)",
            sae_dir.display()
        ),
    );
    let m = &tables[0];

    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let sae = std::sync::Arc::new(qexp::sae::load(&sae_dir).unwrap());
    let sequences: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| model.to_tokens(p, false).unwrap())
        .collect();
    let batch = model.batch(&sequences).unwrap();
    let clean = model
        .forward(&batch, true, &["blocks.1.attn.hook_q"])
        .unwrap();
    let q = &clean.hooks["blocks.1.attn.hook_q"];
    let mut rows = Vec::new();
    for (row, &len) in batch.lengths.iter().enumerate() {
        for pos in 0..len {
            rows.extend(q.slice(s![row, pos, 2, ..]).iter().copied());
        }
    }
    let x = ndarray::Array2::from_shape_vec((rows.len() / 16, 16), rows).unwrap();
    let acts = sae.encode(x.view());
    let recon = sae.decode(acts.view());
    let n = x.nrows() as f64;
    let mse = (&recon - &x).mapv(|e| f64::from(e * e)).sum() / n;
    let l0 = acts.iter().filter(|&&a| a > 0.0).count() as f64 / n;
    assert!((number(m, 0, "mse") - mse).abs() < 1e-4 * mse.max(1.0));
    assert!((number(m, 0, "l0") - l0).abs() < 1e-9);

    let target = Target {
        hook: "blocks.1.attn.hook_q".into(),
        head: Some(2),
        pos: None,
    };
    let splice = Intervention::Sae(SaeEdit {
        target: target.clone(),
        sae,
        error_term: false,
        scale: vec![],
        scale_pos: None,
        acts_output: "a".into(),
    });
    let mut loss = |edit: Intervention, key: &str| {
        let graph = compile::select_outputs(
            &interventions::apply(model.graph(), &[edit], |_| 4).unwrap(),
            &["logits"],
        )
        .unwrap();
        let logits = model
            .forward_graph(key, &graph, &batch)
            .unwrap()
            .logits
            .unwrap();
        token_losses(&logits, &batch)
            .iter()
            .flatten()
            .map(|&l| f64::from(l))
            .sum::<f64>()
    };
    let (spliced, zeroed) = (
        loss(splice, "spliced"),
        loss(Intervention::Zero(interventions::Zero { target }), "zeroed"),
    );
    let clean_loss: f64 = token_losses(clean.logits.as_ref().unwrap(), &batch)
        .iter()
        .flatten()
        .map(|&l| f64::from(l))
        .sum();
    let recovered = (zeroed - spliced) / (zeroed - clean_loss);
    assert!(
        (number(m, 0, "ce_loss_recovered") - recovered).abs() < 1e-4,
        "{} vs {recovered}",
        number(m, 0, "ce_loss_recovered")
    );
}

#[test]
fn an_sae_trained_in_the_pipeline_reports_its_training_saves_and_repeats_with_its_seed() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let saves = tempfile::tempdir().unwrap();
    let saved = saves.path().join("s");
    let body = format!(
        "sae s = train(hook = blocks.1.attn.hook_q[head = 2], dataset = d, d_sae = 32, l1_coefficient = 1e-3, lr = 1e-2, tokens = 2000, batch_size = 16, seed = 5, save = \"{}\", checkpoint_every = 50)\ntable m = sae_metrics(s, d)",
        saved.display()
    );
    let first = run(&model_dir, &body);
    assert_eq!(first[0].name, "s_training");
    assert_eq!(
        first[0].columns,
        [
            "activations",
            "steps",
            "tokens",
            "mse",
            "l0",
            "explained_variance",
            "dead_fraction",
            "resampled"
        ]
    );
    assert_eq!(number(&first[0], 0, "steps"), 125.0);
    assert!(
        number(&first[1], 0, "explained_variance") > 0.0,
        "training helped: {:?}",
        first[1].rows
    );
    assert!(
        saves
            .path()
            .join("s.checkpoints/step_000000125/cfg.json")
            .exists(),
        "the last checkpoint is kept beside the SAE"
    );

    // The saved folder is the SAE the run measured.
    let loaded = run(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ntable m = sae_metrics(s, d)",
            saved.display()
        ),
    );
    assert_eq!(loaded[0].rows, first[1].rows);

    // Again: it resumes from the final checkpoint and reports the same numbers; and
    // from scratch the same seed gives the same SAE.
    assert_eq!(first, run(&model_dir, &body), "resumed");
    std::fs::remove_dir_all(saves.path().join("s.checkpoints")).unwrap();
    assert_eq!(
        first,
        run(&model_dir, &body),
        "same seed, same SAE, same numbers"
    );
}

#[test]
fn per_token_sae_columns_match_a_direct_computation() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae_dir = fixture("saes/standard");
    let tables = run(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ntable t = per_token(d, head = L1H2, sae = s, top_k = 3)",
            sae_dir.display()
        ),
    );
    let t = &tables[0];

    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let sae = std::sync::Arc::new(qexp::sae::load(&sae_dir).unwrap());
    let sequences: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| model.to_tokens(p, false).unwrap())
        .collect();
    let batch = model.batch(&sequences).unwrap();
    let (q_hook, pattern_hook) = ("blocks.1.attn.hook_q", "blocks.1.attn.hook_pattern");
    let clean = model.forward(&batch, true, &[q_hook]).unwrap();
    let spliced = spliced(
        &mut model,
        &sae,
        vec![],
        &batch,
        &["logits", pattern_hook],
        "spliced",
    );

    // Every real token's query, for the dataset mean explained variance is measured against.
    let mut queries = Vec::new();
    for (b, tokens) in sequences.iter().enumerate() {
        for pos in 0..tokens.len() {
            queries.push(clean.hooks[q_hook].slice(s![b, pos, 2, ..]).to_owned());
        }
    }
    let mean = queries
        .iter()
        .fold(ndarray::Array1::<f32>::zeros(16), |m, q| m + q)
        / queries.len() as f32;

    let mut row = 0;
    for (b, tokens) in sequences.iter().enumerate() {
        for pos in 0..tokens.len() - 1 {
            let x = clean.hooks[q_hook].slice(s![b, pos, 2, ..]).to_owned();
            let acts = sae.encode(x.view().insert_axis(ndarray::Axis(0)));
            let recon = sae.decode(acts.view()).row(0).to_owned();
            let squared_error: f64 = (&recon - &x).iter().map(|e| f64::from(e * e)).sum();
            let variance: f64 = (&x - &mean).iter().map(|e| f64::from(e * e)).sum();
            let close = |column: &str, expected: f64| {
                let got = number(t, row, column);
                assert!(
                    (got - expected).abs() < 1e-4 * expected.abs().max(1.0),
                    "{column} at {b}/{pos}: {got} vs {expected}"
                );
            };
            let norm =
                |v: &ndarray::Array1<f32>| v.iter().map(|a| f64::from(a * a)).sum::<f64>().sqrt();
            close("q_norm", norm(&x));
            close("rec_q_norm", norm(&recon));
            close("mse_loss", squared_error / 16.0);
            close("explained_variance", 1.0 - squared_error / variance);
            let mut active: Vec<(usize, f32)> = acts
                .row(0)
                .iter()
                .enumerate()
                .filter(|(_, a)| **a > 0.0)
                .map(|(f, a)| (f, *a))
                .collect();
            close("num_active_features", active.len() as f64);
            active.sort_by(|a, b| b.1.total_cmp(&a.1));
            let column = t.column("top_k_features").unwrap();
            let expected: Vec<i64> = active.iter().take(3).map(|(f, _)| *f as i64).collect();
            assert_eq!(t.rows[row][column], Cell::IntegerList(expected));

            let p = log_softmax_row(clean.logits.as_ref().unwrap().slice(s![b, pos, ..]));
            let q = log_softmax_row(spliced.logits.as_ref().unwrap().slice(s![b, pos, ..]));
            close(
                "kl_divergence",
                p.iter().zip(&q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum(),
            );
            let pattern = spliced.hooks[pattern_hook]
                .slice(s![b, 2, pos, ..=pos])
                .to_owned();
            let best = pattern
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .unwrap();
            close("rec_q_max_idx_pos", best.0 as f64);
            close("rec_q_max_idx_tok_value", f64::from(*best.1));
            row += 1;
        }
    }
    assert_eq!(row, t.rows.len());
}

#[test]
fn feature_attributions_sum_to_the_score_the_features_add_to_the_query() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae_dir = fixture("saes/standard");
    let prompt = "the cat sat on the mat";
    let tables = run(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ntable a = feature_attribution(s, L1H2, \"{prompt}\", pos = -1, key_pos = 2)",
            sae_dir.display()
        ),
    );
    let a = &tables[0];
    assert!(!a.rows.is_empty());
    let sum: f64 = (0..a.rows.len())
        .map(|r| number(a, r, "score_contribution"))
        .sum();

    // The same through the graph, rotary and all: the score with the SAE's reconstruction
    // as the query, minus the score with only its decoder bias (every feature removed).
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let sae = std::sync::Arc::new(qexp::sae::load(&sae_dir).unwrap());
    let tokens = model.to_tokens(prompt, false).unwrap();
    let batch = model.batch(std::slice::from_ref(&tokens)).unwrap();
    let mut score = |scale: Vec<(usize, f32)>, key: &str| {
        let scores = "blocks.1.attn.hook_attn_scores";
        let forward = spliced(&mut model, &sae, scale, &batch, &[scores], key);
        f64::from(forward.hooks[scores][[0, 2, tokens.len() - 1, 2]])
    };
    let reconstructed = score(vec![], "reconstructed");
    let bias_only = score((0..32).map(|f| (f, 0.0)).collect(), "bias-only");
    assert!(
        (sum - (reconstructed - bias_only)).abs() < 1e-4,
        "{sum} vs {}",
        reconstructed - bias_only
    );
    assert!(sum.abs() > 1e-3, "a score the features move: {sum}");
    assert_eq!(number(a, 0, "key_pos"), 2.0);
}

#[test]
fn patching_restores_a_clean_value_takes_a_variants_and_transplants_another_prompts() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let (a, b) = ("the cat sat on the mat", "the dog sat on the mat");
    let runtime = runtime();
    let model = HookedModel::load(&runtime, &model_dir).unwrap();
    assert_eq!(
        model.to_tokens(a, false).unwrap().len(),
        model.to_tokens(b, false).unwrap().len(),
        "the prompts must tokenize to the same length"
    );
    let tables = run(
        &model_dir,
        &format!(
            "variant zeroed {{\n zero(blocks.0.attn.hook_z[head = 1])\n}}
variant restored {{\n zero(blocks.0.attn.hook_z)\n patch(blocks.0.hook_resid_post)\n}}
variant head_from_zeroed {{\n patch(blocks.0.attn.hook_z[head = 1], from_variant = zeroed)\n}}
variant transplanted {{\n patch(blocks.0.hook_resid_post, from_prompt = \"{b}\")\n}}
table t = per_token(d, variants = [zeroed, restored, head_from_zeroed])
table pa = test_prompt(\"{a}\", \" the\", variants = [transplanted], top_k = 5)
table pb = test_prompt(\"{b}\", \" the\", top_k = 5)"
        ),
    );
    let t = &tables[0];
    let mut moved = 0.0f64;
    for row in 0..t.rows.len() {
        let loss = number(t, row, "loss");
        assert!((number(t, row, "restored_loss") - loss).abs() < 1e-5);
        assert!(number(t, row, "restored_kl_divergence") < 1e-6);
        assert!(
            (number(t, row, "head_from_zeroed_loss") - number(t, row, "zeroed_loss")).abs() < 1e-5
        );
        moved = moved.max((number(t, row, "zeroed_loss") - loss).abs());
    }
    assert!(moved > 1e-3, "zeroing the head changes some loss: {moved}");

    // Prompt a with b's whole residual stream after layer 0 is prompt b.
    let (pa, pb) = (&tables[1], &tables[2]);
    let variant = pa.column("variant").unwrap();
    let transplanted: Vec<usize> = (0..pa.rows.len())
        .filter(|&r| pa.rows[r][variant] == Cell::Str("transplanted".into()))
        .collect();
    assert_eq!(transplanted.len(), 5);
    for (i, &r) in transplanted.iter().enumerate() {
        assert_eq!(
            pa.rows[r][pa.column("token").unwrap()],
            pb.rows[i][pb.column("token").unwrap()]
        );
        assert!((number(pa, r, "logit") - number(pb, i, "logit")).abs() < 1e-4);
    }
}

#[test]
fn feature_stats_match_a_direct_computation() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae_dir = fixture("saes/standard");
    let tables = run(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ntable f = feature_stats(s, d)",
            sae_dir.display()
        ),
    );
    let f = &tables[0];
    assert_eq!(f.rows.len(), 32);

    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let sae = qexp::sae::load(&sae_dir).unwrap();
    let mut acts = Vec::new();
    let mut where_ = Vec::new();
    for prompt in PROMPTS {
        let tokens = model.to_tokens(prompt, false).unwrap();
        let batch = model.batch(std::slice::from_ref(&tokens)).unwrap();
        let q = model
            .forward(&batch, false, &["blocks.1.attn.hook_q"])
            .unwrap()
            .hooks
            .remove("blocks.1.attn.hook_q")
            .unwrap();
        for pos in 0..tokens.len() {
            let x = q
                .slice(s![0, pos, 2, ..])
                .to_owned()
                .insert_axis(ndarray::Axis(0));
            acts.push(sae.encode(x.view()).row(0).to_owned());
            where_.push(model.to_str_tokens(&tokens[pos..=pos]).unwrap().remove(0));
        }
    }
    let mut fired_somewhere = 0;
    for feature in 0..32 {
        let column: Vec<f32> = acts.iter().map(|a| a[feature]).collect();
        let firing: Vec<f32> = column.iter().copied().filter(|&a| a > 0.0).collect();
        let density = firing.len() as f64 / column.len() as f64;
        assert!((number(f, feature, "density") - density).abs() < 1e-12);
        if firing.is_empty() {
            assert_eq!(number(f, feature, "max_activation"), 0.0);
            continue;
        }
        fired_somewhere += 1;
        let (argmax, max) = column
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        assert!((number(f, feature, "max_activation") - f64::from(*max)).abs() < 1e-5);
        let mean = firing.iter().map(|&a| f64::from(a)).sum::<f64>() / firing.len() as f64;
        assert!((number(f, feature, "mean_activation") - mean).abs() < 1e-5);
        assert!(number(f, feature, "q50") <= number(f, feature, "q90"));
        assert!(number(f, feature, "q90") <= number(f, feature, "max_activation") + 1e-12);
        assert_eq!(
            f.rows[feature][f.column("top_token").unwrap()],
            Cell::Str(where_[argmax].clone())
        );
    }
    assert!(fired_somewhere > 5, "a test that sees features fire");
}

#[test]
fn dashboards_agree_with_feature_stats_and_keep_the_strongest_examples() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae_dir = fixture("saes/standard");
    let sections = run_sections(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ntable f = feature_stats(s, d)\ndashboards pages = feature_dashboards(s, all, d)",
            sae_dir.display()
        ),
    );
    let (mut stats, mut pages) = (None, None);
    for section in sections {
        match section {
            Section::Table(t) => stats = Some(t),
            Section::Dashboards(d) => pages = Some(d),
            _ => {}
        }
    }
    let (stats, pages) = (stats.unwrap(), pages.unwrap());
    assert_eq!(pages.features.len(), 32);
    for (f, page) in pages.features.iter().enumerate() {
        assert_eq!(page.feature, f);
        assert!((page.density - number(&stats, f, "density")).abs() < 1e-12);
        assert!((page.max_activation - number(&stats, f, "max_activation")).abs() < 1e-6);
        if let Some(best) = page.top.first() {
            assert!((f64::from(best.activation) - page.max_activation).abs() < 1e-6);
            let at = best.pos - best.pos.saturating_sub(qexp::execute::WINDOW);
            assert_eq!(
                best.window[at], best.activation,
                "the window is centred on it"
            );
            assert!(
                best.attends_to.is_some(),
                "a query SAE says where the feature looks"
            );
        }
        assert!(
            page.top
                .windows(2)
                .all(|w| w[0].activation >= w[1].activation)
        );
    }
}

#[test]
fn dashboards_of_a_residual_sae_list_the_tokens_its_directions_promote() {
    let (dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let model = HookedModel::load(&runtime, &model_dir).unwrap();
    let config = &model.manifest.config;
    let d_model = config.d_model;
    let unembed = if config.tied_embeddings {
        model.weight("embed.W_E").unwrap().reversed_axes()
    } else {
        model.weight("unembed.W_U").unwrap()
    }
    .into_dimensionality::<ndarray::Ix2>()
    .unwrap();
    // An SAE on the residual stream whose feature f reads and writes basis direction f.
    let d_sae = 3;
    let eye =
        ndarray::Array2::from_shape_fn((d_sae, d_model), |(f, i)| f32::from(u8::from(f == i)));
    let sae = qexp::sae::Sae {
        d_in: d_model,
        d_sae,
        architecture: qexp::sae::Architecture::Standard,
        apply_b_dec_to_input: false,
        normalization: qexp::sae::Normalization::None,
        hook: Some(qexp::plan::HookRef {
            name: "blocks.0.hook_resid_post".into(),
            head: None,
            head_from: None,
            pos: None,
        }),
        w_enc: eye.t().to_owned(),
        b_enc: ndarray::Array1::zeros(d_sae),
        w_dec: eye,
        b_dec: ndarray::Array1::zeros(d_model),
        threshold: None,
    };
    let sae_dir = dir.path().join("resid_sae");
    qexp::sae::save(&sae, &sae_dir).unwrap();
    let pages = run_dashboards(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ndashboards pages = feature_dashboards(s, all, d)",
            sae_dir.display()
        ),
    );
    for page in &pages.features {
        let effects = page
            .logit_effects
            .as_ref()
            .expect("a residual SAE has logit effects");
        let row = unembed.row(page.feature);
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        let worst = (0..row.len())
            .min_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        let text = |t: usize| model.to_str_tokens(&[t as u32]).unwrap().remove(0);
        assert_eq!(effects.promoted[0], (text(best), f64::from(row[best])));
        assert_eq!(effects.suppressed[0], (text(worst), f64::from(row[worst])));
        assert!(
            page.top.iter().all(|e| e.attends_to.is_none()),
            "no attention for a residual SAE"
        );
        let counted: usize = effects.histogram.iter().map(|bin| bin.2).sum();
        assert_eq!(counted, row.len(), "every token is in the logit histogram");

        // Feature f writes dimension f alone, and its activation is that dimension's
        // positive part: the dimension it aligns with and (when it fires) correlates
        // with most.
        let alignment: Vec<(usize, f64, f64)> = page
            .neuron_alignment
            .iter()
            .take(1)
            .map(|n| (n.index, n.value, n.share_of_l1))
            .collect();
        assert_eq!(alignment, [(page.feature, 1.0, 1.0)]);
        if page.density > 0.0 {
            let best = &page.correlated_neurons[0];
            assert_eq!((best.index, best.cosine), (page.feature, 1.0));
            assert!(best.pearson > 0.0 && best.pearson <= 1.0 + 1e-9);
            let features = page.correlated_features.as_ref().unwrap();
            assert!(
                features
                    .iter()
                    .all(|c| c.index != page.feature && c.cosine == 0.0)
            );
        }

        // The hover shows the model's most likely next tokens at each example token.
        for example in &page.top {
            let tokens = model.to_tokens(PROMPTS[example.prompt], false).unwrap();
            let mut m = HookedModel::load(&runtime, &model_dir).unwrap();
            let logits = m
                .forward(&m.batch(std::slice::from_ref(&tokens)).unwrap(), true, &[])
                .unwrap()
                .logits
                .unwrap();
            let row = logits.slice(s![0, example.pos, ..]);
            let argmax = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap();
            let shown = &pages.predictions[&(example.prompt, example.pos)];
            assert_eq!(shown.len(), 3);
            assert_eq!(shown[0].0, text(argmax));
            assert!(shown.windows(2).all(|w| w[0].1 >= w[1].1));
        }
    }
}

#[test]
fn cooccurrence_counts_rows_listing_either_or_both_features() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae_dir = fixture("saes/standard");
    let tables = run(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ntable t = per_token(d, sae = s, top_k = 4)\ntable first = t | top(1) | explode([top_k_features]) | top(3)\nlet F = values(first, top_k_features)\ntable pairs = feature_cooccurrence(t, top_k_features, F)",
            sae_dir.display()
        ),
    );
    let (t, pairs) = (&tables[0], &tables[2]);
    let lists: Vec<Vec<i64>> = t
        .rows
        .iter()
        .map(|r| match &r[t.column("top_k_features").unwrap()] {
            Cell::IntegerList(l) => l.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(pairs.rows.len(), 3, "three features make three pairs");
    for r in 0..3 {
        let (a, b) = (
            number(pairs, r, "feature_a") as i64,
            number(pairs, r, "feature_b") as i64,
        );
        let count = |f: &dyn Fn(&Vec<i64>) -> bool| lists.iter().filter(|l| f(l)).count() as f64;
        assert_eq!(number(pairs, r, "rows_with_a"), count(&|l| l.contains(&a)));
        assert_eq!(
            number(pairs, r, "both"),
            count(&|l| l.contains(&a) && l.contains(&b))
        );
        assert_eq!(
            number(pairs, r, "b_only"),
            count(&|l| l.contains(&b) && !l.contains(&a))
        );
        assert!(
            number(pairs, r, "both") >= 1.0,
            "the first row lists all three"
        );
    }
}

#[test]
fn attribution_over_positions_sums_the_attribution_at_each() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae_dir = fixture("saes/standard");
    let tables = run(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ntable t = per_token(d, head = L1H2) | top(3)\ntable total = feature_attribution_at(s, L1H2, d, t)\nlet P = row(d, 0)\ntable a0 = feature_attribution(s, L1H2, P, pos = 0)\ntable a1 = feature_attribution(s, L1H2, P, pos = 1)\ntable a2 = feature_attribution(s, L1H2, P, pos = 2)",
            sae_dir.display()
        ),
    );
    let total = &tables[1];
    let mut expected: std::collections::BTreeMap<i64, (f64, f64)> = Default::default();
    for single in &tables[2..5] {
        for r in 0..single.rows.len() {
            let entry = expected
                .entry(number(single, r, "feature") as i64)
                .or_default();
            entry.0 += 1.0;
            entry.1 += number(single, r, "score_contribution");
        }
    }
    assert_eq!(total.rows.len(), expected.len());
    for r in 0..total.rows.len() {
        let (n, share) = expected[&(number(total, r, "feature") as i64)];
        assert_eq!(number(total, r, "positions"), n);
        assert!((number(total, r, "score_contribution") - share).abs() < 1e-9);
    }
}

#[test]
fn feature_lists_may_combine_let_lists() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae_dir = fixture("saes/standard");
    let pages = run_dashboards(
        &model_dir,
        &format!(
            "sae s = load(\"{}\")\ntable f = feature_stats(s, d) | sort(feature, asc)\ntable two = f | top(2)\ntable three = f | sort(feature, desc) | top(3)\nlet A = values(two, feature)\nlet B = values(three, feature)\ndashboards pages = feature_dashboards(s, [A, B, 0], d)",
            sae_dir.display()
        ),
    );
    let features: Vec<usize> = pages.features.iter().map(|f| f.feature).collect();
    assert_eq!(features, [0, 1, 31, 30, 29], "in order, without repeats");
}

#[test]
fn a_layer_filter_after_composition_scores_gives_the_rows_of_the_full_table() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let tables = run(
        &model_dir,
        "table all = composition_scores(\"Q\")\n\
         table pair = composition_scores(\"Q\") | filter(layer1 == 0 and layer2 == 1)\n\
         table none = composition_scores(\"Q\") | filter(layer2 == 0)\n\
         table mixed = composition_scores(\"Q\") | filter(score >= 0 and layer1 == 0)",
    );
    let rows = |name: &str| &tables.iter().find(|t| t.name == name).unwrap().rows;
    assert!(!rows("all").is_empty());
    // The tiny model has two layers: its only pair is (0, 1).
    assert_eq!(rows("pair"), rows("all"));
    assert!(rows("none").is_empty());
    assert_eq!(rows("mixed"), rows("all"));
}

#[test]
fn training_harvests_only_the_tokens_it_reads_once_per_hook_and_dataset() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    // Eighteen different prompts of 20 tokens each (the tiny vocabulary is mostly bytes),
    // in batches of two: 40 tokens a batch, 360 in the dataset. (Different, so that no
    // batch is a clean pass kept from another.)
    let prompts = ('b'..='s')
        .map(|c| format!("\"the cat sat on the mat {c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // Each SAE, and a step that reads it on the one-token prompt "a".
    let train = |name: &str, tokens: usize| {
        format!(
            "sae {name} = train(hook = blocks.1.hook_resid_pre, dataset = d, d_sae = 8, tokens = {tokens}, batch_size = 4)\ntable {name}_here = feature_activations({name}, \"a\")\n"
        )
    };
    let run = |saes: &str| {
        let source = format!(
            "experiment m\nmodel \"{}\" (batch_size = 2)\ndataset d = prompts([{prompts}])\n{saes}",
            model_dir.display(),
        );
        let plan = common::checked(&source, &model_dir, Default::default());
        execute::execute(&plan, &runtime(), &common::anywhere()).unwrap()
    };
    let activations = |results: &qexp::execute::Results| -> Vec<f64> {
        results
            .sections
            .iter()
            .filter_map(|s| match s {
                Section::Table(t) if t.name.ends_with("_training") => {
                    Some(number(t, 0, "activations"))
                }
                _ => None,
            })
            .collect()
    };

    // 30 tokens: one batch, not the dataset's nine.
    let one = run(&train("a", 30));
    assert_eq!(activations(&one), [30.0]);
    assert_eq!(one.tokens_run, 40 + 1, "one batch, then the prompt \"a\"");

    // Two SAEs on the same hook and dataset share one harvest of the larger's tokens,
    // and each trains on its own first tokens.
    let two = run(&format!("{}{}", train("a", 30), train("b", 50)));
    assert_eq!(activations(&two), [30.0, 50.0]);
    assert_eq!(
        two.tokens_run,
        2 * 40 + 2,
        "two batches once, then \"a\" for each"
    );
}

#[test]
fn attention_from_every_position_holds_each_query_rows_pattern() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let prompt = "the cat sat on";
    let mut body = format!("table every = attention(\"{prompt}\", L1H2, pos = all)\n");
    for query in 0..4 {
        body.push_str(&format!(
            "table at_{query} = attention(\"{prompt}\", L1H2, pos = {query})\n"
        ));
    }
    let tables = run(&model_dir, &body);
    let every = &tables[0];
    assert_eq!(
        &every.columns[..3],
        ["query_pos", "query_str_tokens", "pos"]
    );
    let n = tables.len() - 1;
    assert!(n >= 4, "the prompt is at least 4 tokens");
    let mut row = 0;
    for (query, single) in tables[1..].iter().enumerate() {
        assert_eq!(single.rows.len(), query + 1, "keys 0..=query");
        let mut total = 0.0;
        for (key, single_row) in single.rows.iter().enumerate() {
            let cells = &every.rows[row];
            assert_eq!(cells[0], Cell::Integer(query as i64));
            assert_eq!(cells[2], Cell::Integer(key as i64));
            assert_eq!(&cells[3..], &single_row[1..], "query {query}, key {key}");
            total += number(every, row, "attn");
            row += 1;
        }
        assert!((total - 1.0).abs() < 1e-5, "query {query}'s row sums to 1");
    }
}

#[test]
fn aggregate_summarises_a_per_token_table_per_prompt() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let tables = run(
        &model_dir,
        "variant ablated {\n zero(blocks.1.attn.hook_z[head = 2])\n}\ntable tokens = per_token(d, variants = [ablated]) | derive(diff = ablated_loss - loss)\ntable per_prompt = tokens | aggregate(by = [batch], n = count(), mean_diff = mean(diff), worst = max(diff), hurt = sum(diff > 0))",
    );
    let (tokens, per_prompt) = (&tables[0], &tables[1]);
    assert_eq!(per_prompt.rows.len(), PROMPTS.len());
    for (g, row) in per_prompt.rows.iter().enumerate() {
        assert_eq!(row[0], Cell::Integer(g as i64));
        let diffs: Vec<f64> = (0..tokens.rows.len())
            .filter(|&r| tokens.rows[r][tokens.column("batch").unwrap()] == Cell::Integer(g as i64))
            .map(|r| number(tokens, r, "diff"))
            .collect();
        assert_eq!(row[1], Cell::Integer(diffs.len() as i64));
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        assert!((number(per_prompt, g, "mean_diff") - mean).abs() < 1e-12);
        let worst = diffs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(number(per_prompt, g, "worst"), worst);
        let hurt = diffs.iter().filter(|d| **d > 0.0).count() as f64;
        assert_eq!(number(per_prompt, g, "hurt"), hurt);
    }
}

#[test]
fn pattern_scores_on_repeated_random_tokens_match_the_patterns_read_directly() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let length = 7;
    let body = format!(
        "dataset rep = repeated_tokens({length}, count = 3, seed = 5)\ntable scores = pattern_scores(rep)\ntable tokens = per_token(rep)"
    );
    let tables = run(&model_dir, &body);
    let (scores, tokens) = (&tables[0], &tables[1]);

    // The prompts: the generator's token ids after BOS, as per_token's tokens show.
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let config = model.manifest.config.clone();
    let special = &model.manifest.special_tokens;
    let specials: Vec<u32> = [special.bos, special.eos, Some(special.pad)]
        .into_iter()
        .flatten()
        .collect();
    let bos: Vec<u32> = special
        .bos
        .into_iter()
        .filter(|_| special.prepend_bos)
        .collect();
    let generated = qexp::builtins::datasets::DatasetKind::RepeatedTokens {
        length,
        count: 3,
        repeats: 2,
        seed: 5,
    }
    .generated(config.d_vocab, &specials)
    .unwrap();
    let prompts: Vec<Vec<u32>> = generated
        .iter()
        .map(|ids| bos.iter().chain(ids).copied().collect())
        .collect();
    let mut row = 0;
    for p in &prompts {
        assert_eq!(p.len(), bos.len() + 2 * length, "{p:?}");
        assert_eq!(p[bos.len()..bos.len() + length], p[bos.len() + length..]);
        let strs = model.to_str_tokens(p).unwrap();
        // per_token has a row for every position but the last (it predicts the next).
        for s in &strs[..strs.len() - 1] {
            assert_eq!(tokens.rows[row][0], Cell::Str(s.clone()));
            row += 1;
        }
    }
    assert_eq!(row, tokens.rows.len());

    // Each score, from the patterns read directly, by its definition on token ids.
    let hooks: Vec<String> = (0..config.n_layers)
        .map(|l| format!("blocks.{l}.attn.hook_pattern"))
        .collect();
    let hook_refs: Vec<&str> = hooks.iter().map(String::as_str).collect();
    let mut expected = vec![[(0.0, 0usize); 3]; config.n_layers * config.n_heads];
    for p in &prompts {
        let batch = model.batch(std::slice::from_ref(p)).unwrap();
        let forward = model.forward(&batch, false, &hook_refs).unwrap();
        for (layer, hook) in hooks.iter().enumerate() {
            for head in 0..config.n_heads {
                let a = |q: usize, k: usize| f64::from(forward.hooks[hook][[0, head, q, k]]);
                let e = &mut expected[layer * config.n_heads + head];
                for q in 0..p.len() {
                    let earlier: Vec<usize> = (0..q).filter(|&k| p[k] == p[q]).collect();
                    let following: Vec<usize> = earlier
                        .iter()
                        .filter(|&&k| k + 1 < q)
                        .map(|k| k + 1)
                        .collect();
                    if !following.is_empty() {
                        e[0].0 += following.iter().map(|&k| a(q, k)).sum::<f64>();
                        e[0].1 += 1;
                    }
                    if q > 0 {
                        e[1].0 += a(q, q - 1);
                        e[1].1 += 1;
                    }
                    if !earlier.is_empty() {
                        e[2].0 += earlier.iter().map(|&k| a(q, k)).sum::<f64>();
                        e[2].1 += 1;
                    }
                }
            }
        }
    }
    assert_eq!(scores.rows.len(), config.n_layers * config.n_heads);
    for (r, e) in expected.iter().enumerate() {
        for (c, column) in [
            "induction_score",
            "previous_token_score",
            "duplicate_token_score",
        ]
        .iter()
        .enumerate()
        {
            let want = e[c].0 / e[c].1 as f64;
            let got = number(scores, r, column);
            assert!(
                (got - want).abs() < 1e-6,
                "row {r} {column}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn a_test_prompt_answer_of_several_tokens_is_refused_with_its_pieces() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let source = format!(
        "experiment m\nmodel \"{}\"\ntable next = test_prompt(\"the cat\", \" sat on the mat\")\n",
        model_dir.display()
    );
    let plan = common::checked(&source, &model_dir, Default::default());
    let error = execute::execute(&plan, &runtime(), &common::anywhere()).unwrap_err();
    let message = format!("{error}");
    assert!(
        message.contains("the answer \" sat on the mat\" is "),
        "{message}"
    );
    assert!(
        message.contains("tokens (\" \", \"s\""),
        "the pieces are named: {message}"
    );
    assert!(
        message.contains("an answer is scored as one next token, so give one: \" \""),
        "{message}"
    );
}

#[test]
fn the_logit_lens_after_the_last_block_is_the_models_own_logits() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let prompt = "the cat sat on";
    let tables = run(
        &model_dir,
        &format!("table lens = logit_lens(\"{prompt}\", \" the\", versus = \"t\")"),
    );
    let lens = &tables[0];
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let n_layers = model.manifest.config.n_layers;
    assert_eq!(
        lens.rows.len(),
        n_layers + 1,
        "the embeddings, then each block"
    );
    assert_eq!(lens.rows[0][1], Cell::Str("blocks.0.hook_resid_pre".into()));
    assert_eq!(
        lens.rows[n_layers][1],
        Cell::Str(format!("blocks.{}.hook_resid_post", n_layers - 1))
    );

    let bos = model.manifest.special_tokens.prepend_bos;
    let tokens = model.to_tokens(prompt, bos).unwrap();
    let (answer, versus) = (
        model.to_tokens(" the", false).unwrap()[0] as usize,
        model.to_tokens("t", false).unwrap()[0] as usize,
    );
    let batch = model.batch(std::slice::from_ref(&tokens)).unwrap();
    let logits = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
    let last = logits.slice(s![0, tokens.len() - 1, ..]);
    let log_probs = log_softmax_row(last);
    let rank = last.iter().filter(|&&l| l > last[answer]).count();
    let row = n_layers;
    assert!(
        (number(lens, row, "answer_logit") - f64::from(last[answer])).abs() < 1e-4,
        "{} vs {}",
        number(lens, row, "answer_logit"),
        last[answer]
    );
    assert!((number(lens, row, "answer_prob") - log_probs[answer].exp()).abs() < 1e-6);
    assert_eq!(lens.rows[row][4], Cell::Integer(rank as i64));
    let diff = f64::from(last[answer] - last[versus]);
    assert!((number(lens, row, "logit_diff") - diff).abs() < 1e-4);
    // Earlier rows read less of the stream: their answers differ from the model's.
    assert!((number(lens, 0, "answer_logit") - f64::from(last[answer])).abs() > 1e-3);
}

#[test]
fn prepend_bos_in_the_model_statement_decides_whether_prompts_start_with_bos() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let model = HookedModel::load(&runtime, &model_dir).unwrap();
    let bos = model
        .manifest
        .special_tokens
        .bos
        .expect("the tiny model has BOS");
    let bos_text = model.to_str_tokens(&[bos]).unwrap().remove(0);
    let tokens_with = |prepend: bool| {
        let source = format!(
            "experiment m\nmodel \"{}\" (prepend_bos = {prepend})\ndataset d = prompts([\"the cat sat\"])\ntable t = per_token(d)\n",
            model_dir.display()
        );
        let plan = common::checked(&source, &model_dir, Default::default());
        let results = execute::execute(&plan, &runtime, &common::anywhere()).unwrap();
        match &results.sections[0] {
            Section::Table(t) => t.rows.iter().map(|r| r[0].text()).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    let (with, without) = (tokens_with(true), tokens_with(false));
    assert_eq!(with[0], bos_text, "{with:?}");
    assert_ne!(without[0], bos_text, "{without:?}");
    assert_eq!(with.len(), without.len() + 1);
    assert_eq!(with[1..], without[..]);
}

#[test]
fn a_head_ablation_sweep_collects_one_row_per_head_each_matching_an_edited_model() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let tables = run(
        &model_dir,
        "for layer in range(model.n_layers) {
    for head in range(0, model.n_heads) {
        variant zeroed {
            zero(blocks.layer.attn.hook_z[head = head])
        }
        table loss = per_token(d, variants = [zeroed])
            | aggregate(clean_loss = mean(loss), ablated_loss = mean(zeroed_loss), n = count())
        table next = test_prompt(\"the cat\", \" the\", variants = [zeroed], top_k = 1)
    }
}
table sweep = collect(loss) | derive(loss_change = ablated_loss - clean_loss)
table answers = collect(next) | filter(variant == \"zeroed\")",
    );
    let sweep = tables.iter().find(|t| t.name == "sweep").unwrap();
    assert_eq!(
        sweep.columns,
        [
            "layer",
            "head",
            "clean_loss",
            "ablated_loss",
            "n",
            "loss_change"
        ]
    );
    assert_eq!(sweep.rows.len(), 8, "one row per head of two layers");
    // Each passes' variant is named as written, so every pass's table has its columns.
    let answers = tables.iter().find(|t| t.name == "answers").unwrap();
    assert_eq!(answers.rows.len(), 8);
    assert_eq!(answers.columns[..2], ["layer", "head"]);

    // Each row against the model exported with that head's rows of W_O zeroed.
    let runtime = runtime();
    let model = HookedModel::load(&runtime, &model_dir).unwrap();
    let sequences: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| model.to_tokens(p, false).unwrap())
        .collect();
    let batch = model.batch(&sequences).unwrap();
    let mean_loss = |model: &mut HookedModel| {
        let logits = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
        let losses: Vec<f32> = token_losses(&logits, &batch).concat();
        losses.iter().map(|&l| f64::from(l)).sum::<f64>() / losses.len() as f64
    };
    let mut clean_model = HookedModel::load(&runtime, &model_dir).unwrap();
    let clean = mean_loss(&mut clean_model);
    let mut changes = Vec::new();
    for (row, (layer, head)) in (0..2).flat_map(|l| (0..4).map(move |h| (l, h))).enumerate() {
        assert_eq!(number(sweep, row, "layer"), layer as f64);
        assert_eq!(number(sweep, row, "head"), head as f64);
        let mut checkpoint = Checkpoint::load(&fixture("tiny_llama/model.gguf")).unwrap();
        checkpoint
            .transformer
            .weights
            .get_mut(&format!("blocks.{layer}.attn.W_O"))
            .unwrap()
            .slice_mut(s![head * 16..(head + 1) * 16, ..])
            .fill(0.0);
        let edited_dir = tempfile::tempdir().unwrap();
        qexp::export::export_checkpoint(&checkpoint, &edited_dir.path().join("m")).unwrap();
        let mut edited = HookedModel::load(&runtime, &edited_dir.path().join("m")).unwrap();
        let ablated = mean_loss(&mut edited);
        assert!((number(sweep, row, "clean_loss") - clean).abs() < 1e-5);
        assert!(
            (number(sweep, row, "ablated_loss") - ablated).abs() < 1e-4,
            "L{layer}H{head}: {} vs {ablated}",
            number(sweep, row, "ablated_loss")
        );
        changes.push(number(sweep, row, "loss_change"));
    }
    assert!(
        changes.iter().any(|c| c.abs() > 1e-3),
        "some head's ablation changes the loss"
    );
}

/// The edits of a head sweep, one variant per kind, written for `layer` and `head`
/// (loop variables or numbers).
fn sweep_variants(layer: &str, head: &str) -> String {
    format!(
        "variant zeroed {{
    zero(blocks.{layer}.attn.hook_z[head = {head}])
}}
variant averaged {{
    mean(blocks.{layer}.attn.hook_z[head = {head}], dataset = d)
}}
variant pushed {{
    add(blocks.{layer}.hook_resid_pre, TOWARDS_CAT, scale = {head})
}}"
    )
}

const TOWARDS_CAT: &str = "let TOWARDS_CAT = activation_difference(\"the cat\", \"a dog\", hook = blocks.0.hook_resid_post)";
const ANSWER_STEP: &str = "table answer = logit_diff(\"the cat sat on the\", \" the\", versus = \" a\", variants = [zeroed, averaged, pushed])";

#[test]
fn a_sweep_over_one_prompt_runs_its_variants_as_rows_each_with_its_own_numbers() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let source = |body: &str| {
        format!(
            "experiment m\nmodel \"{}\"\ndataset d = prompts([\"{}\", \"{}\"])\n{TOWARDS_CAT}\n{body}\n",
            model_dir.display(),
            PROMPTS[0],
            PROMPTS[1]
        )
    };
    let run_source = |source: String| {
        let plan = common::checked(&source, &model_dir, Default::default());
        execute::execute(&plan, &runtime(), &common::anywhere()).unwrap()
    };
    let swept = run_source(source(&format!(
        "for layer in range(model.n_layers) {{
    for head in range(model.n_heads) {{
{}
{ANSWER_STEP}
        table top = test_prompt(\"a dog\", \" the\", variants = [zeroed], top_k = 3)
    }}
}}
table answers = collect(answer)
table tops = collect(top)",
        sweep_variants("layer", "head")
    )));
    // Each layer's heads share a graph per kind of edit: after the first head's pass,
    // the other three heads' ran as its rows, for both measurements.
    assert_eq!(swept.variant_passes_run_ahead, 2 * 3 * 3 + 2 * 3);
    let answers = &table_named(&swept, "answers");
    let tops = &table_named(&swept, "tops");
    assert_eq!(
        answers.rows.len(),
        2 * 4 * 4,
        "clean and three variants per head"
    );
    assert_eq!(tops.rows.len(), 2 * 4 * 2 * 3);

    // Each head's numbers against its variants run alone, one pass each.
    let text = |table: &Table, row: usize, column: &str| match &table.rows[row]
        [table.column(column).unwrap()]
    {
        Cell::Str(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    for (index, (layer, head)) in (0..2).flat_map(|l| (0..4).map(move |h| (l, h))).enumerate() {
        let alone = run_source(source(&format!(
            "{}\n{ANSWER_STEP}\ntable top = test_prompt(\"a dog\", \" the\", variants = [zeroed], top_k = 3)",
            sweep_variants(&layer.to_string(), &head.to_string())
        )));
        assert_eq!(alone.variant_passes_run_ahead, 0);
        let answer = &table_named(&alone, "answer");
        for row in 0..4 {
            let swept_row = index * 4 + row;
            assert_eq!(number(answers, swept_row, "layer"), layer as f64);
            assert_eq!(number(answers, swept_row, "head"), head as f64);
            assert_eq!(
                text(answers, swept_row, "variant"),
                text(answer, row, "variant")
            );
            for column in ["answer_logit", "answer_prob", "logit_diff"] {
                let (got, want) = (
                    number(answers, swept_row, column),
                    number(answer, row, column),
                );
                assert!(
                    (got - want).abs() < 1e-5,
                    "L{layer}H{head} {} {column}: {got} swept, {want} alone",
                    text(answer, row, "variant")
                );
            }
        }
        let top = &table_named(&alone, "top");
        for row in 0..6 {
            let swept_row = index * 6 + row;
            assert_eq!(text(tops, swept_row, "token"), text(top, row, "token"));
            let (got, want) = (number(tops, swept_row, "logit"), number(top, row, "logit"));
            assert!(
                (got - want).abs() < 1e-5,
                "L{layer}H{head}: {got} vs {want}"
            );
        }
    }
    // Some edit moved the answer, so the rows are not the clean run's copied.
    let diffs: Vec<f64> = (0..answers.rows.len())
        .map(|r| number(answers, r, "logit_diff"))
        .collect();
    assert!(
        diffs.iter().any(|d| (d - diffs[0]).abs() > 1e-3),
        "{diffs:?}"
    );
}

/// The unembedding column of `token` and the final norm's weight and bias (zero for an
/// RMSNorm), read from the model folder.
fn readout_parts(model: &HookedModel, token: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let to_vec = |a: ndarray::ArrayD<f32>| a.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    let column = if model.manifest.config.tied_embeddings {
        to_vec(
            model
                .weight("embed.W_E")
                .unwrap()
                .index_axis(ndarray::Axis(0), token)
                .to_owned(),
        )
    } else {
        to_vec(
            model
                .weight("unembed.W_U")
                .unwrap()
                .index_axis(ndarray::Axis(1), token)
                .to_owned(),
        )
    };
    let ln_w = to_vec(model.weight("ln_final.w").unwrap());
    let ln_b = model
        .weight("ln_final.b")
        .map(to_vec)
        .unwrap_or_else(|_| vec![0.0; ln_w.len()]);
    (column, ln_w, ln_b)
}

#[test]
fn logit_attribution_splits_the_answers_logit_over_embeddings_heads_and_mlps() {
    for (checkpoint, prompt, layernorm) in [
        ("tiny_llama/model.gguf", "the cat sat on the", false),
        ("tiny_gpt_neo", "the cat sat on the", true),
        ("tiny_gpt2", "the cat sat on the", true),
        ("tiny_pythia", "the cat sat on the", true),
        ("tiny_qwen3", "the cat sat on the", false),
    ] {
        let (_dir, model_dir) = export_to_temp(&fixture(checkpoint));
        let tables = run(
            &model_dir,
            &format!(
                "table parts = logit_attribution(\"{prompt}\", \" the\")\ntable diff = logit_attribution(\"{prompt}\", \" the\", versus = \" a\")"
            ),
        );
        let (parts, diff) = (&tables[0], &tables[1]);
        let runtime = runtime();
        let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
        let config = model.manifest.config.clone();
        let (n_layers, n_heads) = (config.n_layers, config.n_heads);
        let the = model.to_tokens(" the", false).unwrap()[0] as usize;
        let a = model.to_tokens(" a", false).unwrap()[0] as usize;
        let prepend_bos = model.manifest.special_tokens.prepend_bos;
        let tokens = model.to_tokens(prompt, prepend_bos).unwrap();
        let last = tokens.len() - 1;
        let batch = model.batch(&[tokens]).unwrap();
        let result_hooks: Vec<String> = (0..n_layers)
            .map(|l| format!("blocks.{l}.attn.hook_result"))
            .collect();
        let wanted: Vec<&str> = result_hooks
            .iter()
            .map(String::as_str)
            .chain(["ln_final.hook_scale"])
            .collect();
        let forward = model.forward(&batch, true, &wanted).unwrap();
        let scale = f64::from(forward.hooks["ln_final.hook_scale"][[0, last, 0]]);
        let logits = forward.logits.unwrap();

        // Each head from the graph's own per-head output (hook_result), centred for a
        // LayerNorm, through the norm's frozen scale and weight, dotted with the
        // answer's unembedding.
        let (w_u, ln_w, ln_b) = readout_parts(&model, the);
        let read = |write: &[f64]| {
            let mean = if layernorm {
                write.iter().sum::<f64>() / write.len() as f64
            } else {
                0.0
            };
            write
                .iter()
                .zip(&ln_w)
                .zip(&w_u)
                .map(|((x, w), u)| (x - mean) / scale * w * u)
                .sum::<f64>()
        };
        // embed, pos_embed where positions are learned, and per layer: each head, the
        // attention output bias where there is one, the MLP.
        let learned_positions = config.positional == qexp::model::Positional::Learned;
        let expected_rows = 1
            + usize::from(learned_positions)
            + n_layers * (n_heads + usize::from(config.bias.attn_out) + 1);
        assert_eq!(parts.rows.len(), expected_rows, "{checkpoint}");
        for (layer, hook) in result_hooks.iter().enumerate() {
            let result = &forward.hooks[hook];
            for head in 0..n_heads {
                let write: Vec<f64> = (0..config.d_model)
                    .map(|d| f64::from(result[[0, last, head, d]]))
                    .collect();
                let row = parts
                    .rows
                    .iter()
                    .position(|r| r[0] == Cell::Str(format!("L{layer}H{head}")))
                    .unwrap();
                assert_eq!(number(parts, row, "layer"), layer as f64);
                assert_eq!(number(parts, row, "head"), head as f64);
                let got = number(parts, row, "attribution");
                assert!(
                    (got - read(&write)).abs() < 1e-4,
                    "{checkpoint} L{layer}H{head}: {got} vs {}",
                    read(&write)
                );
            }
        }

        // Every component together is the logit, less what the final norm's bias adds.
        let sum = |t: &Table| {
            (0..t.rows.len())
                .map(|r| number(t, r, "attribution"))
                .sum::<f64>()
        };
        let bias_part = |u: &[f64]| ln_b.iter().zip(u).map(|(b, u)| b * u).sum::<f64>();
        let logit = f64::from(logits[[0, last, the]]);
        assert!(
            (sum(parts) + bias_part(&w_u) - logit).abs() < 1e-3,
            "{checkpoint}: {} vs {logit}",
            sum(parts)
        );
        let (w_u_a, _, _) = readout_parts(&model, a);
        let logit_diff = logit - f64::from(logits[[0, last, a]]);
        assert!(
            (sum(diff) + bias_part(&w_u) - bias_part(&w_u_a) - logit_diff).abs() < 1e-3,
            "{checkpoint}: {} vs {logit_diff}",
            sum(diff)
        );
    }
}

#[test]
fn activation_patching_rows_equal_one_patched_run_each_and_recover_what_they_must() {
    use qexp::compile::{self, Intervention, Target, interventions};
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let (clean_prompt, corrupted_prompt) = ("the cat sat on the", "the dog sat on the");
    let tables = run(
        &model_dir,
        &format!(
            "table resid = activation_patching(\"{clean_prompt}\", \"{corrupted_prompt}\", \" the\", \" a\")
table final = activation_patching(\"{clean_prompt}\", \"{corrupted_prompt}\", \" the\", \" a\", hook = resid_post, layers = [1])
table heads = activation_patching(\"{clean_prompt}\", \"{corrupted_prompt}\", \" the\", \" a\", hook = z, by = head_pos)"
        ),
    );
    let (resid, last_block, heads) = (&tables[0], &tables[1], &tables[2]);

    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let bos = model.manifest.special_tokens.prepend_bos;
    let clean = model.to_tokens(clean_prompt, bos).unwrap();
    let corrupted = model.to_tokens(corrupted_prompt, bos).unwrap();
    assert_eq!(clean.len(), corrupted.len());
    let (n, last) = (clean.len(), clean.len() - 1);
    let the = model.to_tokens(" the", false).unwrap()[0] as usize;
    let a = model.to_tokens(" a", false).unwrap()[0] as usize;
    let diff = |logits: &ndarray::Array3<f32>| {
        f64::from(logits[[0, last, the]]) - f64::from(logits[[0, last, a]])
    };
    let clean_batch = model.batch(&[&clean]).unwrap();
    let corrupted_batch = model.batch(&[&corrupted]).unwrap();

    // One run per piece, through the pipeline's own single-patch path: the hook's
    // clean value fed in, and a mask choosing the piece (not the batched rows).
    let patched = |model: &mut HookedModel, hook: &str, head: Option<usize>, pos: usize| {
        let source = model.forward(&clean_batch, false, &[hook]).unwrap().hooks[hook].clone();
        let edit = Intervention::Patch(interventions::Patch {
            target: Target {
                hook: hook.into(),
                head,
                pos: Some(pos as i64),
            },
            input: "source".into(),
        });
        let graph = compile::select_outputs(
            &interventions::apply(model.graph(), &[edit], |_| 4).unwrap(),
            &["logits"],
        )
        .unwrap();
        let key = format!("{hook}/{head:?}/{pos}");
        let logits = model
            .forward_graph_fed(&key, &graph, &corrupted_batch, &[("source".into(), source)])
            .unwrap()
            .logits
            .unwrap();
        diff(&logits)
    };
    assert_eq!(resid.rows.len(), 2 * n, "every position of both blocks");
    for row in 0..resid.rows.len() {
        let (layer, pos) = (
            number(resid, row, "layer") as usize,
            number(resid, row, "pos") as usize,
        );
        let expected = patched(
            &mut model,
            &format!("blocks.{layer}.hook_resid_pre"),
            None,
            pos,
        );
        assert!(
            (number(resid, row, "logit_diff") - expected).abs() < 1e-4,
            "resid_pre L{layer} pos {pos}"
        );
        // Where both prompts have the same token, the embedding patched in is the one
        // already there.
        if layer == 0 && clean[pos] == corrupted[pos] {
            assert!(number(resid, row, "recovered").abs() < 1e-6);
        }
    }
    let clean_diff = diff(
        &model
            .forward(&clean_batch, true, &[])
            .unwrap()
            .logits
            .unwrap(),
    );
    let corrupted_diff = diff(
        &model
            .forward(&corrupted_batch, true, &[])
            .unwrap()
            .logits
            .unwrap(),
    );
    assert!((number(resid, 0, "clean_logit_diff") - clean_diff).abs() < 1e-5);
    assert!((number(resid, 0, "corrupted_logit_diff") - corrupted_diff).abs() < 1e-5);
    assert!(
        (clean_diff - corrupted_diff).abs() > 1e-3,
        "the prompts differ in the metric"
    );
    // The last block's output at the last position is all the logits read.
    let at_last = last_block
        .rows
        .iter()
        .position(|r| r[1] == Cell::Integer(last as i64))
        .unwrap();
    assert!((number(last_block, at_last, "recovered") - 1.0).abs() < 1e-4);

    assert_eq!(
        heads.rows.len(),
        2 * 4 * n,
        "every head at every position of both blocks"
    );
    for row in (0..heads.rows.len()).step_by(5) {
        let layer = number(heads, row, "layer") as usize;
        let head = number(heads, row, "head") as usize;
        let pos = number(heads, row, "pos") as usize;
        let expected = patched(
            &mut model,
            &format!("blocks.{layer}.attn.hook_z"),
            Some(head),
            pos,
        );
        assert!(
            (number(heads, row, "logit_diff") - expected).abs() < 1e-4,
            "z L{layer}H{head} pos {pos}"
        );
    }
}

#[test]
fn steering_adds_an_activation_difference_or_a_file_vector_times_its_scale() {
    use qexp::compile::{self, Intervention, Target, interventions};
    let (dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let bos = model.manifest.special_tokens.prepend_bos;
    let d_model = model.manifest.config.d_model;
    let at_last = |model: &mut HookedModel, prompt: &str| {
        let tokens = model.to_tokens(prompt, bos).unwrap();
        let batch = model.batch(&[&tokens]).unwrap();
        let value = model
            .forward(&batch, false, &["blocks.0.hook_resid_post"])
            .unwrap()
            .hooks["blocks.0.hook_resid_post"]
            .clone();
        value.slice(s![0, tokens.len() - 1, ..]).to_owned()
    };
    let difference = at_last(&mut model, "the cat") - at_last(&mut model, "a dog");
    // The same direction from files: .npy, and safetensors with two tensors.
    let npy = dir.path().join("direction.npy");
    ndarray_npy::write_npy(&npy, &difference).unwrap();
    let st = dir.path().join("directions.safetensors");
    let bytes: Vec<u8> = difference.iter().flat_map(|x| x.to_le_bytes()).collect();
    let zeros = vec![0u8; d_model * 4];
    safetensors::serialize_to_file(
        [
            (
                "cat",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![d_model],
                    &bytes,
                )
                .unwrap(),
            ),
            (
                "none",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![d_model],
                    &zeros,
                )
                .unwrap(),
            ),
        ],
        None,
        &st,
    )
    .unwrap();

    let tables = run(
        &model_dir,
        &format!(
            "let CAT = activation_difference(\"the cat\", \"a dog\", hook = blocks.0.hook_resid_post)
let FROM_NPY = vector_file(\"{}\")
let FROM_ST = vector_file(\"{}\", tensor = \"cat\")
variant by_difference {{
    add(blocks.1.hook_resid_pre, CAT, scale = 3)
}}
variant by_npy {{
    add(blocks.1.hook_resid_pre, FROM_NPY, scale = 3)
}}
variant by_safetensors {{
    add(blocks.1.hook_resid_pre, FROM_ST, scale = 3)
}}
table answers = test_prompt(\"the cat sat on the\", \" the\", variants = [by_difference, by_npy, by_safetensors], top_k = 3)",
            npy.display(),
            st.display()
        ),
    );
    let answers = tables.iter().find(|t| t.name == "answers").unwrap();
    // Each vector `let` is shown as a table of its values, by index.
    let cat = tables.iter().find(|t| t.name == "CAT").unwrap();
    assert_eq!(cat.columns, ["index", "value"]);
    assert_eq!(cat.rows.len(), difference.len());
    for (row, &expected) in cat.rows.iter().zip(difference.iter()) {
        let Cell::Number(value) = row[1] else {
            panic!("{row:?}")
        };
        assert!(
            (value - f64::from(expected)).abs() < 1e-5,
            "{value} vs {expected}"
        );
    }

    // The steered logits, computed with the vector added by hand.
    let edit = Intervention::Add(interventions::Add {
        target: Target {
            hook: "blocks.1.hook_resid_pre".into(),
            head: None,
            pos: None,
        },
        vector: difference.mapv(|x| x * 3.0),
    });
    let graph = compile::select_outputs(
        &interventions::apply(model.graph(), &[edit], |_| 4).unwrap(),
        &["logits"],
    )
    .unwrap();
    let tokens = model.to_tokens("the cat sat on the", bos).unwrap();
    let batch = model.batch(&[&tokens]).unwrap();
    let steered = model
        .forward_graph("steered", &graph, &batch)
        .unwrap()
        .logits
        .unwrap();
    let clean = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
    let last = tokens.len() - 1;
    assert!(
        (&steered - &clean).mapv(f32::abs).sum() > 1e-2,
        "the vector changes the logits"
    );
    // Token texts can be byte pieces that do not re-tokenize: compare the top logits.
    let mut top: Vec<f64> = steered
        .slice(s![0, last, ..])
        .iter()
        .map(|&x| f64::from(x))
        .collect();
    top.sort_by(|a, b| b.total_cmp(a));
    let variant = answers.column("variant").unwrap();
    let mut checked = 0;
    for row in 0..answers.rows.len() {
        let Cell::Str(v) = &answers.rows[row][variant] else {
            panic!()
        };
        if v == "clean" {
            continue;
        }
        let rank = number(answers, row, "rank") as usize;
        assert!(
            (number(answers, row, "logit") - top[rank]).abs() < 1e-4,
            "{v}: rank {rank}"
        );
        checked += 1;
    }
    assert_eq!(checked, 9, "three tokens under each of three variants");
}

#[test]
fn a_patching_sweep_of_declared_variants_gives_what_activation_patching_batches() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let (clean, corrupted) = ("the cat sat on the", "the dog sat on the");
    let runtime = runtime();
    let model = HookedModel::load(&runtime, &model_dir).unwrap();
    let bos = model.manifest.special_tokens.prepend_bos;
    let n = model.to_tokens(clean, bos).unwrap().len();
    drop(model);
    let tables = run(
        &model_dir,
        &format!(
            "for layer in range(2) {{
    for pos in range({n}) {{
        variant patched {{
            patch(blocks.layer.hook_resid_pre[pos = pos], from_prompt = \"{clean}\")
        }}
        table metric = logit_diff(\"{corrupted}\", \" the\", versus = \" a\", variants = [patched])
            | filter(variant == \"patched\")
    }}
}}
table sweep = collect(metric)
table batched = activation_patching(\"{clean}\", \"{corrupted}\", \" the\", \" a\")
table corrupted_run = logit_diff(\"{corrupted}\", \" the\", versus = \" a\")"
        ),
    );
    let sweep = tables.iter().find(|t| t.name == "sweep").unwrap();
    let batched = tables.iter().find(|t| t.name == "batched").unwrap();
    let corrupted_run = tables.iter().find(|t| t.name == "corrupted_run").unwrap();
    assert_eq!(sweep.rows.len(), 2 * n);
    assert_eq!(batched.rows.len(), 2 * n);
    for row in 0..sweep.rows.len() {
        assert_eq!(number(sweep, row, "layer"), number(batched, row, "layer"));
        assert_eq!(number(sweep, row, "pos"), number(batched, row, "pos"));
        assert!(
            (number(sweep, row, "logit_diff") - number(batched, row, "logit_diff")).abs() < 1e-4,
            "row {row}"
        );
    }
    // The metric itself: the unpatched corrupted run's difference.
    assert!(
        (number(corrupted_run, 0, "logit_diff") - number(batched, 0, "corrupted_logit_diff")).abs()
            < 1e-5
    );
    assert!(
        (number(corrupted_run, 0, "answer_logit")
            - number(corrupted_run, 0, "versus_logit")
            - number(corrupted_run, 0, "logit_diff"))
        .abs()
            < 1e-9
    );
}

#[test]
fn a_loop_patching_heads_runs_its_passes_as_rows_and_gives_what_activation_patching_does() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let (clean, corrupted) = ("the cat sat on the", "the dog sat on the");
    let source = format!(
        "experiment m\nmodel \"{}\"\nfor layer in range(model.n_layers) {{
    for head in range(model.n_heads) {{
        variant patched {{
            patch(blocks.layer.attn.hook_z[head = head], from_prompt = \"{clean}\")
        }}
        table metric = logit_diff(\"{corrupted}\", \" the\", versus = \" a\", variants = [patched])
            | filter(variant == \"patched\")
    }}
}}
table sweep = collect(metric)
table batched = activation_patching(\"{clean}\", \"{corrupted}\", \" the\", \" a\", hook = z, by = head)
",
        model_dir.display()
    );
    let plan = common::checked(&source, &model_dir, Default::default());
    let results = execute::execute(&plan, &runtime(), &common::anywhere()).unwrap();
    // Two layers of four heads: each layer's first head runs the other three.
    assert_eq!(results.variant_passes_run_ahead, 2 * 3);
    let table = |name: &str| table_named(&results, name);
    let (sweep, batched) = (table("sweep"), table("batched"));
    assert_eq!(sweep.rows.len(), 8);
    assert_eq!(batched.rows.len(), 8);
    for row in 0..8 {
        assert_eq!(number(&sweep, row, "layer"), number(&batched, row, "layer"));
        assert_eq!(number(&sweep, row, "head"), number(&batched, row, "head"));
        let (looped, built_in) = (
            number(&sweep, row, "logit_diff"),
            number(&batched, row, "logit_diff"),
        );
        assert!(
            (looped - built_in).abs() < 1e-5,
            "row {row}: {looped} vs {built_in}"
        );
    }
}

#[test]
fn patches_from_different_prompts_run_as_rows_each_with_its_own_source() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let corrupted = "the dog sat on the";
    let sources = [
        "the cat sat on the",
        "the sat dog on the",
        "the on sat dog the",
    ];
    let run_body = |body: String| {
        let source = format!("experiment m\nmodel \"{}\"\n{body}\n", model_dir.display());
        let plan = common::checked(&source, &model_dir, Default::default());
        execute::execute(&plan, &runtime(), &common::anywhere()).unwrap()
    };
    let step = |from: &str| {
        format!(
            "variant moved {{
    patch(blocks.1.attn.hook_z[head = 1], from_prompt = {from})
}}
table diff = logit_diff(\"{corrupted}\", \" the\", versus = \" a\", variants = [moved])
    | filter(variant == \"moved\")"
        )
    };
    let listed: Vec<String> = sources.iter().map(|s| format!("\"{s}\"")).collect();
    let looped = run_body(format!(
        "for source in [{}] {{\n{}\n}}\ntable diffs = collect(diff)",
        listed.join(", "),
        step("source")
    ));
    assert_eq!(looped.variant_passes_run_ahead, 2);
    let diff_of = |results: &execute::Results, name: &str, row: usize| {
        number(&table_named(results, name), row, "logit_diff")
    };
    let mut alone = Vec::new();
    for (row, source) in listed.iter().enumerate() {
        let one = run_body(step(source));
        alone.push(diff_of(&one, "diff", 0));
        let swept = diff_of(&looped, "diffs", row);
        assert!(
            (swept - alone[row]).abs() < 1e-5,
            "{source}: {swept} vs {}",
            alone[row]
        );
    }
    assert!(
        (alone[0] - alone[1]).abs() > 1e-4 || (alone[1] - alone[2]).abs() > 1e-4,
        "the sources patch different values: {alone:?}"
    );
}

#[test]
fn activations_give_each_tokens_norm_and_projection_in_dataset_order() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let d_model = model.manifest.config.d_model;
    let direction: Vec<f64> = (0..d_model).map(|i| (i as f64 * 0.37).sin()).collect();
    let written: Vec<String> = direction.iter().map(|x| format!("{x:.6}")).collect();
    let tables = run(
        &model_dir,
        &format!(
            "table acts = activations(d, blocks.1.hook_resid_mid, direction = [{}])
table heads = activations(d, blocks.0.attn.hook_z[head = 2, pos = -1])",
            written.join(", ")
        ),
    );
    let (acts, heads) = (&tables[0], &tables[1]);
    let direction: Vec<f64> = written.iter().map(|x| x.parse().unwrap()).collect();
    let length = direction.iter().map(|x| x * x).sum::<f64>().sqrt();
    let bos = model.manifest.special_tokens.prepend_bos;
    let mut row = 0;
    for (b, prompt) in PROMPTS.iter().enumerate() {
        let tokens = model.to_tokens(prompt, bos).unwrap();
        let batch = model.batch(&[&tokens]).unwrap();
        let forward = model
            .forward(
                &batch,
                false,
                &["blocks.1.hook_resid_mid", "blocks.0.attn.hook_z"],
            )
            .unwrap();
        let resid = &forward.hooks["blocks.1.hook_resid_mid"];
        for pos in 0..tokens.len() {
            let x: Vec<f64> = (0..d_model)
                .map(|d| f64::from(resid[[0, pos, d]]))
                .collect();
            assert_eq!(number(acts, row, "batch"), b as f64);
            assert_eq!(number(acts, row, "pos"), pos as f64);
            let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
            let projection = x.iter().zip(&direction).map(|(v, d)| v * d).sum::<f64>() / length;
            assert!((number(acts, row, "norm") - norm).abs() < 1e-4);
            assert!((number(acts, row, "projection") - projection).abs() < 1e-4);
            row += 1;
        }
        let z = &forward.hooks["blocks.0.attn.hook_z"];
        let last = tokens.len() - 1;
        let d_head = z.shape()[3];
        let norm = (0..d_head)
            .map(|i| f64::from(z[[0, last, 2, i]]).powi(2))
            .sum::<f64>()
            .sqrt();
        assert_eq!(number(heads, b, "pos"), last as f64);
        assert!((number(heads, b, "norm") - norm).abs() < 1e-5);
    }
    assert_eq!(row, acts.rows.len());
    assert_eq!(
        heads.rows.len(),
        PROMPTS.len(),
        "one row per prompt at pos = -1"
    );
}

#[test]
fn logit_attribution_reads_gemma2_heads_through_their_post_norm_and_sums_to_the_uncapped_logit() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_gemma2"));
    let prompt = "the cat sat on the";
    let tables = run(
        &model_dir,
        &format!("table parts = logit_attribution(\"{prompt}\", \" the\")"),
    );
    let parts = &tables[0];
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let the = model.to_tokens(" the", false).unwrap()[0] as usize;
    let tokens = model.to_tokens(prompt, true).unwrap();
    let last = tokens.len() - 1;
    let batch = model.batch(&[tokens]).unwrap();
    let logits = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
    // The logit the components add up to is the one before Gemma-2's final soft cap.
    let cap = f64::from(model.manifest.config.final_softcap.unwrap());
    let capped = f64::from(logits[[0, last, the]]);
    let uncapped = cap * (capped / cap).atanh();
    let sum: f64 = (0..parts.rows.len())
        .map(|r| number(parts, r, "attribution"))
        .sum();
    assert!(
        (sum - uncapped).abs() < 1e-3,
        "components sum to {sum}, the uncapped logit is {uncapped}"
    );
    // Heads only, no attention bias: embed + 2 x (4 heads + MLP).
    assert_eq!(parts.rows.len(), 1 + 2 * (4 + 1));
}

#[test]
fn activations_through_the_unembedding_at_the_last_block_are_the_logits_less_biases() {
    // At the last block's output, the final norm's own scale and the unembedding give
    // the logits less what the biases add (the final LayerNorm's bias and the
    // unembedding's, left out as logit_lens and logit_attribution leave them out): the
    // top token, and the next token's logit and rank, must be those of these logits.
    for (checkpoint, last) in [
        ("tiny_llama/model.gguf", "blocks.1.hook_resid_post"),
        ("tiny_gpt_neo", "blocks.1.hook_resid_post"),
        ("tiny_gpt2", "blocks.1.hook_resid_post"),
        ("tiny_pythia", "blocks.1.hook_resid_post"),
        ("tiny_qwen2", "blocks.1.hook_resid_post"),
    ] {
        let (_dir, model_dir) = export_to_temp(&fixture(checkpoint));
        let tables = run(
            &model_dir,
            &format!(
                "table lens = activations(d, {last}, unembed = true)
table early = activations(d, blocks.0.hook_resid_post, unembed = true) | filter(next_token_rank >= 0)"
            ),
        );
        let (lens, early) = (&tables[0], &tables[1]);
        let runtime = runtime();
        let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
        let bos = model.manifest.special_tokens.prepend_bos;
        let vocab = model.manifest.config.d_vocab;
        let mut biases = ndarray::Array1::<f32>::zeros(vocab);
        if let Ok(ln_b) = model.weight("ln_final.b") {
            let ln_b = ln_b.into_dimensionality::<ndarray::Ix1>().unwrap();
            biases += &match model.weight("unembed.W_U") {
                Ok(w_u) => ln_b.dot(&w_u.into_dimensionality::<ndarray::Ix2>().unwrap()),
                Err(_) => {
                    let w_e = model.weight("embed.W_E").unwrap();
                    w_e.into_dimensionality::<ndarray::Ix2>()
                        .unwrap()
                        .dot(&ln_b)
                }
            };
        }
        if let Ok(b_u) = model.weight("unembed.b_U") {
            biases += &b_u.into_dimensionality::<ndarray::Ix1>().unwrap();
        }
        let mut row = 0;
        for prompt in PROMPTS {
            let tokens = model.to_tokens(prompt, bos).unwrap();
            let batch = model.batch(&[&tokens]).unwrap();
            let logits = model.forward(&batch, true, &[]).unwrap().logits.unwrap();
            for pos in 0..tokens.len() {
                let at = &logits.slice(s![0, pos, ..]) - &biases;
                let at = at.view();
                let top = (0..at.len())
                    .max_by(|&a, &b| at[a].total_cmp(&at[b]).then(b.cmp(&a)))
                    .unwrap();
                let text = |column: &str| lens.rows[row][lens.column(column).unwrap()].text();
                assert_eq!(
                    text("top_token"),
                    model.to_string(&[top as u32]).unwrap(),
                    "{checkpoint} {prompt:?} at {pos}"
                );
                match tokens.get(pos + 1) {
                    Some(&next) => {
                        let next = next as usize;
                        let logit = f64::from(at[next]);
                        assert!(
                            (number(lens, row, "next_token_logit") - logit).abs() < 1e-3,
                            "{checkpoint}: {} vs {logit}",
                            number(lens, row, "next_token_logit")
                        );
                        assert_eq!(
                            number(lens, row, "next_token_rank") as usize,
                            qexp::runtime::token_rank(at, next)
                        );
                    }
                    None => assert_eq!(text("next_token"), "", "no token after the last"),
                }
                row += 1;
            }
        }
        assert_eq!(row, lens.rows.len());
        // An earlier block reads differently, and the last tokens' empty cells filter out.
        assert_eq!(early.rows.len(), lens.rows.len() - PROMPTS.len());
    }
}

#[test]
fn actadd_adds_the_prompt_pairs_difference_position_by_position_at_the_front() {
    use qexp::compile::{self, Intervention, Target, interventions};
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let hook = "blocks.0.hook_resid_post";
    let tables = run(
        &model_dir,
        &format!(
            "variant loving {{
    actadd({hook}, \"cat sat\", \"dog ran\", scale = 2)
}}
table long = logit_diff(\"the cat sat on the\", \" the\", variants = [loving])
table short = logit_diff(\"a b\", \" the\", variants = [loving])"
        ),
    );
    let runtime = runtime();
    let mut model = HookedModel::load(&runtime, &model_dir).unwrap();
    let bos = model.manifest.special_tokens.prepend_bos;
    let read = |model: &mut HookedModel, prompt: &str| {
        let tokens = model.to_tokens(prompt, bos).unwrap();
        let batch = model.batch(&[&tokens]).unwrap();
        model.forward(&batch, false, &[hook]).unwrap().hooks[hook]
            .slice(s![0, .., ..])
            .to_owned()
    };
    let rows = read(&mut model, "cat sat") - read(&mut model, "dog ran");
    // By hand: one `add` per front position, each that position's row of the difference.
    let edits: Vec<Intervention> = (0..rows.nrows())
        .map(|pos| {
            Intervention::Add(interventions::Add {
                target: Target {
                    hook: hook.into(),
                    head: None,
                    pos: Some(pos as i64),
                },
                vector: rows.row(pos).mapv(|x| x * 2.0),
            })
        })
        .collect();
    let graph = compile::select_outputs(
        &interventions::apply(model.graph(), &edits, |_| 4).unwrap(),
        &["logits"],
    )
    .unwrap();
    let answer = model.to_tokens(" the", false).unwrap()[0] as usize;
    for (table, prompt) in [(&tables[0], "the cat sat on the"), (&tables[1], "a b")] {
        let tokens = model.to_tokens(prompt, bos).unwrap();
        let batch = model.batch(&[&tokens]).unwrap();
        let steered = model
            .forward_graph(prompt, &graph, &batch)
            .unwrap()
            .logits
            .unwrap();
        let expected = f64::from(steered[[0, tokens.len() - 1, answer]]);
        let (clean, loving) = (
            number(table, 0, "answer_logit"),
            number(table, 1, "answer_logit"),
        );
        assert!(
            (loving - expected).abs() < 1e-4,
            "{prompt}: {loving} vs {expected}"
        );
        assert!(
            (loving - clean).abs() > 1e-3,
            "{prompt}: the steering changes the answer"
        );
    }
    assert!(
        tables[1].rows.len() == 2 && rows.nrows() > 3,
        "the short prompt is shorter than the rows"
    );
}

#[test]
fn repeated_steps_over_the_same_prompts_read_the_clean_pass_once() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let run = |steps: &str| {
        let source = format!(
            "experiment m\nmodel \"{}\"\ndataset d = prompts([\"the cat sat\", \"a dog ran far away\"])\nvariant first {{\n    zero(blocks.0.attn.hook_z[head = 0])\n}}\nvariant second {{\n    zero(blocks.0.attn.hook_z[head = 1])\n}}\n{steps}",
            model_dir.display(),
        );
        let plan = common::checked(&source, &model_dir, Default::default());
        execute::execute(&plan, &runtime(), &common::anywhere()).unwrap()
    };
    let clean_only = run("table c = per_token(d)\n").tokens_run;
    let sweep = run(
        "table a = per_token(d, variants = [first])\ntable b = per_token(d, variants = [second])\ntable again = per_token(d, variants = [first])\n",
    );
    // The clean pass once, then each variant's.
    assert_eq!(sweep.tokens_run, 4 * clean_only);
    let table = |name: &str| table_named(&sweep, name);
    let (a, b) = (table("a"), table("b"));
    let column = |t: &qexp::results::Table, name: &str| {
        let index = t.column(name).unwrap();
        t.rows.iter().map(|r| r[index].clone()).collect::<Vec<_>>()
    };
    assert_eq!(column(&a, "loss"), column(&b, "loss"));
    assert_ne!(column(&a, "first_loss"), column(&b, "second_loss"));
    assert_eq!(
        column(&a, "first_loss"),
        column(&table("again"), "first_loss")
    );
}
