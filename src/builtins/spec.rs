//! How a built-in is declared: the types its arguments take, their valid ranges, what
//! it makes. Every family file declares its built-ins with these.

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
    /// A name for a column the operation makes (none of the input's).
    NewColumn,
    /// An expression over the input table's columns.
    ColumnExpr,
    /// One of a fixed set of names.
    Choice(&'static [&'static str]),
    /// An integer position, negative from the end, or `all`.
    Position,
    /// One integer position, negative from the end (`all` is refused).
    OnePosition,
    /// A list of feature indices, or `all`.
    Features,
    ListOf(&'static Type),
    /// A plot or table declared earlier, shown beside a claim.
    Shown,
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
            Type::NewColumn => "a name for a new column".into(),
            Type::ColumnExpr => "an expression over columns".into(),
            Type::Choice(options) => format!("one of {}", options.join(", ")),
            Type::Position => "a position (an index, negative from the end, or `all`)".into(),
            Type::OnePosition => "one position (an index, negative from the end)".into(),
            Type::Features => "a list of feature indices, or `all`".into(),
            Type::Shown => "a plot or table name".into(),
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
    /// The verdict of an `expect` claim over the table piped into it.
    Check,
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
