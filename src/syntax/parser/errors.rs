//! pest's syntax errors in our words: what was expected, in the language's terms, and
//! the nearest known word for a misspelling.

use super::*;

pub(super) fn syntax_error(source: &str, error: pest::error::Error<Rule>) -> Diagnostic {
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

pub(super) fn describe(rule: Rule) -> String {
    match rule {
        Rule::experiment_stmt
        | Rule::model_stmt
        | Rule::text_stmt
        | Rule::let_stmt
        | Rule::decl_stmt
        | Rule::variant_stmt
        | Rule::for_stmt
        | Rule::expect_stmt
        | Rule::kw_expect
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

pub(super) fn join_or(items: &[String]) -> String {
    match items {
        [] => "something else".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}
