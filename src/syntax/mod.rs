//! Source text -> AST. Only this module sees pest's types; everything after it works on
//! the spanned AST in `ast.rs`.

pub mod ast;
mod format;
mod parser;

pub use format::{expr as format_expr, format};
pub use parser::{KEYWORDS, nearest, parse};

/// Why an experiment file could not be read as text.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a regular file; an experiment is a .qexp text file", path.display())]
    NotAFile { path: std::path::PathBuf },
    #[error("{} is {bytes} bytes; experiments are limited to {} bytes", path.display(), parser::MAX_SOURCE_BYTES)]
    TooLarge {
        path: std::path::PathBuf,
        bytes: u64,
    },
    #[error("{} is not UTF-8 text", path.display())]
    NotUtf8 { path: std::path::PathBuf },
}

/// Reads an experiment file: a regular file (a FIFO or device would block or never end)
/// of bounded size, UTF-8, a leading byte-order mark dropped.
pub fn read_source(path: &std::path::Path) -> Result<String, SourceError> {
    let io = |source| SourceError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile {
            path: path.to_owned(),
        });
    }
    if meta.len() > parser::MAX_SOURCE_BYTES as u64 {
        return Err(SourceError::TooLarge {
            path: path.to_owned(),
            bytes: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|_| SourceError::NotUtf8 {
        path: path.to_owned(),
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

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
        let message = clip(&d.message);
        // A machine-made line of kilobytes is no excerpt to show: the place and the
        // message say it all.
        let line_text = source.lines().nth(line - 1).unwrap_or_default();
        if line_text.len() > MAX_EXCERPT_LINE {
            out.extend(format!("Error: {file_name}:{line}:{col}: {message}\n").bytes());
            if let Some(hint) = &d.hint {
                out.extend(format!("  Help: {hint}\n").bytes());
            }
            continue;
        }
        let mut report = Report::build(ReportKind::Error, (file_name, d.span.start..d.span.end))
            .with_config(Config::default().with_color(false))
            .with_message(format!("{file_name}:{line}:{col}: {message}"))
            .with_label(
                Label::new((file_name, d.span.start..d.span.end.max(d.span.start + 1)))
                    .with_message(&message),
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

/// Source lines longer than this are not shown under a diagnostic.
const MAX_EXCERPT_LINE: usize = 300;

/// A message quoting a huge name keeps its start.
fn clip(message: &str) -> String {
    match message.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message.to_owned(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
