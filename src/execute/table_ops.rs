//! The operations a pipeline applies to result tables (`filter`, `sort`, `top`,
//! `columns`, `derive`, `count`, `group_count`, `explode`). Pure functions of their input.

use std::cmp::Ordering;

use crate::plan::{Call, ColumnExpr, Value};
use crate::results::{Cell, Table};
use crate::syntax::ast::BinaryOp;

impl Table {
    /// Applies one checked table operation. Fails when a `derive` makes a number that is
    /// not finite (a division by zero, an overflow), naming the column and the row.
    pub fn apply(mut self, op: &Call) -> Result<Table, String> {
        if op.function == "derive" {
            self.derive(op)?;
            return Ok(self);
        }
        Ok(self.reshape(op))
    }

    fn derive(&mut self, op: &Call) -> Result<(), String> {
        if let Some(Value::List(derived)) = op.args.get("columns") {
            for pair in derived {
                let Value::List(pair) = pair else { continue };
                let [Value::Column(name), Value::Expr(expr)] = pair.as_slice() else {
                    continue;
                };
                let values: Vec<Cell> = self
                    .rows
                    .iter()
                    .map(|row| eval(expr, &self.columns, row))
                    .collect();
                if let Some((row, value)) = values
                    .iter()
                    .enumerate()
                    .find(|(_, v)| matches!(v, Cell::Number(x) if !x.is_finite()))
                {
                    return Err(format!(
                        "`derive({name} = {expr})` gives {} on row {row} of `{}` (a division by zero, or a number too large); guard it with `filter` first",
                        value.text(),
                        self.name
                    ));
                }
                match self.column(name) {
                    Some(i) => self
                        .rows
                        .iter_mut()
                        .zip(values)
                        .for_each(|(row, v)| row[i] = v),
                    None => {
                        self.columns.push(name.clone());
                        self.rows
                            .iter_mut()
                            .zip(values)
                            .for_each(|(row, v)| row.push(v));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every table operation but `derive`.
    fn reshape(mut self, op: &Call) -> Table {
        let column_names = |key: &str| -> Vec<String> {
            match op.args.get(key) {
                Some(Value::List(items)) => items.iter().map(ToString::to_string).collect(),
                Some(Value::Column(c)) => vec![c.clone()],
                _ => Vec::new(),
            }
        };
        match op.function {
            "filter" => {
                if let Some(Value::Expr(condition)) = op.args.get("where") {
                    let columns = self.columns.clone();
                    self.rows
                        .retain(|row| matches!(eval(condition, &columns, row), Cell::Bool(true)));
                }
                self
            }
            "sort" => {
                let by = column_names("by").first().and_then(|c| self.column(c));
                let descending =
                    matches!(op.args.get("order"), Some(Value::Choice(o)) if o == "desc");
                if let Some(i) = by {
                    // Stable, so equal keys keep their earlier order and reruns agree.
                    self.rows.sort_by(|a, b| {
                        let ordering = a[i].compare(&b[i]);
                        if descending {
                            ordering.reverse()
                        } else {
                            ordering
                        }
                    });
                }
                self
            }
            "top" => {
                if let Some(Value::Integer(n)) = op.args.get("n") {
                    self.rows.truncate((*n).max(0) as usize);
                }
                self
            }
            "columns" => {
                let keep: Vec<usize> = column_names("names")
                    .iter()
                    .filter_map(|c| self.column(c))
                    .collect();
                Table {
                    name: self.name,
                    columns: keep.iter().map(|&i| self.columns[i].clone()).collect(),
                    rows: self
                        .rows
                        .iter()
                        .map(|row| keep.iter().map(|&i| row[i].clone()).collect())
                        .collect(),
                }
            }
            "count" => Table {
                name: self.name,
                columns: vec!["count".into()],
                rows: vec![vec![Cell::Integer(self.rows.len() as i64)]],
            },
            "group_count" => {
                let Some(i) = column_names("by").first().and_then(|c| self.column(c)) else {
                    return self;
                };
                let mut groups: Vec<(Cell, i64)> = Vec::new();
                for row in &self.rows {
                    match groups.iter_mut().find(|(key, _)| *key == row[i]) {
                        Some((_, n)) => *n += 1,
                        None => groups.push((row[i].clone(), 1)),
                    }
                }
                // Most frequent first; ties in order of first appearance.
                groups.sort_by_key(|g| std::cmp::Reverse(g.1));
                Table {
                    name: self.name,
                    columns: vec![self.columns[i].clone(), "count".into()],
                    rows: groups
                        .into_iter()
                        .map(|(key, n)| vec![key, Cell::Integer(n)])
                        .collect(),
                }
            }
            "explode" => {
                let exploded: Vec<usize> = column_names("names")
                    .iter()
                    .filter_map(|c| self.column(c))
                    .collect();
                let mut rows = Vec::new();
                for row in &self.rows {
                    let len = exploded
                        .iter()
                        .map(|&i| list_len(&row[i]))
                        .max()
                        .unwrap_or(0);
                    for k in 0..len {
                        let mut out = row.clone();
                        for &i in &exploded {
                            out[i] = list_item(&row[i], k);
                        }
                        rows.push(out);
                    }
                }
                self.rows = rows;
                self
            }
            _ => self,
        }
    }
}

fn list_len(cell: &Cell) -> usize {
    match cell {
        Cell::IntegerList(v) => v.len(),
        Cell::NumberList(v) => v.len(),
        _ => 1,
    }
}

fn list_item(cell: &Cell, k: usize) -> Cell {
    match cell {
        Cell::IntegerList(v) => v
            .get(k)
            .map_or(Cell::Str(String::new()), |x| Cell::Integer(*x)),
        Cell::NumberList(v) => v
            .get(k)
            .map_or(Cell::Str(String::new()), |x| Cell::Number(*x)),
        other => other.clone(),
    }
}

/// Evaluates a checked column expression on one row.
pub fn eval(expr: &ColumnExpr, columns: &[String], row: &[Cell]) -> Cell {
    match expr {
        ColumnExpr::Column(c) => columns
            .iter()
            .position(|n| n == c)
            .map_or(Cell::Str(String::new()), |i| row[i].clone()),
        ColumnExpr::Number(x) => Cell::Number(*x),
        ColumnExpr::Str(s) => Cell::Str(s.clone()),
        ColumnExpr::Bool(b) => Cell::Bool(*b),
        ColumnExpr::Not(inner) => {
            Cell::Bool(!matches!(eval(inner, columns, row), Cell::Bool(true)))
        }
        ColumnExpr::Neg(inner) => match eval(inner, columns, row) {
            Cell::Integer(n) if let Some(negated) = n.checked_neg() => Cell::Integer(negated),
            other => Cell::Number(-other.number().unwrap_or(f64::NAN)),
        },
        ColumnExpr::Binary(op, l, r) => {
            let (l, r) = (eval(l, columns, row), eval(r, columns, row));
            let (a, b) = (l.number(), r.number());
            match op {
                BinaryOp::And => Cell::Bool(l == Cell::Bool(true) && r == Cell::Bool(true)),
                BinaryOp::Or => Cell::Bool(l == Cell::Bool(true) || r == Cell::Bool(true)),
                BinaryOp::Eq => Cell::Bool(l.compare(&r) == Ordering::Equal),
                BinaryOp::Ne => Cell::Bool(l.compare(&r) != Ordering::Equal),
                BinaryOp::Lt => Cell::Bool(l.compare(&r) == Ordering::Less),
                BinaryOp::Le => Cell::Bool(l.compare(&r) != Ordering::Greater),
                BinaryOp::Gt => Cell::Bool(l.compare(&r) == Ordering::Greater),
                BinaryOp::Ge => Cell::Bool(l.compare(&r) != Ordering::Less),
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => match (&l, &r) {
                    // Whole numbers stay whole unless they overflow; then as floats.
                    (Cell::Integer(x), Cell::Integer(y))
                        if let Some(n) = match op {
                            BinaryOp::Add => x.checked_add(*y),
                            BinaryOp::Sub => x.checked_sub(*y),
                            _ => x.checked_mul(*y),
                        } =>
                    {
                        Cell::Integer(n)
                    }
                    _ => {
                        let (x, y) = (a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN));
                        Cell::Number(match op {
                            BinaryOp::Add => x + y,
                            BinaryOp::Sub => x - y,
                            _ => x * y,
                        })
                    }
                },
                BinaryOp::Div => Cell::Number(a.unwrap_or(f64::NAN) / b.unwrap_or(f64::NAN)),
                BinaryOp::Pipe => Cell::Str(String::new()),
            }
        }
        ColumnExpr::Call(function, args) => {
            let values: Vec<Cell> = args.iter().map(|a| eval(a, columns, row)).collect();
            match (function.as_str(), values.as_slice()) {
                ("contains", [Cell::IntegerList(items), x]) => Cell::Bool(
                    x.number()
                        .is_some_and(|x| items.iter().any(|&i| i as f64 == x)),
                ),
                ("contains", [Cell::NumberList(items), x]) => {
                    Cell::Bool(x.number().is_some_and(|x| items.contains(&x)))
                }
                ("abs", [Cell::Integer(n)]) if let Some(abs) = n.checked_abs() => {
                    Cell::Integer(abs)
                }
                ("abs", [x]) => Cell::Number(x.number().unwrap_or(f64::NAN).abs()),
                ("len", [x]) => Cell::Integer(match x {
                    Cell::Str(s) => s.chars().count(),
                    other => list_len(other),
                } as i64),
                _ => Cell::Bool(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Context, check};
    use crate::plan::{Step, TableSource};
    use crate::syntax::parse;

    /// The ops of `table t = source | ...` as the checker makes them, for a source table
    /// with the columns of `per_token(d, sae = s)`.
    fn ops(pipeline: &str) -> Vec<Call> {
        let source = format!(
            "experiment e\nmodel \"m\"\ndataset d = prompts([\"x\"])\nsae s = load(\"s\")\ntable base = per_token(d, sae = s)\ntable t = base | {pipeline}\n"
        );
        let plan = check(&parse(&source).unwrap(), &Context::default()).unwrap();
        match plan.steps.last().unwrap() {
            Step::Table {
                source: TableSource::Table(_),
                ops,
                ..
            } => ops.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn tokens() -> Table {
        let mut t = Table::new(
            "base",
            &["str_tokens", "loss", "top_k_features", "top_k_feature_acts"],
        );
        t.rows = vec![
            vec![
                Cell::Str("a".into()),
                Cell::Number(1.0),
                Cell::IntegerList(vec![1669, 7]),
                Cell::NumberList(vec![0.5, 0.1]),
            ],
            vec![
                Cell::Str("b".into()),
                Cell::Number(3.0),
                Cell::IntegerList(vec![3489]),
                Cell::NumberList(vec![0.9]),
            ],
            vec![
                Cell::Str("c".into()),
                Cell::Number(2.0),
                Cell::IntegerList(vec![1669, 3489]),
                Cell::NumberList(vec![0.2, 0.3]),
            ],
        ];
        t
    }

    fn run(pipeline: &str) -> Table {
        ops(pipeline)
            .iter()
            .fold(tokens(), |t, op| t.apply(op).unwrap())
    }

    #[test]
    fn filter_sort_top_and_derive_compose() {
        let t = run(
            "derive(double = loss * 2) | filter(contains(top_k_features, 1669)) | sort(double, desc) | top(1)",
        );
        assert_eq!(t.columns.last().unwrap(), "double");
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0][0], Cell::Str("c".into()));
        assert_eq!(t.rows[0][4], Cell::Number(4.0));
    }

    #[test]
    fn count_and_not() {
        let t = run(
            "filter(contains(top_k_features, 1669) and not contains(top_k_features, 3489)) | count()",
        );
        assert_eq!(t.rows, vec![vec![Cell::Integer(1)]]);
    }

    #[test]
    fn explode_pairs_list_columns_elementwise() {
        let t = run(
            "explode([top_k_features, top_k_feature_acts]) | filter(top_k_features == 3489) | sort(top_k_feature_acts, desc)",
        );
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0][3], Cell::Number(0.9));
        assert_eq!(t.rows[1][3], Cell::Number(0.3));
    }

    #[test]
    fn group_count_orders_by_frequency() {
        let t = run("explode([top_k_features]) | group_count(top_k_features)");
        assert_eq!(t.columns, vec!["top_k_features", "count"]);
        assert_eq!(t.rows[0], vec![Cell::Integer(1669), Cell::Integer(2)]);
    }
}
