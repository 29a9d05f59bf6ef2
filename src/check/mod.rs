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
        suffix: String::new(),
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
    /// Appended to names declared inside a `for` body (`_1669`), so each pass declares its own.
    suffix: String,
    /// Statements checked so far, `for` bodies counted once per pass.
    unrolled: usize,
}

/// Statements an experiment may unroll to: nested `for` loops multiply, and 30 nested
/// loops over two items would otherwise ask for a billion statements.
pub const MAX_UNROLLED_STATEMENTS: usize = 10_000;

impl Checker<'_> {
    fn error(&mut self, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.errors.push(Diagnostic::new(span, message));
        self.errors.last_mut().expect("just pushed")
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
                "export it there with `qexp export CHECKPOINT -o PATH` (paths are relative to the folder qexp runs in), or check the file alone with `qexp check --syntax-only`".into(),
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
            n_layers: self.manifest().map(|m| m.config.n_layers),
            prepend_bos,
        });
    }

    /// Declares `name` (with the `for` suffix), refusing a second declaration.
    fn bind(&mut self, name: &Name, binding: Binding) -> Option<String> {
        let full = format!("{}{}", name.node, self.suffix);
        if let Some((earlier, at)) = self.scope.get(&full) {
            let what = earlier.describe();
            let line = at.start;
            self.error(name.span, format!("`{full}` is already declared as {what}"))
                .hint = Some(format!(
                "names are declared once (the first is at byte {line}); pick another name"
            ));
            return None;
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
        let items = match &items.kind {
            ExprKind::List(items) => items.clone(),
            ExprKind::Ref {
                path,
                selector: None,
            } => match self.scope.get(path) {
                Some((
                    Binding::Literal(Expr {
                        kind: ExprKind::List(items),
                        ..
                    }),
                    _,
                )) => items.clone(),
                _ => {
                    self.error(items.span, "`for` needs a list").hint =
                        Some("write the items, `[1669, 3489]`, or a `let` bound to a list".into());
                    return;
                }
            },
            _ => {
                self.error(items.span, "`for` needs a list").hint =
                    Some("write the items, `[1669, 3489]`".into());
                return;
            }
        };
        for item in items {
            let label: String = format_expr(&item)
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let suffix = format!("{}_{label}", self.suffix);
            let saved_suffix = std::mem::replace(&mut self.suffix, suffix);
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
            self.suffix = saved_suffix;
        }
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
        if let Some(name) = self.bind(name, Binding::Table(columns.clone())) {
            self.steps.push(Step::Table {
                name,
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
            } => match self.scope.get(path) {
                Some((Binding::Table(columns), _)) => {
                    (TableSource::Table(path.clone()), columns.clone())
                }
                _ => {
                    self.unknown_name(path, source.span, "table", |b| {
                        matches!(b, Binding::Table(_))
                    });
                    return None;
                }
            },
            _ => {
                let (call, _) = self.call(source, None, &|p| p == Produces::Table, "a table")?;
                let columns = self.columns_of(&call);
                (TableSource::Call(call), columns)
            }
        };
        let mut ops = Vec::new();
        for stage in stages {
            let (call, _) = self.call(
                stage,
                Some(&columns),
                &|p| p == Produces::TableOp,
                "a table operation (after `|`)",
            )?;
            columns = match TableOp::bind(&call) {
                Ok(op) => op.columns(columns),
                // Its arguments had errors, already reported.
                Err(_) => columns,
            };
            ops.push(call);
        }
        Some((source, ops, columns))
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

    /// The columns a measurement's table will have (none when its arguments had errors,
    /// already reported).
    fn columns_of(&self, call: &Call) -> Vec<(String, ColumnType)> {
        Measurement::bind(call).map_or_else(|_| Vec::new(), |m| m.columns())
    }
}
