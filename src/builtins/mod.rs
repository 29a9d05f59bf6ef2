//! The built-in functions of the language, grouped by family: what each takes (types,
//! valid ranges), what it makes, and, for measurements, their typed arguments, columns,
//! the graphs and hooks they read and their executors (one file each in
//! `measurements/`). The checker reads [`BUILTINS`]; `GRAMMAR.md`'s tables are made from
//! it and a test keeps them equal.

pub mod args;
pub mod checks;
pub mod dashboards;
pub mod datasets;
pub mod graphs;
pub mod interventions;
pub mod measurements;
pub mod plots;
pub mod saes;
pub mod spec;
pub mod table_ops;
pub mod values;

use spec::opt;
pub use spec::{Builtin, Limit, Param, Produces, Type};

/// The arguments of the `model` statement.
pub const MODEL_PARAMS: &[Param] = &[
    opt("device", Type::Choice(&["cpu", "cuda", "coreml"])),
    opt("batch_size", Type::Integer).within(1.0, 4096.0),
    opt("prepend_bos", Type::Bool),
];

pub const BUILTINS: &[Builtin] = &[
    // Datasets.
    datasets::TEXT,
    datasets::JSONL,
    datasets::PROMPTS,
    datasets::REPEATED_TOKENS,
    // SAEs.
    saes::LOAD,
    saes::TRAIN,
    // Interventions (inside `variant`).
    interventions::ZERO,
    interventions::MEAN,
    interventions::SPLICE,
    interventions::REMOVE_FEATURES,
    interventions::SCALE_FEATURES,
    interventions::STEER,
    interventions::PATCH,
    interventions::ADD,
    interventions::ACTADD,
    // Tables.
    measurements::sanity_check::SPEC,
    measurements::generate::SPEC,
    measurements::composition_scores::SPEC,
    measurements::per_token::SPEC,
    measurements::test_prompt::SPEC,
    measurements::attention::SPEC,
    measurements::direct_logit_attribution::SPEC,
    measurements::feature_activations::SPEC,
    measurements::feature_attribution::SPEC,
    measurements::feature_attribution_at::SPEC,
    measurements::feature_cooccurrence::SPEC,
    measurements::sae_metrics::SPEC,
    measurements::feature_stats::SPEC,
    measurements::pattern_scores::SPEC,
    measurements::logit_lens::SPEC,
    measurements::logit_attribution::SPEC,
    measurements::activation_patching::SPEC,
    measurements::logit_diff::SPEC,
    measurements::activations::SPEC,
    values::ROW,
    values::VALUES,
    values::BEST_HEAD,
    values::ACTIVATION_DIFFERENCE,
    values::VECTOR_FILE,
    // Table operations (after `|`).
    table_ops::FILTER,
    table_ops::SORT,
    table_ops::TOP,
    table_ops::SELECT_COLUMNS,
    table_ops::DERIVE,
    table_ops::AGGREGATE,
    table_ops::COUNT,
    table_ops::GROUP_COUNT,
    table_ops::EXPLODE,
    table_ops::JOIN,
    table_ops::CONCAT,
    table_ops::PIVOT,
    table_ops::UNPIVOT,
    // Plots.
    plots::SCATTER,
    plots::HISTOGRAM,
    plots::LINE,
    plots::BAR,
    plots::HEATMAP,
    // Dashboards.
    dashboards::SPEC,
    // Checks (last in an `expect` claim).
    checks::ALL,
    checks::ANY,
    checks::SHARE,
];

