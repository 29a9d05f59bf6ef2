//! Results -> report folder: `index.html` (self-contained), `results/*.csv` (stable
//! order, fixed float formatting, no timestamps: they diff cleanly in git), plots,
//! dashboards, and `run.json` (versions, hashes, timings; ignored by git).

mod dashboards;
mod diff;
mod keep;
mod plots;

pub use diff::{DiffError, diff, written_tables};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior, context};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::output::{Kind, OutputError, Scope, Staging};
use crate::plan::Plan;
use crate::results::{Cell, Results, Section};

const RUN_FILE: &str = "run.json";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write the report: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot render the report template: {0} (this is a bug in qexp)")]
    Template(#[from] minijinja::Error),
    #[error("cannot write a CSV file: {0}")]
    Csv(#[from] csv::Error),
    #[error("cannot draw {0}")]
    Plot(String),
}

/// Everything `run.json` records about how the results were made.
#[derive(Debug, Serialize)]
struct RunRecord<'a> {
    qexp_version: &'static str,
    experiment: &'a str,
    experiment_sha256: String,
    model: String,
    model_source: &'a str,
    weights_sha256: &'a str,
    device: crate::device::Device,
    threads: usize,
    seconds_per_step: Vec<String>,
    /// Real tokens run through the model, over every graph the run compiled.
    tokens_run: usize,
    /// ONNX Runtime sessions the run built: one per graph structure, however many
    /// variants share it.
    sessions_compiled: usize,
    /// Of those, how many were built again with pre-packed weights, having run small
    /// passes repeatedly.
    sessions_packed: usize,
    /// Variant passes that ran as rows of another variant's pass over the same small
    /// batch (a sweep's next passes, run ahead of their steps).
    variant_passes_run_ahead: usize,
    /// Every SAE the run used: where it came from and a hash of its weights.
    saes: &'a [crate::results::SaeRecord],
    /// Every seed the experiment sets, by the statement it is in.
    seeds: BTreeMap<String, i64>,
}

/// The folder a report of `experiment` goes to.
pub fn folder(reports_root: &Path, experiment: &str) -> PathBuf {
    reports_root.join(experiment)
}

/// Whether the report of `experiment` may be written under `reports_root`: checked
/// before a run starts, so a long run never ends in a refusal.
pub fn check_folder(
    reports_root: &Path,
    experiment: &str,
    scope: &Scope,
) -> Result<(), OutputError> {
    scope.check(&folder(reports_root, experiment), Kind::Report)
}

/// Writes `reports_root/<experiment>/`, replacing an earlier report of the same
/// experiment only once the new one is complete.
pub fn write(
    reports_root: &Path,
    plan: &Plan,
    source: &str,
    results: &Results,
    scope: &Scope,
) -> Result<PathBuf, ReportError> {
    let target = folder(reports_root, &plan.name);
    scope.check(&target, Kind::Report)?;
    let staging = Staging::new(&target, Kind::Report)?;
    let dir = staging.path();
    std::fs::create_dir_all(dir.join("results"))?;

    write_csvs(&dir.join("results"), results)?;

    let record = RunRecord {
        qexp_version: env!("CARGO_PKG_VERSION"),
        experiment: &plan.name,
        experiment_sha256: format!("{:x}", Sha256::digest(source.as_bytes())),
        model: plan.model.path.display().to_string(),
        model_source: &results.model_source,
        weights_sha256: &results.weights_sha256,
        device: plan.model.device,
        threads: results.threads,
        seconds_per_step: results.seconds.iter().map(|s| format!("{s:.3}")).collect(),
        tokens_run: results.tokens_run,
        sessions_compiled: results.sessions_compiled,
        sessions_packed: results.sessions_packed,
        variant_passes_run_ahead: results.variant_passes_run_ahead,
        saes: &results.saes,
        seeds: seeds(plan),
    };
    std::fs::write(
        dir.join(RUN_FILE),
        serde_json::to_string_pretty(&record).expect("record serializes") + "\n",
    )?;
    let mut svgs = BTreeMap::new();
    for section in &results.sections {
        if let Section::Plot(plot) = section {
            let svg = plots::svg(plot).map_err(ReportError::Plot)?;
            std::fs::create_dir_all(dir.join("plots"))?;
            std::fs::write(dir.join("plots").join(format!("{}.svg", plot.name)), &svg)?;
            svgs.insert(plot.name.clone(), svg);
        }
    }
    for section in &results.sections {
        if let Section::Dashboards(d) = section {
            dashboards::write(&dir.join("dashboards").join(&d.name), d)?;
        }
    }
    std::fs::write(dir.join("index.html"), render_html(plan, results, &svgs)?)?;
    // run.json changes with every run (timings, threads); what a reviewer compares is
    // the rest, and what the report was made from is in the experiment's lock file.
    std::fs::write(
        dir.join(".gitignore"),
        "# This machine's run: timings and threads. The experiment's .lock file records\n# what the report was made from.\nrun.json\n",
    )?;
    if target.is_dir() {
        keep::keep_unchanged_pages(&target, dir)?;
    }

    staging.commit()?;
    Ok(target)
}

