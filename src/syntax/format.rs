//! The canonical layout of a `.qexp` file (`qexp fmt`): one way to write each thing, so
//! a diff of an experiment shows only what changed in meaning.
//!
//! Comments are kept: a comment before a statement stays before it, one at the end of a
//! statement's last line stays there, and one inside a multi-line statement moves to
//! just before that statement. A run of blank lines becomes one.

use super::Span;
use super::ast::{Arg, Expr, ExprKind, File, Spanned, Statement, UnaryOp};

const WIDTH: usize = 100;
const INDENT: &str = "    ";

/// A `//` comment and where it is.
struct Comment {
    span: Span,
    text: String,
}

pub fn format(file: &File, source: &str) -> String {
    let comments = comments(source);
    let mut out = String::new();
    let mut used = vec![false; comments.len()];
    let mut previous_end = 0;
    write_block(
        &file.statements,
        source,
        &comments,
        &mut used,
        0,
        &mut previous_end,
        &mut out,
    );
    let rest: Vec<&Comment> = comments
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(c, _)| c)
        .collect();
    if !rest.is_empty() {
        if !out.is_empty() && blank_line_between(source, previous_end, rest[0].span.start) {
            out.push('\n');
        }
        for comment in rest {
            out.push_str(&comment.text);
            out.push('\n');
        }
    }
    out
}

fn write_block(
    statements: &[Spanned<Statement>],
    source: &str,
    comments: &[Comment],
    used: &mut [bool],
    depth: usize,
    previous_end: &mut usize,
    out: &mut String,
) {
    let indent = INDENT.repeat(depth);
    for (i, statement) in statements.iter().enumerate() {
        let line_end = source[statement.span.end..]
            .find('\n')
            .map_or(source.len(), |n| statement.span.end + n);
        let leading: Vec<usize> = (0..comments.len())
            .filter(|&c| {
                !used[c]
                    && comments[c].span.start < statement.span.end
                    && comments[c].span.start >= *previous_end
            })
            .filter(|&c| {
                comments[c].span.start < statement.span.start
                    || !inside_nested(statements, i, comments[c].span)
            })
            .collect();
        let first_start = leading.first().map_or(statement.span.start, |&c| {
            comments[c].span.start.min(statement.span.start)
        });
        if (i > 0 || depth == 0 && !out.is_empty())
            && blank_line_between(source, *previous_end, first_start)
        {
            out.push('\n');
        }
        for &c in &leading {
            used[c] = true;
            out.push_str(&indent);
            out.push_str(&comments[c].text);
            out.push('\n');
        }
        write_statement(&statement.node, source, comments, used, depth, out);
        let trailing = (0..comments.len()).find(|&c| {
            !used[c]
                && comments[c].span.start >= statement.span.end
                && comments[c].span.start < line_end
        });
        if let Some(c) = trailing {
            used[c] = true;
            out.pop();
            out.push(' ');
            out.push_str(&comments[c].text);
            out.push('\n');
        }
        *previous_end = statement
            .span
            .end
            .max(trailing.map_or(0, |c| comments[c].span.end));
    }
}

/// Whether `span` lies inside a `for` body (those comments are placed by the nested
/// block, not moved before the `for`).
fn inside_nested(statements: &[Spanned<Statement>], i: usize, span: Span) -> bool {
    match &statements[i].node {
        Statement::For { items, .. } => span.start > items.span.end,
        _ => false,
    }
}

fn write_statement(
    statement: &Statement,
    source: &str,
    comments: &[Comment],
    used: &mut [bool],
    depth: usize,
    out: &mut String,
) {
    let indent = INDENT.repeat(depth);
    out.push_str(&indent);
    match statement {
        Statement::Experiment(name) => out.push_str(&format!("experiment {}", name.node)),
        Statement::Model { path, args } => {
            out.push_str(&format!("model {}", quote(&path.node)));
            if !args.is_empty() {
                out.push(' ');
                out.push_str(&call_args(args, indent.len() + 8 + path.node.len(), depth));
            }
        }
        Statement::Text { kind, text } => {
            out.push_str(&format!("{} {}", kind.keyword(), quote(&text.node)))
        }
        Statement::Let { name, value } => {
            let head = format!("let {} = ", name.node);
            out.push_str(&head);
            out.push_str(&expr_at(value, indent.len() + head.len(), depth));
        }
        Statement::Declare { kind, name, value } => {
            let head = format!("{} {} = ", kind.keyword(), name.node);
            out.push_str(&head);
            out.push_str(&expr_at(value, indent.len() + head.len(), depth));
        }
        Statement::Variant {
            name,
            interventions,
        } => {
            out.push_str(&format!("variant {} {{", name.node));
            if interventions.is_empty() {
                out.push('}');
            } else {
                out.push('\n');
                let inner = INDENT.repeat(depth + 1);
                for intervention in interventions {
                    out.push_str(&inner);
                    out.push_str(&expr_at(intervention, inner.len(), depth + 1));
                    out.push('\n');
                }
                out.push_str(&indent);
                out.push('}');
            }
        }
        Statement::For { var, items, body } => {
            let head = format!("for {} in ", var.node);
            out.push_str(&head);
            out.push_str(&expr_at(items, indent.len() + head.len(), depth));
            out.push_str(" {\n");
            let mut previous_end = body.first().map_or(0, |s| s.span.start);
            // Comments before the first body statement belong to the body.
            if let Some(first) = body.first() {
                previous_end = source[..first.span.start]
                    .rfind('{')
                    .map_or(previous_end, |b| b + 1);
            }
            write_block(
                body,
                source,
                comments,
                used,
                depth + 1,
                &mut previous_end,
                out,
            );
            out.push_str(&indent);
            out.push('}');
        }
        Statement::Expect { text, claim } => {
            let head = format!("expect {} = ", quote(&text.node));
            out.push_str(&head);
            out.push_str(&expr_at(claim, indent.len() + head.len(), depth));
        }
    }
    out.push('\n');
}

