//! Table operations, the stages after `|`: their parameters, their typed form, the
//! columns each leaves, and applying them to a result table (pure functions of it).

use std::cmp::Ordering;

use super::args::{Args, BindError, Columns};
use crate::builtins::spec::{Builtin, COLUMNS, Produces, SORT_ORDER, Type, opt, req};
use crate::plan::{Call, ColumnExpr, ColumnType, Value};
use crate::results::{Cell, Table};
use crate::syntax::ast::BinaryOp;

pub const FILTER: Builtin = Builtin {
    name: "filter",
    produces: Produces::TableOp,
    summary: "keep rows where the expression is true",
    params: &[req("where", Type::ColumnExpr)],
};

pub const SORT: Builtin = Builtin {
    name: "sort",
    produces: Produces::TableOp,
    summary: "sort by a column",
    params: &[req("by", Type::Column), opt("order", SORT_ORDER)],
};

pub const TOP: Builtin = Builtin {
    name: "top",
    produces: Produces::TableOp,
    summary: "the first n rows",
    params: &[req("n", Type::Integer).within(1.0, 1e9)],
};

pub const SELECT_COLUMNS: Builtin = Builtin {
    name: "columns",
    produces: Produces::TableOp,
    summary: "keep these columns, in this order",
    params: &[req("names", COLUMNS)],
};

pub const DERIVE: Builtin = Builtin {
    name: "derive",
    produces: Produces::TableOp,
    summary: "add columns computed from others: derive(loss_diff = ablated_loss - loss)",
    params: &[],
};

pub const AGGREGATE: Builtin = Builtin {
    name: "aggregate",
    produces: Produces::TableOp,
    summary: "one row per group of `by` (or one row): aggregate(by = [layer, head], mean_diff = mean(loss_diff), n = count())",
    params: &[opt("by", COLUMNS)],
};

/// The functions `aggregate` computes over a group's rows.
pub const AGGREGATES: &[&str] = &["mean", "sum", "min", "max", "std", "count"];

pub const COUNT: Builtin = Builtin {
    name: "count",
    produces: Produces::TableOp,
    summary: "the number of rows",
    params: &[],
};

pub const GROUP_COUNT: Builtin = Builtin {
    name: "group_count",
    produces: Produces::TableOp,
    summary: "rows per value of a column",
    params: &[req("by", Type::Column)],
};

pub const EXPLODE: Builtin = Builtin {
    name: "explode",
    produces: Produces::TableOp,
    summary: "one row per list element of list columns",
    params: &[req("names", COLUMNS)],
};

pub const JOIN: Builtin = Builtin {
    name: "join",
    produces: Produces::TableOp,
    summary: "the rows of another table whose `on` columns equal this row's, side by side",
    params: &[req("with", Type::Table), req("on", COLUMNS)],
};

pub const CONCAT: Builtin = Builtin {
    name: "concat",
    produces: Produces::TableOp,
    summary: "this table's rows, then another table's with the same columns",
    params: &[req("with", Type::Table)],
};

pub const PIVOT: Builtin = Builtin {
    name: "pivot",
    produces: Produces::TableOp,
    summary: "long to wide, last in a pipeline: one row per `rows` key, one column per value of `columns` holding `value`",
    params: &[
        req("rows", COLUMNS),
        req("columns", Type::Column),
        req("value", Type::Column),
    ],
};

pub const UNPIVOT: Builtin = Builtin {
    name: "unpivot",
    produces: Produces::TableOp,
    summary: "wide to long: one row per listed column, its name in `name` and its cell in `value`",
    params: &[
        req("columns", COLUMNS),
        req("name", Type::NewColumn),
        req("value", Type::NewColumn),
    ],
};

/// Where column `name` is in `table`, or an error naming both.
fn column_index(table: &Table, name: &str) -> Result<usize, String> {
    table
        .column(name)
        .ok_or_else(|| format!("table `{}` has no column `{name}`", table.name))
}

