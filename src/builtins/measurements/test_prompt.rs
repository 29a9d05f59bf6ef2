//! `test_prompt(prompt, answer; variants, top_k)`: TransformerLens' `test_prompt`, the
//! top next tokens after a prompt and the answer's rank, clean and under each variant.

use ndarray::s;

use crate::builtins::args::{Args, BindError, Columns, Text, columns};
use crate::builtins::measurements::{Measure, Reads, clean_then, table};
use crate::builtins::spec::{Builtin, Produces, Type, VARIANTS, opt, req};
use crate::hooks::LOGITS;
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::runtime::{log_softmax_row, token_rank};
use crate::session::{Failure, OnePrompt, Session};

pub const SPEC: Builtin = Builtin {
    name: "test_prompt",
    produces: Produces::Table,
    summary: "top next tokens for a prompt under variants, and the answer's rank",
    params: &[
        req("prompt", Type::Str).non_empty(),
        req("answer", Type::Str).non_empty(),
        opt("variants", VARIANTS),
        opt("top_k", Type::Integer).within(1.0, 1000.0),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct TestPrompt {
    pub prompt: Text,
    pub answer: Text,
    pub variants: Vec<String>,
    pub top_k: usize,
}

impl Measure for TestPrompt {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            prompt: args.text("prompt")?,
            answer: args.text("answer")?,
            variants: args.names("variants")?,
            top_k: args.opt_int("top_k")?.unwrap_or(10).max(1) as usize,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        columns(&[
            ("variant", Str),
            ("rank", Integer),
            ("token", Str),
            ("logit", Number),
            ("prob", Number),
            ("answer_rank", Integer),
        ])
    }

    fn reads(&self, _plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.clean_and_variants(&self.variants, LOGITS);
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let answer = self.answer.resolve(&s.values)?;
        let OnePrompt { tokens, batch } = s.one_prompt(&self.prompt)?;
        let answer_token = s.answer_token(&answer)?;
        let mut table = table(name, &self.columns());
        for variant in clean_then(&self.variants) {
            let forward = s.forward(variant, &batch, &[LOGITS])?;
            let logits = forward.logits.expect("logits requested");
            let last = logits.slice(s![0, tokens.len() - 1, ..]);
            let log_probs = log_softmax_row(last);
            let mut order: Vec<usize> = (0..last.len()).collect();
            order.sort_by(|&a, &b| last[b].total_cmp(&last[a]).then(a.cmp(&b)));
            let answer_rank = token_rank(last, answer_token as usize);
            for (rank, &token) in order.iter().take(self.top_k).enumerate() {
                table.rows.push(vec![
                    Cell::Str(variant.unwrap_or("clean").to_owned()),
                    Cell::Integer(rank as i64),
                    Cell::Str(s.str_tokens(&[token as u32])?.remove(0)),
                    Cell::Number(f64::from(last[token])),
                    Cell::Number(log_probs[token].exp()),
                    Cell::Integer(answer_rank as i64),
                ]);
            }
        }
        Ok(table)
    }
}
