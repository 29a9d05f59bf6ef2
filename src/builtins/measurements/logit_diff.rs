//! `logit_diff(prompt, answer; versus, variants, pos)`: the metrics of an answer at one
//! position, clean and under each variant, one row per run: its logit, probability and
//! rank, and with `versus` the logit difference (IOI's metric). A sweep over declared
//! variants collects these rows into one table.

use ndarray::s;

use crate::builtins::args::{Args, BindError, Columns, Text, columns};
use crate::builtins::measurements::{Measure, Reads, clean_then, table};
use crate::builtins::spec::{Builtin, Produces, Type, VARIANTS, opt, req};
use crate::hooks::LOGITS;
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::runtime::{log_softmax_row, token_rank};
use crate::session::{Failure, OnePrompt, Session, position};

pub const SPEC: Builtin = Builtin {
    name: "logit_diff",
    produces: Produces::Table,
    summary: "an answer's logit, probability and rank, and its logit difference to another, clean and under variants",
    params: &[
        req("prompt", Type::Str).non_empty(),
        req("answer", Type::Str).non_empty(),
        opt("versus", Type::Str).non_empty(),
        opt("variants", VARIANTS),
        opt("pos", Type::OnePosition),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct LogitDiff {
    pub prompt: Text,
    pub answer: Text,
    pub versus: Option<Text>,
    pub variants: Vec<String>,
    /// The position predicting the answer, negative from the end; the last by default.
    pub pos: Option<i64>,
}

impl Measure for LogitDiff {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            prompt: args.text("prompt")?,
            answer: args.text("answer")?,
            versus: args.opt_text("versus")?,
            variants: args.names("variants")?,
            pos: args.position("pos")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        let mut c = columns(&[
            ("variant", Str),
            ("answer_logit", Number),
            ("answer_prob", Number),
            ("answer_rank", Integer),
        ]);
        if self.versus.is_some() {
            c.extend(columns(&[("versus_logit", Number), ("logit_diff", Number)]));
        }
        c
    }

    fn reads(&self, _plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.clean_and_variants(&self.variants, LOGITS);
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let answer = s.answer(&self.answer)?;
        let versus = self.versus.as_ref().map(|v| s.answer(v)).transpose()?;
        let OnePrompt { tokens, batch } = s.one_prompt(&self.prompt)?;
        let at = position(&tokens, self.pos)?;
        let mut table = table(name, &self.columns());
        for variant in clean_then(&self.variants) {
            let forward = s.forward(variant, &batch, &[LOGITS])?;
            let logits = forward.logits.expect("logits requested");
            let row = logits.slice(s![0, at, ..]);
            let log_probs = log_softmax_row(row);
            let rank = token_rank(row, answer);
            let mut cells = vec![
                Cell::Str(variant.unwrap_or("clean").to_owned()),
                Cell::Number(f64::from(row[answer])),
                Cell::Number(log_probs[answer].exp()),
                Cell::Integer(rank as i64),
            ];
            if let Some(versus) = versus {
                cells.push(Cell::Number(f64::from(row[versus])));
                cells.push(Cell::Number(
                    f64::from(row[answer]) - f64::from(row[versus]),
                ));
            }
            table.rows.push(cells);
        }
        Ok(table)
    }
}
