//! Progress bars for the long steps (a dataset's forward passes, SAE training). indicatif
//! draws them on stderr when it is a terminal and stays silent otherwise (CI, pipes).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` units (`tokens`, `steps`) for the step `what`.
pub fn bar(len: u64, unit: &str, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix}} {{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit}, {{eta}} left"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}
