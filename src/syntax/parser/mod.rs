//! pest pairs -> spanned AST.

use std::sync::LazyLock;

use pest::Parser as _;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest_derive::Parser;

use super::ast::{
    Arg, BinaryOp, DeclKind, Expr, ExprKind, File, Name, Spanned, Statement, TextKind, UnaryOp,
};
use super::{Diagnostic, Span};

mod errors;
mod validate;

pub use errors::nearest;
use errors::syntax_error;
use validate::{is_operator, too_deep, validate};

#[derive(Parser)]
#[grammar = "../grammar/qexp.pest"]
struct QexpParser;

/// Experiments are short; anything bigger is a mistake, and refusing it keeps parsing
/// time bounded.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;
/// pest descends recursively through nested brackets; this keeps the stack bounded.
pub const MAX_NESTING: usize = 64;
/// Operators an expression may chain, counted down through its nested expressions: every
/// later stage walks the tree recursively, so its depth must be bounded.
pub const MAX_OPERATOR_DEPTH: usize = 256;

pub const KEYWORDS: &[&str] = &[
    "experiment",
    "model",
    "title",
    "section",
    "paragraph",
    "let",
    "dataset",
    "sae",
    "table",
    "plot",
    "dashboards",
    "variant",
    "for",
];

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::pipe, Assoc::Left))
        .op(Op::infix(Rule::or, Assoc::Left))
        .op(Op::infix(Rule::and, Assoc::Left))
        .op(Op::infix(Rule::eq, Assoc::Left)
            | Op::infix(Rule::ne, Assoc::Left)
            | Op::infix(Rule::lt, Assoc::Left)
            | Op::infix(Rule::le, Assoc::Left)
            | Op::infix(Rule::gt, Assoc::Left)
            | Op::infix(Rule::ge, Assoc::Left))
        .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
        .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
        .op(Op::prefix(Rule::neg) | Op::prefix(Rule::not))
});

pub fn parse(source: &str) -> Result<File, Vec<Diagnostic>> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(vec![Diagnostic::new(
            Span::default(),
            format!(
                "the file is {} bytes; experiments are limited to {MAX_SOURCE_BYTES}",
                source.len()
            ),
        )]);
    }
    if let Some(at) = too_deep(source) {
        return Err(vec![
            Diagnostic::new(
                Span {
                    start: at,
                    end: at + 1,
                },
                format!("brackets nest more than {MAX_NESTING} deep here"),
            )
            .with_hint("split the expression with `let`"),
        ]);
    }
    let mut pairs =
        QexpParser::parse(Rule::file, source).map_err(|e| vec![syntax_error(source, e)])?;
    let file = pairs.next().expect("the file rule always yields one pair");
    let problems = validate(file.clone());
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(File {
        statements: file
            .into_inner()
            .filter(|p| p.as_rule() != Rule::EOI)
            .map(statement)
            .collect(),
    })
}

fn span(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    Span {
        start: s.start(),
        end: s.end(),
    }
}

fn name(pair: &Pair<'_, Rule>) -> Name {
    Spanned::new(pair.as_str().to_owned(), span(pair))
}

fn string(pair: &Pair<'_, Rule>) -> Spanned<String> {
    let inner = pair
        .clone()
        .into_inner()
        .next()
        .expect("grammar: string has string_inner");
    Spanned::new(unescape(inner.as_str()), span(pair))
}

/// The inner pairs that carry meaning (punctuation and keywords dropped).
fn parts<'a>(pair: Pair<'a, Rule>) -> impl Iterator<Item = Pair<'a, Rule>> {
    pair.into_inner().filter(|p| {
        !matches!(
            p.as_rule(),
            Rule::lparen
                | Rule::rparen
                | Rule::lbracket
                | Rule::rbracket
                | Rule::lbrace
                | Rule::rbrace
                | Rule::comma
                | Rule::assign
                | Rule::kw_experiment
                | Rule::kw_model
                | Rule::kw_let
                | Rule::kw_variant
                | Rule::kw_for
                | Rule::kw_in
                | Rule::kw_expect
        )
    })
}

