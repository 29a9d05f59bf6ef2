//! Every measurement and dashboard built-in, run on the tiny models: the table each
//! makes has exactly the columns `qexp plan` promised, and each step reads exactly the
//! graphs and hooks the plan lists for it. This is what keeps a built-in's declaration
//! (its file in `src/builtins/`) and its executor in step.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{export_to_temp, fixture, runtime};
use qexp::builtins::graphs::step_reads;
use qexp::builtins::measurements::{Measurement, Read};
use qexp::execute::{self, Section};
use qexp::plan::{Step, TableSource};

/// One step of each measurement (two where an option changes what it reads), and
/// dashboards, on an SAE trained on a head's queries.
const BODY: &str = r#"
dataset d = prompts(["the cat sat on the mat", "a dog ran to the cat"])
sae q = train(hook = blocks.1.attn.hook_q[head = 0], dataset = d, d_sae = 16, tokens = 200, batch_size = 8, seed = 1)
variant ablate {
    zero(blocks.0.attn.hook_z[head = 1])
}
table sanity = sanity_check("the cat sat on the mat")
table continued = generate("the cat", max_new_tokens = 3)
table continued_ablated = generate("the cat", max_new_tokens = 2, variant = ablate)
table composition = composition_scores("Q")
table tokens = per_token(d, head = L1H0, sae = q, variants = [ablate], top_k = 4)
table plain_tokens = per_token(d)
table answers = test_prompt("the cat sat on the", "mat", variants = [ablate], top_k = 3)
table pattern = attention("the cat sat on", L1H0, variants = [ablate])
table direct = direct_logit_attribution("the cat sat on", L1H0, ablate, top = 3)
table acts = feature_activations(q, "the cat sat")
table shares = feature_attribution(q, L1H0, "the cat sat on")
table shares_at = feature_attribution_at(q, L1H0, d, tokens)
table together = feature_cooccurrence(tokens, top_k_features, [0, 1, 2])
table quality = sae_metrics(q, d)
table quality_vs_ablate = sae_metrics(q, d, baseline = ablate)
table stats = feature_stats(q, d)
dashboards pages = feature_dashboards(q, [0, 1], d, tokens = 20)
"#;

fn check_model(model_dir: &Path) {
    let source = format!(
        "experiment every_builtin\nmodel \"{}\"\n{BODY}",
        model_dir.display()
    );
    let file = qexp::syntax::parse(&source).unwrap();
    let context = qexp::check::Context {
        manifest: qexp::manifest::Manifest::read(model_dir).ok(),
        ..Default::default()
    };
    let plan = qexp::check::check(&file, &context)
        .unwrap_or_else(|d| panic!("{}", qexp::syntax::render(&d, "t", &source)));

    let used: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|step| match step {
            Step::Table {
                source: TableSource::Call(call),
                ..
            }
            | Step::Dashboards { call, .. } => Some(call.function),
            _ => None,
        })
        .collect();
    for name in Measurement::names()
        .into_iter()
        .chain([qexp::builtins::dashboards::SPEC.name])
    {
        assert!(used.contains(name), "this test does not run `{name}`");
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
        assert_eq!(made.columns, promised, "columns of `{name}`");
        assert!(!made.rows.is_empty(), "`{name}` has no rows");
    }

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
        let read: BTreeSet<&Read> = trace.reads.iter().collect();
        let promised: BTreeSet<&Read> = promised.0.iter().collect();
        assert_eq!(read, promised, "what `{label}` reads");
    }
}

#[test]
fn every_builtin_makes_the_columns_and_reads_the_hooks_its_plan_promises_on_a_rotary_model() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_llama/model.gguf"));
    check_model(&model_dir);
}

#[test]
fn every_builtin_makes_the_columns_and_reads_the_hooks_its_plan_promises_without_rotary() {
    let (_dir, model_dir) = export_to_temp(&fixture("tiny_gpt_neo"));
    check_model(&model_dir);
}
