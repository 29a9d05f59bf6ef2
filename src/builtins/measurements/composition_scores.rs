//! `composition_scores(mode; fold_ln)`: TransformerLens' Q/K/V composition scores for
//! every pair of heads in different layers, from the weights alone.

use crate::analysis::composition::{self, Mode};
use crate::builtins::args::{Args, BindError, Columns, columns};
use crate::builtins::measurements::{Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, Session};

pub const SPEC: Builtin = Builtin {
    name: "composition_scores",
    produces: Produces::Table,
    summary: "TransformerLens' composition scores for every head pair",
    params: &[
        req("mode", Type::Choice(&["Q", "K", "V"])),
        opt("fold_ln", Type::Bool),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct CompositionScores {
    pub mode: Mode,
    pub fold_ln: bool,
}

impl Measure for CompositionScores {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            mode: match args.opt_choice("mode")?.as_deref() {
                Some("K") => Mode::K,
                Some("V") => Mode::V,
                _ => Mode::Q,
            },
            fold_ln: args.opt_bool("fold_ln")?.unwrap_or(false),
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

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let config = s.model.manifest.config.clone();
        let model = &*s.model;
        let scores =
            composition::composition_scores(&config, self.mode, self.fold_ln, |w| model.weight(w))
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
