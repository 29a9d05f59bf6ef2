//! The built-in functions of the language: what each takes, what it makes, which columns
//! its tables have. The checker reads this table; `GRAMMAR.md` documents it.

use crate::plan::ColumnType;

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

const fn req(name: &'static str, ty: Type) -> Param {
    Param {
        name,
        ty,
        required: true,
        limit: Limit::None,
    }
}

const fn opt(name: &'static str, ty: Type) -> Param {
    Param {
        name,
        ty,
        required: false,
        limit: Limit::None,
    }
}

impl Param {
    const fn within(mut self, min: f64, max: f64) -> Self {
        self.limit = Limit::Range { min, max };
        self
    }

    const fn non_empty(mut self) -> Self {
        self.limit = Limit::NonEmpty;
        self
    }
}

/// Seeds are whole numbers JSON and every language reading run.json can hold exactly.
const MAX_SEED: f64 = 9_007_199_254_740_991.0;
/// Upper bound on token counts that training, statistics and dashboards may ask for:
/// ten billion tokens is already weeks of CPU time.
const MAX_TOKENS: f64 = 1e10;

#[derive(Debug)]
pub struct Builtin {
    pub name: &'static str,
    pub produces: Produces,
    pub params: &'static [Param],
    pub summary: &'static str,
}

const STRS: Type = Type::ListOf(&Type::Str);
const COLUMNS: Type = Type::ListOf(&Type::Column);
const VARIANTS: Type = Type::ListOf(&Type::Variant);
const SORT_ORDER: Type = Type::Choice(&["asc", "desc"]);

/// The arguments of the `model` statement.
pub const MODEL_PARAMS: &[Param] = &[
    opt("device", Type::Choice(&["cpu", "cuda", "coreml"])),
    opt("batch_size", Type::Integer).within(1.0, 4096.0),
];