/// The seeds an experiment sets (`shuffle_seed` of datasets, `seed` of SAE training and
/// sampling), keyed `statement.argument`.
fn seeds(plan: &Plan) -> BTreeMap<String, i64> {
    let mut calls: Vec<(&str, &crate::plan::Call)> = Vec::new();
    calls.extend(plan.datasets.iter().map(|d| (d.name.as_str(), &d.value)));
    calls.extend(plan.saes.iter().map(|s| (s.name.as_str(), &s.value)));
    for step in &plan.steps {
        if let crate::plan::Step::Table {
            name,
            source: crate::plan::TableSource::Call { call, .. },
            ..
        } = step
        {
            calls.push((name.as_str(), call));
        }
    }
    let mut seeds = BTreeMap::new();
    for (name, call) in calls {
        for key in ["seed", "shuffle_seed"] {
            if let Some(crate::plan::Value::Integer(seed)) = call.args.get(key) {
                seeds.insert(format!("{name}.{key}"), *seed);
            }
        }
    }
    seeds
}

/// `results/claims.csv`: one row per claim, so a claim that stops holding is a line in
/// the diff.
const CLAIMS_FILE: &str = "claims.csv";

fn write_csvs(dir: &Path, results: &Results) -> Result<(), ReportError> {
    if results.claims().next().is_some() {
        let mut csv = csv::Writer::from_path(dir.join(CLAIMS_FILE))?;
        csv.write_record(["claim", "holds", "rows", "meeting", "detail", "checked_as"])?;
        for claim in results.claims() {
            csv.write_record([
                claim.text.clone(),
                claim.holds.to_string(),
                claim.rows.to_string(),
                claim.meeting.to_string(),
                claim.detail.clone(),
                claim.written.clone(),
            ])?;
        }
        csv.flush()?;
    }
    for section in &results.sections {
        if let Section::Table(table) = section {
            let mut csv = csv::Writer::from_path(dir.join(format!("{}.csv", table.name)))?;
            csv.write_record(&table.columns)?;
            for row in &table.rows {
                csv.write_record(row.iter().map(Cell::csv_text))?;
            }
            csv.flush()?;
        }
    }
    Ok(())
}

/// Tables longer than this are not inlined whole into index.html (a per-token table of
/// a hundred stories is megabytes): the page holds their first [`INLINED_ROWS`] rows and
/// links the CSV, which holds them all.
const INLINE_ALL_UP_TO: usize = 1000;
const INLINED_ROWS: usize = 100;

fn inlined_rows(rows: usize) -> usize {
    if rows <= INLINE_ALL_UP_TO {
        rows
    } else {
        INLINED_ROWS
    }
}

