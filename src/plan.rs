//! The checked plan: what an experiment will do, every name resolved and every argument
//! typed. Plain data, no ONNX: `qexp plan` prints it, the executor runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use crate::device::Device;
pub use crate::hooks::HookRef;

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    pub title: Option<String>,
    pub model: ModelSpec,
    pub datasets: Vec<Named<Call>>,
    pub saes: Vec<Named<Call>>,
    pub variants: Vec<Named<Vec<Call>>>,
    /// The hook each SAE reads, where the checker knows it.
    pub sae_hooks: BTreeMap<String, HookRef>,
    /// What runs and what the report shows, in the order written.
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// A folder made by `qexp export`, relative to where qexp runs.
    pub path: PathBuf,
    pub device: Device,
    pub batch_size: usize,
    /// Whether the model rotates queries and keys (so attention reads `hook_rot_k`);
    /// assumed when its manifest could not be read.
    pub rotary: bool,
    /// Whether each sublayer's output passes a norm of its own before it joins the
    /// stream (Gemma-2's `ln1_post`/`ln2_post`); not assumed without a manifest.
    pub post_norms: bool,
    /// Its parameter count and what its weights take in memory, from its manifest, for
    /// `qexp plan`'s memory line.
    pub weights: Option<(usize, u64)>,
    /// Its layers, from its manifest (unknown when only the syntax was checked).
    pub n_layers: Option<usize>,
    /// Whether prompts start with BOS, where the experiment says (TransformerLens'
    /// `prepend_bos`); otherwise as the model was exported to expect.
    pub prepend_bos: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Named<T> {
    pub name: String,
    pub value: T,
}

/// A built-in applied to checked arguments (defaults not yet filled in: the executor
/// owns the defaults, so `qexp plan` shows only what the user wrote).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub function: &'static str,
    pub args: BTreeMap<&'static str, Value>,
}

impl Call {
    /// The declared names (datasets, SAEs, variants, tables) its arguments refer to,
    /// lists included, in argument order.
    pub fn names(&self) -> Vec<&str> {
        fn walk<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
            match value {
                Value::Name(name) => out.push(name),
                Value::List(items) => items.iter().for_each(|item| walk(item, out)),
                _ => {}
            }
        }
        let mut names = Vec::new();
        self.args.values().for_each(|value| walk(value, &mut names));
        names
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Integer(i64),
    Str(String),
    Bool(bool),
    List(Vec<Value>),
    Hook(HookRef),
    Head {
        layer: usize,
        head: usize,
    },
    /// A name declared earlier: a dataset, SAE, variant or table.
    Name(String),
    Column(String),
    Expr(ColumnExpr),
    Choice(String),
    /// `all` positions or features.
    All,
    /// A `let` computed at run time (e.g. `best_head(...)`), by name.
    Computed(String),
}

/// An expression over a table's columns, for `filter` and `derive`.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnExpr {
    Column(String),
    Number(f64),
    Str(String),
    Bool(bool),
    Not(Box<ColumnExpr>),
    Neg(Box<ColumnExpr>),
    Binary(
        crate::syntax::ast::BinaryOp,
        Box<ColumnExpr>,
        Box<ColumnExpr>,
    ),
    Call(String, Vec<ColumnExpr>),
    /// A list written in the expression: `[",\"", "!\""]`, `[3, 7]`.
    List(Vec<ColumnExpr>),
    /// A `let` computed at run time (`FEATURES`), replaced by its value before the
    /// expression runs (see `table_ops::resolve`).
    Value(String, ColumnType),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    Number,
    Str,
    Bool,
    IntegerList,
    NumberList,
    /// Only as a literal to search in (`contains(["a", "b"], str_tokens)`): no cell holds it.
    StrList,
}

impl ColumnType {
    pub fn is_numeric(self) -> bool {
        matches!(self, ColumnType::Integer | ColumnType::Number)
    }

