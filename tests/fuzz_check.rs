//! The checker and the plan on generated experiments, for a bounded time on every run:
//! whatever the program, `check` returns a plan or diagnostics (never a panic, never
//! seconds), every call it accepts binds into its built-in's typed form, the plan and its
//! graphs print, and the formatter's output parses to the same tree. The
//! same generator drives `cargo fuzz run check` for longer campaigns.

mod common;

use std::time::{Duration, Instant};

use qexp::check::{Context, check};
use qexp::manifest::Manifest;
use qexp::syntax::{self, ast::WithoutSpans};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Programs tried per run, unless the time budget ends first.
const PROGRAMS: usize = 3000;
const BUDGET: Duration = Duration::from_secs(25);

fn tiny_manifest() -> Manifest {
    let (_dir, model) = common::export_to_temp(&common::fixture("tiny_llama/model.gguf"));
    Manifest::read(&model).unwrap()
}

fn check_one(source: &str, context: &Context) {
    let file = match syntax::parse(source) {
        Ok(file) => file,
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            let _ = syntax::render(&diagnostics, "fuzzed.qexp", source);
            return;
        }
    };
    match check(&file, context) {
        Ok(plan) => {
            let _ = qexp::builtins::graphs::describe(&plan);
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            // The checker and each built-in's typed form agree on every call it accepts.
            for d in &diagnostics {
                assert!(
                    !d.message.contains("the checker should have refused this"),
                    "{}",
                    syntax::render(&diagnostics, "fuzzed.qexp", source)
                );
            }
            let _ = syntax::render(&diagnostics, "fuzzed.qexp", source);
        }
    }
    let formatted = syntax::format(&file, source);
    let reparsed = syntax::parse(&formatted).expect("formatted text parses");
    assert_eq!(reparsed.without_spans(), file.without_spans());
}

#[test]
fn generated_experiments_check_without_panics_or_delays() {
    let contexts = [
        Context::default(),
        Context {
            manifest: Some(tiny_manifest()),
            memory_bytes: Some(1 << 30),
            ..Context::default()
        },
    ];
    let mut rng = StdRng::seed_from_u64(20261127);
    let started = Instant::now();
    let mut tried = 0;
    while tried < PROGRAMS && started.elapsed() < BUDGET {
        let length = rng.random_range(0..600);
        let bytes: Vec<u8> = (0..length).map(|_| rng.random()).collect();
        let source = qexp::fuzzing::program(&bytes);
        for context in &contexts {
            let one = Instant::now();
            let outcome = std::panic::catch_unwind(|| check_one(&source, context));
            assert!(outcome.is_ok(), "panicked on:\n{source}");
            assert!(
                one.elapsed() < Duration::from_secs(2),
                "took {:?} on:\n{source}",
                one.elapsed()
            );
        }
        tried += 1;
    }
    assert!(tried >= 200, "only {tried} programs in the time budget");
}
