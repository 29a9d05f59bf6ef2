//! `feature_activations(sae, prompt; pos)`: every feature's activation at one position
//! of a prompt (the seed's `plot_line_with_top_10_labels(feature_acts)`).

use ndarray::{Axis, s};

use crate::builtins::args::{Args, BindError, Columns, Text, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, OnePrompt, SaeSplice, Session, position};

pub const SPEC: Builtin = Builtin {
    name: "feature_activations",
    produces: Produces::Table,
    summary: "an SAE's feature activations at one position of a prompt",
    params: &[
        req("sae", Type::Sae),
        req("prompt", Type::Str).non_empty(),
        opt("pos", Type::OnePosition),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureActivations {
    pub sae: String,
    pub prompt: Text,
    pub pos: Option<i64>,
}

impl Measure for FeatureActivations {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            sae: args.name("sae")?,
            prompt: args.text("prompt")?,
            pos: args.position("pos")?,
        })
    }

    fn columns(&self) -> Columns {
        columns(&[
            ("feature", ColumnType::Integer),
            ("activation", ColumnType::Number),
        ])
    }

    fn reads(&self, plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.add(Graph::Clean, plan.sae_hook(&self.sae));
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let SaeSplice { sae, target, .. } = s.sae_splice(&self.sae)?;
        let OnePrompt { tokens, batch } = s.one_prompt(&self.prompt)?;
        let at = position(&tokens, self.pos)?;
        let forward = s.forward(None, &batch, &[&target.hook])?;
        let activation = &forward.hooks[&target.hook];
        let x = match target.head {
            Some(head) => activation.slice(s![0, at, head, ..]).to_owned(),
            None => activation.slice(s![0, at, ..]).to_owned(),
        };
        let acts = sae.encode(x.view().insert_axis(Axis(0)));
        let mut table = table(name, &self.columns());
        table.rows = acts
            .row(0)
            .iter()
            .enumerate()
            .map(|(f, &a)| vec![Cell::Integer(f as i64), Cell::Number(f64::from(a))])
            .collect();
        Ok(table)
    }
}