/// Where a pair's text really ends: pest lets a rule that ends in an optional or a
/// repetition swallow the whitespace and comments after it, so follow the last child
/// down to a token, which never does.
fn content_end(pair: &Pair<'_, Rule>) -> usize {
    match pair.clone().into_inner().last() {
        Some(last) => content_end(&last),
        None => pair.as_span().end(),
    }
}

fn statement(pair: Pair<'_, Rule>) -> Spanned<Statement> {
    let whole = Span {
        start: pair.as_span().start(),
        end: content_end(&pair),
    };
    let rule = pair.as_rule();
    let mut p = parts(pair);
    let mut next = || p.next().expect("grammar guarantees the statement's parts");
    let node = match rule {
        Rule::experiment_stmt => Statement::Experiment(name(&next())),
        Rule::model_stmt => {
            let path = string(&next());
            let args = p.next().map(call_args).unwrap_or_default();
            Statement::Model { path, args }
        }
        Rule::text_stmt => {
            let kind = match next()
                .into_inner()
                .next()
                .expect("grammar: text kind")
                .as_rule()
            {
                Rule::kw_title => TextKind::Title,
                Rule::kw_section => TextKind::Section,
                _ => TextKind::Paragraph,
            };
            Statement::Text {
                kind,
                text: string(&next()),
            }
        }
        Rule::let_stmt => Statement::Let {
            name: name(&next()),
            value: expr(next()),
        },
        Rule::decl_stmt => {
            let kind = match next()
                .into_inner()
                .next()
                .expect("grammar: declaration kind")
                .as_rule()
            {
                Rule::kw_dataset => DeclKind::Dataset,
                Rule::kw_sae => DeclKind::Sae,
                Rule::kw_table => DeclKind::Table,
                Rule::kw_plot => DeclKind::Plot,
                _ => DeclKind::Dashboards,
            };
            Statement::Declare {
                kind,
                name: name(&next()),
                value: expr(next()),
            }
        }
        Rule::variant_stmt => {
            let name = name(&next());
            Statement::Variant {
                name,
                interventions: p.map(primary).collect(),
            }
        }
        Rule::for_stmt => {
            let var = name(&next());
            let items = expr(next());
            Statement::For {
                var,
                items,
                body: p.map(statement).collect(),
            }
        }
        Rule::expect_stmt => Statement::Expect {
            text: string(&next()),
            claim: expr(next()),
        },
        other => unreachable!("statement rule {other:?}"),
    };
    Spanned::new(node, whole)
}

fn expr(pair: Pair<'_, Rule>) -> Expr {
    climb(pair.into_inner())
}

fn climb(pairs: Pairs<'_, Rule>) -> Expr {
    PRATT
        .map_primary(primary)
        .map_prefix(|op, operand| {
            let span = Span {
                start: span(&op).start,
                end: operand.span.end,
            };
            let op = if op.as_rule() == Rule::neg {
                UnaryOp::Neg
            } else {
                UnaryOp::Not
            };
            Expr {
                kind: ExprKind::Unary {
                    op,
                    operand: Box::new(operand),
                },
                span,
            }
        })
        .map_infix(|lhs, op, rhs| {
            let op = match op.as_rule() {
                Rule::pipe => BinaryOp::Pipe,
                Rule::or => BinaryOp::Or,
                Rule::and => BinaryOp::And,
                Rule::eq => BinaryOp::Eq,
                Rule::ne => BinaryOp::Ne,
                Rule::lt => BinaryOp::Lt,
                Rule::le => BinaryOp::Le,
                Rule::gt => BinaryOp::Gt,
                Rule::ge => BinaryOp::Ge,
                Rule::add => BinaryOp::Add,
                Rule::sub => BinaryOp::Sub,
                Rule::mul => BinaryOp::Mul,
                _ => BinaryOp::Div,
            };
            let span = Span {
                start: lhs.span.start,
                end: rhs.span.end,
            };
            Expr {
                kind: ExprKind::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
                span,
            }
        })
        .parse(pairs.filter(|p| !matches!(p.as_rule(), Rule::lparen | Rule::rparen)))
}

