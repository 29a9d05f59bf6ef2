//! Every file in tests/language/ through the parser and checker, snapshotted:
//! `ok_*` files show their checked plan, `err_*` files the rendered diagnostics.

use qexp::{check, syntax};

fn outcome(path: &std::path::Path) -> String {
    let source = std::fs::read_to_string(path).unwrap();
    let name = format!(
        "tests/language/{}",
        path.file_name().unwrap().to_string_lossy()
    );
    match syntax::parse(&source) {
        Err(diagnostics) => syntax::render(&diagnostics, &name, &source),
        Ok(file) => match check::check(&file) {
            Ok(plan) => plan.to_string(),
            Err(diagnostics) => syntax::render(&diagnostics, &name, &source),
        },
    }
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

#[test]
fn the_shipped_experiment_checks() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/query_composition.qexp");
    let out = outcome(&path);
    assert!(out.starts_with("experiment query_composition"), "{out}");
}
