//! The syntax tree of a `.qexp` file: what was written, where, not yet what it means.

use super::Span;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct File {
    pub statements: Vec<Spanned<Statement>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Statement {
    Experiment {
        name: Spanned<String>,
    },
    Model {
        path: Spanned<String>,
        options: Vec<Opt>,
    },
    SanityCheck {
        text: Option<Spanned<String>>,
    },
    Generate {
        prompt: Spanned<String>,
        options: Vec<Opt>,
    },
    Paragraph {
        text: Spanned<String>,
    },
}

/// `name = value` inside a statement's parentheses.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Opt {
    pub name: Spanned<String>,
    pub value: Spanned<Value>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Value {
    Number(f64),
    String(String),
    Ident(String),
}

impl Value {
    pub fn describe(&self) -> &'static str {
        match self {
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Ident(_) => "a name",
        }
    }
}
