//! `per_token(dataset; head, sae, variants, top_k, context)`: one row per token that has
//! a next token, as the seed's `eval_prompt` makes them: its loss, under each variant its
//! loss and KL divergence, with a head where that head attends most, with an SAE its
//! reconstruction, active features and the KL of splicing it in.

use ndarray::{Array1, Axis, s};

use crate::builtins::args::{Args, BindError, Columns, HeadArg, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, VARIANTS, opt, req};
use crate::hooks::{self, LOGITS};
use crate::plan::{ColumnType, Plan};
use crate::results::tolerance::ranked;
use crate::results::{Cell, Table};
use crate::runtime::NextTokenLogits;
use crate::shard::{Part, RowInputs};
use crate::session::{
    Failure, Session, argmax_attention, context, head_rows, length_sorted_chunks, norm,
};

pub const SPEC: Builtin = Builtin {
    name: "per_token",
    produces: Produces::Table,
    summary: "one row per token of a dataset, under variants",
    params: &[
        req("dataset", Type::Dataset),
        opt("head", Type::Head),
        opt("sae", Type::Sae),
        opt("variants", VARIANTS),
        opt("top_k", Type::Integer).within(1.0, 1000.0),
        opt("context", Type::Integer).within(0.0, 1000.0),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct PerToken {
    pub dataset: String,
    pub head: Option<HeadArg>,
    pub sae: Option<String>,
    pub variants: Vec<String>,
    /// Features listed per row.
    pub top_k: usize,
    /// Tokens each side in the `context` column.
    pub context: usize,
}

/// A variant's per-token columns for one batch: `[row][pos]`.
struct VariantColumns {
    losses: Vec<Vec<f32>>,
    kls: Vec<Vec<f64>>,
}

impl Measure for PerToken {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            dataset: args.name("dataset")?,
            head: args.opt_head("head")?,
            sae: args.opt_name("sae")?,
            variants: args.names("variants")?,
            top_k: args.opt_int("top_k")?.unwrap_or(10).max(1) as usize,
            context: args.opt_int("context")?.unwrap_or(3).max(0) as usize,
        })
    }

    /// Names follow the seed notebook so its readers recognise them.
    fn columns(&self) -> Columns {
        use ColumnType::{Integer, IntegerList, Number, NumberList, Str};
        let mut c = columns(&[
            ("str_tokens", Str),
            ("unique_token", Str),
            ("context", Str),
            ("batch", Integer),
            ("pos", Integer),
            ("label", Str),
            ("loss", Number),
        ]);
        for v in &self.variants {
            c.push((format!("{v}_loss"), Number));
            c.push((format!("{v}_kl_divergence"), Number));
        }
        if self.head.is_some() {
            c.extend(columns(&[
                ("max_idx_pos", Integer),
                ("max_idx_tok", Str),
                ("max_idx_tok_value", Number),
                ("q_norm", Number),
            ]));
        }
        if self.sae.is_some() {
            c.extend(columns(&[
                ("rec_q_norm", Number),
                ("mse_loss", Number),
                ("explained_variance", Number),
                ("num_active_features", Integer),
                ("top_k_features", IntegerList),
                ("top_k_feature_acts", NumberList),
                ("kl_divergence", Number),
            ]));
            if self.head.is_some() {
                c.extend(columns(&[
                    ("rec_q_max_idx_pos", Integer),
                    ("rec_q_max_idx_tok", Str),
                    ("rec_q_max_idx_tok_value", Number),
                ]));
            }
        }
        c
    }

    fn reads(&self, plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.add(Graph::Clean, LOGITS);
        if let Some(head) = &self.head {
            reads.add(Graph::Clean, head.hook(hooks::PATTERN));
            reads.add(Graph::Clean, head.hook(hooks::Q));
        }
        if let Some(sae) = &self.sae {
            reads.add(Graph::Clean, plan.sae_hook(sae));
        }
        for v in &self.variants {
            reads.add(Graph::Variant(v.clone()), LOGITS);
        }
        if let Some(sae) = &self.sae {
            reads.add(Graph::Spliced(sae.clone()), LOGITS);
            if let Some(head) = &self.head {
                reads.add(Graph::Spliced(sae.clone()), head.hook(hooks::PATTERN));
            }
        }
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        super::run_every_prompt(self, s, name)
    }

    fn shards_over(&self) -> Option<&str> {
        Some(&self.dataset)
    }

    /// Rows are independent per prompt except the explained variance, which compares
    /// each token's input with the mean over the whole dataset: the part keeps the
    /// inputs, and [`crate::shard::stack`] fills it in once every share is in.
    fn run_share(
        &self,
        s: &mut Session,
        name: &str,
        share: std::ops::Range<usize>,
    ) -> Result<Part, Failure> {
        let dataset = &self.dataset;
        let all = s.dataset(dataset)?;
        let first = share.start;
        let sequences = &all[share];
        let head = match &self.head {
            Some(head) => Some(head.resolve(&s.values)?),
            None => None,
        };
        let variants = &self.variants;
        let (context_width, top_k) = (self.context, self.top_k);
        let pattern_hook = head.map(|(l, _)| hooks::block(l, hooks::PATTERN));
        let q_hook = head.map(|(l, _)| hooks::block(l, hooks::Q));
        let sae = match &self.sae {
            Some(sae_name) => Some(s.sae_splice(sae_name)?),
            None => None,
        };
        let mut table = table(name, &self.columns());
        // Batches run prompts of similar length together; rows are kept per prompt and
        // put back in dataset order at the end.
        let mut prompt_rows: Vec<Vec<Vec<Cell>>> = vec![Vec::new(); sequences.len()];
        // Explained variance needs the mean input over the whole dataset: rows keep their
        // squared error and input for the merge, which fills the column in.
        let mut prompt_sae_inputs: Vec<Vec<(Vec<f32>, f64)>> = vec![Vec::new(); sequences.len()];
        let mut input_sum: Option<Array1<f64>> = None;
        let mut input_count = 0usize;

        let bar = crate::session::progress::bar(
            sequences.iter().map(|s| s.len() as u64).sum(),
            "tokens",
            &format!("{name} ="),
        );
        bar.set_message(format!("per_token({dataset})"));
        for prompts in length_sorted_chunks(sequences, s.batch_size()) {
            let batch = s.batch_of(sequences, &prompts)?;
            let mut clean_outputs = vec!["logits"];
            clean_outputs.extend(pattern_hook.as_deref());
            clean_outputs.extend(q_hook.as_deref());
            if let Some(splice) = &sae {
                clean_outputs.push(&splice.target.hook);
            }
            clean_outputs.dedup();
            let clean = s.forward(None, &batch, &clean_outputs)?;
            let clean_logits = clean.logits.as_ref().expect("logits requested");
            let clean_next = NextTokenLogits::new(clean_logits, &batch);
            let clean_losses = clean_next.losses();
            let mut variant_columns: Vec<VariantColumns> = Vec::new();
            for v in variants {
                let forward = s.forward(Some(v), &batch, &["logits"])?;
                let next = NextTokenLogits::new(forward.logits.as_ref().expect("logits"), &batch);
                variant_columns.push(VariantColumns {
                    losses: next.losses(),
                    kls: clean_next.kl_divergences(&next),
                });
            }
            let sae_batch = match &sae {
                Some(splice) => {
                    let mut outputs = vec!["logits"];
                    outputs.extend(pattern_hook.as_deref());
                    let spliced = s.forward_edits(
                        &splice.graph,
                        std::slice::from_ref(&splice.edit),
                        &batch,
                        &outputs,
                    )?;
                    let x = head_rows(
                        &clean.hooks[&splice.target.hook],
                        &batch,
                        splice.target.head,
                    );
                    let sum = x.mapv(f64::from).sum_axis(Axis(0));
                    input_sum = Some(match input_sum.take() {
                        Some(total) => total + sum,
                        None => sum,
                    });
                    input_count += x.nrows();
                    let acts = splice.sae.encode(x.view());
                    let recon = splice.sae.reconstruct(x.view(), acts.view());
                    let kls = clean_next.kl_divergences(&NextTokenLogits::new(
                        spliced.logits.as_ref().expect("logits requested"),
                        &batch,
                    ));
                    Some((x, acts, recon, kls, spliced))
                }
                None => None,
            };
            let mut sae_row = 0;
            for (row, &index) in prompts.iter().enumerate() {
                let tokens = &sequences[index];
                let strs = s.str_tokens(tokens)?;
                let prompt = first + index;
                for pos in 0..tokens.len() {
                    let token_row = sae_row;
                    sae_row += 1;
                    if pos + 1 == tokens.len() {
                        continue;
                    }
                    let mut cells = vec![
                        Cell::Str(strs[pos].clone()),
                        Cell::Str(format!("{}/{pos}", strs[pos])),
                        Cell::Str(context(&strs, pos, context_width)),
                        Cell::Integer(prompt as i64),
                        Cell::Integer(pos as i64),
                        Cell::Str(format!("{prompt}/{pos}")),
                        Cell::Number(f64::from(clean_losses[row][pos])),
                    ];
                    for v in &variant_columns {
                        cells.push(Cell::Number(f64::from(v.losses[row][pos])));
                        cells.push(Cell::Number(v.kls[row][pos]));
                    }
                    if let (Some((_, h)), Some(pattern_hook), Some(q_hook)) =
                        (head, &pattern_hook, &q_hook)
                    {
                        let (argmax, value) =
                            argmax_attention(&clean.hooks[pattern_hook], row, h, pos);
                        cells.push(Cell::Integer(argmax as i64));
                        cells.push(Cell::Str(strs[argmax].clone()));
                        cells.push(Cell::Number(f64::from(value)));
                        cells.push(Cell::Number(norm(clean.hooks[q_hook].slice(s![
                            row,
                            pos,
                            h,
                            ..
                        ]))));
                    }
                    if let Some((x, acts, recon, kls, spliced)) = &sae_batch {
                        let (x, acts, recon) =
                            (x.row(token_row), acts.row(token_row), recon.row(token_row));
                        let squared_error: f64 = x
                            .iter()
                            .zip(recon)
                            .map(|(&a, &b)| f64::from(a - b).powi(2))
                            .sum();
                        let mut active: Vec<(usize, f32)> = acts
                            .iter()
                            .enumerate()
                            .filter(|(_, a)| **a > 0.0)
                            .map(|(f, &a)| (f, a))
                            .collect();
                        let num_active = active.len();
                        // Strongest first, to four decimals (noise must not reorder
                        // two equally strong features), then by feature index.
                        active.sort_by(|a, b| ranked(b.1).cmp(&ranked(a.1)).then(a.0.cmp(&b.0)));
                        active.truncate(top_k);
                        cells.push(Cell::Number(norm(recon)));
                        cells.push(Cell::Number(squared_error / x.len().max(1) as f64));
                        cells.push(Cell::Number(0.0)); // explained variance, in the merge
                        cells.push(Cell::Integer(num_active as i64));
                        cells.push(Cell::IntegerList(
                            active.iter().map(|(f, _)| *f as i64).collect(),
                        ));
                        cells.push(Cell::NumberList(
                            active.iter().map(|(_, a)| f64::from(*a)).collect(),
                        ));
                        cells.push(Cell::Number(kls[row][pos]));
                        prompt_sae_inputs[index].push((x.to_vec(), squared_error));
                        if let (Some((_, h)), Some(pattern_hook)) = (head, &pattern_hook) {
                            let (argmax, value) =
                                argmax_attention(&spliced.hooks[pattern_hook], row, h, pos);
                            cells.push(Cell::Integer(argmax as i64));
                            cells.push(Cell::Str(strs[argmax].clone()));
                            cells.push(Cell::Number(f64::from(value)));
                        }
                    }
                    prompt_rows[index].push(cells);
                }
            }
            bar.inc(batch.real_tokens() as u64);
        }
        bar.finish_and_clear();
        table.rows = prompt_rows.into_iter().flatten().collect();
        let whole_dataset = self.sae.as_ref().map(|_| {
            let (inputs, squared_errors) = prompt_sae_inputs.into_iter().flatten().unzip();
            RowInputs {
                column: "explained_variance".to_owned(),
                sum: input_sum.map(|sum| sum.to_vec()).unwrap_or_default(),
                count: input_count,
                inputs,
                squared_errors,
            }
        });
        Ok(Part {
            whole_dataset,
            ..Part::rows(table)
        })
    }
}
