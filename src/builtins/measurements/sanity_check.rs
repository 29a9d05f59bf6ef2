//! `sanity_check(text)`: the mean next-token loss on a fixed text, to see that the model
//! loaded right (TransformerLens' sanity check, on the same paragraph by default).

use crate::builtins::args::{Args, BindError, Columns, Text, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt};
use crate::hooks::LOGITS;
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, Session};

pub const SPEC: Builtin = Builtin {
    name: "sanity_check",
    produces: Produces::Table,
    summary: "mean next-token loss on a fixed text",
    params: &[opt("text", Type::Str)],
};

/// The text TransformerLens' docs check a freshly loaded model on.
pub const DEFAULT_TEXT: &str = "Many important transition points in the history of science have been moments when science 'zoomed in.' At these points, we develop a visualization or tool that allows us to see the world in a new level of detail, and a new field of science develops to study the world through this lens.";

#[derive(Debug, Clone, PartialEq)]
pub struct SanityCheck {
    pub text: Option<Text>,
}

impl Measure for SanityCheck {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            text: args.opt_text("text")?,
        })
    }

    fn columns(&self) -> Columns {
        columns(&[
            ("text", ColumnType::Str),
            ("tokens", ColumnType::Integer),
            ("loss", ColumnType::Number),
        ])
    }

    fn reads(&self, _plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.add(Graph::Clean, LOGITS);
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let text = match &self.text {
            Some(text) => text.resolve(&s.values)?,
            None => DEFAULT_TEXT.to_owned(),
        };
        s.note_read(Graph::Clean, LOGITS);
        let losses = s
            .model
            .loss_per_token(&[&text])
            .map_err(Session::runtime)?;
        let losses = &losses[0];
        let loss = losses.iter().map(|&l| f64::from(l)).sum::<f64>() / losses.len().max(1) as f64;
        let mut table = table(name, &self.columns());
        table.rows.push(vec![
            Cell::Str(text),
            Cell::Integer(losses.len() as i64 + 1),
            Cell::Number(loss),
        ]);
        Ok(table)
    }
}
