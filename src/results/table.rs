//! Result tables: named columns, rows of typed cells.

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Cell {
    Integer(i64),
    Number(f64),
    Str(String),
    Bool(bool),
    IntegerList(Vec<i64>),
    NumberList(Vec<f64>),
}

impl Cell {
    pub fn number(&self) -> Option<f64> {
        match self {
            Cell::Integer(n) => Some(*n as f64),
            Cell::Number(x) => Some(*x),
            Cell::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    /// Orders numbers numerically and everything else by its text; NaN sorts last.
    pub fn compare(&self, other: &Cell) -> Ordering {
        match (self.number(), other.number()) {
            (Some(a), Some(b)) => a
                .partial_cmp(&b)
                .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan())),
            _ => self.text().cmp(&other.text()),
        }
    }

    /// The cell as a report's CSV file holds it: [`Cell::text`], and text that a
    /// spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
    /// carriage return) behind a leading `'`, as OWASP's guidance on CSV injection
    /// recommends; numbers are written as they are.
    pub fn csv_text(&self) -> String {
        let text = self.text();
        match self {
            Cell::Str(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{text}"),
            _ => text,
        }
    }

    /// The cell as it appears in a CSV file: floats with six decimals, lists bracketed.
    pub fn text(&self) -> String {
        match self {
            Cell::Integer(n) => n.to_string(),
            Cell::Number(x) => format!("{x:.6}"),
            Cell::Str(s) => s.clone(),
            Cell::Bool(b) => b.to_string(),
            Cell::IntegerList(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Cell::NumberList(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|x| format!("{x:.6}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl Table {
    pub fn new(name: &str, columns: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_a_spreadsheet_would_run_is_quoted_and_numbers_are_not() {
        let text = |s: &str| Cell::Str(s.into()).csv_text();
        assert_eq!(text("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(text("-"), "'-");
        assert_eq!(text(" says"), " says");
        assert_eq!(Cell::Number(-0.5).csv_text(), "-0.500000");
        assert_eq!(Cell::Integer(-3).csv_text(), "-3");
    }
}
