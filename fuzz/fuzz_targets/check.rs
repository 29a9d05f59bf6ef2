//! Generated experiments through the checker and the plan: every built-in with
//! arguments of the right shape and extreme values. A diagnostic is fine, a panic or a
//! hang is a bug. `tests/fuzz_check.rs` runs the same generator for a bounded time in CI.
//!
//!     cargo +nightly fuzz run check -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use qexp::check::{Context, check};
use qexp::syntax;

fuzz_target!(|data: &[u8]| {
    let source = qexp::fuzzing::program(data);
    let Ok(file) = syntax::parse(&source) else { return };
    if let Ok(plan) = check(&file, &Context::default()) {
        let _ = plan.to_string();
    }
});