/// An expression laid out on one line if it fits from column `column`, else with pipes
/// and long argument lists broken over lines.
fn expr_at(e: &Expr, column: usize, depth: usize) -> String {
    let flat = expr(e);
    if column + flat.len() <= WIDTH && !flat.contains('\n') {
        return flat;
    }
    let (source, stages) = e.pipeline();
    if !stages.is_empty() {
        let inner = INDENT.repeat(depth + 1);
        let mut out = expr_at(source, column, depth);
        for stage in stages {
            out.push('\n');
            out.push_str(&inner);
            out.push_str("| ");
            out.push_str(&expr_at(stage, inner.len() + 2, depth + 1));
        }
        return out;
    }
    if let ExprKind::Call { function, args } = &e.kind {
        return format!(
            "{}{}",
            function.node,
            call_args(args, column + function.node.len(), depth)
        );
    }
    flat
}

fn call_args(args: &[Arg], column: usize, depth: usize) -> String {
    let flat = format!("({})", args.iter().map(arg).collect::<Vec<_>>().join(", "));
    if column + flat.len() <= WIDTH || args.is_empty() {
        return flat;
    }
    let inner = INDENT.repeat(depth + 1);
    let mut out = String::from("(\n");
    for a in args {
        out.push_str(&inner);
        let prefix = a
            .name
            .as_ref()
            .map_or(String::new(), |n| format!("{} = ", n.node));
        out.push_str(&prefix);
        out.push_str(&expr_at(&a.value, inner.len() + prefix.len(), depth + 1));
        out.push_str(",\n");
    }
    out.push_str(&INDENT.repeat(depth));
    out.push(')');
    out
}

fn arg(a: &Arg) -> String {
    match &a.name {
        Some(name) => format!("{} = {}", name.node, expr(&a.value)),
        None => expr(&a.value),
    }
}

/// One-line form of an expression, with the fewest parentheses that keep its meaning.
pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number { text, value } => {
            if text.is_empty() {
                format!("{value}")
            } else {
                text.clone()
            }
        }
        ExprKind::Str(s) => quote(s),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::List(items) => format!(
            "[{}]",
            items.iter().map(expr).collect::<Vec<_>>().join(", ")
        ),
        ExprKind::Ref { path, selector } => match selector {
            None => path.clone(),
            Some(args) => format!(
                "{path}[{}]",
                args.iter().map(arg).collect::<Vec<_>>().join(", ")
            ),
        },
        ExprKind::Call { function, args } => {
            format!(
                "{}({})",
                function.node,
                args.iter().map(arg).collect::<Vec<_>>().join(", ")
            )
        }
        ExprKind::Unary { op, operand } => {
            let inner = match operand.kind {
                ExprKind::Binary { .. } => format!("({})", expr(operand)),
                _ => expr(operand),
            };
            match op {
                UnaryOp::Neg => format!("-{inner}"),
                UnaryOp::Not => format!("not {inner}"),
            }
        }
        ExprKind::Binary { op, lhs, rhs } => {
            let side = |child: &Expr, right: bool| match &child.kind {
                ExprKind::Binary { op: child_op, .. }
                    if child_op.precedence() < op.precedence()
                        || (right && child_op.precedence() == op.precedence()) =>
                {
                    format!("({})", expr(child))
                }
                _ => expr(child),
            };
            format!("{} {} {}", side(lhs, false), op.symbol(), side(rhs, true))
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn blank_line_between(source: &str, from: usize, to: usize) -> bool {
    let gap = &source[from.min(to)..to];
    gap.split('\n')
        .skip(1)
        .collect::<Vec<_>>()
        .split_last()
        .is_some_and(|(_, middle)| middle.iter().any(|l| l.trim().is_empty()))
}

/// Every `//` comment outside strings, with its span, trimmed of trailing space.
fn comments(source: &str) -> Vec<Comment> {
    let bytes = source.as_bytes();
    let mut found = Vec::new();
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => {
                let end = source[i..].find('\n').map_or(source.len(), |n| i + n);
                found.push(Comment {
                    span: Span { start: i, end },
                    text: source[i..end].trim_end().to_owned(),
                });
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    found
}
