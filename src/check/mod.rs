//! AST -> checked [`Plan`]: every name resolved, every argument typed and in range,
//! checked against the model's manifest and the SAEs' configs when the caller has them.
//! Reports all problems at once, sorted by position. Pure: the CLI reads the files and
//! hands their contents in through [`Context`].

pub mod builtins;


use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use builtins::{Builtin, Param, Produces, Type};

use crate::hooks;
use crate::manifest::Manifest;
pub use crate::sae::SaeShape;
use crate::plan::{
    Call, ColumnExpr, ColumnType, HookRef, ModelSpec, Named, Plan, Step, TableSource, Value,
};
use crate::device::Device;
use crate::syntax::ast::{
    Arg, BinaryOp, DeclKind, Expr, ExprKind, File, Name, Spanned, Statement, UnaryOp,
};
use crate::syntax::{Diagnostic, Span, format_expr, nearest};

/// TransformerLens' `evals.sanity_check` text (the opening of "Zoom In"): a loss under
/// about 5 means the model is sane, over 7 that something is broken.
pub const SANITY_CHECK_TEXT: &str = "Many important transition points in the history of science have been moments when science 'zoomed in.' At these points, we develop a visualization or tool that allows us to see the world in a new level of detail, and a new field of science develops to study the world through this lens.";

/// Experiment names become folder names (with a staging suffix while a report is
/// written): this keeps them well under every file system's limit of 255 bytes.
pub const MAX_EXPERIMENT_NAME: usize = 100;

