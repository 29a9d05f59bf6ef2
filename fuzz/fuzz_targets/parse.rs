//! Any bytes through the parser, the checker and the formatter: an error is fine, a
//! panic or a hang is a bug. Whatever parses must format to text that parses to the
//! same tree.
//!
//!     cargo +nightly fuzz run parse -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use qexp::check::{Context, check};
use qexp::syntax::{self, ast::WithoutSpans};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Ok(file) = syntax::parse(source) else { return };
    let _ = check(&file, &Context::default());
    let formatted = syntax::format(&file, source);
    let reparsed = syntax::parse(&formatted).expect("formatted text parses");
    assert_eq!(reparsed.without_spans(), file.without_spans());
});
