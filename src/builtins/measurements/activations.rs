//! `activations(dataset, hook; direction)`: a hook's activation at every token of a
//! dataset, reduced so the table stays small: its norm, and its projection on a
//! direction (a steering vector, a probe, an SAE feature's decoder row written out).
//! TransformerLens' `cache[hook].norm(dim=-1)` and `cache[hook] @ direction`, over a
//! whole dataset; `aggregate` makes the means over positions or prompts. With
//! `unembed = true`, each residual-stream-wide vector is also read through the final norm
//! and the unembedding: a logit lens (or, for a component's output, its direct effect)
//! at every token, `cache[hook]` through `ln_final` and `W_U`.

use ndarray::Axis;

use crate::builtins::args::{Args, BindError, Columns, columns};
use crate::builtins::interventions::VectorArg;
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::hooks::HookRef;
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, Session, length_sorted_chunks};
use crate::shard::Part;

pub const SPEC: Builtin = Builtin {
    name: "activations",
    produces: Produces::Table,
    summary: "a hook's activation at every token of a dataset, as its norm and its projection on a direction",
    params: &[
        req("dataset", Type::Dataset),
        req("hook", Type::Hook),
        opt("direction", crate::builtins::values::VECTOR),
        opt("unembed", Type::Bool),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct Activations {
    pub dataset: String,
    /// With a head selected, that head's vector; with a position, that position only.
    pub hook: HookRef,
    pub direction: Option<VectorArg>,
    /// Each vector through the final norm and the unembedding: the token it promotes
    /// most, and the next token's logit and rank.
    pub unembed: bool,
}

/// Rows of vectors read through the unembedding at once: `[rows, vocab]` floats each.
const UNEMBED_ROWS: usize = 128;

/// One token's vector to read through the unembedding, and where its table row is.
struct Unembedded {
    prompt: usize,
    /// The index of its row among the prompt's rows.
    row: usize,
    pos: usize,
    vector: Vec<f32>,
    /// The final norm's scale of the full stream there.
    scale: f32,
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
            unembed: args.opt_bool("unembed")?.unwrap_or(false),
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
        if self.unembed {
            c.extend(columns(&[
                ("top_token", Str),
                ("next_token", Str),
                ("next_token_logit", Number),
                ("next_token_rank", Integer),
            ]));
        }
        c
    }

    fn reads(&self, _plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.add(Graph::Clean, self.hook.name.clone());
        if self.unembed {
            reads.add(Graph::Clean, crate::hooks::FINAL_SCALE);
        }
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        super::run_every_prompt(self, s, name)
    }

    fn shards_over(&self) -> Option<&str> {
        Some(&self.dataset)
    }

    /// Rows are per token and depend on their prompt alone.
    fn run_share(
        &self,
        s: &mut Session,
        name: &str,
        share: std::ops::Range<usize>,
    ) -> Result<Part, Failure> {
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
        let readout = match self.unembed {
            true => Some(s.readout()?),
            false => None,
        };
        let mut wanted = vec![hook.as_str()];
        if self.unembed {
            wanted.push(crate::hooks::FINAL_SCALE);
        }
        let all = s.dataset(&self.dataset)?;
        let first = share.start;
        let sequences = &all[share];
        let mut per_prompt: Vec<Vec<Vec<Cell>>> = vec![Vec::new(); sequences.len()];
        for prompts in length_sorted_chunks(sequences, s.batch_size()) {
            let batch = s.batch_of(sequences, &prompts)?;
            let forward = s.forward(None, &batch, &wanted)?;
            let value = &forward.hooks[hook];
            let mut unembedded: Vec<Unembedded> = Vec::new();
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
                    if self.unembed {
                        unembedded.push(Unembedded {
                            prompt,
                            row: per_prompt[prompt].len(),
                            pos,
                            vector: vector.iter().copied().collect(),
                            scale: forward.hooks[crate::hooks::FINAL_SCALE][[row, pos, 0]],
                        });
                    }
                    let mut cells = vec![
                        Cell::Integer((first + prompt) as i64),
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
            if let Some(readout) = &readout {
                self.read_through_unembedding(s, readout, sequences, unembedded, &mut per_prompt)?;
            }
        }
        let mut table = table(name, &self.columns());
        table.rows = per_prompt.into_iter().flatten().collect();
        Ok(Part::rows(table))
    }
}

impl Activations {
    /// Appends the unembedding columns to the rows of `vectors`: the top token under
    /// the final norm and unembedding, and the actual next token's logit (the final norm
    /// frozen at the clean run's scale, as direct logit attribution reads it) and rank
    /// (ties to the lower token id). The last token of a prompt has no next token: its
    /// three next-token cells are empty.
    fn read_through_unembedding(
        &self,
        s: &Session,
        readout: &crate::analysis::logit_attribution::Readout,
        sequences: &[Vec<u32>],
        vectors: Vec<Unembedded>,
        per_prompt: &mut [Vec<Vec<Cell>>],
    ) -> Result<(), Failure> {
        let d_model = readout.ln_w.len();
        if let Some(Unembedded { vector, .. }) = vectors.first()
            && vector.len() != d_model
        {
            return Err(format!(
                "`{}` gives {} numbers per token, but the unembedding reads the residual stream's {d_model}: use `unembed` on a residual stream, attn_out, mlp_out or a head's hook_result",
                self.hook.name,
                vector.len()
            ));
        }
        let empty = || Cell::Str(String::new());
        for chunk in vectors.chunks(UNEMBED_ROWS) {
            let mut rows = ndarray::Array2::<f32>::zeros((chunk.len(), d_model));
            for (mut row, token) in rows.rows_mut().into_iter().zip(chunk) {
                row.assign(&ndarray::ArrayView1::from(token.vector.as_slice()));
            }
            let scales: Vec<f32> = chunk.iter().map(|token| token.scale).collect();
            let logits = readout.logits_f32(rows.view(), &scales);
            for (token, logits) in chunk.iter().zip(logits.rows()) {
                let top = crate::runtime::argmax(logits);
                let mut cells = vec![Cell::Str(s.str_tokens(&[top as u32])?.remove(0))];
                match sequences[token.prompt].get(token.pos + 1) {
                    Some(&next) => {
                        let next = next as usize;
                        let vector = ndarray::ArrayView1::from(token.vector.as_slice());
                        cells.extend([
                            Cell::Str(s.str_tokens(&[next as u32])?.remove(0)),
                            Cell::Number(readout.logit(vector, token.scale, next)),
                            Cell::Integer(crate::runtime::token_rank(logits, next) as i64),
                        ]);
                    }
                    None => cells.extend([empty(), empty(), empty()]),
                }
                per_prompt[token.prompt][token.row].extend(cells);
            }
        }
        Ok(())
    }
}
