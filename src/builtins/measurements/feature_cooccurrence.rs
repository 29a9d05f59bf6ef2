//! `feature_cooccurrence(table, column, features)`: the seed's co-occurrence counts
//! (`df[df.top_k_features.apply(lambda x: 1669 in x)]`). For every pair of `features`,
//! the rows of `table` whose list `column` holds the first, the second, both, or only
//! one of them; one row per pair, in the order given.

use crate::builtins::args::{Args, BindError, Columns, Features, columns};
use crate::builtins::measurements::{Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, req};
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, Session};

pub const SPEC: Builtin = Builtin {
    name: "feature_cooccurrence",
    produces: Produces::Table,
    summary: "for each pair of features, how many rows list one, the other, or both in a list column",
    params: &[
        req("table", Type::Table),
        req("column", Type::Column),
        req("features", Type::Features),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureCooccurrence {
    pub table: String,
    pub column: String,
    pub features: Features,
}

impl Measure for FeatureCooccurrence {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            table: args.name("table")?,
            column: args.column("column")?,
            features: args.features("features")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::Integer;
        columns(&[
            ("feature_a", Integer),
            ("feature_b", Integer),
            ("rows_with_a", Integer),
            ("rows_with_b", Integer),
            ("both", Integer),
            ("a_only", Integer),
            ("b_only", Integer),
        ])
    }

    /// Reads a table, not the model.
    fn reads(&self, _plan: &Plan) -> Reads {
        Reads::default()
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let column = &self.column;
        let Some(features) = self.features.integers(&s.values) else {
            return Err("`feature_cooccurrence` needs a list of features, not `all`".into());
        };
        let source = s.table(&self.table)?;
        let index = source
            .column(column)
            .ok_or_else(|| format!("table `{}` has no column `{column}`", source.name))?;
        let lists: Vec<&Vec<i64>> = source
            .rows
            .iter()
            .map(|row| match &row[index] {
                Cell::IntegerList(list) => Ok(list),
                other => Err(format!(
                    "column `{column}` holds {other:?}, not lists of features"
                )),
            })
            .collect::<Result<_, _>>()?;
        let mut table = table(name, &self.columns());
        for (i, &a) in features.iter().enumerate() {
            for &b in &features[i + 1..] {
                let (mut with_a, mut with_b, mut both) = (0, 0, 0);
                for list in &lists {
                    let (has_a, has_b) = (list.contains(&a), list.contains(&b));
                    with_a += i64::from(has_a);
                    with_b += i64::from(has_b);
                    both += i64::from(has_a && has_b);
                }
                table.rows.push(vec![
                    Cell::Integer(a),
                    Cell::Integer(b),
                    Cell::Integer(with_a),
                    Cell::Integer(with_b),
                    Cell::Integer(both),
                    Cell::Integer(with_a - both),
                    Cell::Integer(with_b - both),
                ]);
            }
        }
        Ok(table)
    }
}
