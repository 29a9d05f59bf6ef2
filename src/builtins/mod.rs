//! The built-in functions of the language, grouped by family: what each takes (types,
//! valid ranges), what it makes, and, for measurements, their typed arguments, columns,
//! the graphs and hooks they read and their executors (one file each in
//! `measurements/`). The checker reads [`BUILTINS`]; `GRAMMAR.md`'s tables are made from
//! it and a test keeps them equal.

pub mod args;
pub mod dashboards;
pub mod datasets;
pub mod graphs;
pub mod interventions;
pub mod measurements;
pub mod plots;
pub mod saes;
pub mod table_ops;
pub mod values;

/// What an argument must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Number,
    Integer,
    Str,
    Bool,
    /// A hook point, optionally with `[head = h, pos = p]`.
    Hook,
    /// `L1H11`, or a `let` bound to a head.
    Head,
    Dataset,
    Sae,
    Variant,
    Table,
    /// A column of the input table.
    Column,
    /// An expression over the input table's columns.
    ColumnExpr,
    /// One of a fixed set of names.
    Choice(&'static [&'static str]),
    /// An integer position, negative from the end, or `all`.
    Position,
    /// A list of feature indices, or `all`.
    Features,
    ListOf(&'static Type),
}

impl Type {
    pub fn describe(self) -> String {
        match self {
            Type::Number => "a number".into(),
            Type::Integer => "a whole number".into(),
            Type::Str => "a string".into(),
            Type::Bool => "true or false".into(),
            Type::Hook => "a hook point like `blocks.1.attn.hook_q[head = 11]`".into(),
            Type::Head => "a head like `L1H11`".into(),
            Type::Dataset => "a dataset name".into(),
            Type::Sae => "an SAE name".into(),
            Type::Variant => "a variant name".into(),
            Type::Table => "a table name".into(),
            Type::Column => "a column name".into(),
            Type::ColumnExpr => "an expression over columns".into(),
            Type::Choice(options) => format!("one of {}", options.join(", ")),
            Type::Position => "a position (an index, negative from the end, or `all`)".into(),
            Type::Features => "a list of feature indices, or `all`".into(),
            Type::ListOf(inner) => format!(
                "a list of {}",
                inner
                    .describe()
                    .trim_start_matches("a ")
                    .trim_start_matches("an ")
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produces {
    Dataset,
    Sae,
    Intervention,
    /// A table made from scratch (first in a pipeline).
    Table,
    /// A table made from the table piped into it.
    TableOp,
    Plot,
    Dashboards,
    /// A value computed at run time and bound with `let` (`best_head`).
    Value(Type),
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub ty: Type,
    pub required: bool,
    pub limit: Limit,
}

/// What values of an argument make sense, beyond its type. GRAMMAR.md lists them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    None,
    /// A number from `min` to `max`, both included.
    Range {
        min: f64,
        max: f64,
    },
    /// A string that is not empty.
    NonEmpty,
}

impl Limit {
    /// Why `value` breaks this limit, if it does.
    pub fn violation(self, value: &crate::plan::Value) -> Option<String> {
        use crate::plan::Value;
        match (self, value) {
            (Limit::Range { min, max }, Value::Integer(n))
                if !(min..=max).contains(&(*n as f64)) =>
            {
                Some(format!(
                    "{n} is out of range: use {}",
                    describe_range(min, max)
                ))
            }
            (Limit::Range { min, max }, Value::Number(x)) if !(min..=max).contains(x) => Some(
                format!("{x} is out of range: use {}", describe_range(min, max)),
            ),
            (Limit::NonEmpty, Value::Str(s)) if s.is_empty() => {
                Some("this must not be empty".into())
            }
            _ => None,
        }
    }

    pub fn describe(self) -> Option<String> {
        match self {
            Limit::None => None,
            Limit::Range { min, max } => Some(describe_range(min, max)),
            Limit::NonEmpty => Some("not empty".into()),
        }
    }
}

fn describe_range(min: f64, max: f64) -> String {
    let show = |x: f64| {
        let round_power_of_ten = x.abs() >= 1e7 && x.abs().log10().fract() == 0.0;
        if x.fract() == 0.0 && !round_power_of_ten {
            format!("{}", x as i64)
        } else {
            format!("{x:e}")
        }
    };
    format!("{} to {}", show(min), show(max))
}

pub(crate) const fn req(name: &'static str, ty: Type) -> Param {
    Param {
        name,
        ty,
        required: true,
        limit: Limit::None,
    }
}

pub(crate) const fn opt(name: &'static str, ty: Type) -> Param {
    Param {
        name,
        ty,
        required: false,
        limit: Limit::None,
    }
}

impl Param {
    pub(crate) const fn within(mut self, min: f64, max: f64) -> Self {
        self.limit = Limit::Range { min, max };
        self
    }

    pub(crate) const fn non_empty(mut self) -> Self {
        self.limit = Limit::NonEmpty;
        self
    }
}

/// Seeds are whole numbers JSON and every language reading run.json can hold exactly.
pub(crate) const MAX_SEED: f64 = 9_007_199_254_740_991.0;
/// Upper bound on token counts that training, statistics and dashboards may ask for:
/// ten billion tokens is already weeks of CPU time.
pub(crate) const MAX_TOKENS: f64 = 1e10;

#[derive(Debug)]
pub struct Builtin {
    pub name: &'static str,
    pub produces: Produces,
    pub params: &'static [Param],
    pub summary: &'static str,
}

pub(crate) const STRS: Type = Type::ListOf(&Type::Str);
pub(crate) const COLUMNS: Type = Type::ListOf(&Type::Column);
pub(crate) const VARIANTS: Type = Type::ListOf(&Type::Variant);
pub(crate) const SORT_ORDER: Type = Type::Choice(&["asc", "desc"]);

/// The arguments of the `model` statement.
pub const MODEL_PARAMS: &[Param] = &[
    opt("device", Type::Choice(&["cpu", "cuda", "coreml"])),
    opt("batch_size", Type::Integer).within(1.0, 4096.0),
];

pub const BUILTINS: &[Builtin] = &[
    // Datasets.
    datasets::TEXT,
    datasets::JSONL,
    datasets::PROMPTS,
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
    values::ROW,
    values::VALUES,
    values::BEST_HEAD,
    // Table operations (after `|`).
    table_ops::FILTER,
    table_ops::SORT,
    table_ops::TOP,
    table_ops::SELECT_COLUMNS,
    table_ops::DERIVE,
    table_ops::COUNT,
    table_ops::GROUP_COUNT,
    table_ops::EXPLODE,
    // Plots.
    plots::SCATTER,
    plots::HISTOGRAM,
    plots::LINE,
    plots::BAR,
    plots::HEATMAP,
    // Dashboards.
    dashboards::SPEC,
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
pub const COLUMN_FUNCTIONS: &[(&str, usize)] = &[("contains", 2), ("abs", 1), ("len", 1)];
