//! Progress bars for the long steps (a dataset's forward passes, SAE training). On a
//! terminal indicatif draws them on stderr; elsewhere (CI logs, a cluster's job output,
//! a pipe) the bar's line is printed once when it starts and then at most every
//! [`LOG_EVERY`], so a long run is never silent and a log never fills with redraws.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How often a bar prints its line when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

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
    if !std::io::IsTerminal::is_terminal(&io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::term_like_with_hz(
            Box::new(LogLines::every(LOG_EVERY)),
            1,
        ));
    }
    bar
}

/// A "terminal" that turns a bar's redraws into log lines: what a redraw writes is
/// collected, and on flush printed as one line if `every` has passed since the last.
#[derive(Debug)]
struct LogLines {
    every: Duration,
    state: Mutex<(Option<Instant>, String)>,
}

impl LogLines {
    fn every(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, String::new())),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut (Option<Instant>, String)) -> T) -> T {
        // A panic elsewhere while holding the lock leaves a usable line buffer.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        120
    }

    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(s)
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.with(|(_, line)| {
            if !line.is_empty() && !s.is_empty() {
                line.push(' ');
            }
            line.push_str(s.trim_end());
        });
        Ok(())
    }

    fn clear_line(&self) -> io::Result<()> {
        self.with(|(_, line)| line.clear());
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let every = self.every;
        self.with(|(last, line)| {
            let due = last.is_none_or(|at| at.elapsed() >= every);
            if due && !line.trim().is_empty() {
                eprintln!("{}", line.trim());
                *last = Some(Instant::now());
            }
            line.clear();
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_gets_the_first_line_and_then_one_per_interval() {
        let log = LogLines::every(Duration::from_secs(3600));
        log.write_str("train [=>  ] 1/10 steps").unwrap();
        log.flush().unwrap();
        assert!(log.with(|(last, line)| last.is_some() && line.is_empty()));
        let printed_at = log.with(|(last, _)| *last);
        log.write_str("train [==> ] 2/10 steps").unwrap();
        log.flush().unwrap();
        assert_eq!(log.with(|(last, _)| *last), printed_at, "not due yet");
    }
}
