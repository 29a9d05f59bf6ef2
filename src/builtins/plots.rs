//! Plots: their parameters, their typed form, and the data each shows, read from the
//! table it names. Drawing is the report's job (`report::plots`); deciding the points
//! here lets a report be redrawn without rerunning the model.

use super::args::{Args, BindError, Text};
use crate::builtins::spec::{Builtin, COLUMNS, Produces, Type, opt, req};
use crate::plan::Call;
use crate::results::{Plot, PlotKind, Table};

pub const SCATTER: Builtin = Builtin {
    name: "scatter",
    produces: Produces::Plot,
    summary: "scatter plot, optionally with marginal histograms",
    params: &[
        req("table", Type::Table),
        req("x", Type::Column),
        req("y", Type::Column),
        opt("marginals", Type::Bool),
        opt("hover", COLUMNS),
        opt("title", Type::Str),
    ],
};

pub const HISTOGRAM: Builtin = Builtin {
    name: "histogram",
    produces: Produces::Plot,
    summary: "histogram of a column",
    params: &[
        req("table", Type::Table),
        req("x", Type::Column),
        opt("bins", Type::Integer).within(1.0, 10_000.0),
        opt("title", Type::Str),
    ],
};

pub const LINE: Builtin = Builtin {
    name: "line",
    produces: Produces::Plot,
    summary: "several series against the row order, top points labelled",
    params: &[
        req("table", Type::Table),
        req("y", COLUMNS),
        opt("x", Type::Column),
        opt("label", Type::Column),
        opt("top_labels", Type::Integer).within(0.0, 1000.0),
        opt("title", Type::Str),
    ],
};

pub const BAR: Builtin = Builtin {
    name: "bar",
    produces: Produces::Plot,
    summary: "bar chart",
    params: &[
        req("table", Type::Table),
        req("x", Type::Column),
        req("y", Type::Column),
        opt("title", Type::Str),
    ],
};

pub const HEATMAP: Builtin = Builtin {
    name: "heatmap",
    produces: Produces::Plot,
    summary: "a value over row keys by column keys",
    params: &[
        req("table", Type::Table),
        req("rows", COLUMNS),
        req("columns", COLUMNS),
        req("value", Type::Column),
        opt("title", Type::Str),
    ],
};

/// A plot call, its arguments typed.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotCall {
    /// The table it reads.
    pub table: String,
    pub title: Option<String>,
    pub kind: PlotArgs,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PlotArgs {
    Scatter {
        x: String,
        y: String,
        marginals: bool,
        hover: Vec<String>,
    },
    Histogram {
        x: String,
        bins: usize,
    },
    Line {
        y: Vec<String>,
        x: Option<String>,
        label: Option<String>,
        top_labels: usize,
    },
    Bar {
        x: String,
        y: String,
    },
    Heatmap {
        rows: Vec<String>,
        columns: Vec<String>,
        value: String,
    },
}

impl PlotCall {
    pub fn bind(call: &Call) -> Result<Self, BindError> {
        let args = Args::new(call);
        let kind = match call.function {
            "scatter" => PlotArgs::Scatter {
                x: args.column("x")?,
                y: args.column("y")?,
                marginals: args.opt_bool("marginals")?.unwrap_or(false),
                hover: args.names("hover")?,
            },
            "histogram" => PlotArgs::Histogram {
                x: args.column("x")?,
                bins: args.opt_int("bins")?.unwrap_or(50).clamp(1, 1000) as usize,
            },
            "line" => PlotArgs::Line {
                y: args.names("y")?,
                x: args.opt_column("x")?,
                label: args.opt_column("label")?,
                top_labels: args.opt_int("top_labels")?.unwrap_or(0).max(0) as usize,
            },
            "bar" => PlotArgs::Bar {
                x: args.column("x")?,
                y: args.column("y")?,
            },
            "heatmap" => PlotArgs::Heatmap {
                rows: args.names("rows")?,
                columns: args.names("columns")?,
                value: args.column("value")?,
            },
            other => {
                return Err(BindError {
                    function: other.to_owned(),
                    argument: String::new(),
                    problem: "is not a plot".to_owned(),
                });
            }
        };
        Ok(Self {
            table: args.name("table")?,
            title: match args.opt_text("title")? {
                Some(Text::Given(title)) => Some(title),
                _ => None,
            },
            kind,
        })
    }

