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
                match self
                    .lookup(path)
                    .map(|(full, found)| (full, found.0.clone()))
                {
                    Some((_, Binding::Literal(bound))) => return self.column_expr(&bound, columns),
                    Some((full, Binding::Computed(ty))) => {
                        let column_type = match ty {
                            Type::Integer => ColumnType::Integer,
                            Type::Number => ColumnType::Number,
                            Type::Str => ColumnType::Str,
                            Type::Bool => ColumnType::Bool,
                            Type::ListOf(Type::Integer) | Type::Features => ColumnType::IntegerList,
                            other => {
                                self.error(
                                    expr.span,
                                    format!(
                                        "`{path}` is {}, which a column expression cannot read",
                                        other.describe()
                                    ),
                                )
                                .hint = Some(
                                    "compare its parts instead: a head's table has `layer` and `head` columns"
                                        .into(),
                                );
                                return None;
                            }
                        };
                        return Some((ColumnExpr::Value(full, column_type), column_type));
                    }
                    _ => {}
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
                let numeric_list =
                    |t: &ColumnType| matches!(t, ColumnType::IntegerList | ColumnType::NumberList);
                let ty = match (function.node.as_str(), types.as_slice()) {
                    ("contains", [list, t]) if numeric_list(list) && t.is_numeric() => {
                        ColumnType::Bool
                    }
                    ("contains", [ColumnType::StrList | ColumnType::Str, ColumnType::Str]) => {
                        ColumnType::Bool
                    }
                    ("contains_all" | "contains_any", [a, b])
                        if (numeric_list(a) && numeric_list(b))
                            || (*a == ColumnType::StrList && *b == ColumnType::StrList) =>
                    {
                        ColumnType::Bool
                    }
                    ("starts_with" | "ends_with", [ColumnType::Str, ColumnType::Str]) => {
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
            ExprKind::List(items) => {
                let checked: Vec<(ColumnExpr, ColumnType)> = items
                    .iter()
                    .filter_map(|item| self.column_expr(item, columns))
                    .collect();
                if checked.len() != items.len() {
                    return None;
                }
                let all = |wanted: fn(ColumnType) -> bool| checked.iter().all(|(_, t)| wanted(*t));
                if !(all(ColumnType::is_numeric) || all(|t| t == ColumnType::Str)) {
                    self.error(expr.span, "this list mixes numbers and strings")
                        .hint = Some("write `[3, 7]` or `[\"!\\\"\", \"?\\\"\"]`".into());
                    return None;
                }
                let list = ColumnExpr::List(checked.into_iter().map(|(e, _)| e).collect());
                let ty = crate::builtins::table_ops::infer(&list, columns);
                Some((list, ty))
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
