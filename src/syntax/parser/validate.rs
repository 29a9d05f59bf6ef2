//! Checks on the parse tree before the AST is built: nesting and operator chains too
//! deep to walk safely, and unknown string escapes.

use super::*;

/// What the grammar accepts but the language does not: expressions chaining too many
/// operators, and unknown escapes in strings. Walks the pairs without recursion.
pub(super) fn validate(file: Pair<'_, Rule>) -> Vec<Diagnostic> {
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

pub(super) fn is_operator(rule: Rule) -> bool {
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
pub(super) fn bad_escapes(inner: &Pair<'_, Rule>) -> Vec<Diagnostic> {
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
pub(super) fn too_deep(source: &str) -> Option<usize> {
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