    /// What its cells hold, in words.
    pub fn describe(self) -> &'static str {
        match self {
            ColumnType::Integer => "whole numbers",
            ColumnType::Number => "numbers",
            ColumnType::Str => "text",
            ColumnType::Bool => "true or false",
            ColumnType::IntegerList => "lists of whole numbers",
            ColumnType::NumberList => "lists of numbers",
            ColumnType::StrList => "lists of text",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Text {
        kind: crate::syntax::ast::TextKind,
        text: String,
    },
    /// `let name = f(...)` computed at run time.
    Compute {
        name: String,
        call: Call,
    },
    Table {
        name: String,
        /// The first stage: a table-making call, or `Value::Name` of an earlier table.
        source: TableSource,
        ops: Vec<Call>,
        columns: Vec<(String, ColumnType)>,
    },
    Plot {
        name: String,
        call: Call,
    },
    Dashboards {
        name: String,
        call: Call,
    },
    /// `expect "text" = table | ops | check`: a claim checked on the table the ops make.
    Expect {
        text: String,
        /// The claim's pipeline as written (formatted), for the report.
        written: String,
        source: TableSource,
        ops: Vec<Call>,
        check: Call,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum TableSource {
    /// A measurement. `labels` maps variants a `for` body declared (`ablated_3`) to
    /// their names as written (`ablated`), which the table's columns and cells use, so
    /// every pass's table has the same columns.
    Call {
        call: Call,
        labels: Vec<(String, String)>,
    },
    Table(String),
    /// `collect(name)`: the tables a `for` loop declared under one name, stacked in
    /// the order the loop made them, each row led by its pass's loop variables.
    Collect {
        name: String,
        parts: Vec<CollectedPart>,
    },
}

/// One pass's table in a `collect`, with the values of the loop variables it was made
/// under (outermost first).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedPart {
    pub table: String,
    pub keys: Vec<(String, Value)>,
}

/// A value written as part of a name: `-1` is `m1` and `1.5` is `1p5`, so no two
/// numbers share a label; other characters that cannot be in a name are dropped.
pub fn name_label(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '-' => Some('m'),
            '.' => Some('p'),
            c if c.is_ascii_alphanumeric() || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// A measurement's column (`ablated_3_loss`) or variant cell (`ablated_3`) named after a
/// variant a `for` body declared, under the name written for it (`ablated_loss`,
/// `ablated`); `None` when it names none of `labels`.
pub fn relabel(name: &str, labels: &[(String, String)]) -> Option<String> {
    labels.iter().find_map(|(full, written)| {
        let rest = name.strip_prefix(full.as_str())?;
        (rest.is_empty() || rest.starts_with('_')).then(|| format!("{written}{rest}"))
    })
}

impl fmt::Display for TableSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableSource::Call { call, .. } => write!(f, "{call}"),
            TableSource::Table(t) => write!(f, "{t}"),
            TableSource::Collect { name, parts } => {
                write!(f, "collect({name}: {} tables)", parts.len())
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Integer(n) => write!(f, "{n}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::List(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
            Value::Hook(h) => {
                write!(f, "{}", h.name)?;
                let mut parts = Vec::new();
                if let Some(head) = h.head {
                    parts.push(format!("head={head}"));
                }
                if let Some(from) = &h.head_from {
                    parts.push(format!("head={from}"));
                }
                if let Some(pos) = h.pos {
                    parts.push(format!("pos={pos}"));
                }
                if parts.is_empty() {
                    Ok(())
                } else {
                    write!(f, "[{}]", parts.join(", "))
                }
            }
            Value::Head { layer, head } => write!(f, "L{layer}H{head}"),
            Value::Name(n) | Value::Column(n) | Value::Choice(n) => write!(f, "{n}"),
            Value::Expr(e) => write!(f, "{e}"),
            Value::All => write!(f, "all"),
            Value::Computed(n) => write!(f, "{n} (computed at run time)"),
        }
    }
}

impl fmt::Display for ColumnExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnExpr::Column(c) => write!(f, "{c}"),
            ColumnExpr::Number(n) => write!(f, "{n}"),
            ColumnExpr::Str(s) => write!(f, "{s:?}"),
            ColumnExpr::Bool(b) => write!(f, "{b}"),
            ColumnExpr::Not(e) => write!(f, "not ({e})"),
            ColumnExpr::Neg(e) => write!(f, "-({e})"),
            ColumnExpr::Binary(op, l, r) => write!(f, "({l} {} {r})", op.symbol()),
            ColumnExpr::Call(function, args) => {
                let args: Vec<String> = args.iter().map(ToString::to_string).collect();
                write!(f, "{function}({})", args.join(", "))
            }
            ColumnExpr::List(items) => {
                let items: Vec<String> = items.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
            ColumnExpr::Value(name, _) => write!(f, "{name}"),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.function)?;
        for (i, (name, value)) in self.args.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{name}={value}")?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "experiment {}", self.name)?;
        if let Some(title) = &self.title {
            writeln!(f, "title {title:?}")?;
        }
        writeln!(
            f,
            "model {} on {:?}, batches of {}",
            self.model.path.display(),
            self.model.device,
            self.model.batch_size
        )?;
        for d in &self.datasets {
            writeln!(f, "dataset {} = {}", d.name, d.value)?;
        }
        for s in &self.saes {
            writeln!(f, "sae {} = {}", s.name, s.value)?;
        }
        for v in &self.variants {
            let calls: Vec<String> = v.value.iter().map(ToString::to_string).collect();
            writeln!(f, "variant {}: {}", v.name, calls.join(" + "))?;
        }
        writeln!(f, "steps:")?;
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Text { kind, text } => {
                    writeln!(f, "{i:>3}. {} ({} characters)", kind.keyword(), text.len())?
                }
                Step::Compute { name, call } => writeln!(f, "{i:>3}. let {name} = {call}")?,
                Step::Table {
                    name,
                    source,
                    ops,
                    columns,
                } => {
                    let ops: String = ops.iter().map(|op| format!(" | {op}")).collect();
                    writeln!(f, "{i:>3}. table {name} = {source}{ops}")?;
                    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
                    writeln!(f, "       columns: {}", names.join(", "))?;
                }
                Step::Plot { name, call } => writeln!(f, "{i:>3}. plot {name} = {call}")?,
                Step::Dashboards { name, call } => {
                    writeln!(f, "{i:>3}. dashboards {name} = {call}")?
                }
                Step::Expect { text, written, .. } => {
                    writeln!(f, "{i:>3}. expect {text:?}")?;
                    writeln!(f, "       checked as: {written}")?;
                }
            }
        }
        Ok(())
    }
}

impl Plan {
    /// The tables that a `collect` stacks: a loop's passes.
    pub fn collected_tables(&self) -> BTreeSet<&str> {
        self.steps
            .iter()
            .filter_map(|step| match step {
                Step::Table {
                    source: TableSource::Collect { parts, .. },
                    ..
                } => Some(parts.iter().map(|part| part.table.as_str())),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The hook an SAE reads (from its `train` call or its cfg.json), as `qexp plan`
    /// names it; a placeholder when the checker could not read it.
    pub fn sae_hook(&self, sae: &str) -> String {
        self.sae_hooks
            .get(sae)
            .map_or_else(|| format!("<hook of {sae}>"), |h| h.name.clone())
    }

    /// The head an SAE reads, if it reads one head of its hook.
    pub fn sae_head(&self, sae: &str) -> Option<usize> {
        self.sae_hooks.get(sae).and_then(|h| h.head)
    }
}
