//! Feature dashboards' data (what sae_vis shows per feature), for the report to draw.

/// Tokens each side of an example's token in its window.
pub const WINDOW: usize = 8;

/// One place a feature fired: the activation, the token (and its neighbours) where.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    pub activation: f32,
    pub prompt: usize,
    pub pos: usize,
    /// The feature's activation at `pos - WINDOW ..= pos + WINDOW` (cut at the prompt's ends).
    pub window: Vec<f32>,
    /// For a query SAE: the key token the feature pushes this query's attention to most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attends_to: Option<(usize, f64)>,
}

/// Tokens and their logit change, most promoted first / most suppressed first, and a
/// histogram of the change over the whole vocabulary.
#[derive(Debug, Clone, Default)]
pub struct LogitEffects {
    pub promoted: Vec<(String, f64)>,
    pub suppressed: Vec<(String, f64)>,
    /// `(from, to, tokens)` bins of every token's logit change.
    pub histogram: Vec<(f64, f64, usize)>,
}

/// Something whose values move with a feature's activation over a dashboard's tokens: another
/// feature, or one dimension of the hook the SAE reads (a "neuron").
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Correlation {
    /// The other feature's index, or the dimension's.
    pub index: usize,
    /// Pearson correlation with the feature's activation, token by token.
    pub pearson: f64,
    /// Cosine similarity of the feature's decoder direction with the other feature's (or
    /// with the dimension's unit vector).
    pub cosine: f64,
}

/// One dimension of the hook among those the feature's decoder direction writes most.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NeuronWeight {
    pub index: usize,
    /// The decoder weight.
    pub value: f64,
    /// `|value|` as a share of the decoder direction's L1 norm.
    pub share_of_l1: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
    /// The hook dimensions its decoder direction writes most.
    #[serde(skip)]
    pub neuron_alignment: Vec<NeuronWeight>,
    /// The hook dimensions whose values correlate most with its activation.
    #[serde(skip)]
    pub correlated_neurons: Vec<Correlation>,
    /// The features whose activations correlate most with its activation; `None` when
    /// too many features were asked for to keep every pair's sums.
    #[serde(skip)]
    pub correlated_features: Option<Vec<Correlation>>,
}

/// The clean model's most likely next tokens after one token, with their probabilities.
pub type Predictions = Vec<(String, f64)>;

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
    /// The clean model's top next tokens at each token of the example windows, by
    /// prompt and position, shown when hovering over the token.
    #[serde(skip)]
    pub predictions: std::collections::BTreeMap<(usize, usize), Predictions>,
}
