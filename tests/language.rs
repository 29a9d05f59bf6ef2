//! Every file in tests/language/ through the parser and checker, snapshotted:
//! `ok_*` files show their checked plan, `err_*` files the rendered diagnostics. The
//! checker sees the tiny test model's manifest and three SAE configs, as the CLI would.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use qexp::check::{self, Context, SaeShape};
use qexp::manifest::Manifest;
use qexp::plan::HookRef;
use qexp::syntax::{self, ast::WithoutSpans};

fn tiny_manifest() -> Manifest {
    static MANIFEST: OnceLock<Manifest> = OnceLock::new();
    MANIFEST
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let model = dir.path().join("tiny");
            let gguf =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama/model.gguf");
            let scope = qexp::output::Scope::within(dir.path(), false).unwrap();
            qexp::export::export(&gguf, &model, &scope).unwrap();
            Manifest::read(&model).unwrap()
        })
        .clone()
}

fn context() -> Context {
    let q_head = |head| HookRef {
        name: "blocks.1.attn.hook_q".into(),
        head: Some(head),
        head_from: None,
        pos: None,
    };
    Context {
        manifest: Some(tiny_manifest()),
        saes: BTreeMap::from([
            (
                "saes/q_l1h2".into(),
                Ok(SaeShape {
                    d_in: 16,
                    d_sae: 64,
                    hook: Some(q_head(2)),
                }),
            ),
            (
                "saes/wrong_width".into(),
                Ok(SaeShape {
                    d_in: 32,
                    d_sae: 64,
                    hook: Some(q_head(2)),
                }),
            ),
            (
                "saes/missing".into(),
                Err(
                    "cannot read saes/missing/cfg.json: No such file or directory (os error 2)"
                        .into(),
                ),
            ),
        ]),
        ..Context::default()
    }
}

fn outcome(path: &Path) -> String {
    let source = std::fs::read_to_string(path).unwrap();
    let name = format!(
        "tests/language/{}",
        path.file_name().unwrap().to_string_lossy()
    );
    match syntax::parse(&source) {
        Err(diagnostics) => syntax::render(&diagnostics, &name, &source),
        Ok(file) => match check::check(&file, &context()) {
            Ok(plan) => qexp::builtins::graphs::describe(&plan),
            Err(diagnostics) => syntax::render(&diagnostics, &name, &source),
        },
    }
}

#[test]
fn valid_programs_parse_into_these_trees() {
    insta::glob!("language/ok_*.qexp", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        insta::assert_snapshot!(syntax::ast::sexpr(&syntax::parse(&source).unwrap()));
    });
}

#[test]
fn valid_programs_check_into_plans() {
    insta::glob!("language/ok_*.qexp", |path| {
        let out = outcome(path);
        assert!(!out.contains("Error"), "{out}");
        insta::assert_snapshot!(out);
    });
}

#[test]
fn invalid_programs_get_every_diagnostic_with_a_hint() {
    insta::glob!("language/err_*.qexp", |path| {
        let out = outcome(path);
        assert!(out.contains("Error"), "{out}");
        insta::assert_snapshot!(out);
    });
}

fn shipped_experiment() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/query_composition.qexp")
}

#[test]
fn the_shipped_experiment_parses_and_checks() {
    let source = std::fs::read_to_string(shipped_experiment()).unwrap();
    let file = syntax::parse(&source).unwrap();
    // Without the real model's manifest the hooks are checked by pattern only.
    let plan = check::check(&file, &Context::default())
        .unwrap_or_else(|d| panic!("{}", syntax::render(&d, "query_composition.qexp", &source)));
    assert_eq!(plan.name, "query_composition");
    assert!(plan.steps.len() > 30);
}

#[test]
fn formatting_is_canonical_idempotent_and_keeps_the_meaning() {
    let mut files: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/language"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ok_"))
            .collect();
    files.push(shipped_experiment());
    for path in files {
        let source = std::fs::read_to_string(&path).unwrap();
        let file = syntax::parse(&source).unwrap();
        let formatted = syntax::format(&file, &source);
        let reparsed = syntax::parse(&formatted)
            .unwrap_or_else(|d| panic!("{}", syntax::render(&d, "formatted", &formatted)));
        assert_eq!(
            reparsed.without_spans(),
            file.without_spans(),
            "{}: fmt changed the meaning",
            path.display()
        );
        assert_eq!(
            syntax::format(&reparsed, &formatted),
            formatted,
            "{}: fmt is not idempotent",
            path.display()
        );
        assert_eq!(
            source.matches("//").count(),
            formatted.matches("//").count(),
            "{}: fmt dropped a comment",
            path.display()
        );
    }
    // The shipped experiment is kept in canonical form.
    let source = std::fs::read_to_string(shipped_experiment()).unwrap();
    assert_eq!(
        syntax::format(&syntax::parse(&source).unwrap(), &source),
        source
    );
}

#[test]
fn grammar_md_lists_every_argument_limit_the_checker_enforces() {
    let grammar =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("GRAMMAR.md")).unwrap();
    let table = qexp::builtins::limits_table();
    assert!(
        grammar.contains(&table),
        "GRAMMAR.md's limits table is out of date; it should read:\n{table}"
    );
}

#[test]
fn grammar_md_lists_every_builtin_as_the_code_declares_it() {
    let grammar =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("GRAMMAR.md")).unwrap();
    let table = qexp::builtins::reference_table();
    assert!(
        grammar.contains(&table),
        "GRAMMAR.md's built-in table is out of date; it should read:\n{table}"
    );
}

#[test]
fn every_loop_item_gives_its_own_names_signs_and_decimals_included() {
    let source = "experiment e\nmodel \"m\"\ndataset d = prompts([\"a b\"])\nfor x in [-1, 1, 1.5, 15] {\n    table t = per_token(d)\n}\ntable all = collect(t)\n";
    let plan = check::check(&syntax::parse(source).unwrap(), &context()).unwrap();
    let names: Vec<String> = plan
        .steps
        .iter()
        .filter_map(|step| match step {
            qexp::plan::Step::Table { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["t_m1", "t_1", "t_1p5", "t_15", "all"]);
}
