//! Column expressions (`filter`, `derive`) and the columns a table has after each
//! pipeline operation.

use super::*;

impl Checker<'_> {
    /// An expression over columns, with its type.
    pub(super) fn column_expr(
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
}

/// The columns after a table operation.
pub(super) fn transform_columns(
    op: &Call,
    columns: Vec<(String, ColumnType)>,
) -> Vec<(String, ColumnType)> {
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
pub(super) fn infer(expr: &ColumnExpr, columns: &[(String, ColumnType)]) -> ColumnType {
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