/// The cells of `row` at `at` as one hashable key: their CSV text, so equal text is an
/// equal key (as a group's key is compared wherever rows are grouped).
fn key_text(row: &[Cell], at: &[usize]) -> String {
    at.iter()
        .map(|&i| row[i].csv_text())
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// The name `pivot` gives the column of `value` where the `columns` column holds
/// `key`: `recovered_head_3`, `loss_variant_zeroed` (the value's name first, so its
/// tolerance carries over; signs and decimal points spelt as loop labels are).
pub fn pivoted_name(value: &str, columns: &str, key: &Cell) -> String {
    // A number as written shortest (`1.5`, not the CSV's `1.500000`).
    let text = match key {
        Cell::Number(x) => x.to_string(),
        other => other.text(),
    };
    format!("{value}_{columns}_{}", crate::plan::name_label(&text))
}

fn pivot(table: Table, rows: &[String], columns: &str, value: &str) -> Result<Table, String> {
    let row_keys: Vec<usize> = rows
        .iter()
        .map(|c| column_index(&table, c))
        .collect::<Result<_, _>>()?;
    let (column_key, value_at) = (column_index(&table, columns)?, column_index(&table, value)?);
    // Rows and columns in order of first appearance (a sweep's order).
    let mut wide_rows: Vec<Vec<Cell>> = Vec::new();
    let mut row_of = std::collections::HashMap::new();
    // Each new column's name and the key that made it.
    let mut wide_columns: Vec<(String, Cell)> = Vec::new();
    let mut column_of = std::collections::HashMap::new();
    let mut filled = std::collections::HashSet::new();
    for row in &table.rows {
        let next = wide_columns.len();
        let c = *column_of
            .entry(key_text(row, &[column_key]))
            .or_insert(next);
        if c == next {
            let key = row[column_key].clone();
            let name = pivoted_name(value, columns, &key);
            if let Some((_, earlier)) = wide_columns.iter().find(|(n, _)| *n == name) {
                return Err(format!(
                    "`{columns}` values {} and {} would both name column `{name}`",
                    earlier.text(),
                    key.text()
                ));
            }
            wide_columns.push((name, key));
        }
        let next = wide_rows.len();
        let r = *row_of.entry(key_text(row, &row_keys)).or_insert(next);
        if r == next {
            wide_rows.push(row_keys.iter().map(|&i| row[i].clone()).collect());
        }
        if !filled.insert((r, c)) {
            return Err(format!(
                "two rows of `{}` have the same {} and `{columns}` {}: pivot needs one `{value}` per cell; `aggregate(by = [...])` them first",
                table.name,
                rows.iter()
                    .map(|r| format!("`{r}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                row[column_key].text()
            ));
        }
        let cells = &mut wide_rows[r];
        if cells.len() < rows.len() + c + 1 {
            // A cell no row fills stays empty, as an undefined aggregate does.
            cells.resize(rows.len() + c + 1, Cell::Str(String::new()));
        }
        cells[rows.len() + c] = row[value_at].clone();
    }
    let width = rows.len() + wide_columns.len();
    for cells in &mut wide_rows {
        cells.resize(width, Cell::Str(String::new()));
    }
    let mut names = rows.to_vec();
    names.extend(wide_columns.into_iter().map(|(name, _)| name));
    Ok(Table {
        name: table.name,
        columns: names,
        rows: wide_rows,
    })
}

/// The columns after `unpivot(columns, name, value)`: the others, then `name` (text)
/// and `value` (the listed columns' type; whole numbers among numbers become numbers).
/// `Err` names a listed column whose type differs from the first's.
pub fn unpivoted_columns(
    columns: Columns,
    listed: &[String],
    name: &str,
    value: &str,
) -> Result<Columns, String> {
    let mut value_type: Option<ColumnType> = None;
    for column in listed {
        let Some((_, ty)) = columns.iter().find(|(c, _)| c == column) else {
            continue;
        };
        value_type = Some(match (value_type, *ty) {
            (None, ty) => ty,
            (Some(a), b) if a == b => a,
            (Some(a), b) if a.is_numeric() && b.is_numeric() => ColumnType::Number,
            (Some(a), b) => {
                return Err(format!(
                    "`{column}` holds {} where the columns before it hold {}",
                    b.describe(),
                    a.describe()
                ));
            }
        });
    }
    let mut out: Columns = columns
        .into_iter()
        .filter(|(c, _)| !listed.contains(c))
        .collect();
    out.push((name.to_owned(), ColumnType::Str));
    out.push((value.to_owned(), value_type.unwrap_or(ColumnType::Number)));
    Ok(out)
}

fn unpivot(table: Table, listed: &[String], name: &str, value: &str) -> Result<Table, String> {
    let at: Vec<usize> = listed
        .iter()
        .map(|c| column_index(&table, c))
        .collect::<Result<_, _>>()?;
    let kept: Vec<usize> = (0..table.columns.len())
        .filter(|i| !at.contains(i))
        .collect();
    // Whole numbers stack with numbers as numbers, as the checker typed the column.
    let numbers = at
        .iter()
        .any(|&i| table.rows.iter().any(|r| matches!(r[i], Cell::Number(_))));
    let mut columns: Vec<String> = kept.iter().map(|&i| table.columns[i].clone()).collect();
    columns.extend([name.to_owned(), value.to_owned()]);
    let mut rows = Vec::with_capacity(table.rows.len() * at.len());
    for row in &table.rows {
        for (&i, column) in at.iter().zip(listed) {
            let mut out: Vec<Cell> = kept.iter().map(|&k| row[k].clone()).collect();
            out.push(Cell::Str(column.clone()));
            out.push(match &row[i] {
                Cell::Integer(n) if numbers => Cell::Number(*n as f64),
                cell => cell.clone(),
            });
            rows.push(out);
        }
    }
    Ok(Table {
        name: table.name,
        columns,
        rows,
    })
}

/// The columns after `join(with, on)`: this table's, then `with`'s other than `on`; the
/// names both have besides `on` are returned as clashes.
pub fn joined_columns(left: &Columns, right: &Columns, on: &[String]) -> (Columns, Vec<String>) {
    let mut out = left.clone();
    let mut clashes = Vec::new();
    for (name, ty) in right {
        if on.contains(name) {
            continue;
        }
        if left.iter().any(|(c, _)| c == name) {
            clashes.push(name.clone());
        } else {
            out.push((name.clone(), *ty));
        }
    }
    (out, clashes)
}

fn join(left: Table, right: &Table, on: &[String]) -> Result<Table, String> {
    let left_keys: Vec<usize> = on
        .iter()
        .map(|c| column_index(&left, c))
        .collect::<Result<_, _>>()?;
    let right_keys: Vec<usize> = on
        .iter()
        .map(|c| column_index(right, c))
        .collect::<Result<_, _>>()?;
    let kept: Vec<usize> = (0..right.columns.len())
        .filter(|i| !right_keys.contains(i))
        .collect();
    // Keys compared as their written form: whole numbers, text and true/false exactly.
    let key = |row: &[Cell], at: &[usize]| -> Vec<String> {
        at.iter().map(|&i| format!("{:?}", row[i])).collect()
    };
    let mut by_key: std::collections::HashMap<Vec<String>, Vec<usize>> =
        std::collections::HashMap::new();
    for (i, row) in right.rows.iter().enumerate() {
        by_key.entry(key(row, &right_keys)).or_default().push(i);
    }
    let mut columns = left.columns.clone();
    columns.extend(kept.iter().map(|&i| right.columns[i].clone()));
    let mut rows = Vec::new();
    for row in &left.rows {
        for &matched in by_key.get(&key(row, &left_keys)).into_iter().flatten() {
            let mut joined = row.clone();
            joined.extend(kept.iter().map(|&i| right.rows[matched][i].clone()));
            rows.push(joined);
        }
    }
    Ok(Table {
        name: left.name,
        columns,
        rows,
    })
}

/// A table operation, its arguments typed.
#[derive(Debug, Clone, PartialEq)]
pub enum TableOp {
    /// Keep rows where the expression is true.
    Filter(ColumnExpr),
    /// Sort by a column (stable: equal keys keep their order).
    Sort { by: String, descending: bool },
    /// The first `n` rows.
    Top(usize),
    /// Keep these columns, in this order.
    Columns(Vec<String>),
    /// Add (or replace) columns computed from others, in order.
    Derive(Vec<(String, ColumnExpr)>),
    /// The number of rows.
    Count,
    /// Rows per value of a column, most frequent first.
    GroupCount(String),
    /// One row per element of list columns.
    Explode(Vec<String>),
    /// An inner join on the `on` columns: each row with every row of `with` whose `on`
    /// cells are equal, in this table's order and then `with`'s.
    Join { with: String, on: Vec<String> },
    /// The rows of `with` after these.
    Concat(String),
    /// Long to wide: one row per distinct `rows` key, one column per distinct value of
    /// `columns` (both in order of first appearance) holding `value`. Its columns come
    /// from the data, so the checker knows only `rows`: nothing may follow it.
    Pivot {
        rows: Vec<String>,
        columns: String,
        value: String,
    },
    /// Wide to long: each row once per listed column, with the column's name in `name`
    /// and its cell in `value`.
    Unpivot {
        columns: Vec<String>,
        name: String,
        value: String,
    },
    /// One row per distinct value of the `by` columns (in order of first appearance),
    /// with each new column an aggregate over the group's rows.
    Aggregate {
        by: Vec<String>,
        columns: Vec<(String, Aggregate)>,
    },
}

/// One column `aggregate` computes: a function over an expression of each row.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// One of [`AGGREGATES`].
    pub function: String,
    /// What it reads of each row; `count()` reads nothing.
    pub of: Option<ColumnExpr>,
}

impl Aggregate {
    /// The aggregate over `values` (the expression on each row of a group; a
    /// non-numeric value is skipped, as pandas skips NaN). `std` is the sample standard
    /// deviation (n - 1), as pandas and torch compute it. Where an aggregate is undefined
    /// (the mean of no values, the std of one) the cell is empty, not NaN: a run refuses
    /// non-finite numbers as a sign of a broken model.
    fn over(&self, rows: usize, values: &[f64]) -> Cell {
        let n = values.len() as f64;
        let sum: f64 = values.iter().sum();
        let mean = sum / n;
        let undefined = Cell::Str(String::new());
        match self.function.as_str() {
            "count" => Cell::Integer(rows as i64),
            "sum" => Cell::Number(sum),
            _ if values.is_empty() => undefined,
            "mean" => Cell::Number(mean),
            "min" => Cell::Number(values.iter().copied().fold(f64::INFINITY, f64::min)),
            "max" => Cell::Number(values.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            _ if values.len() < 2 => undefined,
            _ => Cell::Number(
                (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt(),
            ),
        }
    }
}

impl TableOp {
    pub fn bind(call: &Call) -> Result<Self, BindError> {
        let args = Args::new(call);
        let error = |argument: &str, problem: &str| BindError {
            function: call.function.to_owned(),
            argument: argument.to_owned(),
            problem: problem.to_owned(),
        };
        Ok(match call.function {
            "filter" => match call.args.get("where") {
                Some(Value::Expr(condition)) => TableOp::Filter(condition.clone()),
                _ => return Err(error("where", "is missing or not an expression")),
            },
            "sort" => TableOp::Sort {
                by: args.column("by")?,
                descending: args.opt_choice("order")?.as_deref() == Some("desc"),
            },
            "top" => TableOp::Top(args.opt_int("n")?.unwrap_or(0).max(0) as usize),
            "columns" => TableOp::Columns(args.names("names")?),
            "derive" => {
                let mut derived = Vec::new();
                if let Some(Value::List(pairs)) = call.args.get("columns") {
                    for pair in pairs {
                        let Value::List(pair) = pair else { continue };
                        if let [Value::Column(name), Value::Expr(expr)] = pair.as_slice() {
                            derived.push((name.clone(), expr.clone()));
                        }
                    }
                }
                TableOp::Derive(derived)
            }
            "aggregate" => {
                let mut columns = Vec::new();
                if let Some(Value::List(items)) = call.args.get("columns") {
                    for item in items {
                        let Value::List(parts) = item else { continue };
                        match parts.as_slice() {
                            [Value::Column(name), Value::Str(function)] => columns.push((
                                name.clone(),
                                Aggregate {
                                    function: function.clone(),
                                    of: None,
                                },
                            )),
                            [Value::Column(name), Value::Str(function), Value::Expr(of)] => columns
                                .push((
                                    name.clone(),
                                    Aggregate {
                                        function: function.clone(),
                                        of: Some(of.clone()),
                                    },
                                )),
                            _ => {}
                        }
                    }
                }
                TableOp::Aggregate {
                    by: args.names("by")?,
                    columns,
                }
            }
            "join" => TableOp::Join {
                with: args.name("with")?,
                on: args.names("on")?,
            },
            "concat" => TableOp::Concat(args.name("with")?),
            "pivot" => TableOp::Pivot {
                rows: args.names("rows")?,
                columns: args.column("columns")?,
                value: args.column("value")?,
            },
            "unpivot" => TableOp::Unpivot {
                columns: args.names("columns")?,
                name: args.column("name")?,
                value: args.column("value")?,
            },
            "count" => TableOp::Count,
            "group_count" => TableOp::GroupCount(args.column("by")?),
            "explode" => TableOp::Explode(args.names("names")?),
            other => return Err(error("", &format!("`{other}` is not a table operation"))),
        })
    }

    /// The columns of the table after this operation, given those before it.
    pub fn columns(&self, columns: Columns) -> Columns {
        match self {
            TableOp::Columns(names) => names
                .iter()
                .filter_map(|n| columns.iter().find(|(c, _)| c == n).cloned())
                .collect(),
            TableOp::Count => vec![("count".into(), ColumnType::Integer)],
            TableOp::GroupCount(by) => {
                let mut out: Columns = columns.into_iter().filter(|(c, _)| c == by).collect();
                out.push(("count".into(), ColumnType::Integer));
                out
            }
            TableOp::Explode(exploded) => columns
                .into_iter()
                .map(|(c, t)| match t {
                    ColumnType::IntegerList if exploded.contains(&c) => (c, ColumnType::Integer),
                    ColumnType::NumberList if exploded.contains(&c) => (c, ColumnType::Number),
                    _ => (c, t),
                })
                .collect(),
            TableOp::Derive(derived) => {
                let mut out = columns;
                for (name, expr) in derived {
                    let ty = infer(expr, &out);
                    out.retain(|(c, _)| c != name);
                    out.push((name.clone(), ty));
                }
                out
            }
            TableOp::Aggregate { by, columns: made } => {
                let mut out: Columns = by
                    .iter()
                    .filter_map(|b| columns.iter().find(|(c, _)| c == b).cloned())
                    .collect();
                for (name, aggregate) in made {
                    let ty = if aggregate.function == "count" {
                        ColumnType::Integer
                    } else {
                        ColumnType::Number
                    };
                    out.retain(|(c, _)| c != name);
                    out.push((name.clone(), ty));
                }
                out
            }
            TableOp::Pivot { rows, .. } => rows
                .iter()
                .filter_map(|r| columns.iter().find(|(c, _)| c == r).cloned())
                .collect(),
            TableOp::Unpivot {
                columns: listed,
                name,
                value,
            } => unpivoted_columns(columns.clone(), listed, name, value).unwrap_or(columns),
            TableOp::Filter(_) | TableOp::Sort { .. } | TableOp::Top(_) => columns,
            // The other table's columns come from the checker: see `joined_columns`.
            TableOp::Join { .. } | TableOp::Concat(_) => columns,
        }
    }

    /// [`Self::apply`], with the tables made so far for the operations that read another.
    pub fn apply_with(
        &self,
        table: Table,
        tables: &std::collections::BTreeMap<String, Table>,
    ) -> Result<Table, String> {
        let other = |name: &str| {
            tables
                .get(name)
                .ok_or_else(|| format!("no table `{name}` has been made"))
        };
        match self {
            TableOp::Join { with, on } => join(table, other(with)?, on),
            TableOp::Concat(with) => {
                let other = other(with)?;
                if other.columns != table.columns {
                    return Err(format!(
                        "`{with}` has columns {:?}, not {:?}",
                        other.columns, table.columns
                    ));
                }
                let mut table = table;
                table.rows.extend(other.rows.iter().cloned());
                Ok(table)
            }
            _ => self.apply(table),
        }
    }

    /// Applies the operation. Fails when a `derive` makes a number that is not finite (a
    /// division by zero, an overflow), naming the column and the row.
    pub fn apply(&self, mut table: Table) -> Result<Table, String> {
        Ok(match self {
            TableOp::Join { with, .. } | TableOp::Concat(with) => {
                return Err(format!(
                    "this operation reads table `{with}`: run it with apply_with"
                ));
            }
            TableOp::Derive(derived) => {
                for (name, expr) in derived {
                    derive(&mut table, name, expr)?;
                }
                table
            }
            TableOp::Pivot {
                rows,
                columns,
                value,
            } => pivot(table, rows, columns, value)?,
            TableOp::Unpivot {
                columns,
                name,
                value,
            } => unpivot(table, columns, name, value)?,
            TableOp::Filter(condition) => {
                let columns = table.columns.clone();
                table
                    .rows
                    .retain(|row| matches!(eval(condition, &columns, row), Cell::Bool(true)));
                table
            }
            TableOp::Sort { by, descending } => {
                if let Some(i) = table.column(by) {
                    // Stable, so equal keys keep their earlier order and reruns agree.
                    table.rows.sort_by(|a, b| {
                        let ordering = a[i].compare(&b[i]);
                        if *descending {
                            ordering.reverse()
                        } else {
                            ordering
                        }
                    });
                }
                table
            }
            TableOp::Top(n) => {
                table.rows.truncate(*n);
                table
            }
            TableOp::Columns(names) => {
                let keep: Vec<usize> = names.iter().filter_map(|c| table.column(c)).collect();
                Table {
                    columns: keep.iter().map(|&i| table.columns[i].clone()).collect(),
                    rows: table
                        .rows
                        .iter()
                        .map(|row| keep.iter().map(|&i| row[i].clone()).collect())
                        .collect(),
                    name: table.name,
                }
            }
            TableOp::Aggregate { by, columns } => aggregate(table, by, columns),
            TableOp::Count => Table {
                name: table.name,
                columns: vec!["count".into()],
                rows: vec![vec![Cell::Integer(table.rows.len() as i64)]],
            },
            TableOp::GroupCount(by) => {
                let Some(i) = table.column(by) else {
                    return Ok(table);
                };
                let mut groups: Vec<(Cell, i64)> = Vec::new();
                for row in &table.rows {
                    match groups.iter_mut().find(|(key, _)| *key == row[i]) {
                        Some((_, n)) => *n += 1,
                        None => groups.push((row[i].clone(), 1)),
                    }
                }
                // Most frequent first; ties in order of first appearance.
                groups.sort_by_key(|g| std::cmp::Reverse(g.1));
                Table {
                    columns: vec![table.columns[i].clone(), "count".into()],
                    rows: groups
                        .into_iter()
                        .map(|(key, n)| vec![key, Cell::Integer(n)])
                        .collect(),
                    name: table.name,
                }
            }
            TableOp::Explode(names) => {
                let exploded: Vec<usize> = names.iter().filter_map(|c| table.column(c)).collect();
                let mut rows = Vec::new();
                for row in &table.rows {
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
                table.rows = rows;
                table
            }
        })
    }
}

/// One row per group of the `by` columns' values (in order of first appearance; one row
/// for the whole table when `by` is empty), each aggregate computed over its rows.
fn aggregate(table: Table, by: &[String], columns: &[(String, Aggregate)]) -> Table {
    let keys: Vec<usize> = by.iter().filter_map(|c| table.column(c)).collect();
    let mut groups: Vec<(Vec<Cell>, Vec<usize>)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (r, row) in table.rows.iter().enumerate() {
        let g = *index.entry(key_text(row, &keys)).or_insert_with(|| {
            groups.push((keys.iter().map(|&k| row[k].clone()).collect(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(r);
    }
    if keys.is_empty() && groups.is_empty() {
        groups.push((Vec::new(), Vec::new()));
    }
    let mut names: Vec<String> = keys.iter().map(|&k| table.columns[k].clone()).collect();
    for (name, _) in columns {
        names.retain(|n| n != name);
        names.push(name.clone());
    }
    let rows = groups
        .into_iter()
        .map(|(key, members)| {
            let mut cells: Vec<(String, Cell)> = keys
                .iter()
                .map(|&k| table.columns[k].clone())
                .zip(key)
                .collect();
            for (name, aggregate) in columns {
                let values: Vec<f64> = match &aggregate.of {
                    Some(of) => members
                        .iter()
                        .filter_map(|&r| eval(of, &table.columns, &table.rows[r]).number())
                        .filter(|x| !x.is_nan())
                        .collect(),
                    None => Vec::new(),
                };
                cells.retain(|(n, _)| n != name);
                cells.push((name.clone(), aggregate.over(members.len(), &values)));
            }
            cells.into_iter().map(|(_, cell)| cell).collect()
        })
        .collect();
    Table {
        name: table.name,
        columns: names,
        rows,
    }
}

/// Adds or replaces column `name` with `expr` computed on each row.
fn derive(table: &mut Table, name: &str, expr: &ColumnExpr) -> Result<(), String> {
    let values: Vec<Cell> = table
        .rows
        .iter()
        .map(|row| eval(expr, &table.columns, row))
        .collect();
    if let Some((row, value)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| matches!(v, Cell::Number(x) if !x.is_finite()))
    {
        return Err(format!(
            "`derive({name} = {expr})` gives {} on row {row} of `{}` (a division by zero, or a number too large); guard it with `filter` first",
            value.text(),
            table.name
        ));
    }
    match table.column(name) {
        Some(i) => table
            .rows
            .iter_mut()
            .zip(values)
            .for_each(|(row, v)| row[i] = v),
        None => {
            table.columns.push(name.to_owned());
            table
                .rows
                .iter_mut()
                .zip(values)
                .for_each(|(row, v)| row.push(v));
        }
    }
    Ok(())
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
                ("contains", [Cell::Str(text), Cell::Str(part)])
                    if !matches!(args[0], ColumnExpr::List(_)) =>
                {
                    Cell::Bool(text.contains(part.as_str()))
                }
                ("contains", [_, needle]) => Cell::Bool(
                    items(&args[0], columns, row)
                        .iter()
                        .any(|i| same(i, needle)),
                ),
                ("contains_all" | "contains_any", [_, _]) => {
                    let haystack = items(&args[0], columns, row);
                    let needles = items(&args[1], columns, row);
                    let found = |n: &Cell| haystack.iter().any(|i| same(i, n));
                    Cell::Bool(if function == "contains_all" {
                        needles.iter().all(found)
                    } else {
                        needles.iter().any(found)
                    })
                }
                ("starts_with", [Cell::Str(text), Cell::Str(part)]) => {
                    Cell::Bool(text.starts_with(part.as_str()))
                }
                ("ends_with", [Cell::Str(text), Cell::Str(part)]) => {
                    Cell::Bool(text.ends_with(part.as_str()))
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
        ColumnExpr::List(items) => {
            let cells: Vec<Cell> = items.iter().map(|i| eval(i, columns, row)).collect();
            let whole = items.iter().zip(&cells).all(|(item, cell)| {
                matches!(cell, Cell::Integer(_)) || whole_literal(item).is_some()
            });
            match cells.iter().map(Cell::number).collect::<Option<Vec<f64>>>() {
                Some(numbers) if whole => {
                    Cell::IntegerList(numbers.iter().map(|&x| x as i64).collect())
                }
                Some(numbers) => Cell::NumberList(numbers),
                // Lists of text are only searched (`items`), never cells of a table.
                None => Cell::Str(String::new()),
            }
        }
        // Replaced by its value before any row is evaluated; unresolved, it matches nothing.
        ColumnExpr::Value(..) => Cell::Str(String::new()),
    }
}

/// The elements of a list-valued expression on one row: a written list item by item, a
/// list cell element by element.
fn items(expr: &ColumnExpr, columns: &[String], row: &[Cell]) -> Vec<Cell> {
    match expr {
        ColumnExpr::List(items) => items.iter().map(|i| eval(i, columns, row)).collect(),
        other => match eval(other, columns, row) {
            Cell::IntegerList(v) => v.into_iter().map(Cell::Integer).collect(),
            Cell::NumberList(v) => v.into_iter().map(Cell::Number).collect(),
            single => vec![single],
        },
    }
}

/// A written whole number (`947`), which lists keep whole.
pub fn whole_literal(expr: &ColumnExpr) -> Option<i64> {
    match expr {
        ColumnExpr::Number(x) if x.fract() == 0.0 && x.abs() < 9e15 => Some(*x as i64),
        _ => None,
    }
}

/// Equality as `==` means it: numbers by value (3 == 3.0), text by text.
fn same(a: &Cell, b: &Cell) -> bool {
    a.compare(b) == Ordering::Equal
}

/// `expr` with every run-time `let` replaced by its value, or why one cannot be.
pub fn resolve(
    expr: &ColumnExpr,
    values: &std::collections::BTreeMap<String, Value>,
) -> Result<ColumnExpr, String> {
    let all = |exprs: &[ColumnExpr]| -> Result<Vec<ColumnExpr>, String> {
        exprs.iter().map(|e| resolve(e, values)).collect()
    };
    Ok(match expr {
        ColumnExpr::Value(name, _) => {
            let value = values
                .get(name)
                .ok_or_else(|| format!("`{name}` has no value yet"))?;
            literal(value).ok_or_else(|| {
                format!("`{name}` = {value} cannot be used in a column expression")
            })?
        }
        ColumnExpr::Not(e) => ColumnExpr::Not(Box::new(resolve(e, values)?)),
        ColumnExpr::Neg(e) => ColumnExpr::Neg(Box::new(resolve(e, values)?)),
        ColumnExpr::Binary(op, l, r) => ColumnExpr::Binary(
            *op,
            Box::new(resolve(l, values)?),
            Box::new(resolve(r, values)?),
        ),
        ColumnExpr::Call(function, args) => ColumnExpr::Call(function.clone(), all(args)?),
        ColumnExpr::List(items) => ColumnExpr::List(all(items)?),
        other => other.clone(),
    })
}

/// A computed value as a literal of a column expression.
fn literal(value: &Value) -> Option<ColumnExpr> {
    Some(match value {
        Value::Integer(n) => ColumnExpr::Number(*n as f64),
        Value::Number(x) => ColumnExpr::Number(*x),
        Value::Str(s) => ColumnExpr::Str(s.clone()),
        Value::Bool(b) => ColumnExpr::Bool(*b),
        Value::List(items) => ColumnExpr::List(items.iter().map(literal).collect::<Option<_>>()?),
        _ => return None,
    })
}

/// Every column expression in a call's arguments with its `let` values filled in.
pub fn resolve_call(
    call: &Call,
    values: &std::collections::BTreeMap<String, Value>,
) -> Result<Call, String> {
    fn value(
        v: &Value,
        values: &std::collections::BTreeMap<String, Value>,
    ) -> Result<Value, String> {
        Ok(match v {
            Value::Expr(e) => Value::Expr(resolve(e, values)?),
            Value::List(items) => Value::List(
                items
                    .iter()
                    .map(|i| value(i, values))
                    .collect::<Result<_, _>>()?,
            ),
            other => other.clone(),
        })
    }
    let mut resolved = call.clone();
    for v in resolved.args.values_mut() {
        *v = value(v, values)?;
    }
    Ok(resolved)
}

/// The columns an expression reads.
pub fn columns_read(expr: &ColumnExpr) -> Vec<&str> {
    match expr {
        ColumnExpr::Column(c) => vec![c.as_str()],
        ColumnExpr::Number(_) | ColumnExpr::Str(_) | ColumnExpr::Bool(_) => Vec::new(),
        ColumnExpr::Not(e) | ColumnExpr::Neg(e) => columns_read(e),
        ColumnExpr::Binary(_, l, r) => {
            let mut out = columns_read(l);
            out.extend(columns_read(r));
            out
        }
        ColumnExpr::Call(_, args) | ColumnExpr::List(args) => {
            args.iter().flat_map(columns_read).collect()
        }
        ColumnExpr::Value(..) => Vec::new(),
    }
}

/// The type of an already checked column expression.
pub fn infer(expr: &ColumnExpr, columns: &[(String, ColumnType)]) -> ColumnType {
    match expr {
        ColumnExpr::Column(c) => columns
            .iter()
            .find(|(n, _)| n == c)
            .map_or(ColumnType::Number, |(_, t)| *t),
        ColumnExpr::Number(_) => ColumnType::Number,
        ColumnExpr::Str(_) => ColumnType::Str,
        ColumnExpr::Bool(_) | ColumnExpr::Not(_) => ColumnType::Bool,
        ColumnExpr::Neg(inner) => infer(inner, columns),
        ColumnExpr::Binary(op, l, r) => match op {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => {
                if infer(l, columns) == ColumnType::Integer
                    && infer(r, columns) == ColumnType::Integer
                {
                    ColumnType::Integer
                } else {
                    ColumnType::Number
                }
            }
            BinaryOp::Div => ColumnType::Number,
            _ => ColumnType::Bool,
        },
        ColumnExpr::Call(function, args) => match function.as_str() {
            "abs" => args
                .first()
                .map_or(ColumnType::Number, |a| infer(a, columns)),
            "len" => ColumnType::Integer,
            _ => ColumnType::Bool,
        },
        // Lists of text never reach a table (the checker refuses them outside searches).
        ColumnExpr::List(items) => {
            let types: Vec<ColumnType> = items.iter().map(|i| infer(i, columns)).collect();
            let whole = |(item, ty): (&ColumnExpr, &ColumnType)| {
                *ty == ColumnType::Integer || whole_literal(item).is_some()
            };
            if !types.iter().all(|t| t.is_numeric()) {
                ColumnType::StrList
            } else if items.iter().zip(&types).all(whole) {
                ColumnType::IntegerList
            } else {
                ColumnType::NumberList
            }
        }
        ColumnExpr::Value(_, ty) => *ty,
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
        ops(pipeline).iter().fold(tokens(), |t, op| {
            TableOp::bind(op).unwrap().apply(t).unwrap()
        })
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
    fn lists_and_text_are_searched() {
        let rows = |pipeline: &str| -> Vec<String> {
            run(pipeline).rows.iter().map(|r| r[0].text()).collect()
        };
        assert_eq!(
            rows("filter(contains_all(top_k_features, [1669, 3489]))"),
            ["c"]
        );
        assert_eq!(
            rows("filter(contains_any(top_k_features, [7, 3489]))"),
            ["a", "b", "c"]
        );
        assert_eq!(
            rows("filter(contains([\"b\", \"c\"], str_tokens))"),
            ["b", "c"]
        );
        assert_eq!(rows("filter(contains([1, 3], loss))"), ["a", "b"]);
        assert_eq!(
            rows("filter(starts_with(str_tokens, \"a\") or ends_with(str_tokens, \"c\"))"),
            ["a", "c"]
        );
        assert_eq!(rows("filter(contains(str_tokens, \"b\"))"), ["b"]);
    }

    #[test]
    fn let_values_computed_at_run_time_are_filled_in_before_rows_are_read() {
        let features = ColumnExpr::Value("FEATURES".into(), ColumnType::IntegerList);
        let condition = ColumnExpr::Call(
            "contains_all".into(),
            vec![ColumnExpr::Column("top_k_features".into()), features],
        );
        let values = std::collections::BTreeMap::from([(
            "FEATURES".to_owned(),
            Value::List(vec![Value::Integer(1669), Value::Integer(7)]),
        )]);
        let resolved = resolve(&condition, &values).unwrap();
        let kept = TableOp::Filter(resolved).apply(tokens()).unwrap();
        assert_eq!(kept.rows.len(), 1);
        assert_eq!(kept.rows[0][0], Cell::Str("a".into()));
        let unknown = resolve(&condition, &std::collections::BTreeMap::new());
        assert_eq!(unknown.unwrap_err(), "`FEATURES` has no value yet");
        // A list value derived into a column stays a list of whole numbers.
        let derived = TableOp::Derive(vec![(
            "chosen".into(),
            resolve(
                &ColumnExpr::Value("FEATURES".into(), ColumnType::IntegerList),
                &values,
            )
            .unwrap(),
        )])
        .apply(tokens())
        .unwrap();
        assert_eq!(derived.rows[0][4], Cell::IntegerList(vec![1669, 7]));
    }

    #[test]
    fn aggregate_makes_one_row_per_group_in_order_of_first_appearance() {
        let mut table = tokens();
        table.rows.push(vec![
            Cell::Str("a".into()),
            Cell::Number(5.0),
            Cell::IntegerList(vec![]),
            Cell::NumberList(vec![]),
        ]);
        let ops = ops(
            "aggregate(by = [str_tokens], n = count(), mean_loss = mean(loss), total = sum(loss), low = min(loss), high = max(loss), spread = std(loss), big = mean(loss > 2))",
        );
        let t = TableOp::bind(&ops[0]).unwrap().apply(table).unwrap();
        assert_eq!(
            t.columns,
            [
                "str_tokens",
                "n",
                "mean_loss",
                "total",
                "low",
                "high",
                "spread",
                "big"
            ]
        );
        let row = |i: usize| t.rows[i].iter().map(Cell::text).collect::<Vec<_>>();
        assert_eq!(
            row(0),
            [
                "a", "2", "3.000000", "6.000000", "1.000000", "5.000000", "2.828427", "0.500000"
            ]
        );
        assert_eq!(row(1)[..3], ["b", "1", "3.000000"]);
        // One value has no sample standard deviation: the cell is empty.
        assert_eq!(row(1)[6], "");
        assert_eq!(row(2)[0], "c");
        // Without `by`, one row over the whole table.
        let whole = run("aggregate(n = count(), mean_loss = mean(loss))");
        assert_eq!(whole.columns, ["n", "mean_loss"]);
        assert_eq!(whole.rows, [vec![Cell::Integer(3), Cell::Number(2.0)]]);
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

    #[test]
    fn join_pairs_rows_with_equal_keys_in_order_and_concat_stacks() {
        let mut heads = Table::new("heads", &["layer", "head", "score"]);
        for (layer, head, score) in [(0, 0, 0.1), (0, 1, 0.4), (1, 0, 0.2), (2, 0, 0.9)] {
            heads.rows.push(vec![
                Cell::Integer(layer),
                Cell::Integer(head),
                Cell::Number(score),
            ]);
        }
        let mut layers = Table::new("layers", &["layer", "best"]);
        for (layer, best) in [(1, 0.2), (0, 0.4), (0, 0.5)] {
            layers
                .rows
                .push(vec![Cell::Integer(layer), Cell::Number(best)]);
        }
        let tables = [
            ("layers".to_owned(), layers),
            ("heads2".to_owned(), heads.clone()),
        ]
        .into_iter()
        .collect();
        let joined = TableOp::Join {
            with: "layers".into(),
            on: vec!["layer".into()],
        }
        .apply_with(heads.clone(), &tables)
        .unwrap();
        assert_eq!(joined.columns, ["layer", "head", "score", "best"]);
        // Layer 0 matches two rows of `layers` (in their order); layer 2 none (inner join).
        let best: Vec<(i64, f64)> = joined
            .rows
            .iter()
            .map(|r| match (&r[0], &r[3]) {
                (Cell::Integer(l), Cell::Number(b)) => (*l, *b),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(best, [(0, 0.4), (0, 0.5), (0, 0.4), (0, 0.5), (1, 0.2)]);

        let stacked = TableOp::Concat("heads2".into())
            .apply_with(heads.clone(), &tables)
            .unwrap();
        assert_eq!(stacked.rows.len(), 8);
        assert_eq!(stacked.rows[4], heads.rows[0]);
        let refused = TableOp::Concat("layers".into()).apply_with(heads, &tables);
        assert!(refused.is_err(), "different columns are not stacked");
    }

    #[test]
    fn pivot_spreads_a_long_table_and_unpivot_stacks_it_back() {
        let mut long = Table::new("sweep", &["layer", "head", "change"]);
        for (layer, head, change) in [(0, 0, 0.1), (0, 1, 0.4), (1, 0, 0.2), (1, 1, -0.3)] {
            long.rows.push(vec![
                Cell::Integer(layer),
                Cell::Integer(head),
                Cell::Number(change),
            ]);
        }
        let pivot = TableOp::Pivot {
            rows: vec!["layer".into()],
            columns: "head".into(),
            value: "change".into(),
        };
        let wide = pivot.apply(long.clone()).unwrap();
        assert_eq!(wide.columns, ["layer", "change_head_0", "change_head_1"]);
        assert_eq!(
            wide.rows[1],
            [Cell::Integer(1), Cell::Number(0.2), Cell::Number(-0.3)]
        );

        let unpivot = TableOp::Unpivot {
            columns: vec!["change_head_0".into(), "change_head_1".into()],
            name: "which".into(),
            value: "change".into(),
        };
        let back = unpivot.apply(wide).unwrap();
        assert_eq!(back.columns, ["layer", "which", "change"]);
        let changes: Vec<&Cell> = back.rows.iter().map(|r| &r[2]).collect();
        let original: Vec<&Cell> = long.rows.iter().map(|r| &r[2]).collect();
        assert_eq!(changes, original, "row-major order comes back");
        assert_eq!(back.rows[1][1], Cell::Str("change_head_1".into()));

        // A key with no row leaves its cell empty; two rows for one cell are refused.
        let mut gappy = long.clone();
        gappy.rows.remove(3);
        let wide = pivot.apply(gappy).unwrap();
        assert_eq!(wide.rows[1][2], Cell::Str(String::new()));
        let mut doubled = long.clone();
        doubled.rows.push(long.rows[0].clone());
        let refused = pivot.apply(doubled).unwrap_err();
        assert!(refused.contains("aggregate"), "{refused}");
        // Values that would name the same column are refused, not merged.
        let mut text = Table::new("t", &["k", "tok", "x"]);
        for tok in [" the", "the"] {
            text.rows.push(vec![
                Cell::Integer(0),
                Cell::Str(tok.into()),
                Cell::Number(1.0),
            ]);
        }
        let clash = TableOp::Pivot {
            rows: vec!["k".into()],
            columns: "tok".into(),
            value: "x".into(),
        }
        .apply(text)
        .unwrap_err();
        assert!(clash.contains("x_tok_the"), "{clash}");
        assert_eq!(
            pivoted_name("loss", "scale", &Cell::Number(-1.5)),
            "loss_scale_m1p5"
        );
    }

    #[test]
    fn unpivot_types_its_value_column() {
        let columns: Columns = vec![
            ("prompt".into(), ColumnType::Str),
            ("n".into(), ColumnType::Integer),
            ("loss".into(), ColumnType::Number),
        ];
        let stacked = unpivoted_columns(
            columns.clone(),
            &["n".into(), "loss".into()],
            "which",
            "value",
        )
        .unwrap();
        assert_eq!(stacked[2], ("value".to_owned(), ColumnType::Number));
        assert!(unpivoted_columns(columns, &["prompt".into(), "loss".into()], "w", "v").is_err());
        let ok = ops("pivot(rows = [str_tokens], columns = pos, value = loss)");
        assert_eq!(ok.len(), 1);
    }
}
