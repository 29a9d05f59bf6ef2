//! The checked plan: what an experiment will do, every name resolved and every argument
//! typed. Plain data, no ONNX: `qexp plan` prints it, the executor runs it.

use std::collections::BTreeMap;
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
    /// What runs and what the report shows, in the order written.
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// A folder made by `qexp export`, relative to where qexp runs.
    pub path: PathBuf,
    pub device: Device,
    pub batch_size: usize,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    Number,
    Str,
    Bool,
    IntegerList,
    NumberList,
}

impl ColumnType {
    pub fn is_numeric(self) -> bool {
        matches!(self, ColumnType::Integer | ColumnType::Number)
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
}

#[derive(Debug, Clone, PartialEq)]
pub enum TableSource {
    Call(Call),
    Table(String),
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
                    let source = match source {
                        TableSource::Call(call) => call.to_string(),
                        TableSource::Table(t) => t.clone(),
                    };
                    let ops: String = ops.iter().map(|op| format!(" | {op}")).collect();
                    writeln!(f, "{i:>3}. table {name} = {source}{ops}")?;
                    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
                    writeln!(f, "       columns: {}", names.join(", "))?;
                }
                Step::Plot { name, call } => writeln!(f, "{i:>3}. plot {name} = {call}")?,
                Step::Dashboards { name, call } => {
                    writeln!(f, "{i:>3}. dashboards {name} = {call}")?
                }
            }
        }
        writeln!(
            f,
            "graphs (each compiled once, pruned to its outputs, shared by the steps that run it):"
        )?;
        for graph in self.graphs() {
            let variant = graph
                .variant
                .as_deref()
                .map_or_else(|| "clean".to_owned(), |v| format!("variant {v}"));
            let outputs: Vec<&str> = graph.outputs.iter().map(String::as_str).collect();
            writeln!(f, "  {variant}: {}", outputs.join(", "))?;
            writeln!(f, "    used by {}", graph.used_by.join(", "))?;
        }
        let cached = self.cached();
        if !cached.is_empty() {
            writeln!(f, "cached:")?;
            for c in cached {
                writeln!(f, "  {c}")?;
            }
        }
        Ok(())
    }
}

/// One compiled graph: the clean model or a variant, with the tensors it must output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNeed {
    /// `None` for the clean model.
    pub variant: Option<String>,
    pub outputs: std::collections::BTreeSet<String>,
    pub used_by: Vec<String>,
}

impl Plan {
    /// The graphs a run compiles (one per variant, shared by every step that runs it) and
    /// what each outputs, so `qexp plan` shows the work before it is done.
    pub fn graphs(&self) -> Vec<GraphNeed> {
        let mut graphs: Vec<GraphNeed> = Vec::new();
        let mut need = |variant: Option<&str>, outputs: &[String], step: &str| {
            let index = match graphs.iter().position(|g| g.variant.as_deref() == variant) {
                Some(i) => i,
                None => {
                    graphs.push(GraphNeed {
                        variant: variant.map(str::to_owned),
                        outputs: Default::default(),
                        used_by: Vec::new(),
                    });
                    graphs.len() - 1
                }
            };
            let graph = &mut graphs[index];
            graph.outputs.extend(outputs.iter().cloned());
            if !graph.used_by.iter().any(|s| s == step) {
                graph.used_by.push(step.to_owned());
            }
        };
        let logits = || vec!["logits".to_owned()];
        for step in &self.steps {
            let (name, call) = match step {
                Step::Table {
                    name,
                    source: TableSource::Call(call),
                    ..
                } => (name, call),
                Step::Dashboards { name, call } => (name, call),
                _ => continue,
            };
            let variants: Vec<String> = match call.args.get("variants") {
                Some(Value::List(items)) => items.iter().map(ToString::to_string).collect(),
                _ => Vec::new(),
            };
            let layer_hook =
                |suffix: &str| call.args.get("head").map(|head| head_hook(head, suffix));
            let sae_hook = call
                .args
                .get("sae")
                .map(|sae| self.sae_hook(&sae.to_string()));
            let mut clean: Vec<String> = Vec::new();
            let mut per_variant: Vec<String> = Vec::new();
            match call.function {
                "sanity_check" | "test_prompt" => {
                    clean = logits();
                    per_variant = logits();
                }
                "generate" => match call.args.get("variant") {
                    Some(v) => need(Some(&v.to_string()), &logits(), name),
                    None => clean = logits(),
                },
                "per_token" => {
                    clean = logits();
                    clean.extend(layer_hook("attn.hook_pattern"));
                    clean.extend(layer_hook("attn.hook_q"));
                    clean.extend(sae_hook.clone());
                    per_variant = logits();
                    per_variant.extend(layer_hook("attn.hook_pattern"));
                }
                "attention" => {
                    clean.extend(layer_hook("attn.hook_pattern"));
                    per_variant.extend(layer_hook("attn.hook_pattern"));
                }
                "direct_logit_attribution" => {
                    clean = logits();
                    clean.extend(layer_hook("attn.hook_z"));
                    if let Some(ablation) = call.args.get("ablation") {
                        need(Some(&ablation.to_string()), &logits(), name);
                    }
                }
                "feature_activations" | "feature_stats" => clean.extend(sae_hook.clone()),
                "feature_attribution" => {
                    clean.extend(sae_hook.clone());
                    clean.extend(layer_hook("attn.hook_rot_k"));
                }
                "sae_metrics" | "feature_dashboards" => {
                    clean = logits();
                    clean.extend(sae_hook.clone());
                    if let Some(baseline) = call.args.get("baseline") {
                        need(Some(&baseline.to_string()), &logits(), name);
                    }
                }
                _ => {}
            }
            if !clean.is_empty() {
                need(None, &clean, name);
            }
            if !per_variant.is_empty() {
                for v in &variants {
                    need(Some(v), &per_variant, name);
                }
            }
        }
        graphs
    }

    /// Activations computed once and reused: means for mean ablation, SAE training data.
    pub fn cached(&self) -> Vec<String> {
        let mut cached = Vec::new();
        for variant in &self.variants {
            for call in variant.value.iter().filter(|c| c.function == "mean") {
                if let (Some(hook), Some(dataset)) =
                    (call.args.get("hook"), call.args.get("dataset"))
                {
                    cached.push(format!(
                        "mean of {hook} over {dataset} (for variant {})",
                        variant.name
                    ));
                }
            }
        }
        for sae in self.saes.iter().filter(|s| s.value.function == "train") {
            if let (Some(hook), Some(dataset)) =
                (sae.value.args.get("hook"), sae.value.args.get("dataset"))
            {
                cached.push(format!("activations of {hook} over {dataset}, from a graph pruned after the hook (to train {})", sae.name));
            }
        }
        cached
    }

    fn sae_hook(&self, sae: &str) -> String {
        self.saes
            .iter()
            .find(|s| s.name == sae)
            .and_then(|s| s.value.args.get("hook"))
            .map_or_else(
                || format!("the hook of {sae}"),
                |hook| match hook {
                    Value::Hook(h) => h.name.clone(),
                    other => other.to_string(),
                },
            )
    }
}

/// `blocks.L.<suffix>` for a head argument, with the layer named when it is only known at
/// run time.
fn head_hook(head: &Value, suffix: &str) -> String {
    match head {
        Value::Head { layer, .. } => format!("blocks.{layer}.{suffix}"),
        other => format!(
            "blocks.<layer of {}>.{suffix}",
            other
                .to_string()
                .trim_end_matches(" (computed at run time)")
        ),
    }
}