pub const BUILTINS: &[Builtin] = &[
    // Datasets.
    Builtin {
        name: "text",
        produces: Produces::Dataset,
        summary: "prompts from a text file split on a separator (TinyStories: `<|endoftext|>`)",
        params: &[
            req("path", Type::Str).non_empty(),
            opt("separator", Type::Str).non_empty(),
            opt("shuffle_seed", Type::Integer).within(0.0, MAX_SEED),
            opt("skip", Type::Integer).within(0.0, 1e12),
            opt("take", Type::Integer).within(1.0, 1e12),
            opt("max_tokens", Type::Integer).within(1.0, 1e6),
        ],
    },
    Builtin {
        name: "jsonl",
        produces: Produces::Dataset,
        summary: "prompts from a JSON-lines file, one text field per line",
        params: &[
            req("path", Type::Str).non_empty(),
            opt("field", Type::Str).non_empty(),
            opt("shuffle_seed", Type::Integer).within(0.0, MAX_SEED),
            opt("skip", Type::Integer).within(0.0, 1e12),
            opt("take", Type::Integer).within(1.0, 1e12),
            opt("max_tokens", Type::Integer).within(1.0, 1e6),
        ],
    },
    Builtin {
        name: "prompts",
        produces: Produces::Dataset,
        summary: "an inline list of prompts",
        params: &[
            req("texts", STRS),
            opt("max_tokens", Type::Integer).within(1.0, 1e6),
        ],
    },
    // SAEs.
    Builtin {
        name: "load",
        produces: Produces::Sae,
        summary: "an SAE folder in SAELens layout (cfg.json + sae_weights.safetensors)",
        params: &[req("path", Type::Str).non_empty()],
    },
    Builtin {
        name: "train",
        produces: Produces::Sae,
        summary: "train an SAE on a hook's activations",
        params: &[
            req("hook", Type::Hook),
            req("dataset", Type::Dataset),
            req("d_sae", Type::Integer).within(1.0, 1_048_576.0),
            opt(
                "architecture",
                Type::Choice(&["standard", "topk", "jumprelu"]),
            ),
            opt("l1_coefficient", Type::Number).within(0.0, 1e3),
            opt("k", Type::Integer).within(1.0, 1_048_576.0),
            opt("tokens", Type::Integer).within(1.0, MAX_TOKENS),
            opt("lr", Type::Number).within(1e-12, 10.0),
            opt("batch_size", Type::Integer).within(1.0, 1_048_576.0),
            opt("seed", Type::Integer).within(0.0, MAX_SEED),
            opt("normalize_activations", Type::Bool),
            opt("resample_dead", Type::Bool),
            opt("save", Type::Str).non_empty(),
            opt("checkpoint_every", Type::Integer).within(0.0, 1e12),
            opt("resume", Type::Bool),
        ],
    },
    // Interventions (inside `variant`).
    Builtin {
        name: "zero",
        produces: Produces::Intervention,
        summary: "zero-ablate a hook (a head, positions)",
        params: &[req("hook", Type::Hook)],
    },
    Builtin {
        name: "mean",
        produces: Produces::Intervention,
        summary: "mean-ablate a hook with its mean over a dataset",
        params: &[req("hook", Type::Hook), req("dataset", Type::Dataset)],
    },
    Builtin {
        name: "splice",
        produces: Produces::Intervention,
        summary: "replace the SAE's hook with its reconstruction",
        params: &[req("sae", Type::Sae), opt("error_term", Type::Bool)],
    },
    Builtin {
        name: "remove_features",
        produces: Produces::Intervention,
        summary: "subtract act_f * W_dec[f] for chosen features",
        params: &[
            req("sae", Type::Sae),
            req("features", Type::Features),
            opt("pos", Type::Position),
        ],
    },
    Builtin {
        name: "scale_features",
        produces: Produces::Intervention,
        summary: "scale chosen features' contribution",
        params: &[
            req("sae", Type::Sae),
            req("features", Type::Features),
            req("factor", Type::Number).within(-1e6, 1e6),
            opt("pos", Type::Position),
        ],
    },
    Builtin {
        name: "steer",
        produces: Produces::Intervention,
        summary: "add a feature's decoder direction (times scale) to a hook",
        params: &[
            req("hook", Type::Hook),
            req("sae", Type::Sae),
            req("feature", Type::Integer).within(0.0, 1_048_575.0),
            req("scale", Type::Number).within(-1e6, 1e6),
        ],
    },
    Builtin {
        name: "patch",
        produces: Produces::Intervention,
        summary: "replace a hook with its value from another variant or prompt",
        params: &[
            req("hook", Type::Hook),
            opt("from_variant", Type::Variant),
            opt("from_prompt", Type::Str),
        ],
    },
    // Tables.
    Builtin {
        name: "sanity_check",
        produces: Produces::Table,
        summary: "mean next-token loss on a fixed text",
        params: &[opt("text", Type::Str)],
    },
    Builtin {
        name: "generate",
        produces: Produces::Table,
        summary: "continue a prompt",
        params: &[
            req("prompt", Type::Str).non_empty(),
            opt("max_new_tokens", Type::Integer).within(0.0, 100_000.0),
            opt("temperature", Type::Number).within(0.0, 100.0),
            opt("seed", Type::Integer).within(0.0, MAX_SEED),
            opt("variant", Type::Variant),
        ],
    },
    Builtin {
        name: "composition_scores",
        produces: Produces::Table,
        summary: "TransformerLens' composition scores for every head pair",
        params: &[
            req("mode", Type::Choice(&["Q", "K", "V"])),
            opt("fold_ln", Type::Bool),
        ],
    },
    Builtin {
        name: "per_token",
        produces: Produces::Table,
        summary: "one row per token of a dataset, under variants",
        params: &[
            req("dataset", Type::Dataset),
            opt("head", Type::Head),
            opt("sae", Type::Sae),
            opt("variants", VARIANTS),
            opt("top_k", Type::Integer).within(1.0, 1000.0),
            opt("context", Type::Integer).within(0.0, 1000.0),
        ],
    },
    Builtin {
        name: "test_prompt",
        produces: Produces::Table,
        summary: "top next tokens for a prompt under variants, and the answer's rank",
        params: &[
            req("prompt", Type::Str).non_empty(),
            req("answer", Type::Str).non_empty(),
            opt("variants", VARIANTS),
            opt("top_k", Type::Integer).within(1.0, 1000.0),
        ],
    },
    Builtin {
        name: "attention",
        produces: Produces::Table,
        summary: "a head's attention from one position, under variants",
        params: &[
            req("prompt", Type::Str).non_empty(),
            req("head", Type::Head),
            opt("pos", Type::Position),
            opt("variants", VARIANTS),
        ],
    },
    Builtin {
        name: "direct_logit_attribution",
        produces: Produces::Table,
        summary: "a head's direct effect on the logits vs its ablation effect",
        params: &[
            req("prompt", Type::Str).non_empty(),
            req("head", Type::Head),
            req("ablation", Type::Variant),
            opt("top", Type::Integer).within(1.0, 1e9),
        ],
    },
    Builtin {
        name: "feature_activations",
        produces: Produces::Table,
        summary: "an SAE's feature activations at one position of a prompt",
        params: &[
            req("sae", Type::Sae),
            req("prompt", Type::Str).non_empty(),
            opt("pos", Type::Position),
        ],
    },
    Builtin {
        name: "feature_attribution",
        produces: Produces::Table,
        summary: "each feature's share of a head's attention score to a key position",
        params: &[
            req("sae", Type::Sae),
            req("head", Type::Head),
            req("prompt", Type::Str).non_empty(),
            opt("pos", Type::Position),
            opt("key_pos", Type::Integer).within(-1e6, 1e6),
        ],
    },
    Builtin {
        name: "feature_attribution_at",
        produces: Produces::Table,
        summary: "feature attribution summed over the positions a per_token table lists",
        params: &[
            req("sae", Type::Sae),
            req("head", Type::Head),
            req("dataset", Type::Dataset),
            req("positions", Type::Table),
        ],
    },
    Builtin {
        name: "feature_cooccurrence",
        produces: Produces::Table,
        summary: "for each pair of features, how many rows list one, the other, or both in a list column",
        params: &[
            req("table", Type::Table),
            req("column", Type::Column),
            req("features", Type::Features),
        ],
    },
    Builtin {
        name: "sae_metrics",
        produces: Produces::Table,
        summary: "L0, MSE, explained variance, CE loss recovered, KL, dead/dense fractions",
        params: &[
            req("sae", Type::Sae),
            req("dataset", Type::Dataset),
            opt("baseline", Type::Variant),
        ],
    },
    Builtin {
        name: "feature_stats",
        produces: Produces::Table,
        summary: "per feature: density, max and mean activation, quantiles, where it peaks",
        params: &[req("sae", Type::Sae), req("dataset", Type::Dataset)],
    },
    Builtin {
        name: "row",
        produces: Produces::Value(Type::Str),
        summary: "the text of one prompt of a dataset, optionally cut after a token position",
        params: &[
            req("dataset", Type::Dataset),
            req("index", Type::Integer).within(-1e9, 1e9),
            opt("until", Type::Integer).within(-1e9, 1e9),
        ],
    },
    Builtin {
        name: "values",
        produces: Produces::Value(Type::ListOf(&Type::Integer)),
        summary: "the whole numbers in one column of a table, in row order (e.g. the top features)",
        params: &[req("table", Type::Table), req("column", Type::Column)],
    },
    Builtin {
        name: "best_head",
        produces: Produces::Value(Type::Head),
        summary: "the head in the row with the largest value of a column",
        params: &[
            req("table", Type::Table),
            req("by", Type::Column),
            opt("layer", Type::Column),
            opt("head", Type::Column),
        ],
    },
    // Table operations (after `|`).
    Builtin {
        name: "filter",
        produces: Produces::TableOp,
        summary: "keep rows where the expression is true",
        params: &[req("where", Type::ColumnExpr)],
    },
    Builtin {
        name: "sort",
        produces: Produces::TableOp,
        summary: "sort by a column",
        params: &[req("by", Type::Column), opt("order", SORT_ORDER)],
    },
    Builtin {
        name: "top",
        produces: Produces::TableOp,
        summary: "the first n rows",
        params: &[req("n", Type::Integer).within(1.0, 1e9)],
    },
    Builtin {
        name: "columns",
        produces: Produces::TableOp,
        summary: "keep these columns, in this order",
        params: &[req("names", COLUMNS)],
    },
    Builtin {
        name: "derive",
        produces: Produces::TableOp,
        summary: "add columns computed from others: derive(loss_diff = ablated_loss - loss)",
        params: &[],
    },
    Builtin {
        name: "count",
        produces: Produces::TableOp,
        summary: "the number of rows",
        params: &[],
    },
    Builtin {
        name: "group_count",
        produces: Produces::TableOp,
        summary: "rows per value of a column",
        params: &[req("by", Type::Column)],
    },
    Builtin {
        name: "explode",
        produces: Produces::TableOp,
        summary: "one row per list element of list columns",
        params: &[req("names", COLUMNS)],
    },
    // Plots.
    Builtin {
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
    },
    Builtin {
        name: "histogram",
        produces: Produces::Plot,
        summary: "histogram of a column",
        params: &[
            req("table", Type::Table),
            req("x", Type::Column),
            opt("bins", Type::Integer).within(1.0, 10_000.0),
            opt("title", Type::Str),
        ],
    },
    Builtin {
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
    },
    Builtin {
        name: "bar",
        produces: Produces::Plot,
        summary: "bar chart",
        params: &[
            req("table", Type::Table),
            req("x", Type::Column),
            req("y", Type::Column),
            opt("title", Type::Str),
        ],
    },
    Builtin {
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
    },
    // Dashboards.
    Builtin {
        name: "feature_dashboards",
        produces: Produces::Dashboards,
        summary: "sae_vis-style pages for features",
        params: &[
            req("sae", Type::Sae),
            req("features", Type::Features),
            req("dataset", Type::Dataset),
            opt("tokens", Type::Integer).within(1.0, MAX_TOKENS),
        ],
    },
];

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

