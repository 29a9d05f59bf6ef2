//! Plot steps: the data a plot shows, read from the tables it names. Drawing is the
//! report's job (`report::plots`); this side decides what the points are, so a report
//! can be redrawn without rerunning the model.

use crate::plan::{Call, Value};
use crate::results::{Plot, PlotKind, Table};

fn column_arg(call: &Call, key: &str) -> Option<String> {
    match call.args.get(key) {
        Some(Value::Column(c)) => Some(c.clone()),
        _ => None,
    }
}

fn columns_arg(call: &Call, key: &str) -> Vec<String> {
    match call.args.get(key) {
        Some(Value::List(items)) => items
            .iter()
            .filter_map(|v| match v {
                Value::Column(c) => Some(c.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
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

/// The plot `call` (a `scatter`, `histogram`, `line`, `bar` or `heatmap`) of `table`.
pub fn plot(name: &str, call: &Call, table: &Table) -> Result<Plot, String> {
    let title_arg = match call.args.get("title") {
        Some(Value::Str(t)) => Some(t.clone()),
        _ => None,
    };
    let (default_title, kind) = match call.function {
        "scatter" => {
            let (x, y) = (
                column_arg(call, "x").unwrap_or_default(),
                column_arg(call, "y").unwrap_or_default(),
            );
            let hover_columns = columns_arg(call, "hover");
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
                    marginals: matches!(call.args.get("marginals"), Some(Value::Bool(true))),
                },
            )
        }
        "histogram" => {
            let x = column_arg(call, "x").unwrap_or_default();
            let bins = match call.args.get("bins") {
                Some(Value::Integer(n)) => (*n).clamp(1, 1000) as usize,
                _ => 50,
            };
            (
                format!("distribution of {x}"),
                PlotKind::Histogram {
                    values: numbers(table, &x)?,
                    x_label: x,
                    bins,
                },
            )
        }
        "line" => {
            let ys = columns_arg(call, "y");
            let series = ys
                .iter()
                .map(|y| Ok((y.clone(), numbers(table, y)?)))
                .collect::<Result<Vec<_>, String>>()?;
            let (x_label, x) = match column_arg(call, "x") {
                Some(x) => (x.clone(), numbers(table, &x)?),
                None => (
                    "row".to_owned(),
                    (0..table.rows.len()).map(|r| r as f64).collect(),
                ),
            };
            let labels = match column_arg(call, "label") {
                Some(label) => texts(table, &label)?,
                None => vec![String::new(); table.rows.len()],
            };
            let top_labels = match call.args.get("top_labels") {
                Some(Value::Integer(n)) => (*n).max(0) as usize,
                _ => 0,
            };
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
        "bar" => {
            let (x, y) = (
                column_arg(call, "x").unwrap_or_default(),
                column_arg(call, "y").unwrap_or_default(),
            );
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
        "heatmap" => {
            let (row_columns, column_columns) =
                (columns_arg(call, "rows"), columns_arg(call, "columns"));
            let value = column_arg(call, "value").unwrap_or_default();
            let (row_keys, column_keys) =
                (keys(table, &row_columns)?, keys(table, &column_columns)?);
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
        other => return Err(format!("`{other}` is not a plot")),
    };
    Ok(Plot {
        name: name.to_owned(),
        title: title_arg.unwrap_or(default_title),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Cell;
    use std::collections::BTreeMap;

    fn call(function: &'static str, args: &[(&'static str, Value)]) -> Call {
        Call {
            function,
            args: args.iter().cloned().collect::<BTreeMap<_, _>>(),
        }
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