    /// The plot's data from `table`, named `name`.
    pub fn run(&self, name: &str, table: &Table) -> Result<Plot, String> {
        let (default_title, kind) = match &self.kind {
            PlotArgs::Scatter {
                x,
                y,
                marginals,
                hover: hover_columns,
            } => {
                let (x, y) = (x.clone(), y.clone());
                let hover_values: Vec<Vec<String>> = hover_columns
                    .iter()
                    .map(|c| texts(table, c))
                    .collect::<Result<_, _>>()?;
                let hover = (0..table.rows.len())
                    .map(|r| {
                        hover_columns
                            .iter()
                            .zip(&hover_values)
                            .map(|(c, v)| format!("{c}: {}", v[r]))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .collect();
                let points = numbers(table, &x)?
                    .into_iter()
                    .zip(numbers(table, &y)?)
                    .collect();
                (
                    format!("{y} against {x}"),
                    PlotKind::Scatter {
                        x_label: x,
                        y_label: y,
                        points,
                        hover,
                        marginals: *marginals,
                    },
                )
            }
            PlotArgs::Histogram { x, bins } => {
                let (x, bins) = (x.clone(), *bins);
                (
                    format!("distribution of {x}"),
                    PlotKind::Histogram {
                        values: numbers(table, &x)?,
                        x_label: x,
                        bins,
                    },
                )
            }
            PlotArgs::Line {
                y: ys,
                x,
                label,
                top_labels,
            } => {
                let series = ys
                    .iter()
                    .map(|y| Ok((y.clone(), numbers(table, y)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                let (x_label, x) = match x {
                    Some(x) => (x.clone(), numbers(table, x)?),
                    None => (
                        "row".to_owned(),
                        (0..table.rows.len()).map(|r| r as f64).collect(),
                    ),
                };
                let labels = match label {
                    Some(label) => texts(table, label)?,
                    None => vec![String::new(); table.rows.len()],
                };
                let top_labels = *top_labels;
                (
                    ys.join(", "),
                    PlotKind::Line {
                        x_label,
                        x,
                        series,
                        labels,
                        top_labels,
                    },
                )
            }
            PlotArgs::Bar { x, y } => {
                let (x, y) = (x.clone(), y.clone());
                (
                    format!("{y} by {x}"),
                    PlotKind::Bar {
                        categories: texts(table, &x)?,
                        values: numbers(table, &y)?,
                        x_label: x,
                        y_label: y,
                    },
                )
            }
            PlotArgs::Heatmap {
                rows: row_columns,
                columns: column_columns,
                value,
            } => {
                let value = value.clone();
                let (row_keys, column_keys) =
                    (keys(table, row_columns)?, keys(table, column_columns)?);
                let values_of = numbers(table, &value)?;
                let first_seen = |all: &[String]| {
                    let mut seen: Vec<String> = Vec::new();
                    for k in all {
                        if !seen.contains(k) {
                            seen.push(k.clone());
                        }
                    }
                    seen
                };
                let (rows, columns) = (first_seen(&row_keys), first_seen(&column_keys));
                let mut values = vec![vec![None; columns.len()]; rows.len()];
                for (r, v) in values_of.iter().enumerate() {
                    let i = rows.iter().position(|k| *k == row_keys[r]).expect("seen");
                    let j = columns
                        .iter()
                        .position(|k| *k == column_keys[r])
                        .expect("seen");
                    values[i][j] = Some(*v);
                }
                (
                    format!(
                        "{value} by {} and {}",
                        row_columns.join(", "),
                        column_columns.join(", ")
                    ),
                    PlotKind::Heatmap {
                        row_label: row_columns.join(", "),
                        column_label: column_columns.join(", "),
                        value_label: value,
                        rows,
                        columns,
                        values,
                    },
                )
            }
        };
        Ok(Plot {
            name: name.to_owned(),
            title: self.title.clone().unwrap_or(default_title),
            kind,
        })
    }
}

fn numbers(table: &Table, column: &str) -> Result<Vec<f64>, String> {
    let index = table
        .column(column)
        .ok_or_else(|| format!("table `{}` has no column `{column}`", table.name))?;
    table
        .rows
        .iter()
        .map(|row| {
            row[index]
                .number()
                .ok_or_else(|| format!("column `{column}` of `{}` is not numeric", table.name))
        })
        .collect()
}

fn texts(table: &Table, column: &str) -> Result<Vec<String>, String> {
    let index = table
        .column(column)
        .ok_or_else(|| format!("table `{}` has no column `{column}`", table.name))?;
    Ok(table.rows.iter().map(|row| row[index].text()).collect())
}

/// Row keys made of several columns, `layer1 = 0, head1 = 3` -> `L0H3` when the pair is a
/// layer and a head, otherwise the values joined with `/`.
fn keys(table: &Table, columns: &[String]) -> Result<Vec<String>, String> {
    let values: Vec<Vec<String>> = columns
        .iter()
        .map(|c| texts(table, c))
        .collect::<Result<_, _>>()?;
    let layer_head =
        columns.len() == 2 && columns[0].starts_with("layer") && columns[1].starts_with("head");
    Ok((0..table.rows.len())
        .map(|r| {
            if layer_head {
                format!("L{}H{}", values[0][r], values[1][r])
            } else {
                values
                    .iter()
                    .map(|v| v[r].as_str())
                    .collect::<Vec<_>>()
                    .join("/")
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Value;
    use crate::results::Cell;
    use std::collections::BTreeMap;

    /// A plot call on table `c`.
    fn call(function: &'static str, args: &[(&'static str, Value)]) -> Call {
        let mut args: BTreeMap<_, _> = args.iter().cloned().collect();
        args.insert("table", Value::Name("c".into()));
        Call { function, args }
    }

    fn plot(name: &str, call: &Call, table: &Table) -> Result<Plot, String> {
        PlotCall::bind(call).unwrap().run(name, table)
    }

    fn composition() -> Table {
        let mut table = Table::new("c", &["layer1", "head1", "layer2", "head2", "score"]);
        for (h1, h2, s) in [(0, 0, 0.1), (0, 1, 0.2), (1, 0, 0.3)] {
            table.rows.push(vec![
                Cell::Integer(0),
                Cell::Integer(h1),
                Cell::Integer(1),
                Cell::Integer(h2),
                Cell::Number(s),
            ]);
        }
        table
    }

    #[test]
    fn a_heatmap_places_each_row_at_its_keys_and_leaves_the_rest_empty() {
        let columns = |names: &[&str]| {
            Value::List(names.iter().map(|n| Value::Column((*n).into())).collect())
        };
        let plot = plot(
            "h",
            &call(
                "heatmap",
                &[
                    ("rows", columns(&["layer1", "head1"])),
                    ("columns", columns(&["layer2", "head2"])),
                    ("value", Value::Column("score".into())),
                ],
            ),
            &composition(),
        )
        .unwrap();
        let PlotKind::Heatmap {
            rows,
            columns,
            values,
            ..
        } = plot.kind
        else {
            panic!("a heatmap")
        };
        assert_eq!(rows, ["L0H0", "L0H1"]);
        assert_eq!(columns, ["L1H0", "L1H1"]);
        assert_eq!(values, [[Some(0.1), Some(0.2)], [Some(0.3), None]]);
    }

    #[test]
    fn a_plot_of_a_text_column_says_which_column() {
        let error = plot(
            "s",
            &call("histogram", &[("x", Value::Column("missing".into()))]),
            &composition(),
        )
        .unwrap_err();
        assert!(error.contains("no column `missing`"), "{error}");
    }
}
