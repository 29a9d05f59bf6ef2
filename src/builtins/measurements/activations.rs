//! `activations(dataset, hook; direction)`: a hook's activation at every token of a
//! dataset, reduced so the table stays small: its norm, and its projection on a
//! direction (a steering vector, a probe, an SAE feature's decoder row written out).
//! TransformerLens' `cache[hook].norm(dim=-1)` and `cache[hook] @ direction`, over a
//! whole dataset; `aggregate` makes the means over positions or prompts.

use ndarray::Axis;

use crate::builtins::args::{Args, BindError, Columns, columns};
use crate::builtins::interventions::VectorArg;
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::hooks::HookRef;
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, Session, length_sorted_chunks};

pub const SPEC: Builtin = Builtin {
    name: "activations",
    produces: Produces::Table,
    summary: "a hook's activation at every token of a dataset, as its norm and its projection on a direction",
    params: &[
        req("dataset", Type::Dataset),
        req("hook", Type::Hook),
        opt("direction", crate::builtins::values::VECTOR),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct Activations {
    pub dataset: String,
    /// With a head selected, that head's vector; with a position, that position only.
    pub hook: HookRef,
    pub direction: Option<VectorArg>,
}

impl Measure for Activations {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            dataset: args.name("dataset")?,
            hook: args.hook("hook")?,
            direction: match args.has("direction") {
                true => Some(args.vector("direction")?),
                false => None,
            },
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        let mut c = columns(&[
            ("batch", Integer),
            ("pos", Integer),
            ("str_tokens", Str),
            ("norm", Number),
        ]);
        if self.direction.is_some() {
            c.push(("projection".into(), Number));
        }
        c
    }

    fn reads(&self, _plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.add(Graph::Clean, self.hook.name.clone());
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let hook = &self.hook.name;
        if crate::hooks::has_key_axis(hook) {
            return Err(format!(
                "`{hook}` is laid out by query and key, not by token: read it with `attention`"
            ));
        }
        let target = s.target(&self.hook)?;
        let direction = match &self.direction {
            Some(vector) => {
                let d = vector.resolve(&s.values)?;
                let norm = d.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm == 0.0 {
                    return Err("the direction is zero: there is nothing to project on".into());
                }
                Some(d.into_iter().map(|x| x / norm).collect::<Vec<f64>>())
            }
            None => None,
        };
        let sequences = s.dataset(&self.dataset)?;
        let mut per_prompt: Vec<Vec<Vec<Cell>>> = vec![Vec::new(); sequences.len()];
        for prompts in length_sorted_chunks(&sequences, s.batch_size()) {
            let batch = s.batch_of(&sequences, &prompts)?;
            let forward = s.forward(None, &batch, &[hook])?;
            let value = &forward.hooks[hook];
            for (row, &prompt) in prompts.iter().enumerate() {
                let tokens = &sequences[prompt];
                let str_tokens = s.str_tokens(tokens)?;
                let positions: Vec<usize> = match target.pos {
                    Some(pos) => vec![crate::session::position(tokens, Some(pos))?],
                    None => (0..tokens.len()).collect(),
                };
                for pos in positions {
                    let mut vector = value.view();
                    vector.index_axis_inplace(Axis(0), row);
                    vector.index_axis_inplace(Axis(0), pos);
                    if let Some(head) = target.head {
                        vector.index_axis_inplace(Axis(0), head);
                    }
                    let flat: Vec<f64> = vector.iter().map(|&x| f64::from(x)).collect();
                    let mut cells = vec![
                        Cell::Integer(prompt as i64),
                        Cell::Integer(pos as i64),
                        Cell::Str(str_tokens[pos].clone()),
                        Cell::Number(flat.iter().map(|x| x * x).sum::<f64>().sqrt()),
                    ];
                    if let Some(direction) = &direction {
                        if direction.len() != flat.len() {
                            return Err(format!(
                                "the direction has {} numbers, but `{hook}` gives {} per token",
                                direction.len(),
                                flat.len()
                            ));
                        }
                        cells.push(Cell::Number(
                            flat.iter().zip(direction).map(|(x, d)| x * d).sum(),
                        ));
                    }
                    per_prompt[prompt].push(cells);
                }
            }
        }
        let mut table = table(name, &self.columns());
        table.rows = per_prompt.into_iter().flatten().collect();
        Ok(table)
    }
}