/// A claim as the template shows it: in the summary at the top (with the plots it
/// names, `plots` being every plot of the report) and in its place among the sections
/// (with the rows behind its verdict). `number` counts claims from 1.
fn claim_json(claim: &crate::results::Claim, number: usize, plots: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "kind": "claim",
        "number": number,
        "text": claim.text,
        "written": claim.written,
        "holds": claim.holds,
        "detail": claim.detail,
        "columns": claim.evidence.columns,
        "rows": claim.evidence.rows.iter().map(|row| row.iter().map(Cell::text).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "shown_rows": claim.evidence.rows.len(),
        "total_rows": claim.rows,
        "show": claim.show.iter().map(|name| serde_json::json!({
            "name": name,
            "plot": plots.contains(&name.as_str()),
        })).collect::<Vec<_>>(),
    })
}

/// JSON to put inside `<script type="application/json">`: `<` written as `\u003c`, so no
/// text from a prompt can close the script element.
fn script_json(value: &serde_json::Value) -> String {
    serde_json::to_string(value)
        .expect("JSON values serialize")
        .replace('<', "\\u003c")
}

fn render_html(
    plan: &Plan,
    results: &Results,
    svgs: &BTreeMap<String, String>,
) -> Result<String, ReportError> {
    let mut env = Environment::new();
    // A misspelt variable in a template is a bug to catch, not an empty string to ship.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_template("report.html", include_str!("templates/report.html"))?;
    let plots: Vec<&str> = results
        .sections
        .iter()
        .filter_map(|s| match s {
            Section::Plot(plot) => Some(plot.name.as_str()),
            _ => None,
        })
        .collect();
    let mut claims_so_far = 0;
    let sections: Vec<serde_json::Value> = results
        .sections
        .iter()
        .map(|section| match section {
            Section::Table(table) => {
                let inlined = inlined_rows(table.rows.len());
                serde_json::json!({
                    "kind": "table",
                    "name": table.name,
                    "columns": table.columns,
                    "row_count": table.rows.len(),
                    "inlined": inlined,
                    "data_json": script_json(&serde_json::json!({
                        "columns": table.columns,
                        "rows": table.rows[..inlined].iter().map(|row| row.iter().map(Cell::text).collect::<Vec<_>>()).collect::<Vec<_>>(),
                    })),
                })
            }
            // The SVG is plotters' output with every text escaped: safe to inline.
            Section::Dashboards(d) => serde_json::json!({
                "kind": "dashboards",
                "name": d.name,
                "sae": d.sae,
                "tokens": d.tokens,
                "features": d.features.iter().map(|f| serde_json::json!({
                    "feature": f.feature,
                    "density": format!("{:.6}", f.density),
                    "max": format!("{:.4}", f.max_activation),
                })).collect::<Vec<_>>(),
            }),
            Section::Plot(plot) => serde_json::json!({
                "kind": "plot",
                "name": plot.name,
                "title": plot.title,
                "svg": svgs[&plot.name],
            }),
            Section::Claim(claim) => {
                claims_so_far += 1;
                claim_json(claim, claims_so_far, &plots)
            }
            other => serde_json::to_value(other).expect("section serializes"),
        })
        .collect();
    let claims: Vec<serde_json::Value> = sections
        .iter()
        .filter(|s| s["kind"] == "claim")
        .cloned()
        .collect();
    Ok(env.get_template("report.html")?.render(context! {
        name => plan.name,
        title => plan.title.clone().unwrap_or_else(|| plan.name.clone()),
        model => plan.model.path.display().to_string(),
        model_source => results.model_source,
        weights_sha256 => results.weights_sha256,
        // Where each SAE comes from in words that do not change between a run that
        // trained it and one that read its pin (run.json says which); its hash shows
        // whether it is the same SAE.
        saes => results.saes.iter().map(|sae| serde_json::json!({
            "name": sae.name,
            "origin": plan.saes.iter().find(|s| s.name == sae.name).map(|s| crate::lock::origin(&s.value)).unwrap_or_default(),
            "weights_sha256": sae.weights_sha256,
        })).collect::<Vec<_>>(),
        version => env!("CARGO_PKG_VERSION"),
        holding => claims.iter().filter(|c| c["holds"] == true).count(),
        claims => claims,
        sections => sections,
    })?)
}
