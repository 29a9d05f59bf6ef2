//! Source text -> AST. Only this module sees pest's types; everything after it works on
//! the spanned AST in `ast.rs`.

pub mod ast;
mod format;
mod parser;

pub use format::{expr as format_expr, format};
pub use parser::{KEYWORDS, nearest, parse};

/// A byte range in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

/// A problem in the source, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Renders diagnostics as `file:line:col`, the source line, an underline and the hint.
pub fn render(diagnostics: &[Diagnostic], file_name: &str, source: &str) -> String {
    use ariadne::{Config, Label, Report, ReportKind, Source};
    let mut out = Vec::new();
    for d in diagnostics {
        let (line, col) = line_col(source, d.span.start);
        let mut report = Report::build(ReportKind::Error, (file_name, d.span.start..d.span.end))
            .with_config(Config::default().with_color(false))
            .with_message(format!("{file_name}:{line}:{col}: {}", d.message))
            .with_label(
                Label::new((file_name, d.span.start..d.span.end.max(d.span.start + 1)))
                    .with_message(&d.message),
            );
        if let Some(hint) = &d.hint {
            report = report.with_help(hint);
        }
        report
            .finish()
            .write((file_name, Source::from(source)), &mut out)
            .expect("writing to a Vec cannot fail");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
