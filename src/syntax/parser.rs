//! pest pairs -> spanned AST.

use pest::Parser as _;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest_derive::Parser;

use super::ast::{File, Opt, Spanned, Statement, Value};
use super::{Diagnostic, Span};

#[derive(Parser)]
#[grammar = "../grammar/qexp.pest"]
struct QexpParser;

/// Experiments are short; anything bigger is a mistake, and refusing it keeps parsing
/// time bounded.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

const KEYWORDS: &[&str] = &[
    "experiment",
    "model",
    "sanity_check",
    "generate",
    "paragraph",
];

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
    let mut pairs =
        QexpParser::parse(Rule::file, source).map_err(|e| vec![syntax_error(source, e)])?;
    let file = pairs.next().expect("the file rule always yields one pair");
    let statements = file
        .into_inner()
        .filter(|p| p.as_rule() != Rule::EOI)
        .map(statement)
        .collect();
    Ok(File { statements })
}

fn span(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    Span {
        start: s.start(),
        end: s.end(),
    }
}

fn spanned<T>(pair: &Pair<'_, Rule>, node: T) -> Spanned<T> {
    Spanned {
        node,
        span: span(pair),
    }
}

fn statement(pair: Pair<'_, Rule>) -> Spanned<Statement> {
    let whole = span(&pair);
    let rule = pair.as_rule();
    // The first inner pair is the keyword; the rest are the statement's parts.
    let mut parts = pair.into_inner().skip(1).peekable();
    let string = |parts: &mut std::iter::Peekable<_>| -> Option<Spanned<String>> {
        let p: Pair<'_, Rule> = parts.next_if(|p: &Pair<'_, Rule>| p.as_rule() == Rule::string)?;
        Some(spanned(
            &p,
            unescape(
                p.clone()
                    .into_inner()
                    .next()
                    .expect("string_inner")
                    .as_str(),
            ),
        ))
    };
    let node = match rule {
        Rule::experiment => {
            let name = parts.next().expect("grammar: experiment has a name");
            Statement::Experiment {
                name: spanned(&name, name.as_str().to_owned()),
            }
        }
        Rule::model => Statement::Model {
            path: string(&mut parts).expect("grammar: model has a path"),
            options: options(parts.next()),
        },
        Rule::sanity_check => Statement::SanityCheck {
            text: string(&mut parts),
        },
        Rule::generate => Statement::Generate {
            prompt: string(&mut parts).expect("grammar: generate has a prompt"),
            options: options(parts.next()),
        },
        Rule::paragraph => Statement::Paragraph {
            text: string(&mut parts).expect("grammar: paragraph has text"),
        },
        other => unreachable!("statement rule {other:?}"),
    };
    Spanned { node, span: whole }
}

fn options(pair: Option<Pair<'_, Rule>>) -> Vec<Opt> {
    let Some(pair) = pair else { return Vec::new() };
    pair.into_inner()
        .filter(|p| p.as_rule() == Rule::option)
        .map(|option| {
            let mut inner = option.into_inner().filter(|p| p.as_rule() != Rule::equals);
            let name = inner.next().expect("grammar: option name");
            let value = inner.next().expect("grammar: option value");
            let node = match value.as_rule() {
                Rule::number => Value::Number(value.as_str().parse().expect("grammar: number")),
                Rule::string => Value::String(unescape(value.clone().into_inner().as_str())),
                _ => Value::Ident(value.as_str().to_owned()),
            };
            Opt {
                name: spanned(&name, name.as_str().to_owned()),
                value: spanned(&value, node),
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
    let word_end = source[at..]
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map_or(source.len(), |n| at + n);
    let word = &source[at..word_end];
    let span = Span {
        start: at,
        end: word_end.max(at + source[at..].chars().next().map_or(0, char::len_utf8)),
    };
    let expected = match &error.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<String> = positives.iter().map(|r| describe(*r)).collect();
            names.sort();
            names.dedup();
            names
        }
        ErrorVariant::CustomError { message } => vec![message.clone()],
    };
    let found = if word.is_empty() {
        source[at..]
            .chars()
            .next()
            .map_or("the end of the file".to_owned(), |c| format!("`{c}`"))
    } else {
        format!("`{word}`")
    };
    if source[at..].starts_with('"') && !source[at + 1..].contains('"') {
        return Diagnostic::new(span, "this string is never closed")
            .with_hint("add the closing `\"`");
    }
    let expects_statement = expected.iter().any(|e| e.starts_with("a statement"));
    let mut diagnostic = Diagnostic::new(
        span,
        format!("expected {}, found {found}", join_or(&expected)),
    );
    if expects_statement && !word.is_empty() {
        let nearest = KEYWORDS
            .iter()
            .map(|k| (strsim::damerau_levenshtein(k, word), *k))
            .min()
            .filter(|(d, k)| *d <= k.len() / 2);
        diagnostic = match nearest {
            Some((_, keyword)) => diagnostic.with_hint(format!("did you mean `{keyword}`?")),
            None => diagnostic.with_hint(format!(
                "statements start with one of: {}",
                KEYWORDS.join(", ")
            )),
        };
    }
    diagnostic
}

fn describe(rule: Rule) -> String {
    match rule {
        Rule::experiment
        | Rule::model
        | Rule::sanity_check
        | Rule::generate
        | Rule::paragraph
        | Rule::kw_experiment
        | Rule::kw_model
        | Rule::kw_sanity_check
        | Rule::kw_generate
        | Rule::kw_paragraph
        | Rule::EOI => "a statement (experiment, model, sanity_check, generate, paragraph)".into(),
        Rule::lparen => "`(`".into(),
        Rule::rparen => "`)`".into(),
        Rule::comma => "`,`".into(),
        Rule::equals => "`=`".into(),
        Rule::string => "a string in double quotes".into(),
        Rule::ident => "a name".into(),
        Rule::number => "a number".into(),
        Rule::option | Rule::options => "an option `name = value`".into(),
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
        let errors = parse("experiment x\ngenerat \"hi\"\n").unwrap_err();
        assert_eq!(errors[0].hint.as_deref(), Some("did you mean `generate`?"));
        assert_eq!(errors[0].span, Span { start: 13, end: 20 });
    }

    #[test]
    fn strings_unescape() {
        let file = parse(r#"paragraph "say \"hi\"\nthen go""#).unwrap();
        let Statement::Paragraph { text } = &file.statements[0].node else {
            panic!()
        };
        assert_eq!(text.node, "say \"hi\"\nthen go");
    }

    #[test]
    fn any_bytes_give_an_error_or_a_tree_never_a_panic() {
        for source in [
            "\"",
            "model (",
            "generate \"x\" (a=",
            "\u{0}\u{ffff}",
            "experiment 9",
            "model \"m\" (device=cpu,,)",
        ] {
            let _ = parse(source);
        }
    }
}
