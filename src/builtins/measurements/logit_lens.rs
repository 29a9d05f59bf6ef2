//! `logit_lens(prompt, answer; versus, pos)`: the residual stream after each block read
//! through the final norm and the unembedding (TransformerLens' accumulated residual
//! with `apply_ln_to_stack`): how early the model settles on an answer, and the logit
//! difference to another.

use ndarray::s;

use crate::builtins::args::{Args, BindError, Columns, Text, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::hooks::{self, RESID_POST, RESID_PRE};
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, OnePrompt, Session, position};

pub const SPEC: Builtin = Builtin {
    name: "logit_lens",
    produces: Produces::Table,
    summary: "the residual stream after each block through the final norm and unembedding: the answer's logit, probability and rank",
    params: &[
        req("prompt", Type::Str).non_empty(),
        req("answer", Type::Str).non_empty(),
        opt("versus", Type::Str).non_empty(),
        opt("pos", Type::OnePosition),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct LogitLens {
    pub prompt: Text,
    pub answer: Text,
    /// A second answer: each row also gets `logit_diff`, answer minus this one.
    pub versus: Option<Text>,
    /// The position read, negative from the end; the last token when absent.
    pub pos: Option<i64>,
}

impl LogitLens {
    /// The residual stream before the first block, then after each block.
    fn hooks(n_layers: Option<usize>) -> Vec<String> {
        std::iter::once(hooks::block(0, RESID_PRE))
            .chain(hooks::every_block(n_layers, RESID_POST))
            .collect()
    }
}

impl Measure for LogitLens {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            prompt: args.text("prompt")?,
            answer: args.text("answer")?,
            versus: args.opt_text("versus")?,
            pos: args.position("pos")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        let mut c = columns(&[
            ("blocks", Integer),
            ("hook", Str),
            ("answer_logit", Number),
            ("answer_prob", Number),
            ("answer_rank", Integer),
            ("top_token", Str),
        ]);
        if self.versus.is_some() {
            c.push(("logit_diff".into(), Number));
        }
        c
    }

    fn reads(&self, plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        for hook in Self::hooks(plan.model.n_layers) {
            reads.add(Graph::Clean, hook);
        }
        reads.add(Graph::Clean, hooks::FINAL_SCALE);
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let answer = s.answer(&self.answer)?;
        let versus = self.versus.as_ref().map(|v| s.answer(v)).transpose()?;
        let OnePrompt { tokens, batch } = s.one_prompt(&self.prompt)?;
        let at = position(&tokens, self.pos)?;
        let config = s.model.manifest.config.clone();
        let hooks = Self::hooks(Some(config.n_layers));
        let mut wanted: Vec<&str> = hooks.iter().map(String::as_str).collect();
        wanted.push(hooks::FINAL_SCALE);
        let forward = s.forward(None, &batch, &wanted)?;
        // The final norm's scale of the whole residual stream, frozen for every partial
        // sum of it, as TransformerLens' apply_ln_to_stack does by default.
        let scale = forward.hooks[hooks::FINAL_SCALE][[0, at, 0]];

        let readout = s.readout()?;

        let mut table = table(name, &self.columns());
        for (blocks, hook) in hooks.iter().enumerate() {
            let resid = forward.hooks[hook].slice(s![0, at, ..]).to_owned();
            let logits = readout.logits(resid.view(), scale);
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            let above = logits.iter().filter(|&&l| l > logits[answer]).count();
            let top = crate::runtime::argmax(logits.view());
            let mut row = vec![
                Cell::Integer(blocks as i64),
                Cell::Str(hook.clone()),
                Cell::Number(logits[answer]),
                Cell::Number((logits[answer] - log_sum).exp()),
                Cell::Integer(above as i64),
                Cell::Str(s.str_tokens(&[top as u32])?.remove(0)),
            ];
            if let Some(versus) = versus {
                row.push(Cell::Number(logits[answer] - logits[versus]));
            }
            table.rows.push(row);
        }
        Ok(table)
    }
}
