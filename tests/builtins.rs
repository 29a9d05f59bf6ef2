//! Every built-in, run on the tiny models: the table each step makes has exactly the
//! columns `qexp plan` promised, and each step reads exactly the graphs and hooks the
//! plan lists for it. This is what keeps a built-in's declaration
//! (its file in `src/builtins/`) and its executor in step.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{export_to_temp, fixture, runtime};
use qexp::builtins::graphs::step_reads;
use qexp::builtins::measurements::Read;
use qexp::execute::{self, Section};
use qexp::plan::{Plan, Step, TableSource};

/// Every built-in at least once (a test below checks that), on an SAE trained on a
/// head's queries; `{TEXT}` and `{JSONL}` are dataset files the test writes, and
/// `{RELOADED}` declares a second SAE that fits the model.
const BODY: &str = r#"
dataset d = prompts(["the cat sat on the mat", "a dog ran to the cat"])
dataset lines = text("{TEXT}", separator = "\n", shuffle_seed = 3, skip = 0, take = 2, max_tokens = 16)
dataset records = jsonl("{JSONL}", field = "body", max_tokens = 16)
sae q = train(hook = blocks.1.attn.hook_q[head = 0], dataset = d, d_sae = 16, tokens = 200, batch_size = 8, seed = 1)
{RELOADED}
variant ablate {
    zero(blocks.0.attn.hook_z[head = 1])
}
variant averaged {
    mean(blocks.0.hook_attn_out, lines)
}
variant edited {
    splice(q, error_term = true)
    remove_features(q, [0, 1])
    scale_features(q, [2], factor = 2.0, pos = -1)
}
variant steered {
    steer(blocks.1.attn.hook_q[head = 0], q, feature = 3, scale = 2.0)
}
variant patched {
    patch(blocks.0.hook_resid_post, from_variant = ablate)
}
table sanity = sanity_check("the cat sat on the mat")
table continued = generate("the cat", max_new_tokens = 3)
table continued_ablated = generate("the cat", max_new_tokens = 2, variant = ablate)
table composition = composition_scores("Q")
let BEST = best_head(composition, by = score, layer = layer2, head = head2)
let PROMPT = row(d, 0, until = 3)
table tokens = per_token(d, head = L1H0, sae = q, variants = [ablate], top_k = 4)
table plain_tokens = per_token(records)
table answers = test_prompt("the cat sat on the", " the", variants = [ablate, averaged, edited, steered, patched], top_k = 3)
table pattern = attention(PROMPT, L1H0, variants = [ablate])
table best_pattern = attention("the cat sat on", BEST)
table direct = direct_logit_attribution("the cat sat on", L1H0, ablate, top = 3)
table components = logit_attribution("the cat sat on", " the", versus = " a")
table patched_resid = activation_patching("the cat sat on", "the dog sat on", " the", " a")
table patched_heads = activation_patching("the cat sat on", "the dog sat on", " the", " a", hook = z, by = head_pos, layers = [1])
table acts = feature_activations(q, "the cat sat")
table strongest = acts | sort(activation, "desc") | top(3) | derive(doubled = activation * 2) | filter(doubled >= 0) | columns([feature, doubled])
let FEATURES = values(strongest, feature)
table shares = feature_attribution(q, L1H0, "the cat sat on")
table shares_at = feature_attribution_at(q, L1H0, d, tokens)
table together = feature_cooccurrence(tokens, top_k_features, FEATURES)
table fired = tokens | explode([top_k_features, top_k_feature_acts]) | group_count(top_k_features)
table how_many = tokens | count()
table quality = sae_metrics(q, d)
table quality_vs_ablate = sae_metrics(q, d, baseline = ablate)
table stats = feature_stats(reloaded, d)
dashboards pages = feature_dashboards(q, [0, 1], d, tokens = 20)
plot points = scatter(tokens, x = loss, y = max_idx_tok_value, marginals = true, hover = [label])
plot spread = histogram(tokens, x = loss, bins = 5)
plot series = line(pattern, y = [attn, ablate_attn], label = str_tokens, top_labels = 2)
plot counts = bar(fired, x = top_k_features, y = count)
plot grid = heatmap(composition, rows = [layer1, head1], columns = [layer2, head2], value = score)
dataset rep = repeated_tokens(5, count = 2, seed = 1)
table patterns = pattern_scores(rep)
table lens = logit_lens("the cat sat on the", " the", versus = "t", pos = -1)
let TOWARDS_CAT = activation_difference("the cat", "a dog", hook = blocks.0.hook_resid_post)
let FROM_FILE = vector_file("{VECTOR}")
variant pushed {
    add(blocks.1.hook_resid_pre, TOWARDS_CAT, scale = 2.0)
    add(blocks.0.hook_resid_post, FROM_FILE)
    actadd(blocks.0.hook_resid_pre, "cat sat", "dog ran", scale = 3)
}
table pushed_answers = test_prompt("the cat sat on the", " the", variants = [pushed])
table pushed_diff = logit_diff("the cat sat on the", " the", versus = " a", variants = [pushed, ablate])
table pushed_logit = logit_diff("the cat sat on the", " the", pos = -2)
table norms = activations(d, blocks.1.hook_resid_post, direction = TOWARDS_CAT)
table query_norms = activations(lines, blocks.1.attn.hook_q[head = 1, pos = -1])
table lensed = activations(d, blocks.0.hook_mlp_out, unembed = true)
table per_layer = patterns | aggregate(by = [layer], best = max(induction_score), n = count())
table joined = patterns | join(per_layer, on = [layer]) | derive(below_best = best - induction_score)
table twice = lens | concat(lens)
table by_head = patterns | pivot(rows = [layer], columns = head, value = induction_score)
table stacked = per_layer | unpivot(columns = [best, n], name = quantity, value = amount)
expect "every token has a finite loss" = tokens | all(loss >= 0, show = [spread])
expect "some token is attended" = tokens | any(max_idx_tok_value > 0)
expect "most pairs compose a little" = composition | share(score > 0, at_least = 0.5)
"#;