/// GRAMMAR.md's table of built-ins, made from [`BUILTINS`] (a test keeps the two
/// equal): what each makes, its arguments (required first, choices in brackets), and
/// what it does.
pub fn reference_table() -> String {
    let mut rows = vec![
        "| function | makes | arguments (required first) | what it does |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    for builtin in BUILTINS {
        let makes = match builtin.produces {
            Produces::Dataset => "dataset".to_owned(),
            Produces::Sae => "SAE".to_owned(),
            Produces::Intervention => "intervention".to_owned(),
            Produces::Table => "table".to_owned(),
            Produces::TableOp => "table op".to_owned(),
            Produces::Plot => "plot".to_owned(),
            Produces::Dashboards => "dashboards".to_owned(),
            Produces::Check => "check (`expect`)".to_owned(),
            Produces::Value(ty) => format!("{} (`let`)", ty.describe()),
        };

        let required: Vec<String> = builtin
            .params
            .iter()
            .filter(|p| p.required)
            .map(describe_param)
            .collect();
        let optional: Vec<String> = builtin
            .params
            .iter()
            .filter(|p| !p.required)
            .map(describe_param)
            .collect();
        let arguments = match (required.is_empty(), optional.is_empty()) {
            // `derive` names its own arguments: one per new column.
            _ if builtin.name == "derive" => "`name = expression`, ...".to_owned(),
            _ if builtin.name == "aggregate" => {
                "; by, `name = mean(expression)`, ... (mean, sum, min, max, std, count())"
                    .to_owned()
            }
            (true, true) => "—".to_owned(),
            (false, true) => required.join(", "),
            (true, false) => format!("; {}", optional.join(", ")),
            (false, false) => format!("{}; {}", required.join(", "), optional.join(", ")),
        };
        rows.push(format!(
            "| `{}` | {makes} | {arguments} | {} |",
            builtin.name,
            builtin.summary.replace('|', "\\|")
        ));
    }
    rows.join("\n") + "\n"
}

/// A parameter as the built-in table shows it: its name, and its choices if it has them.
fn describe_param(p: &Param) -> String {
    match p.ty {
        Type::Choice(options) => format!("{} ({})", p.name, options.join(", ")),
        _ => p.name.to_owned(),
    }
}

/// GRAMMAR.md's table of argument limits, made from this table (a test keeps the two
/// equal): one row per argument that has one.
pub fn limits_table() -> String {
    let mut rows = vec![
        "| function | argument | valid values |".to_owned(),
        "|---|---|---|".to_owned(),
    ];
    let statements = std::iter::once(("model", MODEL_PARAMS));
    for (function, params) in statements.chain(BUILTINS.iter().map(|b| (b.name, b.params))) {
        for param in params {
            if let Some(limit) = param.limit.describe() {
                rows.push(format!("| `{function}` | {} | {limit} |", param.name));
            }
        }
    }
    rows.join("\n") + "\n"
}

pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

pub fn names_producing(produces: impl Fn(Produces) -> bool) -> Vec<&'static str> {
    BUILTINS
        .iter()
        .filter(|b| produces(b.produces))
        .map(|b| b.name)
        .collect()
}

/// Columns of a column-expression function's result, for `filter` and `derive`.
pub const COLUMN_FUNCTIONS: &[(&str, usize)] = &[
    ("contains", 2),
    ("contains_all", 2),
    ("contains_any", 2),
    ("starts_with", 2),
    ("ends_with", 2),
    ("abs", 1),
    ("len", 1),
];

/// Binds a checked call into its family's typed form. The checker calls this on every
/// call it accepts, so a disagreement between a built-in's parameters and its typed
/// form is a check error (and a failing test), never a surprise at run time.
pub fn bind(call: &crate::plan::Call, produces: Produces) -> Result<(), args::BindError> {
    match produces {
        Produces::Dataset => datasets::DatasetSource::bind(call).map(drop),
        Produces::Sae => saes::SaeSource::bind(call).map(drop),
        Produces::Intervention => interventions::InterventionCall::bind(call).map(drop),
        Produces::Table => measurements::Measurement::bind(call).map(drop),
        Produces::TableOp => table_ops::TableOp::bind(call).map(drop),
        Produces::Plot => plots::PlotCall::bind(call).map(drop),
        Produces::Dashboards => {
            dashboards::FeatureDashboards::bind(&args::Args::new(call)).map(drop)
        }
        Produces::Value(_) => values::ValueCall::bind(call).map(drop),
        Produces::Check => checks::Check::bind(call).map(drop),
    }
}