fn primary(pair: Pair<'_, Rule>) -> Expr {
    let at = span(&pair);
    let kind = match pair.as_rule() {
        Rule::expr => return expr(pair),
        Rule::number => {
            let text = pair.as_str().to_owned();
            let value = text
                .replace('_', "")
                .parse()
                .expect("grammar: a number parses");
            ExprKind::Number { value, text }
        }
        Rule::string => ExprKind::Str(string(&pair).node),
        Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
        Rule::list => ExprKind::List(parts(pair).map(expr).collect()),
        Rule::call => {
            let mut p = parts(pair);
            let function = name(&p.next().expect("grammar: call name"));
            ExprKind::Call {
                function,
                args: p.next().map(call_args).unwrap_or_default(),
            }
        }
        Rule::reference => {
            let mut p = pair.into_inner();
            let path = p
                .next()
                .expect("grammar: reference path")
                .as_str()
                .to_owned();
            ExprKind::Ref {
                path,
                selector: p.next().map(arg_list),
            }
        }
        other => unreachable!("primary rule {other:?}"),
    };
    Expr { kind, span: at }
}

fn call_args(pair: Pair<'_, Rule>) -> Vec<Arg> {
    arg_list(pair)
}

fn arg_list(pair: Pair<'_, Rule>) -> Vec<Arg> {
    parts(pair)
        .filter(|p| p.as_rule() == Rule::arg)
        .map(|arg| {
            let mut inner: Vec<Pair<'_, Rule>> = parts(arg).collect();
            let value = expr(inner.pop().expect("grammar: argument value"));
            Arg {
                name: inner.first().map(name),
                value,
            }
        })
        .collect()
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        // Other escapes were refused by `validate`.
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_keyword_suggests_the_nearest_one() {
        let errors = parse("experiment x\nvarient v { zero(hook_embed) }\n").unwrap_err();
        assert_eq!(errors[0].hint.as_deref(), Some("did you mean `variant`?"));
        assert_eq!(errors[0].span, Span { start: 13, end: 20 });
    }

    #[test]
    fn strings_unescape() {
        let file = parse(r#"paragraph "say \"hi\"\nthen go""#).unwrap();
        let Statement::Text { text, .. } = &file.statements[0].node else {
            panic!()
        };
        assert_eq!(text.node, "say \"hi\"\nthen go");
    }

    #[test]
    fn operators_bind_by_precedence() {
        let file = parse("table t = x | filter(a - b * 2 > 1 and not c)").unwrap();
        let Statement::Declare { value, .. } = &file.statements[0].node else {
            panic!()
        };
        let ExprKind::Binary {
            op: BinaryOp::Pipe,
            rhs,
            ..
        } = &value.kind
        else {
            panic!("{value:?}")
        };
        let ExprKind::Call { args, .. } = &rhs.kind else {
            panic!()
        };
        let ExprKind::Binary {
            op: BinaryOp::And,
            lhs,
            ..
        } = &args[0].value.kind
        else {
            panic!()
        };
        let ExprKind::Binary {
            op: BinaryOp::Gt,
            lhs,
            ..
        } = &lhs.kind
        else {
            panic!()
        };
        assert!(matches!(
            lhs.kind,
            ExprKind::Binary {
                op: BinaryOp::Sub,
                ..
            }
        ));
    }

    #[test]
    fn hook_references_keep_their_selector() {
        let file = parse("variant v { zero(blocks.1.attn.hook_z[head = 11, pos = -1]) }").unwrap();
        let Statement::Variant { interventions, .. } = &file.statements[0].node else {
            panic!()
        };
        let ExprKind::Call { args, .. } = &interventions[0].kind else {
            panic!()
        };
        let ExprKind::Ref { path, selector } = &args[0].value.kind else {
            panic!()
        };
        assert_eq!(path, "blocks.1.attn.hook_z");
        assert_eq!(selector.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let source = format!("let x = {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        let errors = parse(&source).unwrap_err();
        assert!(errors[0].message.contains("nest more than"));
    }

    #[test]
    fn any_bytes_give_an_error_or_a_tree_never_a_panic() {
        for source in [
            "\"",
            "model (",
            "table t = x |",
            "\u{0}\u{ffff}",
            "experiment 9",
            "let in = 3",
            "for x in [1] {",
            "a.b[",
            "}}}",
        ] {
            let _ = parse(source);
        }
    }
}
