//! Feature dashboards' data (what sae_vis shows per feature), for the report to draw.

/// Tokens each side of an example's token in its window.
pub const WINDOW: usize = 8;

/// One place a feature fired: the activation, the token (and its neighbours) where.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Example {
    pub activation: f32,
    pub prompt: usize,
    pub pos: usize,
    /// The feature's activation at `pos - WINDOW ..= pos + WINDOW` (cut at the prompt's ends).
    pub window: Vec<f32>,
    /// For a query SAE: the key token the feature pushes this query's attention to most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attends_to: Option<(usize, f64)>,
}

/// Tokens and their logit change, most promoted first / most suppressed first.
#[derive(Debug, Clone, Default)]
pub struct LogitEffects {
    pub promoted: Vec<(String, f64)>,
    pub suppressed: Vec<(String, f64)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantileBand {
    pub label: String,
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureDashboard {
    pub feature: usize,
    pub density: f64,
    pub max_activation: f64,
    pub mean_activation: f64,
    #[serde(skip)]
    pub histogram: Vec<(f64, f64, usize)>,
    #[serde(skip)]
    pub top: Vec<Example>,
    #[serde(skip)]
    pub quantiles: Vec<QuantileBand>,
    /// Tokens the feature's decoder direction promotes and suppresses through the
    /// unembedding, where that path exists (residual-stream SAEs).
    #[serde(skip)]
    pub logit_effects: Option<LogitEffects>,
}

/// A dashboards step's result: the pages' data and the text they show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Dashboards {
    pub name: String,
    pub sae: String,
    pub hook: String,
    pub tokens: usize,
    pub features: Vec<FeatureDashboard>,
    /// Each prompt's tokens as text, for the example windows (only prompts that hold an
    /// example are filled).
    #[serde(skip)]
    pub str_tokens: Vec<Vec<String>>,
}
