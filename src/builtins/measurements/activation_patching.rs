//! `activation_patching(clean, corrupted, answer, versus; hook, by, layers)`: run the
//! corrupted prompt with one piece of one block's activation taken from the clean
//! prompt's run (a position of the residual stream, a head's output, a head at one
//! position), for every piece of every block, and measure the logit difference at the
//! last position: TransformerLens' `patching.get_act_patch_*` utilities.
//!
//! One graph per block serves all its pieces: the hook is replaced by a graph input,
//! and each batch row is the corrupted run's activation with one piece from the clean
//! run, so a block costs one compile and a few batched passes, not one variant per
//! piece.

use ndarray::{ArrayBase, ArrayD, Axis, IxDyn, RawData, Slice};

use crate::builtins::args::{Args, BindError, Columns, Text, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::compile::interventions::Patch;
use crate::compile::{Intervention, Target};
use crate::hooks::{self, LOGITS};
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, Session};

/// The activations that can be patched, by TransformerLens' name for them.
pub const HOOKS: &[&str] = &[
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "z",
];

pub const SPEC: Builtin = Builtin {
    name: "activation_patching",
    produces: Produces::Table,
    summary: "the corrupted prompt's logit difference with each block's activation patched from the clean prompt, by position, head or both",
    params: &[
        req("clean", Type::Str).non_empty(),
        req("corrupted", Type::Str).non_empty(),
        req("answer", Type::Str).non_empty(),
        req("versus", Type::Str).non_empty(),
        opt("hook", Type::Choice(HOOKS)),
        opt("by", Type::Choice(&["pos", "head", "head_pos"])),
        opt("layers", Type::ListOf(&Type::Integer)),
    ],
};

/// What one patch replaces in the hook's `[batch, pos, ...]` activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Every value at a position.
    Pos,
    /// A head at every position (`hook_z`).
    Head,
    /// A head at one position.
    HeadPos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActivationPatching {
    pub clean: Text,
    pub corrupted: Text,
    pub answer: Text,
    pub versus: Text,
    /// The hook's suffix in every block (`hook_resid_pre`, `attn.hook_z`).
    pub hook: String,
    pub by: Piece,
    /// The blocks patched; every block when absent.
    pub layers: Option<Vec<usize>>,
}

impl ActivationPatching {
    fn layers(&self, n_layers: Option<usize>) -> Vec<usize> {
        match &self.layers {
            Some(layers) => layers.clone(),
            None => (0..n_layers.unwrap_or(0)).collect(),
        }
    }
}

/// `z` is `attn.hook_z`; the others are `hook_<name>`.
pub fn hook_suffix(name: &str) -> String {
    if name == "z" {
        hooks::Z.to_owned()
    } else {
        format!("hook_{name}")
    }
}