/// The functions a plan calls, wherever they appear.
fn functions_used(plan: &Plan) -> BTreeSet<&'static str> {
    let mut used = BTreeSet::new();
    used.extend(plan.datasets.iter().map(|d| d.value.function));
    used.extend(plan.saes.iter().map(|s| s.value.function));
    used.extend(
        plan.variants
            .iter()
            .flat_map(|v| v.value.iter().map(|c| c.function)),
    );
    for step in &plan.steps {
        match step {
            Step::Table { source, ops, .. } => {
                if let TableSource::Call { call, .. } = source {
                    used.insert(call.function);
                }
                used.extend(ops.iter().map(|op| op.function));
            }
            Step::Compute { call, .. }
            | Step::Plot { call, .. }
            | Step::Dashboards { call, .. } => {
                used.insert(call.function);
            }
            Step::Expect {
                source, ops, check, ..
            } => {
                if let TableSource::Call { call, .. } = source {
                    used.insert(call.function);
                }
                used.extend(ops.iter().map(|op| op.function));
                used.insert(check.function);
            }
            Step::Text { .. } => {}
        }
    }
    used
}

fn check_model(model_dir: &Path, reloaded: &str) {
    let files = tempfile::tempdir().unwrap();
    let text = files.path().join("lines.txt");
    std::fs::write(&text, "the cat sat\na dog ran\nthe mat\n").unwrap();
    let vector = files.path().join("direction.npy");
    let d_model = qexp::manifest::Manifest::read(model_dir)
        .unwrap()
        .config
        .d_model;
    ndarray_npy::write_npy(&vector, &ndarray::Array1::<f32>::from_elem(d_model, 0.01)).unwrap();
    let jsonl = files.path().join("records.jsonl");
    std::fs::write(
        &jsonl,
        "{\"body\": \"the cat sat\"}\n{\"body\": \"a dog\"}\n",
    )
    .unwrap();
    let body = BODY
        .replace("{TEXT}", &text.display().to_string())
        .replace("{JSONL}", &jsonl.display().to_string())
        .replace("{VECTOR}", &vector.display().to_string())
        .replace("{RELOADED}", reloaded);
    let source = format!(
        "experiment every_builtin\nmodel \"{}\"\n{body}",
        model_dir.display()
    );
    let mut context = qexp::check::Context::default();
    let sae = fixture("saes/standard");
    context
        .saes
        .insert(sae.display().to_string(), qexp::sae::read_shape(&sae));
    let plan = common::checked(&source, model_dir, context);

    let used = functions_used(&plan);
    for builtin in qexp::builtins::BUILTINS
        .iter()
        .filter(|b| b.name != "load" || reloaded.contains("load("))
    {
        assert!(
            used.contains(builtin.name),
            "this test does not run `{}`",
            builtin.name
        );
    }

    let (results, traces) =
        execute::execute_traced(&plan, &runtime(), &common::anywhere()).unwrap();

    // Columns: what the plan promised is what each table has.
    for step in &plan.steps {
        let Step::Table { name, columns, .. } = step else {
            continue;
        };
        let made = results
            .sections
            .iter()
            .find_map(|s| match s {
                Section::Table(t) if &t.name == name => Some(t),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no table `{name}` in the results"));
        let promised: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
        // A pivot's own columns come from the data: the plan promises those before them.
        let made_columns = match step {
            Step::Table { ops, .. } if ops.last().is_some_and(|o| o.function == "pivot") => {
                assert!(
                    made.columns.len() > promised.len(),
                    "`{name}` spread no column"
                );
                &made.columns[..promised.len()]
            }
            _ => &made.columns[..],
        };
        assert_eq!(made_columns, promised, "columns of `{name}`");
        assert!(!made.rows.is_empty(), "`{name}` has no rows");
    }

    let computed_layers: Vec<(String, String)> = results
        .sections
        .iter()
        .filter_map(|s| match s {
            Section::Value { name, value } => {
                let (layer, _) = value.strip_prefix('L')?.split_once('H')?;
                Some((name.clone(), layer.to_owned()))
            }
            _ => None,
        })
        .collect();

    // Reads: each step ran exactly the graphs and read exactly the outputs the plan lists.
    for step in &plan.steps {
        let Some((name, promised)) = step_reads(&plan, step) else {
            continue;
        };
        let label = match step {
            Step::Dashboards { .. } => format!("dashboards {name}"),
            _ => format!("table {name}"),
        };
        let trace = traces
            .iter()
            .find(|t| t.step == label)
            .unwrap_or_else(|| panic!("no trace of `{label}`"));
        let read: BTreeSet<Read> = trace.reads.iter().cloned().collect();
        // A head computed at run time (`let BEST = best_head(...)`) is named in the plan
        // by its `let`; the run knows its layer.
        let promised: BTreeSet<Read> = promised
            .0
            .into_iter()
            .map(|mut r| {
                for (name, layer) in &computed_layers {
                    r.output = r.output.replace(&format!("<layer of {name}>"), layer);
                }
                r
            })
            .collect();
        assert_eq!(read, promised, "what `{label}` reads");
    }
}

#[test]
fn every_builtin_makes_the_columns_and_reads_the_hooks_its_plan_promises_on_a_rotary_model() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    let sae = fixture("saes/standard");
    check_model(
        &model_dir,
        &format!("sae reloaded = load(\"{}\")", sae.display()),
    );
}

#[test]
fn every_builtin_makes_the_columns_and_reads_the_hooks_its_plan_promises_without_rotary() {
    // The SAE fixtures fit the tiny Llama's heads, not GPT-Neo's: train one instead.
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_gpt_neo"));
    check_model(
        &model_dir,
        "sae reloaded = train(hook = blocks.0.hook_resid_pre, dataset = d, d_sae = 8, tokens = 100, batch_size = 8)",
    );
}

#[test]
fn every_builtin_makes_the_columns_and_reads_the_hooks_its_plan_promises_on_every_family() {
    // Parallel blocks (Pythia), q/k norms (Qwen3), post-norms and soft caps (Gemma-2),
    // fused Conv1D weights (GPT-2), a sliding window (Mistral): every built-in runs on
    // each and reads what its plan says.
    for family in [
        "tiny_gpt2",
        "tiny_pythia",
        "tiny_qwen3",
        "tiny_gemma2",
        "tiny_mistral",
    ] {
        let (_dir, model_dir) = export_to_temp(&fixture(family));
        check_model(
            &model_dir,
            "sae reloaded = train(hook = blocks.0.hook_resid_pre, dataset = d, d_sae = 8, tokens = 100, batch_size = 8)",
        );
    }
}
