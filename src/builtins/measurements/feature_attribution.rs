//! `feature_attribution(sae, head, prompt; pos, key_pos)`: each active feature of a
//! query SAE with its share of the head's attention score from `pos` to `key_pos` (by
//! default where the head attends most from `pos`): the seed's "which features make the
//! head attend to `says`", read off linearly.

use crate::builtins::args::{Args, BindError, Columns, HeadArg, Text, columns};
use crate::builtins::measurements::{Measure, Reads, attribution, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, OnePrompt, Session, position};

pub const SPEC: Builtin = Builtin {
    name: "feature_attribution",
    produces: Produces::Table,
    summary: "each feature's share of a head's attention score to a key position",
    params: &[
        req("sae", Type::Sae),
        req("head", Type::Head),
        req("prompt", Type::Str).non_empty(),
        opt("pos", Type::OnePosition),
        opt("key_pos", Type::Integer).within(-1e6, 1e6),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureAttribution {
    pub sae: String,
    pub head: HeadArg,
    pub prompt: Text,
    pub pos: Option<i64>,
    pub key_pos: Option<i64>,
}

impl Measure for FeatureAttribution {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            sae: args.name("sae")?,
            head: args.head("head")?,
            prompt: args.text("prompt")?,
            pos: args.position("pos")?,
            key_pos: args.opt_int("key_pos")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        columns(&[
            ("feature", Integer),
            ("activation", Number),
            ("score_contribution", Number),
            ("key_pos", Integer),
            ("key_token", Str),
        ])
    }

    fn reads(&self, plan: &Plan) -> Reads {
        attribution::reads(plan, &self.head)
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let (sae, context) = attribution::inputs(s, &self.sae, &self.head)?;
        let OnePrompt { tokens, batch } = s.one_prompt(&self.prompt)?;
        let query = position(&tokens, self.pos)?;
        let clean = s.forward(None, &batch, &context.outputs())?;
        let key_pos = match self.key_pos {
            Some(k) if k >= 0 && k as usize <= query => Some(k as usize),
            Some(k) => {
                return Err(format!(
                    "key_pos {k} is not a position the query at {query} can attend to (0 to {query})"
                ));
            }
            None => None,
        };
        let (key_pos, shares) = context.shares(&sae, &clean, 0, query, key_pos);
        let key_token = s.str_tokens(&tokens[key_pos..=key_pos])?.remove(0);
        let mut table = table(name, &self.columns());
        table.rows = shares
            .into_iter()
            .map(|(feature, activation, contribution)| {
                vec![
                    Cell::Integer(feature as i64),
                    Cell::Number(f64::from(activation)),
                    Cell::Number(contribution),
                    Cell::Integer(key_pos as i64),
                    Cell::Str(key_token.clone()),
                ]
            })
            .collect();
        Ok(table)
    }
}
