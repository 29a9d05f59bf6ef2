//! `generate(prompt; max_new_tokens, temperature, seed, variant)`: a continuation of a
//! prompt, greedy or sampled, by the clean model or under a variant.

use crate::builtins::args::{Args, BindError, Columns, Text, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, MAX_SEED, Produces, Type, opt, req};
use crate::hooks::LOGITS;
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::compile::Intervention;
use crate::runtime::{GenerationGraph, Sampling};
use crate::session::{Failure, Session};

pub const SPEC: Builtin = Builtin {
    name: "generate",
    produces: Produces::Table,
    summary: "continue a prompt",
    params: &[
        req("prompt", Type::Str).non_empty(),
        opt("max_new_tokens", Type::Integer).within(0.0, 100_000.0),
        opt("temperature", Type::Number).within(0.0, 100.0),
        opt("seed", Type::Integer).within(0.0, MAX_SEED),
        opt("variant", Type::Variant),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct Generate {
    pub prompt: Text,
    pub max_new_tokens: usize,
    /// 0 for greedy.
    pub temperature: f64,
    pub seed: u64,
    pub variant: Option<String>,
}

impl Measure for Generate {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            prompt: args.text("prompt")?,
            max_new_tokens: args.opt_int("max_new_tokens")?.unwrap_or(20).max(0) as usize,
            temperature: args.opt_number("temperature")?.unwrap_or(0.0),
            seed: args.opt_int("seed")?.unwrap_or(0) as u64,
            variant: args.opt_name("variant")?,
        })
    }

    fn columns(&self) -> Columns {
        columns(&[
            ("prompt", ColumnType::Str),
            ("continuation", ColumnType::Str),
            ("new_tokens", ColumnType::Integer),
        ])
    }

    fn reads(&self, _plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.add(self.graph(), LOGITS);
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let prompt = self.prompt.resolve(&s.values)?;
        let sampling = if self.temperature > 0.0 {
            Sampling::Temperature {
                temperature: self.temperature as f32,
                seed: self.seed,
            }
        } else {
            Sampling::Greedy
        };
        let tokens = s.prompt_tokens(&prompt)?;
        s.note_read(self.graph(), LOGITS);
        let new = match &self.variant {
            Some(variant) => {
                let edits = s.interventions(variant)?;
                if let Some(hook) = s.first_patched_hook(variant) {
                    return Err(format!(
                        "variant `{variant}` patches `{hook}`, whose value comes from another run of the same tokens; generation makes new tokens, so it cannot run under it"
                    ));
                }
                let edited = s.edited_graph(&edits)?;
                let graph = GenerationGraph {
                    key: variant,
                    edited: &edited,
                    cacheable: !edits.iter().any(Intervention::counts_from_end),
                };
                s.model.generate_with(
                    &tokens,
                    self.max_new_tokens,
                    sampling,
                    false,
                    Some(graph),
                )
            }
            None => s
                .model
                .generate(&tokens, self.max_new_tokens, sampling, false),
        }
        .map_err(Session::runtime)?;
        let mut table = table(name, &self.columns());
        table.rows.push(vec![
            Cell::Str(prompt),
            Cell::Str(s.model.to_string(&new).map_err(Session::runtime)?),
            Cell::Integer(new.len() as i64),
        ]);
        Ok(table)
    }
}

impl Generate {
    fn graph(&self) -> Graph {
        self.variant.clone().map_or(Graph::Clean, Graph::Variant)
    }
}
