//! `qexp diff`: which numbers changed between two reports, and by how much. Reads the
//! `results/*.csv` files (the diffable form of a report), so it works on any two report
//! folders, from two runs or two commits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{} is not a qexp report folder (no results/ inside)", .0.display())]
    NotAReport(PathBuf),
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
}

use crate::results::tolerance::{Written, cells_agree};

/// One table's CSV: its header and rows of cells.
type Csv = Written;

fn tables(report: &Path) -> Result<BTreeSet<String>, DiffError> {
    let dir = report.join("results");
    let entries = std::fs::read_dir(&dir).map_err(|_| DiffError::NotAReport(report.to_owned()))?;
    Ok(entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".csv").map(str::to_owned)
        })
        .collect())
}

fn read(report: &Path, table: &str) -> Result<Csv, DiffError> {
    let path = report.join("results").join(format!("{table}.csv"));
    let failed = |e: csv::Error| DiffError::Read {
        path: path.clone(),
        message: e.to_string(),
    };
    let mut reader = csv::Reader::from_path(&path).map_err(failed)?;
    let columns = reader
        .headers()
        .map_err(failed)?
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.map(|r| r.iter().map(str::to_owned).collect()))
        .collect::<Result<_, _>>()
        .map_err(failed)?;
    Ok(Csv { columns, rows })
}

/// Every table a report holds, as written, by name; empty when `report` is not a report
/// folder (a first run).
pub fn written_tables(report: &Path) -> BTreeMap<String, Written> {
    let Ok(names) = tables(report) else {
        return BTreeMap::new();
    };
    names
        .into_iter()
        .filter_map(|name| Some((name.clone(), read(report, &name).ok()?)))
        .collect()
}

/// What changed from report `a` to report `b`, as text; empty when their result files
/// agree: text equal, numbers within their column's tolerance (see
/// `results::tolerance`), or within `tolerance` when given. At most `examples` changed
/// cells per table are listed; every changed column is summarised.
pub fn diff(
    a: &Path,
    b: &Path,
    tolerance: Option<f64>,
    examples: usize,
) -> Result<String, DiffError> {
    let (in_a, in_b) = (tables(a)?, tables(b)?);
    let mut out = String::new();
    for name in in_a.union(&in_b) {
        match (in_a.contains(name), in_b.contains(name)) {
            (true, false) => {
                writeln!(out, "table {name}: only in {}", a.display()).expect("to a String")
            }
            (false, true) => {
                writeln!(out, "table {name}: only in {}", b.display()).expect("to a String")
            }
            _ => out.push_str(&diff_table(
                name,
                &read(a, name)?,
                &read(b, name)?,
                tolerance,
                examples,
            )),
        }
    }
    Ok(out)
}

fn diff_table(name: &str, a: &Csv, b: &Csv, tolerance: Option<f64>, examples: usize) -> String {
    let mut out = String::new();
    let mut say = |line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    let removed: Vec<&String> = a
        .columns
        .iter()
        .filter(|c| !b.columns.contains(c))
        .collect();
    let added: Vec<&String> = b
        .columns
        .iter()
        .filter(|c| !a.columns.contains(c))
        .collect();
    if !removed.is_empty() || !added.is_empty() {
        say(format!(
            "table {name}: columns removed {removed:?}, added {added:?}"
        ));
    }
    if a.rows.len() != b.rows.len() {
        say(format!(
            "table {name}: {} rows -> {} rows",
            a.rows.len(),
            b.rows.len()
        ));
    }
    let mut listed = 0;
    for (ca, column) in a.columns.iter().enumerate() {
        let Some(cb) = b.columns.iter().position(|c| c == column) else {
            continue;
        };
        let (mut changed, mut largest, mut largest_row) = (0usize, 0.0f64, 0usize);
        for (row, (ra, rb)) in a.rows.iter().zip(&b.rows).enumerate() {
            let (va, vb) = (&ra[ca], &rb[cb]);
            let agree = match tolerance {
                Some(t) => match (va.parse::<f64>(), vb.parse::<f64>()) {
                    (Ok(x), Ok(y)) => (x - y).abs() <= t || (x.is_nan() && y.is_nan()),
                    _ => va == vb,
                },
                None => cells_agree(column, va, vb),
            };
            if agree {
                continue;
            }
            let delta = match (va.parse::<f64>(), vb.parse::<f64>()) {
                (Ok(x), Ok(y)) => Some(y - x),
                _ => None,
            };
            changed += 1;
            if let Some(d) = delta
                && d.abs() > largest.abs()
            {
                (largest, largest_row) = (d, row);
            }
            if listed < examples {
                listed += 1;
                say(match delta {
                    Some(d) => format!("table {name}, row {row}, {column}: {va} -> {vb} ({d:+.6})"),
                    None => format!("table {name}, row {row}, {column}: {va:?} -> {vb:?}"),
                });
            }
        }
        if changed > 0 {
            let numbers = if largest != 0.0 {
                format!(", largest change {largest:+.6} at row {largest_row}")
            } else {
                String::new()
            };
            say(format!(
                "table {name}: {column} changed in {changed} of {} rows{numbers}",
                a.rows.len().min(b.rows.len())
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(tables: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        for (name, csv) in tables {
            std::fs::write(dir.path().join("results").join(format!("{name}.csv")), csv).unwrap();
        }
        dir
    }

    #[test]
    fn identical_reports_have_no_differences() {
        let a = report(&[("t", "x,y\n1,a\n2,b\n")]);
        let b = report(&[("t", "x,y\n1,a\n2,b\n")]);
        assert_eq!(diff(a.path(), b.path(), Some(0.0), 10).unwrap(), "");
    }

    #[test]
    fn changed_numbers_say_by_how_much_and_text_says_what() {
        let a = report(&[
            ("t", "loss,token\n3.25,says\n1.0,Mom\n"),
            ("gone", "x\n1\n"),
        ]);
        let b = report(&[
            ("t", "loss,token\n3.5,said\n1.0000001,Mom\n"),
            ("new", "x\n1\n"),
        ]);
        let text = diff(a.path(), b.path(), None, 10).unwrap();
        assert!(text.contains("table gone: only in"), "{text}");
        assert!(text.contains("table new: only in"), "{text}");
        assert!(
            text.contains("table t, row 0, loss: 3.25 -> 3.5 (+0.250000)"),
            "{text}"
        );
        assert!(
            text.contains("table t, row 0, token: \"says\" -> \"said\""),
            "{text}"
        );
        assert!(
            text.contains(
                "table t: loss changed in 1 of 2 rows, largest change +0.250000 at row 0"
            ),
            "{text}"
        );
        assert!(!text.contains("row 1"), "within tolerance: {text}");
    }

    #[test]
    fn a_folder_without_results_is_not_a_report() {
        let empty = tempfile::tempdir().unwrap();
        let a = report(&[]);
        assert!(matches!(
            diff(a.path(), empty.path(), None, 10),
            Err(DiffError::NotAReport(_))
        ));
    }
}
