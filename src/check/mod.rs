//! AST -> checked [`Plan`]: every name resolved, every argument typed and in range,
//! checked against the model's manifest and the SAEs' configs when the caller has them.
//! Reports all problems at once, sorted by position. Pure: the CLI reads the files and
//! hands their contents in through [`Context`].

pub use crate::builtins;

mod args;
mod columns;
mod constraints;
mod hook_refs;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use builtins::measurements::Measurement;
use builtins::table_ops::TableOp;
use builtins::{Builtin, Param, Produces, Type};

use crate::device::Device;
use crate::hooks;
use crate::manifest::Manifest;
use crate::plan::{
    Call, ColumnExpr, ColumnType, HookRef, ModelSpec, Named, Plan, Step, TableSource, Value,
};
pub use crate::sae::SaeShape;
use crate::syntax::ast::{
    Arg, BinaryOp, DeclKind, Expr, ExprKind, File, Name, Spanned, Statement, UnaryOp,
};
use crate::syntax::{Diagnostic, Span, format_expr, nearest};

/// Experiment names become folder names (with a staging suffix while a report is
/// written): this keeps them well under every file system's limit of 255 bytes.
pub const MAX_EXPERIMENT_NAME: usize = 100;

/// Facts from outside the source file, read by the caller.
#[derive(Debug, Default)]
pub struct Context {
    /// The model's manifest, when its folder exists.
    pub manifest: Option<Manifest>,
    /// Why the model's folder could not be read, when the caller needs the model (every
    /// command but `qexp check --syntax-only`): then it is an error, not a skipped check.
    pub model_unreadable: Option<String>,
    /// `load("path")` SAEs by path: their shape, or why it could not be read.
    pub saes: BTreeMap<String, Result<SaeShape, String>>,
    /// `save = "path"` folders by path: why qexp may not write there, if it may not.
    pub refused_outputs: BTreeMap<String, String>,
    /// Why the report folder may not be written, if it may not.
    pub refused_report: Option<String>,
    /// The machine's memory, for refusing work that cannot fit before it starts.
    pub memory_bytes: Option<u64>,
}

/// `model.NAME` as written, where NAME is none of [`MODEL_SIZES`] (those are bound).
fn unknown_model_size(expr: &Expr) -> Option<&str> {
    match &expr.kind {
        ExprKind::Ref {
            path,
            selector: None,
        } if path.starts_with("model.") => Some(path),
        _ => None,
    }
}

/// Reads one size of a model's configuration.
pub type ModelSize = fn(&crate::model::TransformerConfig) -> usize;

/// The sizes of the model an experiment may name as `model.NAME`, with TransformerLens'
/// names (`model.cfg.n_layers`).
pub const MODEL_SIZES: &[(&str, ModelSize)] = &[
    ("n_layers", |c| c.n_layers),
    ("n_heads", |c| c.n_heads),
    ("n_key_value_heads", |c| c.n_kv_heads),
    ("d_model", |c| c.d_model),
    ("d_head", |c| c.d_head),
    ("d_mlp", |c| c.d_mlp),
    ("d_vocab", |c| c.d_vocab),
    ("n_ctx", |c| c.n_ctx),
];

pub fn check(file: &File, context: &Context) -> Result<Plan, Vec<Diagnostic>> {
    let mut checker = Checker {
        context,
        errors: Vec::new(),
        scope: HashMap::new(),
        name: None,
        title: None,
        model: None,
        datasets: Vec::new(),
        saes: Vec::new(),
        variants: Vec::new(),
        sae_hooks: BTreeMap::new(),
        steps: Vec::new(),
        loops: Vec::new(),
        loop_tables: Vec::new(),
        written: HashMap::new(),
        unrolled: 0,
    };
    for statement in &file.statements {
        checker.statement(statement);
    }
    let Checker {
        mut errors,
        name,
        title,
        model,
        datasets,
        saes,
        variants,
        sae_hooks,
        steps,
        ..
    } = checker;
    if name.is_none() {
        errors.push(
            Diagnostic::new(Span::default(), "the file names no experiment")
                .with_hint("start it with `experiment my_name`; the name becomes reports/my_name/"),
        );
    }
    if model.is_none() {
        errors.push(
            Diagnostic::new(Span::default(), "the file names no model")
                .with_hint("add `model \"models/smollm2-135m\"` (a folder made by `qexp export`)"),
        );
    }
    if !errors.is_empty() {
        errors.sort_by_key(|d| d.span);
        errors.dedup();
        return Err(errors);
    }
    Ok(Plan {
        name: name.expect("checked above"),
        title,
        model: model.expect("checked above"),
        datasets,
        saes,
        variants,
        sae_hooks,
        steps,
    })
}

