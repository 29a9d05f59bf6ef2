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
}