/// Facts from outside the source file, read by the caller.
#[derive(Debug, Default)]
pub struct Context {
    /// The model's manifest, when its folder exists.
    pub manifest: Option<Manifest>,
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
        }
    }

    fn model_statement(&mut self, span: Span, path: &Spanned<String>, args: &[Arg]) {
        if self.model.is_some() {
            self.error(span, "a second `model`").hint = Some("an experiment runs one model".into());
            return;
        }
        let args = self.bind_args(args, builtins::MODEL_PARAMS, "model", span, None);
        let device = match args.get("device") {
            Some(Value::Choice(d)) if d == "cuda" => Device::Cuda,
            Some(Value::Choice(d)) if d == "coreml" => Device::Coreml,
            _ => Device::Cpu,
        };
        let batch_size = match args.get("batch_size") {
            // Out of range is an error above, so no plan carries it.
            Some(Value::Integer(n)) => *n as usize,
            _ => 8,
        };
        self.model = Some(ModelSpec {
            path: PathBuf::from(&path.node),
            device,
            batch_size,
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
                    if let Some(name) = self.bind(name, Binding::Sae(shape)) {
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
                    return;
                }
            },
            _ => {
                let Some((call, _)) = self.call(source, None, &|p| p == Produces::Table, "a table")
                else {
                    return;
                };
                let columns = self.columns_of(&call);
                (TableSource::Call(call), columns)
            }
        };
        let mut ops = Vec::new();
        for stage in stages {
            let Some((call, _)) = self.call(
                stage,
                Some(&columns),
                &|p| p == Produces::TableOp,
                "a table operation (after `|`)",
            ) else {
                return;
            };
            columns = transform_columns(&call, columns);
            ops.push(call);
        }
        if let Some(name) = self.bind(name, Binding::Table(columns.clone())) {
            self.steps.push(Step::Table {
                name,
                source,
                ops,
                columns,
            });
        }
    }

    fn columns_of(&self, call: &Call) -> Vec<(String, ColumnType)> {
        let variants: Vec<String> = match call.args.get("variants") {
            Some(Value::List(items)) => items.iter().map(ToString::to_string).collect(),
            _ => Vec::new(),
        };
        builtins::table_columns(
            call.function,
            call.args.contains_key("head"),
            call.args.contains_key("sae"),
            &variants,
        )
    }

    /// Checks a call against the built-ins `allowed` here. `input` is the table piped in,
    /// whose columns `Column` arguments name.
    fn call(
        &mut self,
        expr: &Expr,
        input: Option<&[(String, ColumnType)]>,
        allowed: &dyn Fn(Produces) -> bool,
        what: &str,
    ) -> Option<(Call, &'static Builtin)> {
        let ExprKind::Call { function, args } = &expr.kind else {
            let candidates = builtins::names_producing(allowed);
            self.error(
                expr.span,
                format!("expected {what}, found `{}`", format_expr(expr)),
            )
            .hint = Some(format!("write a call, one of: {}", candidates.join(", ")));
            return None;
        };
        let Some(builtin) = builtins::find(&function.node) else {
            let candidates = builtins::names_producing(allowed);
            let hint = match nearest(&function.node, &candidates) {
                Some(n) => format!("did you mean `{n}`?"),
                None => format!("{what} is one of: {}", candidates.join(", ")),
            };
            self.error(
                function.span,
                format!("unknown function `{}`", function.node),
            )
            .hint = Some(hint);
            return None;
        };
        if !allowed(builtin.produces) {
            let candidates = builtins::names_producing(allowed);
            self.error(
                function.span,
                format!("`{}` cannot be used here: expected {what}", function.node),
            )
            .hint = Some(format!("here you can use: {}", candidates.join(", ")));
            return None;
        }
        let bound = if builtin.name == "derive" {
            self.derive_args(args, input.unwrap_or(&[]), expr.span)
        } else {
            self.bind_args(args, builtin.params, builtin.name, expr.span, input)
        };
        let call = Call {
            function: builtin.name,
            args: bound,
        };
        self.post_check(&call, expr.span);
        Some((call, builtin))
    }

    /// Binds positional then named arguments to `params` and checks each one's type.
    fn bind_args(
        &mut self,
        args: &[Arg],
        params: &'static [Param],
        function: &str,
        span: Span,
        input: Option<&[(String, ColumnType)]>,
    ) -> BTreeMap<&'static str, Value> {
        let mut assigned: Vec<(&'static Param, &Arg)> = Vec::new();
        let mut seen_named = false;
        for (i, arg) in args.iter().enumerate() {
            let param = match &arg.name {
                None if seen_named => {
                    self.error(arg.value.span, "a positional argument after a named one")
                        .hint = Some("put positional arguments first, or name this one".into());
                    continue;
                }
                None => match params.get(i) {
                    Some(p) => p,
                    None => {
                        self.error(
                            arg.value.span,
                            format!("`{function}` takes at most {} arguments", params.len()),
                        );
                        continue;
                    }
                },
                Some(name) => {
                    seen_named = true;
                    match params.iter().find(|p| p.name == name.node) {
                        Some(p) => p,
                        None => {
                            let names: Vec<&str> = params.iter().map(|p| p.name).collect();
                            let hint = match nearest(&name.node, &names) {
                                Some(n) => format!(
                                    "did you mean `{n}`? `{function}` takes: {}",
                                    names.join(", ")
                                ),
                                None => format!("`{function}` takes: {}", names.join(", ")),
                            };
                            self.error(
                                name.span,
                                format!("unknown argument `{}` for `{function}`", name.node),
                            )
                            .hint = Some(hint);
                            continue;
                        }
                    }
                }
            };
            if assigned.iter().any(|(p, _)| p.name == param.name) {
                self.error(arg.value.span, format!("`{}` is given twice", param.name));
                continue;
            }
            assigned.push((param, arg));
        }
        for param in params.iter().filter(|p| p.required) {
            if !assigned.iter().any(|(p, _)| p.name == param.name) {
                self.error(
                    span,
                    format!(
                        "`{function}` needs `{}` ({})",
                        param.name,
                        param.ty.describe()
                    ),
                );
            }
        }
        // A `table` argument decides which columns the other arguments may name.
        let mut columns: Option<Vec<(String, ColumnType)>> = input.map(<[_]>::to_vec);
        let mut bound = BTreeMap::new();
        assigned.sort_by_key(|(p, _)| p.name != "table");
        for (param, arg) in assigned {
            if let Some(value) = self.value(&arg.value, param.ty, columns.as_deref()) {
                if let Some(why) = param.limit.violation(&value) {
                    self.error(arg.value.span, format!("`{}`: {why}", param.name));
                }
                if param.name == "save"
                    && let Value::Str(path) = &value
                    && let Some(why) = self.context.refused_outputs.get(path)
                {
                    self.error(arg.value.span, format!("cannot save here: {why}"))
                        .hint =
                        Some("save inside the project, in a folder qexp made or a new one".into());
                }
                if param.ty == Type::Table
                    && let Value::Name(table) = &value
                    && let Some((Binding::Table(c), _)) = self.scope.get(table)
                {
                    columns = Some(c.clone());
                }
                bound.insert(param.name, value);
            }
        }
        bound
    }

    fn derive_args(
        &mut self,
        args: &[Arg],
        input: &[(String, ColumnType)],
        span: Span,
    ) -> BTreeMap<&'static str, Value> {
        if args.is_empty() {
            self.error(span, "`derive` needs at least one `name = expression`");
        }
        let mut columns = input.to_vec();
        let mut derived = Vec::new();
        for arg in args {
            let Some(name) = &arg.name else {
                self.error(arg.value.span, "`derive` arguments are `name = expression`")
                    .hint = Some("e.g. derive(loss_diff = ablated_loss - loss)".into());
                continue;
            };
            if let Some((expr, ty)) = self.column_expr(&arg.value, &columns) {
                columns.retain(|(n, _)| n != &name.node);
                columns.push((name.node.clone(), ty));
                derived.push(Value::List(vec![
                    Value::Column(name.node.clone()),
                    Value::Expr(expr),
                ]));
            }
        }
        BTreeMap::from([("columns", Value::List(derived))])
    }

    /// Checks one argument against the type expected there.
    fn value(
        &mut self,
        expr: &Expr,
        ty: Type,
        columns: Option<&[(String, ColumnType)]>,
    ) -> Option<Value> {
        if let ExprKind::Ref {
            path,
            selector: None,
        } = &expr.kind
            && let Some((binding, _)) = self.scope.get(path).cloned()
        {
            match binding {
                Binding::Literal(bound) => return self.value(&bound, ty, columns),
                Binding::Computed(computed)
                    if computed == ty
                        || (ty == Type::Number && computed == Type::Integer)
                        || (ty == Type::Features && computed == Type::ListOf(&Type::Integer)) =>
                {
                    return Some(Value::Computed(path.clone()));
                }
                _ => {}
            }
        }
        let mismatch = |checker: &mut Self| {
            checker.error(
                expr.span,
                format!("expected {}, found `{}`", ty.describe(), format_expr(expr)),
            );
            None
        };
        match ty {
            Type::Number | Type::Integer => {
                let Some(n) = number(expr) else {
                    return mismatch(self);
                };
                if ty == Type::Integer {
                    if n.fract() != 0.0 {
                        self.error(expr.span, format!("expected a whole number, found {n}"));
                        return None;
                    }
                    Some(Value::Integer(n as i64))
                } else {
                    Some(Value::Number(n))
                }
                .or_else(|| mismatch(self))
            }
            Type::Str => match &expr.kind {
                ExprKind::Str(s) => Some(Value::Str(s.clone())),
                _ => mismatch(self),
            },
            Type::Bool => match &expr.kind {
                ExprKind::Bool(b) => Some(Value::Bool(*b)),
                _ => mismatch(self),
            },
            Type::Hook => match &expr.kind {
                ExprKind::Ref { path, selector } => self
                    .hook(path, selector.as_deref(), expr.span)
                    .map(Value::Hook),
                _ => mismatch(self),
            },
            Type::Head => match &expr.kind {
                ExprKind::Ref {
                    path,
                    selector: None,
                } => self.head(path, expr.span),
                _ => mismatch(self),
            },
            Type::Dataset => self.named(expr, "dataset", |b| matches!(b, Binding::Dataset)),
            Type::Sae => self.named(expr, "SAE", |b| matches!(b, Binding::Sae(_))),
            Type::Variant => self.named(expr, "variant", |b| matches!(b, Binding::Variant)),
            Type::Table => self.named(expr, "table", |b| matches!(b, Binding::Table(_))),
            Type::Column => match (&expr.kind, columns) {
                (
                    ExprKind::Ref {
                        path,
                        selector: None,
                    },
                    Some(columns),
                ) => {
                    if columns.iter().any(|(n, _)| n == path) {
                        Some(Value::Column(path.clone()))
                    } else {
                        self.unknown_column(path, expr.span, columns);
                        None
                    }
                }
                (
                    ExprKind::Ref {
                        path,
                        selector: None,
                    },
                    None,
                ) => Some(Value::Column(path.clone())),
                _ => mismatch(self),
            },
            Type::ColumnExpr => {
                let (expr_value, column_type) = self.column_expr(expr, columns.unwrap_or(&[]))?;
                if column_type != ColumnType::Bool {
                    self.error(expr.span, "this expression is not true or false")
                        .hint = Some("compare it: `loss_diff > 1`".into());
                    return None;
                }
                Some(Value::Expr(expr_value))
            }
            Type::Choice(options) => {
                let word = match &expr.kind {
                    ExprKind::Ref {
                        path,
                        selector: None,
                    } => path.clone(),
                    ExprKind::Str(s) => s.clone(),
                    _ => return mismatch(self),
                };
                if options.contains(&word.as_str()) {
                    Some(Value::Choice(word))
                } else {
                    let hint = match nearest(&word, options) {
                        Some(n) => format!("did you mean `{n}`?"),
                        None => format!("use one of: {}", options.join(", ")),
                    };
                    self.error(
                        expr.span,
                        format!("`{word}` is not one of {}", options.join(", ")),
                    )
                    .hint = Some(hint);
                    None
                }
            }
            Type::Position => match &expr.kind {
                ExprKind::Ref {
                    path,
                    selector: None,
                } if path == "all" => Some(Value::All),
                _ => {
                    let Some(position) =
                        number(expr).filter(|n| n.fract() == 0.0).map(|n| n as i64)
                    else {
                        return mismatch(self);
                    };
                    // A position no prompt can have is a typo, not a no-op.
                    let n_ctx = self.manifest().map_or(i64::MAX, |m| m.config.n_ctx as i64);
                    if position >= n_ctx || position < -n_ctx {
                        self.error(
                            expr.span,
                            format!(
                                "position {position} is outside every prompt: the model's context is {n_ctx} tokens"
                            ),
                        )
                        .hint = Some(format!("use 0 to {} or -{n_ctx} to -1", n_ctx - 1));
                    }
                    Some(Value::Integer(position))
                }
            },
            Type::Features => match &expr.kind {
                ExprKind::Ref {
                    path,
                    selector: None,
                } if path == "all" => Some(Value::All),
                // Indices, and `let` lists of them: `[FEATURES, FEATURES_HERE, 7]`.
                ExprKind::List(items) => {
                    let mut values = Vec::with_capacity(items.len());
                    for item in items {
                        let is_list = matches!(
                            &item.kind,
                            ExprKind::Ref { path, selector: None }
                                if matches!(
                                    self.scope.get(path),
                                    Some((Binding::Computed(Type::ListOf(_)), _))
                                )
                        );
                        let item_type = if is_list {
                            Type::Features
                        } else {
                            Type::Integer
                        };
                        values.push(self.value(item, item_type, columns));
                    }
                    values
                        .into_iter()
                        .collect::<Option<Vec<_>>>()
                        .map(Value::List)
                }
                _ => mismatch(self),
            },
            Type::ListOf(inner) => match &expr.kind {
                ExprKind::List(items) => {
                    let values: Vec<Value> = items
                        .iter()
                        .filter_map(|i| self.value(i, *inner, columns))
                        .collect();
                    (values.len() == items.len()).then_some(Value::List(values))
                }
                _ => mismatch(self),
            },
        }
    }

    fn named(&mut self, expr: &Expr, what: &str, is: fn(&Binding) -> bool) -> Option<Value> {
        let ExprKind::Ref {
            path,
            selector: None,
        } = &expr.kind
        else {
            self.error(
                expr.span,
                format!("expected a {what} name, found `{}`", format_expr(expr)),
            );
            return None;
        };
        match self.scope.get(path) {
            Some((binding, _)) if is(binding) => Some(Value::Name(path.clone())),
            _ => {
                self.unknown_name(path, expr.span, what, is);
                None
            }
        }
    }

    fn unknown_name(&mut self, name: &str, span: Span, what: &str, is: fn(&Binding) -> bool) {
        let mut declared: Vec<&str> = self
            .scope
            .iter()
            .filter(|(_, (b, _))| is(b))
            .map(|(n, _)| n.as_str())
            .collect();
        declared.sort_unstable();
        let hint = match (nearest(name, &declared), declared.is_empty()) {
            (Some(n), _) => format!("did you mean `{n}`?"),
            (None, true) => format!(
                "no {what} is declared before this line; declare it with `{what} NAME = ...` first"
            ),
            (None, false) => format!("declared so far: {}", declared.join(", ")),
        };
        let message = match self.scope.get(name) {
            Some((other, _)) => format!("`{name}` is {}, not a {what}", other.describe()),
            None => format!("unknown {what} `{name}`"),
        };
        self.error(span, message).hint = Some(hint);
    }

    fn unknown_column(&mut self, name: &str, span: Span, columns: &[(String, ColumnType)]) {
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        let hint = match nearest(name, &names) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("the table has: {}", names.join(", ")),
        };
        self.error(span, format!("the table has no column `{name}`"))
            .hint = Some(hint);
    }

    fn head(&mut self, path: &str, span: Span) -> Option<Value> {
        let Some((layer, head)) = hooks::parse_head(path) else {
            self.error(
                span,
                format!("expected a head like `L1H11`, found `{path}`"),
            );
            return None;
        };
        if let Some(m) = self.manifest() {
            let (layers, heads) = (m.config.n_layers, m.config.n_heads);
            if layer >= layers || head >= heads {
                self.error(span, format!("the model has no head {path}"))
                    .hint = Some(format!(
                    "it has layers 0..{} with heads 0..{}",
                    layers - 1,
                    heads - 1
                ));
                return None;
            }
        }
        Some(Value::Head { layer, head })
    }

    fn hook(&mut self, path: &str, selector: Option<&[Arg]>, span: Span) -> Option<HookRef> {
        let known: Vec<String> = match self.manifest() {
            Some(m) => m.hooks.iter().map(|h| h.name.clone()).collect(),
            None => hooks::generic_names(path),
        };
        if !known.iter().any(|k| k == path) {
            let candidates: Vec<&str> = known.iter().map(String::as_str).collect();
            let hint = match nearest(path, &candidates) {
                Some(n) => format!("did you mean `{n}`?"),
                None => "`qexp hooks MODEL` lists the hook points".to_owned(),
            };
            self.error(span, format!("unknown hook point `{path}`"))
                .hint = Some(hint);
            return None;
        }
        let mut hook = HookRef {
            name: path.to_owned(),
            head: None,
            head_from: None,
            pos: None,
        };
        for arg in selector.unwrap_or(&[]) {
            let Some(key) = &arg.name else {
                self.error(arg.value.span, "selectors are `head = h` or `pos = p`");
                continue;
            };
            match key.node.as_str() {
                "head" => {
                    let Some(heads) = hooks::head_count(path, self.manifest()) else {
                        self.error(key.span, format!("`{path}` has no head dimension")).hint =
                            Some("heads can be selected on attn.hook_q/k/v/rot_q/rot_k/z/result/attn_scores/pattern".into());
                        continue;
                    };
                    // `head = HEAD` where HEAD is a head (`L1H11`, or computed at run time).
                    if let ExprKind::Ref {
                        path: head_name,
                        selector: None,
                    } = &arg.value.kind
                    {
                        match self.value(&arg.value, Type::Head, None) {
                            Some(Value::Head { layer, head }) => {
                                if hooks::layer_of(path) != Some(layer) {
                                    self.error(
                                        arg.value.span,
                                        format!(
                                            "{head_name} is in layer {layer}, but `{path}` is not"
                                        ),
                                    );
                                }
                                hook.head = Some(head);
                            }
                            Some(Value::Computed(name)) => hook.head_from = Some(name),
                            _ => {}
                        }
                        continue;
                    }
                    let Some(n) = number(&arg.value).filter(|n| n.fract() == 0.0 && *n >= 0.0)
                    else {
                        self.error(
                            arg.value.span,
                            "`head` takes a head index or a head like `L1H11`",
                        );
                        continue;
                    };
                    if let Some(heads) = heads
                        && n as usize >= heads
                    {
                        self.error(
                            arg.value.span,
                            format!(
                                "head {n} is out of range: `{path}` has heads 0..{}",
                                heads - 1
                            ),
                        );
                        continue;
                    }
                    hook.head = Some(n as usize);
                }
                "pos" => match self.value(&arg.value, Type::Position, None) {
                    Some(Value::Integer(p)) => hook.pos = Some(p),
                    Some(_) => hook.pos = None,
                    None => {}
                },
                other => {
                    self.error(key.span, format!("unknown selector `{other}`"))
                        .hint = Some("selectors are `head` and `pos`".into());
                }
            }
        }
        Some(hook)
    }

    /// An expression over columns, with its type.
    fn column_expr(
        &mut self,
        expr: &Expr,
        columns: &[(String, ColumnType)],
    ) -> Option<(ColumnExpr, ColumnType)> {
        match &expr.kind {
            ExprKind::Number { value, .. } => {
                Some((ColumnExpr::Number(*value), ColumnType::Number))
            }
            ExprKind::Str(s) => Some((ColumnExpr::Str(s.clone()), ColumnType::Str)),
            ExprKind::Bool(b) => Some((ColumnExpr::Bool(*b), ColumnType::Bool)),
            ExprKind::Ref {
                path,
                selector: None,
            } => {
                if let Some((_, ty)) = columns.iter().find(|(n, _)| n == path) {
                    return Some((ColumnExpr::Column(path.clone()), *ty));
                }
                if let Some((Binding::Literal(bound), _)) = self.scope.get(path).cloned() {
                    return self.column_expr(&bound, columns);
                }
                self.unknown_column(path, expr.span, columns);
                None
            }
            ExprKind::Unary { op, operand } => {
                let (inner, ty) = self.column_expr(operand, columns)?;
                match op {
                    UnaryOp::Not if ty == ColumnType::Bool => {
                        Some((ColumnExpr::Not(Box::new(inner)), ColumnType::Bool))
                    }
                    UnaryOp::Neg if ty.is_numeric() => Some((ColumnExpr::Neg(Box::new(inner)), ty)),
                    _ => {
                        self.error(
                            expr.span,
                            format!(
                                "cannot apply `{}` to a {ty:?} value",
                                if *op == UnaryOp::Not { "not" } else { "-" }
                            ),
                        );
                        None
                    }
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let (l, lt) = self.column_expr(lhs, columns)?;
                let (r, rt) = self.column_expr(rhs, columns)?;
                let ty = match op {
                    BinaryOp::And | BinaryOp::Or
                        if lt == ColumnType::Bool && rt == ColumnType::Bool =>
                    {
                        ColumnType::Bool
                    }
                    BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div
                        if lt.is_numeric() && rt.is_numeric() =>
                    {
                        if lt == ColumnType::Integer
                            && rt == ColumnType::Integer
                            && *op != BinaryOp::Div
                        {
                            ColumnType::Integer
                        } else {
                            ColumnType::Number
                        }
                    }
                    BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
                        if lt.is_numeric() && rt.is_numeric() =>
                    {
                        ColumnType::Bool
                    }
                    BinaryOp::Eq | BinaryOp::Ne
                        if lt == rt || (lt.is_numeric() && rt.is_numeric()) =>
                    {
                        ColumnType::Bool
                    }
                    _ => {
                        self.error(
                            expr.span,
                            format!("cannot combine {lt:?} and {rt:?} with `{}`", op.symbol()),
                        );
                        return None;
                    }
                };
                Some((ColumnExpr::Binary(*op, Box::new(l), Box::new(r)), ty))
            }
            ExprKind::Call { function, args } => {
                let Some((_, arity)) = builtins::COLUMN_FUNCTIONS
                    .iter()
                    .find(|(n, _)| *n == function.node)
                else {
                    let names: Vec<&str> =
                        builtins::COLUMN_FUNCTIONS.iter().map(|(n, _)| *n).collect();
                    self.error(
                        function.span,
                        format!("unknown column function `{}`", function.node),
                    )
                    .hint = Some(format!("column expressions can call: {}", names.join(", ")));
                    return None;
                };
                if args.len() != *arity || args.iter().any(|a| a.name.is_some()) {
                    self.error(
                        expr.span,
                        format!("`{}` takes {arity} positional argument(s)", function.node),
                    );
                    return None;
                }
                let checked: Vec<(ColumnExpr, ColumnType)> = args
                    .iter()
                    .filter_map(|a| self.column_expr(&a.value, columns))
                    .collect();
                if checked.len() != args.len() {
                    return None;
                }
                let types: Vec<ColumnType> = checked.iter().map(|(_, t)| *t).collect();
                let ty = match (function.node.as_str(), types.as_slice()) {
                    ("contains", [ColumnType::IntegerList | ColumnType::NumberList, t])
                        if t.is_numeric() =>
                    {
                        ColumnType::Bool
                    }
                    ("abs", [t]) if t.is_numeric() => *t,
                    (
                        "len",
                        [ColumnType::IntegerList | ColumnType::NumberList | ColumnType::Str],
                    ) => ColumnType::Integer,
                    _ => {
                        self.error(
                            expr.span,
                            format!("`{}` cannot take {types:?}", function.node),
                        );
                        return None;
                    }
                };
                Some((
                    ColumnExpr::Call(
                        function.node.clone(),
                        checked.into_iter().map(|(e, _)| e).collect(),
                    ),
                    ty,
                ))
            }
            _ => {
                self.error(
                    expr.span,
                    format!("`{}` is not a column expression", format_expr(expr)),
                );
                None
            }
        }
    }

    fn sae_shape(&mut self, call: &Call, span: Span) -> Option<SaeShape> {
        match call.function {
            "load" => {
                let Some(Value::Str(path)) = call.args.get("path") else {
                    return None;
                };
                match self.context.saes.get(path) {
                    Some(Ok(shape)) => {
                        if let Some(hook) = &shape.hook
                            && let Some(manifest) = self.manifest()
                        {
                            let problem = if manifest.hook(&hook.name).is_none() {
                                Some(format!(
                                    "the SAE's cfg.json names hook `{}`, which this model does not have",
                                    hook.name
                                ))
                            } else {
                                match (hook.head, hooks::head_count(&hook.name, Some(manifest))) {
                                    (Some(head), Some(Some(heads))) if head >= heads => {
                                        Some(format!(
                                            "the SAE's cfg.json names head {head} of `{}`, which has heads 0..{}",
                                            hook.name,
                                            heads - 1
                                        ))
                                    }
                                    (Some(head), None) => Some(format!(
                                        "the SAE's cfg.json names head {head} of `{}`, which has no head axis",
                                        hook.name
                                    )),
                                    _ => None,
                                }
                            };
                            if let Some(problem) = problem {
                                self.error(span, problem).hint = Some(
                                    "check `hook_name` and `hook_head_index` in its cfg.json"
                                        .into(),
                                );
                                return None;
                            }
                        }
                        if let Some(hook) = &shape.hook
                            && let Some(width) = hooks::width(hook, self.manifest())
                            && width != shape.d_in
                        {
                            self.error(
                                span,
                                format!(
                                    "the SAE's d_in is {} but its hook `{}` has width {width}",
                                    shape.d_in, hook.name
                                ),
                            );
                        }
                        Some(shape.clone())
                    }
                    Some(Err(why)) => {
                        self.error(span, format!("cannot use the SAE at {path:?}: {why}"));
                        None
                    }
                    None => None,
                }
            }
            "train" => {
                let hook = match call.args.get("hook") {
                    Some(Value::Hook(h)) => h.clone(),
                    _ => return None,
                };
                let d_sae = match call.args.get("d_sae") {
                    Some(Value::Integer(n)) if *n > 0 => *n as usize,
                    _ => return None,
                };
                let d_in = hooks::width(&hook, self.manifest())?;
                Some(SaeShape {
                    d_in,
                    d_sae,
                    hook: Some(hook),
                })
            }
            _ => None,
        }
    }

    fn feature_in_range(&mut self, span: Span, sae: &str, shape: &SaeShape, feature: i64) {
        if feature < 0 || feature as usize >= shape.d_sae {
            self.error(
                span,
                format!(
                    "feature {feature} is out of range: `{sae}` has features 0..{}",
                    shape.d_sae - 1
                ),
            );
        }
    }

    /// Checks that need several arguments at once.
    fn post_check(&mut self, call: &Call, span: Span) {
        if let (Some(Value::Name(sae)), Some(Value::List(features))) =
            (call.args.get("sae"), call.args.get("features"))
            && let Some((Binding::Sae(Some(shape)), _)) = self.scope.get(sae).cloned()
        {
            for feature in features {
                if let Value::Integer(f) = feature {
                    self.feature_in_range(span, sae, &shape, *f);
                }
            }
        }
        if call.function == "steer"
            && let (Some(Value::Name(sae)), Some(Value::Hook(hook))) =
                (call.args.get("sae"), call.args.get("hook"))
            && let Some((Binding::Sae(Some(shape)), _)) = self.scope.get(sae).cloned()
        {
            if let Some(Value::Integer(f)) = call.args.get("feature") {
                self.feature_in_range(span, sae, &shape, *f);
            }
            if let Some(width) = hooks::width(hook, self.manifest())
                && width != shape.d_in
            {
                self.error(
                    span,
                    format!(
                        "`{sae}` writes vectors of {} but `{}` has width {width}",
                        shape.d_in, hook.name
                    ),
                );
            }
        }
        if call.function == "generate"
            && let Some(Value::Integer(n)) = call.args.get("max_new_tokens")
            && let Some(manifest) = self.manifest()
            && *n as usize >= manifest.config.n_ctx
        {
            self.error(
                span,
                format!(
                    "max_new_tokens {n} does not fit the model's context of {} tokens",
                    manifest.config.n_ctx
                ),
            );
        }
        if call.function == "train"
            && let Some(shape) = self.sae_shape(call, span)
            && let Some(available) = self.context.memory_bytes
        {
            let batch = match call.args.get("batch_size") {
                Some(Value::Integer(n)) => *n as u64,
                _ => 4096,
            };
            let needed = training_bytes(shape.d_in as u64, shape.d_sae as u64, batch);
            if needed > available {
                self.error(
                    span,
                    format!(
                        "training this SAE needs about {:.1} GiB of memory (d_in {}, d_sae {}, batch {batch}); this machine has {:.1} GiB",
                        needed as f64 / GIB,
                        shape.d_in,
                        shape.d_sae,
                        available as f64 / GIB
                    ),
                )
                .hint = Some("use a smaller d_sae or batch_size".into());
            }
        }
        if call.function == "train" {
            let architecture = match call.args.get("architecture") {
                Some(Value::Choice(a)) => a.as_str(),
                _ => "standard",
            };
            if architecture == "topk" && !call.args.contains_key("k") {
                self.error(span, "a TopK SAE needs `k`, the number of active features");
            }
            for needs_save in ["checkpoint_every", "resume"] {
                if call.args.contains_key(needs_save) && !call.args.contains_key("save") {
                    self.error(
                        span,
                        format!(
                            "`{needs_save}` needs `save`: checkpoints are kept beside the saved SAE"
                        ),
                    );
                }
            }
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Memory SAE training holds at once, in bytes: encoder and decoder with their gradients
/// and Adam's two moments (4 copies each), and about five `[batch, d_sae]` arrays
/// (pre-activations, activations, their gradients, top-k scratch). Harvested activations
/// come on top and depend on the dataset.
fn training_bytes(d_in: u64, d_sae: u64, batch: u64) -> u64 {
    let floats = 4 * 2 * d_in * d_sae + 5 * batch * d_sae + 4 * (d_sae + d_in);
    floats.saturating_mul(4)
}

fn number(expr: &Expr) -> Option<f64> {
    match &expr.kind {
        ExprKind::Number { value, .. } => Some(*value),
        ExprKind::Unary {
            op: UnaryOp::Neg,
            operand,
        } => number(operand).map(|n| -n),
        _ => None,
    }
}

/// The columns after a table operation.
fn transform_columns(op: &Call, columns: Vec<(String, ColumnType)>) -> Vec<(String, ColumnType)> {
    let names = |key: &str| -> Vec<String> {
        match op.args.get(key) {
            Some(Value::List(items)) => items.iter().map(ToString::to_string).collect(),
            Some(Value::Column(c)) => vec![c.clone()],
            _ => Vec::new(),
        }
    };
    match op.function {
        "columns" => names("names")
            .into_iter()
            .filter_map(|n| columns.iter().find(|(c, _)| *c == n).cloned())
            .collect(),
        "count" => vec![("count".into(), ColumnType::Integer)],
        "group_count" => {
            let by = names("by");
            let mut out: Vec<(String, ColumnType)> = columns
                .into_iter()
                .filter(|(c, _)| by.contains(c))
                .collect();
            out.push(("count".into(), ColumnType::Integer));
            out
        }
        "explode" => {
            let exploded = names("names");
            columns
                .into_iter()
                .map(|(c, t)| match t {
                    ColumnType::IntegerList if exploded.contains(&c) => (c, ColumnType::Integer),
                    ColumnType::NumberList if exploded.contains(&c) => (c, ColumnType::Number),
                    _ => (c, t),
                })
                .collect()
        }
        "derive" => {
            let mut out = columns;
            if let Some(Value::List(derived)) = op.args.get("columns") {
                for d in derived {
                    if let Value::List(pair) = d
                        && let [Value::Column(name), Value::Expr(expr)] = pair.as_slice()
                    {
                        let ty = infer(expr, &out);
                        out.retain(|(c, _)| c != name);
                        out.push((name.clone(), ty));
                    }
                }
            }
            out
        }
        _ => columns,
    }
}

/// The type of an already checked column expression.
fn infer(expr: &ColumnExpr, columns: &[(String, ColumnType)]) -> ColumnType {
    match expr {
        ColumnExpr::Column(c) => columns
            .iter()
            .find(|(n, _)| n == c)
            .map_or(ColumnType::Number, |(_, t)| *t),
        ColumnExpr::Number(_) => ColumnType::Number,
        ColumnExpr::Str(_) => ColumnType::Str,
        ColumnExpr::Bool(_) | ColumnExpr::Not(_) => ColumnType::Bool,
        ColumnExpr::Neg(inner) => infer(inner, columns),
        ColumnExpr::Binary(op, l, r) => match op {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => {
                if infer(l, columns) == ColumnType::Integer
                    && infer(r, columns) == ColumnType::Integer
                {
                    ColumnType::Integer
                } else {
                    ColumnType::Number
                }
            }
            BinaryOp::Div => ColumnType::Number,
            _ => ColumnType::Bool,
        },
        ColumnExpr::Call(function, args) => match function.as_str() {
            "abs" => args
                .first()
                .map_or(ColumnType::Number, |a| infer(a, columns)),
            "len" => ColumnType::Integer,
            _ => ColumnType::Bool,
        },
    }
}