impl Measure for ActivationPatching {
    fn bind(args: &Args) -> Result<Self, BindError> {
        let hook = args.opt_choice("hook")?.unwrap_or_else(|| "resid_pre".into());
        let by = match args.opt_choice("by")?.as_deref() {
            Some("head") => Piece::Head,
            Some("head_pos") => Piece::HeadPos,
            _ => Piece::Pos,
        };
        let layers = args
            .opt_integers("layers")?
            .map(|layers| layers.into_iter().map(|l| l.max(0) as usize).collect());
        Ok(Self {
            clean: args.text("clean")?,
            corrupted: args.text("corrupted")?,
            answer: args.text("answer")?,
            versus: args.text("versus")?,
            hook: hook_suffix(&hook),
            by,
            layers,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        let mut c = columns(&[("layer", Integer)]);
        if self.by != Piece::Pos {
            c.push(("head".into(), Integer));
        }
        if self.by != Piece::Head {
            c.push(("pos".into(), Integer));
            c.push(("clean_token".into(), Str));
            c.push(("corrupted_token".into(), Str));
        }
        c.extend(columns(&[
            ("logit_diff", Number),
            ("recovered", Number),
            ("clean_logit_diff", Number),
            ("corrupted_logit_diff", Number),
        ]));
        c
    }

    fn reads(&self, plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.add(Graph::Clean, LOGITS);
        for layer in self.layers(plan.model.n_layers) {
            let hook = hooks::block(layer, &self.hook);
            reads.add(Graph::Clean, hook.clone());
            reads.add(Graph::Patched(hook), LOGITS);
        }
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let clean = s.prompt_tokens(&self.clean.resolve(&s.values)?)?;
        let corrupted = s.prompt_tokens(&self.corrupted.resolve(&s.values)?)?;
        if clean.len() != corrupted.len() {
            return Err(format!(
                "the clean prompt has {} tokens and the corrupted one {}: patching takes each position from the same position, so they must have the same length",
                clean.len(),
                corrupted.len()
            ));
        }
        let answer = s.answer(&self.answer)?;
        let versus = s.answer(&self.versus)?;
        let n_layers = s.model.manifest.config.n_layers;
        let layers = self.layers(Some(n_layers));
        if let Some(layer) = layers.iter().find(|&&l| l >= n_layers) {
            return Err(format!(
                "the model has blocks 0 to {}, not {layer}",
                n_layers - 1
            ));
        }
        let hooks: Vec<String> = layers
            .iter()
            .map(|&l| hooks::block(l, &self.hook))
            .collect();
        let wanted: Vec<&str> = hooks
            .iter()
            .map(String::as_str)
            .chain([LOGITS])
            .collect();
        let last = clean.len() - 1;
        let diff = |logits: &ndarray::Array3<f32>, row: usize| {
            f64::from(logits[[row, last, answer]]) - f64::from(logits[[row, last, versus]])
        };
        let clean_batch = s.model.batch(&[&clean]).map_err(Session::runtime)?;
        let mut clean_run = s.forward(None, &clean_batch, &wanted)?;
        let corrupted_batch = s.model.batch(&[&corrupted]).map_err(Session::runtime)?;
        let mut corrupted_run = s.forward(None, &corrupted_batch, &wanted)?;
        let clean_diff = diff(clean_run.logits.as_ref().expect("asked for"), 0);
        let corrupted_diff = diff(corrupted_run.logits.as_ref().expect("asked for"), 0);
        let clean_tokens = s.str_tokens(&clean)?;
        let corrupted_tokens = s.str_tokens(&corrupted)?;

        let mut table = table(name, &self.columns());
        let batch_size = s.batch_size();
        for (&layer, hook) in layers.iter().zip(&hooks) {
            let from = clean_run.hooks.remove(hook).expect("asked for");
            let into = corrupted_run.hooks.remove(hook).expect("asked for");
            let n_heads = if from.ndim() == 4 { from.shape()[2] } else { 0 };
            if self.by != Piece::Pos && n_heads == 0 {
                return Err(format!("`{hook}` has no head axis to patch by"));
            }
            let pieces: Vec<(Option<usize>, Option<usize>)> = match self.by {
                Piece::Pos => (0..clean.len()).map(|p| (None, Some(p))).collect(),
                Piece::Head => (0..n_heads).map(|h| (Some(h), None)).collect(),
                Piece::HeadPos => (0..n_heads)
                    .flat_map(|h| (0..clean.len()).map(move |p| (Some(h), Some(p))))
                    .collect(),
            };
            let graph = Graph::Patched(hook.clone());
            let input = format!("patch:{hook}");
            let edit = Intervention::Patch(Patch {
                target: Target {
                    hook: hook.clone(),
                    head: None,
                    pos: None,
                },
                input: input.clone(),
            });
            for chunk in pieces.chunks(batch_size) {
                let rows: Vec<&[u32]> = vec![&corrupted; chunk.len()];
                let batch = s.model.batch(&rows).map_err(Session::runtime)?;
                let views = vec![into.view(); chunk.len()];
                let mut fed: ArrayD<f32> =
                    ndarray::concatenate(Axis(0), &views).map_err(|e| e.to_string())?;
                for (row, &(head, pos)) in chunk.iter().enumerate() {
                    let mut source = from.view();
                    narrow(&mut source, 0, head, pos);
                    let mut target = fed.view_mut();
                    narrow(&mut target, row, head, pos);
                    target.assign(&source);
                }
                let forward = s.forward_edits_fed(
                    &graph,
                    std::slice::from_ref(&edit),
                    &batch,
                    &[(input.clone(), fed)],
                    &[LOGITS],
                )?;
                let logits = forward.logits.expect("asked for");
                for (row, &(head, pos)) in chunk.iter().enumerate() {
                    let patched = diff(&logits, row);
                    let mut cells = vec![Cell::Integer(layer as i64)];
                    if let Some(head) = head {
                        cells.push(Cell::Integer(head as i64));
                    }
                    if let Some(pos) = pos {
                        cells.push(Cell::Integer(pos as i64));
                        cells.push(Cell::Str(clean_tokens[pos].clone()));
                        cells.push(Cell::Str(corrupted_tokens[pos].clone()));
                    }
                    // How much of the clean run's advantage the patch brings back: 0
                    // leaves the corrupted run as it was, 1 restores the clean one.
                    let recovered = if clean_diff == corrupted_diff {
                        Cell::Str(String::new())
                    } else {
                        Cell::Number((patched - corrupted_diff) / (clean_diff - corrupted_diff))
                    };
                    cells.extend([
                        Cell::Number(patched),
                        recovered,
                        Cell::Number(clean_diff),
                        Cell::Number(corrupted_diff),
                    ]);
                    table.rows.push(cells);
                }
            }
            // Each block's graph holds a copy of the weights: one at a time.
            s.forget_graph(&graph);
        }
        Ok(table)
    }
}

/// Narrows `view` to one piece: a batch row, and a position and a head where given.
fn narrow<S: RawData>(
    view: &mut ArrayBase<S, IxDyn>,
    row: usize,
    head: Option<usize>,
    pos: Option<usize>,
) {
    view.slice_axis_inplace(Axis(0), Slice::from(row..=row));
    if let Some(pos) = pos {
        view.slice_axis_inplace(Axis(1), Slice::from(pos..=pos));
    }
    if let Some(head) = head {
        view.slice_axis_inplace(Axis(2), Slice::from(head..=head));
    }
}