use ColumnType::{Integer, IntegerList, Number, NumberList, Str};

/// The columns of a table-making built-in, given which optional parts were asked for
/// (a head, an SAE, variant names). Names follow the seed notebook so users recognise them.
pub fn table_columns(
    function: &str,
    has_head: bool,
    has_sae: bool,
    variants: &[String],
) -> Vec<(String, ColumnType)> {
    let cols = |list: &[(&str, ColumnType)]| {
        list.iter()
            .map(|(n, t)| ((*n).to_owned(), *t))
            .collect::<Vec<_>>()
    };
    match function {
        "sanity_check" => cols(&[("text", Str), ("tokens", Integer), ("loss", Number)]),
        "generate" => cols(&[
            ("prompt", Str),
            ("continuation", Str),
            ("new_tokens", Integer),
        ]),
        "composition_scores" => cols(&[
            ("layer1", Integer),
            ("head1", Integer),
            ("layer2", Integer),
            ("head2", Integer),
            ("score", Number),
        ]),
        "per_token" => {
            let mut c = cols(&[
                ("str_tokens", Str),
                ("unique_token", Str),
                ("context", Str),
                ("batch", Integer),
                ("pos", Integer),
                ("label", Str),
                ("loss", Number),
            ]);
            for v in variants {
                c.push((format!("{v}_loss"), Number));
                c.push((format!("{v}_kl_divergence"), Number));
            }
            if has_head {
                c.extend(cols(&[
                    ("max_idx_pos", Integer),
                    ("max_idx_tok", Str),
                    ("max_idx_tok_value", Number),
                    ("q_norm", Number),
                ]));
            }
            if has_sae {
                c.extend(cols(&[
                    ("rec_q_norm", Number),
                    ("mse_loss", Number),
                    ("explained_variance", Number),
                    ("num_active_features", Integer),
                    ("top_k_features", IntegerList),
                    ("top_k_feature_acts", NumberList),
                    ("kl_divergence", Number),
                ]));
                if has_head {
                    c.extend(cols(&[
                        ("rec_q_max_idx_pos", Integer),
                        ("rec_q_max_idx_tok", Str),
                        ("rec_q_max_idx_tok_value", Number),
                    ]));
                }
            }
            c
        }
        "test_prompt" => cols(&[
            ("variant", Str),
            ("rank", Integer),
            ("token", Str),
            ("logit", Number),
            ("prob", Number),
            ("answer_rank", Integer),
        ]),
        "attention" => {
            let mut c = cols(&[
                ("pos", Integer),
                ("str_tokens", Str),
                ("context", Str),
                ("attn", Number),
            ]);
            c.extend(variants.iter().map(|v| (format!("{v}_attn"), Number)));
            c
        }
        "direct_logit_attribution" => cols(&[
            ("token", Str),
            ("direct_logit_attribution", Number),
            ("ablation_effect", Number),
            ("rank", Integer),
        ]),
        "feature_activations" => cols(&[("feature", Integer), ("activation", Number)]),
        "feature_attribution" => cols(&[
            ("feature", Integer),
            ("activation", Number),
            ("score_contribution", Number),
            ("key_pos", Integer),
            ("key_token", Str),
        ]),
        "feature_attribution_at" => cols(&[
            ("feature", Integer),
            ("positions", Integer),
            ("mean_activation", Number),
            ("score_contribution", Number),
            ("mean_score_contribution", Number),
        ]),
        "feature_cooccurrence" => cols(&[
            ("feature_a", Integer),
            ("feature_b", Integer),
            ("rows_with_a", Integer),
            ("rows_with_b", Integer),
            ("both", Integer),
            ("a_only", Integer),
            ("b_only", Integer),
        ]),
        "sae_metrics" => cols(&[
            ("l0", Number),
            ("mse", Number),
            ("explained_variance", Number),
            ("ce_loss_recovered", Number),
            ("kl_score", Number),
            ("dead_fraction", Number),
            ("dense_fraction", Number),
            ("clean_loss", Number),
            ("spliced_loss", Number),
            ("baseline_loss", Number),
        ]),
        "feature_stats" => cols(&[
            ("feature", Integer),
            ("density", Number),
            ("max_activation", Number),
            ("mean_activation", Number),
            ("q50", Number),
            ("q90", Number),
            ("q99", Number),
            ("top_token", Str),
            ("top_context", Str),
        ]),
        _ => Vec::new(),
    }
}
