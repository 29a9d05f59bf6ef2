//! `feature_attribution_at(sae, head, dataset, positions)`: feature attribution summed
//! over many positions, the rows of `positions` (a per_token table of `dataset`, or any
//! table with its `batch` and `pos` columns), each query's score to the key its head
//! attends to most. Per feature: how often it is active there, its mean activation, and
//! its total and mean share of the score.

use std::collections::BTreeMap;

use crate::builtins::args::{Args, BindError, Columns, HeadArg, columns};
use crate::builtins::measurements::{Measure, Reads, attribution, table};
use crate::builtins::spec::{Builtin, Produces, Type, req};
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, Session};

pub const SPEC: Builtin = Builtin {
    name: "feature_attribution_at",
    produces: Produces::Table,
    summary: "feature attribution summed over the positions a per_token table lists",
    params: &[
        req("sae", Type::Sae),
        req("head", Type::Head),
        req("dataset", Type::Dataset),
        req("positions", Type::Table),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureAttributionAt {
    pub sae: String,
    pub head: HeadArg,
    pub dataset: String,
    /// A table with `batch` and `pos` columns.
    pub positions: String,
}

impl Measure for FeatureAttributionAt {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            sae: args.name("sae")?,
            head: args.head("head")?,
            dataset: args.name("dataset")?,
            positions: args.name("positions")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number};
        columns(&[
            ("feature", Integer),
            ("positions", Integer),
            ("mean_activation", Number),
            ("score_contribution", Number),
            ("mean_score_contribution", Number),
        ])
    }

    fn reads(&self, plan: &Plan) -> Reads {
        attribution::reads(plan, &self.head)
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let dataset = &self.dataset;
        let (sae, context) = attribution::inputs(s, &self.sae, &self.head)?;
        let sequences = s.dataset(dataset)?;
        let rows = &self.positions;
        let rows_table = s.table(rows)?;
        let column = |c: &str| {
            rows_table.column(c).ok_or_else(|| {
                format!("table `{rows}` has no column `{c}` (a per_token table has one)")
            })
        };
        let (batch_column, pos_column) = (column("batch")?, column("pos")?);
        let mut wanted: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for row in &rows_table.rows {
            let (Some(prompt), Some(pos)) = (row[batch_column].number(), row[pos_column].number())
            else {
                return Err(format!("`batch` and `pos` of `{rows}` must be numbers"));
            };
            let (prompt, pos) = (prompt as usize, pos as usize);
            match sequences.get(prompt) {
                Some(tokens) if pos < tokens.len() => wanted.entry(prompt).or_default().push(pos),
                _ => {
                    return Err(format!(
                        "row {prompt}/{pos} of `{rows}` is not a token of dataset `{dataset}`; give the dataset the table was made from"
                    ));
                }
            }
        }
        // feature -> (positions active, sum of activations, sum of shares)
        let mut totals: BTreeMap<usize, (usize, f64, f64)> = BTreeMap::new();
        for (prompt, positions) in wanted {
            let batch = s
                .model
                .batch(std::slice::from_ref(&sequences[prompt]))
                .map_err(Session::runtime)?;
            let clean = s.forward(None, &batch, &context.outputs())?;
            for pos in positions {
                for (feature, activation, share) in context.shares(&sae, &clean, 0, pos, None).1 {
                    let entry = totals.entry(feature).or_default();
                    entry.0 += 1;
                    entry.1 += f64::from(activation);
                    entry.2 += share;
                }
            }
        }
        let mut table = table(name, &self.columns());
        table.rows = totals
            .into_iter()
            .map(|(feature, (n, activation, share))| {
                vec![
                    Cell::Integer(feature as i64),
                    Cell::Integer(n as i64),
                    Cell::Number(activation / n as f64),
                    Cell::Number(share),
                    Cell::Number(share / n as f64),
                ]
            })
            .collect();
        Ok(table)
    }
}
