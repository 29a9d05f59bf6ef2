//! `direct_logit_attribution(prompt, head, ablation; top)`: a head's direct effect on
//! each token's logit at the prompt's last position (its output through the final norm
//! and the unembedding), against the total effect of ablating it (the seed's "is the
//! effect direct?"), for the tokens in the top `top` of the clean or the ablated run.

use ndarray::s;

use crate::builtins::args::{Args, BindError, Columns, HeadArg, Text, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::hooks::{self, LOGITS};
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, OnePrompt, Session};

pub const SPEC: Builtin = Builtin {
    name: "direct_logit_attribution",
    produces: Produces::Table,
    summary: "a head's direct effect on the logits vs its ablation effect",
    params: &[
        req("prompt", Type::Str).non_empty(),
        req("head", Type::Head),
        req("ablation", Type::Variant),
        opt("top", Type::Integer).within(1.0, 1e9),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct DirectLogitAttribution {
    pub prompt: Text,
    pub head: HeadArg,
    /// The variant that ablates the head.
    pub ablation: String,
    pub top: usize,
}

impl Measure for DirectLogitAttribution {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            prompt: args.text("prompt")?,
            head: args.head("head")?,
            ablation: args.name("ablation")?,
            top: args.opt_int("top")?.unwrap_or(10).max(1) as usize,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        columns(&[
            ("token", Str),
            ("direct_logit_attribution", Number),
            ("ablation_effect", Number),
            ("rank", Integer),
        ])
    }

    fn reads(&self, _plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads
            .add(Graph::Clean, LOGITS)
            .add(Graph::Clean, self.head.hook(hooks::RESULT))
            .add(Graph::Clean, hooks::FINAL_SCALE)
            .add(Graph::Variant(self.ablation.clone()), LOGITS);
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let (layer, head) = self.head.resolve(&s.values)?;
        let OnePrompt { tokens, batch } = s.one_prompt(&self.prompt)?;
        let result_hook = hooks::block(layer, hooks::RESULT);
        let clean = s.forward(None, &batch, &[LOGITS, &result_hook, hooks::FINAL_SCALE])?;
        let ablated = s.forward(Some(&self.ablation), &batch, &[LOGITS])?;
        let last = tokens.len() - 1;

        let readout = s.readout()?;
        let scale = clean.hooks[hooks::FINAL_SCALE][[0, last, 0]];
        let component = clean.hooks[&result_hook]
            .slice(s![0, last, head, ..])
            .to_owned();
        let direct = readout.logits(component.view(), scale);

        let clean_logits = clean.logits.expect("logits requested");
        let ablated_logits = ablated.logits.expect("logits requested");
        let effect: Vec<f64> = (0..direct.len())
            .map(|v| f64::from(clean_logits[[0, last, v]] - ablated_logits[[0, last, v]]))
            .collect();
        let mut by_direct: Vec<usize> = (0..direct.len()).collect();
        by_direct.sort_by(|&a, &b| direct[b].total_cmp(&direct[a]).then(a.cmp(&b)));
        let mut rank = vec![0usize; direct.len()];
        for (r, &v) in by_direct.iter().enumerate() {
            rank[v] = r + 1;
        }
        // As the seed: the tokens either run ranks in its top `top`, by how much the
        // ablation lowers them.
        let top_of = |logits: &ndarray::Array3<f32>| {
            let mut order: Vec<usize> = (0..direct.len()).collect();
            order.sort_by(|&a, &b| {
                logits[[0, last, b]]
                    .total_cmp(&logits[[0, last, a]])
                    .then(a.cmp(&b))
            });
            order.truncate(self.top);
            order
        };
        let mut by_effect = top_of(&clean_logits);
        let from_ablated: Vec<usize> = top_of(&ablated_logits)
            .into_iter()
            .filter(|v| !by_effect.contains(v))
            .collect();
        by_effect.extend(from_ablated);
        by_effect.sort_by(|&a, &b| effect[b].total_cmp(&effect[a]).then(a.cmp(&b)));
        let mut table = table(name, &self.columns());
        for &v in &by_effect {
            table.rows.push(vec![
                Cell::Str(s.str_tokens(&[v as u32])?.remove(0)),
                Cell::Number(direct[v]),
                Cell::Number(effect[v]),
                Cell::Integer(rank[v] as i64),
            ]);
        }
        Ok(table)
    }
}