/// What a name in scope stands for.
#[derive(Debug, Clone)]
enum Binding {
    /// A `let` of a literal: re-checked where it is used, against what is expected there.
    Literal(Expr),
    /// A `let` computed at run time, of a known type.
    Computed(Type),
    Dataset,
    Sae(Option<SaeShape>),
    Variant,
    Table(Vec<(String, ColumnType)>),
    Plot,
    Dashboards,
}

impl Binding {
    fn describe(&self) -> &'static str {
        match self {
            Binding::Literal(_) | Binding::Computed(_) => "a `let` value",
            Binding::Dataset => "a dataset",
            Binding::Sae(_) => "an SAE",
            Binding::Variant => "a variant",
            Binding::Table(_) => "a table",
            Binding::Plot => "a plot",
            Binding::Dashboards => "dashboards",
        }
    }
}

struct Checker<'c> {
    context: &'c Context,
    errors: Vec<Diagnostic>,
    scope: HashMap<String, (Binding, Span)>,
    name: Option<String>,
    title: Option<String>,
    model: Option<ModelSpec>,
    datasets: Vec<Named<Call>>,
    saes: Vec<Named<Call>>,
    variants: Vec<Named<Vec<Call>>>,
    sae_hooks: BTreeMap<String, HookRef>,
    steps: Vec<Step>,
    /// The `for` passes being checked, outermost first: names declared inside get their
    /// labels appended (`_1669`), so each pass declares its own.
    loops: Vec<LoopPass>,
    /// Tables declared inside `for` loops, for `collect`.
    loop_tables: Vec<LoopTable>,
    /// Names declared inside `for` loops (`ablated_3`), to what was written (`ablated`).
    written: HashMap<String, String>,
    /// Statements checked so far, `for` bodies counted once per pass.
    unrolled: usize,
}

/// One pass of a `for` loop: its variable bound to one item.
#[derive(Debug, Clone)]
struct LoopPass {
    var: String,
    /// The item as a name suffix: `_` and its letters and digits.
    label: String,
    /// The item as a table cell, for `collect`.
    key: (Value, ColumnType),
    /// The labels of this pass and every enclosing one, appended to names declared here.
    suffix: String,
}

/// A table a `for` body declared, with the passes it was declared in.
#[derive(Debug, Clone)]
struct LoopTable {
    written: String,
    full: String,
    passes: Vec<LoopPass>,
    columns: Vec<(String, ColumnType)>,
}

/// Statements an experiment may unroll to: nested `for` loops multiply, and 30 nested
/// loops over two items would otherwise ask for a billion statements.
pub const MAX_UNROLLED_STATEMENTS: usize = 10_000;

