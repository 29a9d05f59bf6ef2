//! Binding a call's arguments to a built-in's parameters and checking each value
//! against the type expected there (names, hooks, heads, columns, literals).

use super::*;

impl Checker<'_> {
    /// Checks a call against the built-ins `allowed` here. `input` is the table piped in,
    /// whose columns `Column` arguments name.
    pub(super) fn call(
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
        let errors_before = self.errors.len();
        let bound = if builtin.name == "derive" {
            self.derive_args(args, input.unwrap_or(&[]), expr.span)
        } else if builtin.name == "aggregate" {
            self.aggregate_args(args, input.unwrap_or(&[]), expr.span)
        } else {
            self.bind_args(args, builtin.params, builtin.name, expr.span, input)
        };
        let call = Call {
            function: builtin.name,
            args: bound,
        };
        self.post_check(&call, expr.span);
        if self.errors.len() == errors_before
            && let Err(why) = builtins::bind(&call, builtin.produces)
        {
            self.error(expr.span, why.to_string());
        }
        Some((call, builtin))
    }

    /// Binds positional then named arguments to `params` and checks each one's type.
    pub(super) fn bind_args(
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

    pub(super) fn derive_args(
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
            match self.column_expr(&arg.value, &columns) {
                Some((_, ColumnType::StrList)) => {
                    self.error(arg.value.span, "a column cannot hold a list of strings")
                        .hint = Some(
                        "search in the list instead: `contains([\"a\", \"b\"], str_tokens)`".into(),
                    );
                }
                Some((expr, ty)) => {
                    columns.retain(|(n, _)| n != &name.node);
                    columns.push((name.node.clone(), ty));
                    derived.push(Value::List(vec![
                        Value::Column(name.node.clone()),
                        Value::Expr(expr),
                    ]));
                }
                None => {}
            }
        }
        BTreeMap::from([("columns", Value::List(derived))])
    }

    /// `aggregate(by = [columns], name = mean(expression), n = count(), ...)`.
    fn aggregate_args(
        &mut self,
        args: &[Arg],
        input: &[(String, ColumnType)],
        span: Span,
    ) -> BTreeMap<&'static str, Value> {
        use builtins::table_ops::AGGREGATES;
        let mut bound = BTreeMap::new();
        let mut made = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            // `by`, named or first.
            if arg.name.as_ref().map_or(i == 0, |name| name.node == "by") {
                if let Some(by) = self.value(&arg.value, builtins::spec::COLUMNS, Some(input)) {
                    bound.insert("by", by);
                }
                continue;
            }
            let Some(name) = &arg.name else {
                self.error(
                    arg.value.span,
                    "`aggregate` columns are `name = mean(expression)`",
                )
                .hint = Some(
                    "e.g. aggregate(by = [layer, head], mean_diff = mean(loss_diff), n = count())"
                        .into(),
                );
                continue;
            };
            let ExprKind::Call {
                function,
                args: inner,
            } = &arg.value.kind
            else {
                self.error(
                    arg.value.span,
                    "an aggregate column is a call: `mean(loss_diff)`",
                )
                .hint = Some(format!("aggregates: {}", AGGREGATES.join(", ")));
                continue;
            };
            if !AGGREGATES.contains(&function.node.as_str()) {
                let hint = match nearest(&function.node, AGGREGATES) {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!("aggregates: {}", AGGREGATES.join(", ")),
                };
                self.error(
                    function.span,
                    format!("unknown aggregate `{}`", function.node),
                )
                .hint = Some(hint);
                continue;
            }
            let mut parts = vec![
                Value::Column(name.node.clone()),
                Value::Str(function.node.clone()),
            ];
            match (function.node.as_str(), inner.as_slice()) {
                ("count", []) => {}
                ("count", _) => {
                    self.error(
                        arg.value.span,
                        "`count()` takes no argument: it counts the group's rows",
                    )
                    .hint = Some("to count rows that meet a condition, `sum(condition)`".into());
                    continue;
                }
                (_, [one]) if one.name.is_none() => {
                    let Some((of, ty)) = self.column_expr(&one.value, input) else {
                        continue;
                    };
                    if !(ty.is_numeric() || ty == ColumnType::Bool) {
                        self.error(
                            one.value.span,
                            format!(
                                "`{}` needs numbers (or true/false), not {ty:?}",
                                function.node
                            ),
                        );
                        continue;
                    }
                    parts.push(Value::Expr(of));
                }
                _ => {
                    self.error(
                        arg.value.span,
                        format!("`{}` takes one expression", function.node),
                    );
                    continue;
                }
            }
            made.push(Value::List(parts));
        }
        let named_columns = args
            .iter()
            .filter(|a| a.name.as_ref().is_some_and(|n| n.node != "by"))
            .count();
        if named_columns == 0 {
            self.error(span, "`aggregate` makes no column").hint =
                Some("name at least one: `n = count()`, `mean_diff = mean(loss_diff)`".into());
        }
        bound.insert("columns", Value::List(made));
        bound
    }

    /// Checks one argument against the type expected there.
    pub(super) fn value(
        &mut self,
        expr: &Expr,
        ty: Type,
        columns: Option<&[(String, ColumnType)]>,
    ) -> Option<Value> {
        // A column name is a column's even where a `let` or loop variable shares it.
        if let ExprKind::Ref {
            path,
            selector: None,
        } = &expr.kind
            && ty != Type::Column
            && let Some((full, (binding, _))) =
                self.lookup(path).map(|(full, found)| (full, found.clone()))
        {
            match binding {
                Binding::Literal(bound) => return self.value(&bound, ty, columns),
                Binding::Computed(computed)
                    if computed == ty
                        || (ty == Type::Number && computed == Type::Integer)
                        || (ty == Type::Features && computed == Type::ListOf(&Type::Integer)) =>
                {
                    return Some(Value::Computed(full));
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
            Type::Shown => self.named(expr, "plot or table", |b| {
                matches!(b, Binding::Plot | Binding::Table(_))
            }),
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
            Type::NewColumn => match &expr.kind {
                ExprKind::Ref {
                    path,
                    selector: None,
                } if !path.contains('.') => {
                    if let Some(columns) = columns
                        && columns.iter().any(|(n, _)| n == path)
                    {
                        self.error(
                            expr.span,
                            format!("the table already has a column `{path}`"),
                        )
                        .hint = Some("name the new column something else".into());
                        return None;
                    }
                    Some(Value::Column(path.clone()))
                }
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
            Type::Position | Type::OnePosition => match &expr.kind {
                ExprKind::Ref {
                    path,
                    selector: None,
                } if path == "all" => {
                    if ty == Type::OnePosition {
                        self.error(expr.span, "this takes one position, not `all`")
                            .hint = Some("give an index: `pos = -1` is the last token".into());
                        return None;
                    }
                    Some(Value::All)
                }
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
                                    self.lookup(path),
                                    Some((_, (Binding::Computed(Type::ListOf(_)), _)))
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

    pub(super) fn named(
        &mut self,
        expr: &Expr,
        what: &str,
        is: fn(&Binding) -> bool,
    ) -> Option<Value> {
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
        match self.lookup(path) {
            Some((full, (binding, _))) if is(binding) => Some(Value::Name(full)),
            _ => {
                self.unknown_name(path, expr.span, what, is);
                None
            }
        }
    }

    pub(super) fn unknown_name(
        &mut self,
        name: &str,
        span: Span,
        what: &str,
        is: fn(&Binding) -> bool,
    ) {
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
        let message = match self.lookup(name) {
            Some((_, (other, _))) => format!("`{name}` is {}, not a {what}", other.describe()),
            None => format!("unknown {what} `{name}`"),
        };
        self.error(span, message).hint = Some(hint);
    }

    pub(super) fn unknown_column(
        &mut self,
        name: &str,
        span: Span,
        columns: &[(String, ColumnType)],
    ) {
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        let hint = match nearest(name, &names) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("the table has: {}", names.join(", ")),
        };
        self.error(span, format!("the table has no column `{name}`"))
            .hint = Some(hint);
    }
}

pub(super) fn number(expr: &Expr) -> Option<f64> {
    match &expr.kind {
        ExprKind::Number { value, .. } => Some(*value),
        ExprKind::Unary {
            op: UnaryOp::Neg,
            operand,
        } => number(operand).map(|n| -n),
        _ => None,
    }
}
