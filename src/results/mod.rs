//! What a run produced: plain data that the executor makes and the report writes, so
//! the report depends on these types and not on how they were computed.

mod dashboards;
mod plot;
mod table;
pub mod tolerance;

pub use dashboards::{
    Correlation, Dashboards, Example, FeatureDashboard, LogitEffects, NeuronWeight, Predictions,
    QuantileBand, WINDOW,
};
pub use plot::{Plot, PlotKind};
pub use table::{Cell, Table};

/// What a run produced, in the order of the plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Results {
    pub sections: Vec<Section>,
    /// Wall-clock seconds per section; kept out of the result files (they vary run to run).
    #[serde(skip)]
    pub seconds: Vec<f64>,
    #[serde(skip)]
    pub model_source: String,
    #[serde(skip)]
    pub weights_sha256: String,
    /// The SAEs the run loaded or trained, for `run.json`.
    #[serde(skip)]
    pub saes: Vec<SaeRecord>,
    /// Real tokens run through the model, over every graph, for `run.json`.
    #[serde(skip)]
    pub tokens_run: usize,
    /// ONNX Runtime sessions built, for `run.json`.
    #[serde(skip)]
    pub sessions_compiled: usize,
    /// Sessions built again with pre-packed weights, for `run.json`.
    #[serde(skip)]
    pub sessions_packed: usize,
    /// Variant passes run as rows of another variant's pass, for `run.json`.
    #[serde(skip)]
    pub variant_passes_run_ahead: usize,
    /// Threads the model's kernels ran on, for `run.json`.
    #[serde(skip)]
    pub threads: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SaeRecord {
    pub name: String,
    /// `load <path>` or `train`.
    pub origin: String,
    /// SHA-256 of its weights as little-endian f32 (W_enc, b_enc, W_dec, b_dec, threshold).
    pub weights_sha256: String,
    /// Whether a trained SAE was read from its pin rather than trained by this run.
    pub from_pin: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Section {
    Text {
        style: String,
        text: String,
    },
    Table(Table),
    Plot(Plot),
    Dashboards(Dashboards),
    /// A value computed at run time (`let HEAD = best_head(...)`).
    Value {
        name: String,
        value: String,
    },
    Claim(Claim),
}

/// An `expect` claim and what the run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Claim {
    pub text: String,
    /// The claim's pipeline as written.
    pub written: String,
    pub holds: bool,
    /// Rows checked, and how many meet the condition.
    pub rows: usize,
    pub meeting: usize,
    /// The verdict's numbers in words: "86 of 86 rows (100.0%); at least 80% asked".
    pub detail: String,
    /// The rows behind the verdict (those against the claim first when it fails), at
    /// most [`CLAIM_ROWS`], with a first column `meets`.
    pub evidence: Table,
    /// Plots and tables the summary shows beside the claim.
    pub show: Vec<String>,
}

/// Rows of evidence a claim shows; the whole table is one click away.
pub const CLAIM_ROWS: usize = 10;

impl Results {
    /// The claims the run checked, in the order written.
    pub fn claims(&self) -> impl Iterator<Item = &Claim> {
        self.sections.iter().filter_map(|s| match s {
            Section::Claim(claim) => Some(claim),
            _ => None,
        })
    }
}
