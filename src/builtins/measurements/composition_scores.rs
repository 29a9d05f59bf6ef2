//! `composition_scores(mode; fold_ln, center_writing_weights)`: TransformerLens' Q/K/V
//! composition scores for every pair of heads in different layers, from the weights alone,
//! processed as `HookedTransformer.from_pretrained` processes them unless told otherwise.

use crate::analysis::composition::{self, Mode, Processing};
use crate::builtins::args::{Args, BindError, Columns, columns};
use crate::builtins::measurements::{Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::builtins::table_ops::{columns_read, eval};
use crate::plan::{ColumnExpr, ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, Session};

pub const SPEC: Builtin = Builtin {
    name: "composition_scores",
    produces: Produces::Table,
    summary: "TransformerLens' composition scores for every head pair",
    params: &[
        req("mode", Type::Choice(&["Q", "K", "V"])),
        opt("fold_ln", Type::Bool),
        opt("center_writing_weights", Type::Bool),
    ],
};

/// The columns a filter may read to choose layer pairs before they are computed.
const LAYER_COLUMNS: [&str; 2] = ["layer1", "layer2"];

#[derive(Debug, Clone, PartialEq)]
pub struct CompositionScores {
    pub mode: Mode,
    pub processing: Processing,
    /// A following `filter` on `layer1` and `layer2` only: the layer pairs it keeps are
    /// the only ones computed (30 x 30 pairs take minutes on a CPU; one pair, a second).
    pub layer_filter: Option<ColumnExpr>,
}

impl Measure for CompositionScores {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            mode: match args.opt_choice("mode")?.as_deref() {
                Some("K") => Mode::K,
                Some("V") => Mode::V,
                _ => Mode::Q,
            },
            processing: Processing {
                fold_ln: args
                    .opt_bool("fold_ln")?
                    .unwrap_or(Processing::TRANSFORMER_LENS.fold_ln),
                center_writing_weights: args
                    .opt_bool("center_writing_weights")?
                    .unwrap_or(Processing::TRANSFORMER_LENS.center_writing_weights),
            },
            layer_filter: None,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number};
        columns(&[
            ("layer1", Integer),
            ("head1", Integer),
            ("layer2", Integer),
            ("head2", Integer),
            ("score", Number),
        ])
    }

    /// Weights only: no graph runs.
    fn reads(&self, _plan: &Plan) -> Reads {
        Reads::default()
    }

    fn narrow(&mut self, filter: &ColumnExpr) {
        if columns_read(filter).iter().all(|c| LAYER_COLUMNS.contains(c)) {
            self.layer_filter = Some(filter.clone());
        }
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let config = s.model.manifest.config.clone();
        let model = &*s.model;
        let wanted = |layer1: usize, layer2: usize| match &self.layer_filter {
            None => true,
            Some(filter) => {
                let row = [Cell::Integer(layer1 as i64), Cell::Integer(layer2 as i64)];
                matches!(eval(filter, &LAYER_COLUMNS.map(String::from), &row), Cell::Bool(true))
            }
        };
        let scores =
            composition::composition_scores(&config, self.mode, self.processing, wanted, |w| {
                model.weight(w)
            })
            .map_err(Session::runtime)?;
        let mut table = table(name, &self.columns());
        table.rows = scores
            .iter()
            .map(|s| {
                vec![
                    Cell::Integer(s.layer1 as i64),
                    Cell::Integer(s.head1 as i64),
                    Cell::Integer(s.layer2 as i64),
                    Cell::Integer(s.head2 as i64),
                    Cell::Number(s.score),
                ]
            })
            .collect();
        Ok(table)
    }
}