impl Checker<'_> {
    fn error(&mut self, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.errors.push(Diagnostic::new(span, message));
        self.errors.last_mut().expect("just pushed")
    }

    /// What is appended to names declared here: the labels of the `for` passes around.
    fn suffix(&self) -> &str {
        self.loops.last().map_or("", |pass| pass.suffix.as_str())
    }

    /// A name as written, resolved to what it was declared as: inside a `for` body, a
    /// name the body declared in this pass (`ablated` is `ablated_3` in the pass over
    /// 3) before one declared outside. Returns the declared name and its binding.
    fn lookup(&self, name: &str) -> Option<(String, &(Binding, Span))> {
        self.loops
            .iter()
            .rev()
            .map(|pass| format!("{name}{}", pass.suffix))
            .chain(std::iter::once(name.to_owned()))
            .find_map(|full| {
                let binding = self.scope.get(&full)?;
                Some((full, binding))
            })
    }

    fn manifest(&self) -> Option<&Manifest> {
        self.context.manifest.as_ref()
    }

    fn statement(&mut self, statement: &Spanned<Statement>) {
        self.unrolled += 1;
        if self.unrolled > MAX_UNROLLED_STATEMENTS {
            if self.unrolled == MAX_UNROLLED_STATEMENTS + 1 {
                self.error(
                    statement.span,
                    format!(
                        "the `for` loops unroll to more than {MAX_UNROLLED_STATEMENTS} statements"
                    ),
                )
                .hint = Some("loop over fewer items, or nest fewer loops".into());
            }
            return;
        }
        match &statement.node {
            Statement::Experiment(name) => {
                if self.name.is_some() {
                    self.error(statement.span, "a second `experiment` name")
                        .hint = Some("an experiment file names one experiment".into());
                } else if !name
                    .node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    self.error(name.span, "experiment names become folder names")
                        .hint = Some("use letters, digits, `_` and `-`".into());
                } else if name.node.len() > MAX_EXPERIMENT_NAME {
                    self.error(
                        name.span,
                        format!(
                            "the experiment name is {} characters; report folders take at most {MAX_EXPERIMENT_NAME}",
                            name.node.len()
                        ),
                    )
                    .hint = Some("shorten it".into());
                } else if let Some(why) = &self.context.refused_report {
                    self.error(
                        name.span,
                        format!("cannot write this experiment's report: {why}"),
                    )
                    .hint = Some("rename the experiment, or give --reports another folder".into());
                    self.name = Some(name.node.clone());
                } else {
                    self.name = Some(name.node.clone());
                }
            }
            Statement::Model { path, args } => self.model_statement(statement.span, path, args),
            Statement::Text { kind, text } => {
                if *kind == crate::syntax::ast::TextKind::Title && self.title.is_none() {
                    self.title = Some(text.node.clone());
                }
                self.steps.push(Step::Text {
                    kind: *kind,
                    text: text.node.clone(),
                });
            }
            Statement::Let { name, value } => self.let_statement(name, value),
            Statement::Declare { kind, name, value } => self.declare(*kind, name, value),
            Statement::Variant {
                name,
                interventions,
            } => {
                let calls: Vec<Call> = interventions
                    .iter()
                    .filter_map(|i| {
                        self.call(i, None, &|p| p == Produces::Intervention, "an intervention")
                    })
                    .map(|(call, _)| call)
                    .collect();
                if interventions.is_empty() {
                    self.error(name.span, "a variant with no interventions")
                        .hint =
                        Some("the clean model needs no variant: every table runs it anyway".into());
                }
                if let Some(name) = self.bind(name, Binding::Variant) {
                    self.variants.push(Named { name, value: calls });
                }
            }
            Statement::For { var, items, body } => self.for_statement(var, items, body),
            Statement::Expect { text, claim } => self.expect(text, claim),
        }
    }

    fn model_statement(&mut self, span: Span, path: &Spanned<String>, args: &[Arg]) {
        if self.model.is_some() {
            self.error(span, "a second `model`").hint = Some("an experiment runs one model".into());
            return;
        }
        if let Some(why) = &self.context.model_unreadable {
            self.error(path.span, format!("cannot read the model: {why}"))
                .hint = Some(
                "export it there with `qexp export CHECKPOINT -o PATH` (paths are relative to the project root), or check the file alone with `qexp check --syntax-only`".into(),
            );
        }
        let args = self.bind_args(args, builtins::MODEL_PARAMS, "model", span, None);
        let device = match args.get("device") {
            Some(Value::Choice(d)) if d == "cuda" => Device::Cuda,
            Some(Value::Choice(d)) if d == "coreml" => Device::Coreml,
            _ => Device::Cpu,
        };
        let prepend_bos = match args.get("prepend_bos") {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        if prepend_bos == Some(true)
            && let Some(manifest) = self.manifest()
            && manifest.special_tokens.bos.is_none()
        {
            self.error(span, "`prepend_bos = true`, but the model has no BOS token")
                .hint = Some("leave `prepend_bos` out: its prompts run without one".into());
        }
        let batch_size = match args.get("batch_size") {
            // Out of range is an error above, so no plan carries it.
            Some(Value::Integer(n)) => *n as usize,
            _ => 8,
        };
        self.model = Some(ModelSpec {
            path: PathBuf::from(&path.node),
            device,
            batch_size,
            rotary: self.manifest().is_none_or(|m| {
                matches!(m.config.positional, crate::model::Positional::Rotary { .. })
            }),
            post_norms: self.manifest().is_some_and(|m| m.config.post_norms),
            weights: self.manifest().map(|m| (m.parameters, m.weights_bytes())),
            n_layers: self.manifest().map(|m| m.config.n_layers),
            prepend_bos,
        });
        // TransformerLens' `model.cfg.n_layers`: the model's sizes as names, so a sweep
        // over every layer or head reads `for layer in range(model.n_layers)`. Checking
        // a file alone (no manifest) loops such ranges once.
        let config = self.manifest().map(|m| m.config.clone());
        for (name, size) in MODEL_SIZES {
            let value = config.as_ref().map_or(1, size);
            let literal = Expr {
                kind: ExprKind::Number {
                    value: value as f64,
                    text: value.to_string(),
                },
                span,
            };
            self.scope
                .insert(format!("model.{name}"), (Binding::Literal(literal), span));
        }
    }

    /// Declares `name` (with the `for` suffix), refusing a second declaration.
    fn bind(&mut self, name: &Name, binding: Binding) -> Option<String> {
        let full = format!("{}{}", name.node, self.suffix());
        if let Some((earlier, at)) = self.scope.get(&full) {
            let what = earlier.describe();
            let line = at.start;
            self.error(name.span, format!("`{full}` is already declared as {what}"))
                .hint = Some(format!(
                "names are declared once (the first is at byte {line}); pick another name"
            ));
            return None;
        }
        if !self.loops.is_empty() {
            self.written.insert(full.clone(), name.node.clone());
        }
        self.scope.insert(full.clone(), (binding, name.span));
        Some(full)
    }

    fn let_statement(&mut self, name: &Name, value: &Expr) {
        let binding = match &value.kind {
            ExprKind::Call { .. } => {
                let Some((call, builtin)) =
                    self.call(value, None, &|p| matches!(p, Produces::Value(_)), "a value")
                else {
                    return;
                };
                let Produces::Value(ty) = builtin.produces else {
                    unreachable!("filtered above")
                };
                let Some(full) = self.bind(name, Binding::Computed(ty)) else {
                    return;
                };
                self.steps.push(Step::Compute { name: full, call });
                return;
            }
            _ => Binding::Literal(value.clone()),
        };
        self.bind(name, binding);
    }

    fn for_statement(&mut self, var: &Name, items: &Expr, body: &[Spanned<Statement>]) {
        let Some(items) = self.loop_items(items) else {
            return;
        };
        for item in items {
            let label = crate::plan::name_label(&format_expr(&item));
            let key = match (args::number(&item), &item.kind) {
                (Some(n), _) if n.fract() == 0.0 => (Value::Integer(n as i64), ColumnType::Integer),
                (Some(n), _) => (Value::Number(n), ColumnType::Number),
                (None, ExprKind::Bool(b)) => (Value::Bool(*b), ColumnType::Bool),
                (None, ExprKind::Str(text)) => (Value::Str(text.clone()), ColumnType::Str),
                // A head (`L1H4`) or a name: its text.
                (None, _) => (Value::Str(format_expr(&item)), ColumnType::Str),
            };
            let suffix = format!("{}_{label}", self.suffix());
            self.loops.push(LoopPass {
                var: var.node.clone(),
                label,
                key,
                suffix,
            });
            let saved_var = self
                .scope
                .insert(var.node.clone(), (Binding::Literal(item.clone()), var.span));
            for statement in body {
                self.statement(statement);
            }
            match saved_var {
                Some(previous) => self.scope.insert(var.node.clone(), previous),
                None => self.scope.remove(&var.node),
            };
            self.loops.pop();
        }
    }

    /// What a `for` loops over: a written list, a `let` list, or `range(start, end)`.
    fn loop_items(&mut self, items: &Expr) -> Option<Vec<Expr>> {
        match &items.kind {
            ExprKind::List(items) => Some(items.clone()),
            ExprKind::Ref {
                path,
                selector: None,
            } => match self.lookup(path) {
                Some((
                    _,
                    (
                        Binding::Literal(Expr {
                            kind: ExprKind::List(items),
                            ..
                        }),
                        _,
                    ),
                )) => Some(items.clone()),
                _ => {
                    self.error(items.span, "`for` needs a list").hint = Some(
                        "write the items, `[1669, 3489]`, a `let` bound to a list, or `range(0, 9)`"
                            .into(),
                    );
                    None
                }
            },
            ExprKind::Call { function, args } if function.node == "range" => {
                self.range(args, items.span)
            }
            _ => {
                self.error(items.span, "`for` needs a list").hint =
                    Some("write the items, `[1669, 3489]`, or `range(0, 9)`".into());
                None
            }
        }
    }

    /// `range(end)` or `range(start, end)`: the whole numbers from `start` (default 0)
    /// up to but not including `end`, as Python's `range`.
    fn range(&mut self, args: &[Arg], span: Span) -> Option<Vec<Expr>> {
        let mut bounds = Vec::with_capacity(2);
        for arg in args {
            if let Some(name) = &arg.name {
                self.error(
                    name.span,
                    "`range` takes its bounds in order: `range(0, 9)`",
                );
                return None;
            }
            let bound = self.dereference(&arg.value);
            match (args::number(&bound), unknown_model_size(&bound)) {
                (Some(n), _) if n.fract() == 0.0 => bounds.push(n as i64),
                (_, Some(written)) => {
                    let sizes: Vec<String> = MODEL_SIZES
                        .iter()
                        .map(|(n, _)| format!("model.{n}"))
                        .collect();
                    let candidates: Vec<&str> = sizes.iter().map(String::as_str).collect();
                    let hint = match nearest(written, &candidates) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => format!("the sizes are {}", sizes.join(", ")),
                    };
                    self.error(arg.value.span, format!("the model has no size `{written}`"))
                        .hint = Some(hint);
                    return None;
                }
                _ => {
                    self.error(arg.value.span, "`range` counts in whole numbers")
                        .hint =
                        Some("write them, or name a `let` (or loop variable) bound to one".into());
                    return None;
                }
            }
        }
        let (start, end) = match bounds[..] {
            [end] => (0, end),
            [start, end] => (start, end),
            _ => {
                self.error(span, "`range` takes an end, or a start and an end")
                    .hint = Some("`range(9)` is 0 to 8; `range(2, 5)` is 2, 3, 4".into());
                return None;
            }
        };
        if start >= end {
            self.error(span, format!("`range({start}, {end})` is empty"))
                .hint = Some("the end is not included: `range(0, 1)` is just 0".into());
            return None;
        }
        if end - start > MAX_UNROLLED_STATEMENTS as i64 {
            self.error(
                span,
                format!("`range({start}, {end})` has more than {MAX_UNROLLED_STATEMENTS} items"),
            )
            .hint = Some("loop over fewer items".into());
            return None;
        }
        Some(
            (start..end)
                .map(|n| Expr {
                    kind: if n < 0 {
                        ExprKind::Unary {
                            op: UnaryOp::Neg,
                            operand: Box::new(Expr {
                                kind: ExprKind::Number {
                                    value: -n as f64,
                                    text: (-n).to_string(),
                                },
                                span,
                            }),
                        }
                    } else {
                        ExprKind::Number {
                            value: n as f64,
                            text: n.to_string(),
                        }
                    },
                    span,
                })
                .collect(),
        )
    }

    fn declare(&mut self, kind: DeclKind, name: &Name, value: &Expr) {
        match kind {
            DeclKind::Dataset => {
                if let Some((call, _)) =
                    self.call(value, None, &|p| p == Produces::Dataset, "a dataset")
                    && let Some(name) = self.bind(name, Binding::Dataset)
                {
                    self.datasets.push(Named { name, value: call });
                }
            }
            DeclKind::Sae => {
                if let Some((call, _)) = self.call(value, None, &|p| p == Produces::Sae, "an SAE") {
                    let shape = self.sae_shape(&call, value.span);
                    let hook = shape.as_ref().and_then(|s| s.hook.clone());
                    if let Some(name) = self.bind(name, Binding::Sae(shape)) {
                        if let Some(hook) = hook {
                            self.sae_hooks.insert(name.clone(), hook);
                        }
                        self.saes.push(Named { name, value: call });
                    }
                }
            }
            DeclKind::Table => self.table(name, value),
            DeclKind::Plot => {
                if let Some((call, _)) = self.call(value, None, &|p| p == Produces::Plot, "a plot")
                    && let Some(name) = self.bind(name, Binding::Plot)
                {
                    self.steps.push(Step::Plot { name, call });
                }
            }
            DeclKind::Dashboards => {
                if let Some((call, _)) = self.call(
                    value,
                    None,
                    &|p| p == Produces::Dashboards,
                    "feature dashboards",
                ) && let Some(name) = self.bind(name, Binding::Dashboards)
                {
                    self.steps.push(Step::Dashboards { name, call });
                }
            }
        }
    }

    fn table(&mut self, name: &Name, value: &Expr) {
        let (source, stages) = value.pipeline();
        let Some((source, ops, columns)) = self.pipeline(source, &stages) else {
            return;
        };
        if let Some(full) = self.bind(name, Binding::Table(columns.clone())) {
            if !self.loops.is_empty() {
                self.loop_tables.push(LoopTable {
                    written: name.node.clone(),
                    full: full.clone(),
                    passes: self.loops.clone(),
                    columns: columns.clone(),
                });
            }
            self.steps.push(Step::Table {
                name: full,
                source,
                ops,
                columns,
            });
        }
    }

    /// A table's source and its operations, with the columns they leave; `None` after
    /// reporting why when one of them is wrong.
    fn pipeline(
        &mut self,
        source: &Expr,
        stages: &[&Expr],
    ) -> Option<(TableSource, Vec<Call>, builtins::args::Columns)> {
        let (source, mut columns) = match &source.kind {
            ExprKind::Ref {
                path,
                selector: None,
            } => match self.lookup(path) {
                Some((full, (Binding::Table(columns), _))) => {
                    (TableSource::Table(full), columns.clone())
                }
                _ => {
                    self.unknown_name(path, source.span, "table", |b| {
                        matches!(b, Binding::Table(_))
                    });
                    return None;
                }
            },
            ExprKind::Call { function, args } if function.node == "collect" => {
                self.collect(args, source.span)?
            }
            _ => {
                let (call, _) = self.call(source, None, &|p| p == Produces::Table, "a table")?;
                let labels = self.loop_labels(&call);
                let columns = self
                    .columns_of(&call)
                    .into_iter()
                    .map(|(name, ty)| (crate::plan::relabel(&name, &labels).unwrap_or(name), ty))
                    .collect();
                (TableSource::Call { call, labels }, columns)
            }
        };
        let mut ops = Vec::new();
        for (at, stage) in stages.iter().enumerate() {
            let (call, _) = self.call(
                stage,
                Some(&columns),
                &|p| p == Produces::TableOp,
                "a table operation (after `|`)",
            )?;
            columns = match TableOp::bind(&call) {
                // Without a list `on` had errors, already reported.
                Ok(TableOp::Join { with, on })
                    if matches!(call.args.get("on"), Some(Value::List(_))) =>
                {
                    self.join_columns(columns, &with, &on, stage.span)?
                }
                Ok(TableOp::Join { .. }) => return None,
                Ok(TableOp::Concat(with)) => {
                    let other = self.table_columns(&with);
                    if other.as_ref().is_some_and(|other| *other != columns) {
                        self.error(
                            stage.span,
                            format!("`{with}` does not have this table's columns"),
                        )
                        .hint = Some(
                            "concat stacks tables with the same columns of the same types, in the same order: pick them with `columns([...])`".into(),
                        );
                        return None;
                    }
                    columns
                }
                Ok(TableOp::Unpivot {
                    columns: listed,
                    name,
                    value,
                }) => {
                    let problem = if listed.is_empty() {
                        Some("`unpivot` needs at least one column to stack".to_owned())
                    } else if name == value {
                        Some(format!("`name` and `value` are both `{name}`"))
                    } else {
                        None
                    };
                    let unpivoted = match problem {
                        Some(problem) => Err(problem),
                        None => {
                            builtins::table_ops::unpivoted_columns(columns, &listed, &name, &value)
                        }
                    };
                    match unpivoted {
                        Ok(columns) => columns,
                        Err(why) => {
                            self.error(stage.span, why).hint = Some(
                                "`unpivot(columns = [clean_loss, zeroed_loss], name = variant, value = loss)` stacks columns of one type".into(),
                            );
                            return None;
                        }
                    }
                }
                Ok(op @ TableOp::Pivot { .. }) => {
                    if at + 1 < stages.len() {
                        self.error(stages[at + 1].span, "nothing can follow `pivot`")
                            .hint = Some(
                            "pivot's columns come from the data, so they cannot be named before it runs: filter, derive and aggregate the long table, then pivot last".into(),
                        );
                        return None;
                    }
                    op.columns(columns)
                }
                Ok(op) => op.columns(columns),
                // Its arguments had errors, already reported.
                Err(_) => columns,
            };
            ops.push(call);
        }
        Some((source, ops, columns))
    }

    fn table_columns(&self, name: &str) -> Option<builtins::args::Columns> {
        match self.scope.get(name) {
            Some((Binding::Table(columns), _)) => Some(columns.clone()),
            _ => None,
        }
    }

    /// The columns after `join(with, on)`, refusing keys either side lacks and other
    /// columns both sides have.
    fn join_columns(
        &mut self,
        columns: builtins::args::Columns,
        with: &str,
        on: &[String],
        span: Span,
    ) -> Option<builtins::args::Columns> {
        let right = self.table_columns(with)?;
        for key in on {
            let left_type = columns.iter().find(|(c, _)| c == key).map(|(_, t)| *t);
            let right_type = right.iter().find(|(c, _)| c == key).map(|(_, t)| *t);
            match (left_type, right_type) {
                (Some(l), Some(r)) if l == r => {}
                (Some(_), Some(_)) => {
                    self.error(
                        span,
                        format!("`{key}` holds different types in the two tables"),
                    );
                    return None;
                }
                _ => {
                    let side = if left_type.is_none() {
                        "this table"
                    } else {
                        with
                    };
                    self.error(span, format!("`{key}` is not a column of {side}"))
                        .hint = Some("join on columns both tables have".into());
                    return None;
                }
            }
        }
        if on.is_empty() {
            self.error(span, "`join` needs at least one column to join on")
                .hint = Some("`join(other, on = [layer, head])`".into());
            return None;
        }
        let (joined, clashes) = builtins::table_ops::joined_columns(&columns, &right, on);
        if !clashes.is_empty() {
            self.error(
                span,
                format!(
                    "both tables have {}: the joined table would have two of each",
                    clashes
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .hint = Some(
                "rename one side's first (`derive(zero_loss = loss) | columns([...])`), or join on them too".into(),
            );
            return None;
        }
        Some(joined)
    }

    /// `expect "text" = table | ops | check`.
    fn expect(&mut self, text: &Spanned<String>, claim: &Expr) {
        if text.node.trim().is_empty() {
            self.error(text.span, "a claim without words").hint = Some(
                "say what should hold: `expect \"the head attends to the quote\" = ...`".into(),
            );
        }
        let (source, mut stages) = claim.pipeline();
        let Some(check) = stages.pop() else {
            self.error(claim.span, "a claim ends in a check")
                .hint = Some(
                "pipe the table into one: `| all(cond)`, `| any(cond)` or `| share(cond, at_least = 0.8)`"
                    .into(),
            );
            return;
        };
        let Some((source, ops, columns)) = self.pipeline(source, &stages) else {
            return;
        };
        let Some((check, _)) = self.call(
            check,
            Some(&columns),
            &|p| p == Produces::Check,
            "a check (last in a claim)",
        ) else {
            return;
        };
        self.steps.push(Step::Expect {
            text: text.node.clone(),
            written: format_expr(claim),
            source,
            ops,
            check,
        });
    }

    /// The variants a measurement names that a `for` body declared, each with its name as
    /// written: the measurement's columns and cells use that name.
    fn loop_labels(&self, call: &Call) -> Vec<(String, String)> {
        let mut labels: Vec<(String, String)> = call
            .names()
            .into_iter()
            .filter(|name| matches!(self.scope.get(*name), Some((Binding::Variant, _))))
            .filter_map(|name| Some((name.to_owned(), self.written.get(name)?.clone())))
            .collect();
        labels.dedup();
        labels
    }

    /// `collect(name)`: the tables declared as `name` by the `for` loops inside the
    /// current pass (or anywhere, outside every loop), stacked.
    fn collect(
        &mut self,
        args: &[Arg],
        span: Span,
    ) -> Option<(TableSource, builtins::args::Columns)> {
        let [
            Arg {
                name: None,
                value:
                    Expr {
                        kind:
                            ExprKind::Ref {
                                path: written,
                                selector: None,
                            },
                        span: name_span,
                    },
            },
        ] = args
        else {
            self.error(
                span,
                "`collect` takes the name of a table a `for` loop declares",
            )
            .hint =
                Some("`collect(loss)` after `for h in range(0, 9) { table loss = ... }`".into());
            return None;
        };
        let depth = self.loops.len();
        let here: Vec<&str> = self.loops.iter().map(|p| p.label.as_str()).collect();
        let parts: Vec<&LoopTable> = self
            .loop_tables
            .iter()
            .filter(|t| {
                &t.written == written
                    && t.passes.len() > depth
                    && t.passes[..depth]
                        .iter()
                        .map(|p| p.label.as_str())
                        .eq(here.iter().copied())
            })
            .collect();
        let Some(first) = parts.first() else {
            self.error(
                *name_span,
                format!("no `for` loop before this declares a table `{written}`"),
            )
            .hint = Some("collect a table declared inside a loop, after the loop".into());
            return None;
        };
        let mut columns: Vec<(String, ColumnType)> = first.passes[depth..]
            .iter()
            .map(|p| (p.var.clone(), p.key.1))
            .collect();
        if let Some((clash, _)) = first
            .columns
            .iter()
            .find(|(c, _)| columns.iter().any(|(v, _)| v == c))
        {
            self.error(
                *name_span,
                format!("the loop variable `{clash}` would be a second `{clash}` column"),
            )
            .hint = Some(
                "rename the loop variable, or leave the column out in the loop: `| columns([...])`"
                    .into(),
            );
            return None;
        }
        // A loop over `[0.5, 1, 1.5]` mixes whole numbers and numbers: one number column.
        for part in &parts {
            for (column, pass) in columns.iter_mut().zip(&part.passes[depth..]) {
                if column.1 != pass.key.1 && column.1.is_numeric() && pass.key.1.is_numeric() {
                    column.1 = ColumnType::Number;
                }
            }
        }
        let keys_end = columns.len();
        columns.extend(first.columns.iter().cloned());
        let mut collected = Vec::with_capacity(parts.len());
        let mut mismatch = None;
        for part in &parts {
            let mut keys = Vec::with_capacity(keys_end);
            for ((_, ty), pass) in columns[..keys_end].iter().zip(&part.passes[depth..]) {
                let value = match (&pass.key.0, ty) {
                    (Value::Integer(n), ColumnType::Number) => Value::Number(*n as f64),
                    (value, _) if pass.key.1 == *ty => value.clone(),
                    _ => {
                        mismatch = Some(part.full.clone());
                        pass.key.0.clone()
                    }
                };
                keys.push((pass.var.clone(), value));
            }
            if part.columns != first.columns || part.passes.len() - depth != keys_end {
                mismatch = Some(part.full.clone());
            }
            collected.push(crate::plan::CollectedPart {
                table: part.full.clone(),
                keys,
            });
        }
        if let Some(other) = mismatch {
            self.error(
                *name_span,
                format!("`{other}` does not have the columns of `{}`", first.full),
            )
            .hint = Some("collected tables must have the same columns of the same types, and the loop items one type".into());
            return None;
        }
        Some((
            TableSource::Collect {
                name: written.clone(),
                parts: collected,
            },
            columns,
        ))
    }

    /// The columns a measurement's table will have (none when its arguments had errors,
    /// already reported).
    fn columns_of(&self, call: &Call) -> Vec<(String, ColumnType)> {
        Measurement::bind(call).map_or_else(|_| Vec::new(), |m| m.columns())
    }
}
