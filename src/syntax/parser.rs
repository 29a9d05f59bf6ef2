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

/// What the grammar accepts but the language does not: expressions chaining too many
/// operators, and unknown escapes in strings. Walks the pairs without recursion.
fn validate(file: Pair<'_, Rule>) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let mut pending = vec![(file, 0usize)];
    while let Some((pair, depth)) = pending.pop() {
        let depth = match pair.as_rule() {
            Rule::expr => {
                let operators = pair
                    .clone()
                    .into_inner()
                    .filter(|p| is_operator(p.as_rule()))
                    .count();
                let depth = depth + operators;
                if depth > MAX_OPERATOR_DEPTH {
                    problems.push(
                        Diagnostic::new(
                            span(&pair),
                            format!(
                                "this expression chains {depth} operators; at most {MAX_OPERATOR_DEPTH}"
                            ),
                        )
                        .with_hint("split it into steps with `let` or `derive`"),
                    );
                    continue;
                }
                depth
            }
            Rule::string_inner => {
                problems.extend(bad_escapes(&pair));
                continue;
            }
            _ => depth,
        };
        pending.extend(pair.into_inner().map(|p| (p, depth)));
    }
    problems.sort_by_key(|d| d.span);
    problems
}

fn is_operator(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::pipe
            | Rule::or
            | Rule::and
            | Rule::eq
            | Rule::ne
            | Rule::lt
            | Rule::le
            | Rule::gt
            | Rule::ge
            | Rule::add
            | Rule::sub
            | Rule::mul
            | Rule::div
            | Rule::neg
            | Rule::not
    )
}

/// Escapes a string may use: `\n`, `\t`, `\\` and `\"`.
fn bad_escapes(inner: &Pair<'_, Rule>) -> Vec<Diagnostic> {
    let start = inner.as_span().start();
    let mut problems = Vec::new();
    let mut chars = inner.as_str().char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            continue;
        }
        if let Some((j, escaped)) = chars.next()
            && !matches!(escaped, 'n' | 't' | '\\' | '"')
        {
            problems.push(
                Diagnostic::new(
                    Span {
                        start: start + i,
                        end: start + j + escaped.len_utf8(),
                    },
                    format!("unknown escape `\\{escaped}`"),
                )
                .with_hint(
                    "strings know `\\n`, `\\t`, `\\\\` and `\\\"`; write `\\\\` for a backslash",
                ),
            );
        }
    }
    problems
}

/// The offset where bracket nesting first exceeds [`MAX_NESTING`], ignoring strings
/// and comments.
fn too_deep(source: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped, mut in_comment) = (0usize, false, false, false);
    let bytes = source.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if in_comment {
            in_comment = b != b'\n';
        } else if in_string {
            in_string = escaped || b != b'"';
            escaped = !escaped && b == b'\\';
        } else {
            match b {
                b'"' => in_string = true,
                b'/' if bytes.get(i + 1) == Some(&b'/') => in_comment = true,
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Some(i);
                    }
                }
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
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

fn syntax_error(source: &str, error: pest::error::Error<Rule>) -> Diagnostic {
    let at = match error.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let rest = &source[at..];
    let word_end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map_or(source.len(), |n| at + n);
    let word = &source[at..word_end];
    let span = Span {
        start: at,
        end: word_end.max(at + rest.chars().next().map_or(0, char::len_utf8)),
    };
    if rest.starts_with('"') && !rest[1..].contains('"') {
        return Diagnostic::new(span, "this string is never closed")
            .with_hint("add the closing `\"`");
    }
    let mut expected: Vec<String> = match &error.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            positives.iter().map(|r| describe(*r)).collect()
        }
        ErrorVariant::CustomError { message } => vec![message.clone()],
    };
    expected.sort();
    expected.dedup();
    let found = if word.is_empty() {
        rest.chars()
            .next()
            .map_or("the end of the file".to_owned(), |c| format!("`{c}`"))
    } else {
        format!("`{word}`")
    };
    let expects_statement = expected.iter().any(|e| e.starts_with("a statement"));
    let mut diagnostic = Diagnostic::new(
        span,
        format!("expected {}, found {found}", join_or(&expected)),
    );
    if expects_statement && !word.is_empty() {
        diagnostic = match nearest(word, KEYWORDS) {
            Some(keyword) => diagnostic.with_hint(format!("did you mean `{keyword}`?")),
            None => diagnostic.with_hint(format!(
                "statements start with one of: {}",
                KEYWORDS.join(", ")
            )),
        };
    } else if expected.iter().any(|e| e == "a name")
        && (KEYWORDS.contains(&word) || ["in", "and", "or", "not", "true", "false"].contains(&word))
    {
        diagnostic = diagnostic.with_hint(format!(
            "`{word}` is a keyword and cannot be used as a name"
        ));
    }
    diagnostic
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let length = word.chars().count();
    candidates
        .iter()
        // The distance is at least the difference in length: skip hopeless candidates
        // before the quadratic comparison (a 100 KB name must not take seconds).
        .filter(|k| length.abs_diff(k.chars().count()) <= (k.len() / 2).max(1))
        .map(|k| (strsim::damerau_levenshtein(k, word), *k))
        .min()
        .filter(|(d, k)| *d <= (k.len() / 2).max(1))
        .map(|(_, k)| k)
}

fn describe(rule: Rule) -> String {
    match rule {
        Rule::experiment_stmt
        | Rule::model_stmt
        | Rule::text_stmt
        | Rule::let_stmt
        | Rule::decl_stmt
        | Rule::variant_stmt
        | Rule::for_stmt
        | Rule::kw_experiment
        | Rule::kw_model
        | Rule::kw_let
        | Rule::kw_variant
        | Rule::kw_for
        | Rule::text_kind
        | Rule::decl_kind
        | Rule::EOI => "a statement".into(),
        Rule::rbrace => "a statement or `}`".into(),
        Rule::lparen => "`(`".into(),
        Rule::rparen => "`)`".into(),
        Rule::lbracket => "`[`".into(),
        Rule::rbracket => "`]`".into(),
        Rule::lbrace => "`{`".into(),
        Rule::comma => "`,`".into(),
        Rule::assign => "`=`".into(),
        Rule::kw_in => "`in`".into(),
        Rule::string => "a string in double quotes".into(),
        Rule::ident | Rule::arg_name | Rule::path | Rule::reference => "a name".into(),
        Rule::number => "a number".into(),
        Rule::call => "a call like `zero(...)`".into(),
        Rule::expr | Rule::arg | Rule::list | Rule::boolean | Rule::neg | Rule::not => {
            "a value".into()
        }
        operator if is_operator(operator) => "an operator".into(),
        other => format!("{other:?}"),
    }
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => "something else".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
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
