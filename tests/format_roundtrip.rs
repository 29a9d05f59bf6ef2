//! Property: for any syntax tree, formatting it and parsing the text gives the same tree.

use proptest::prelude::*;
use qexp::syntax::ast::{
    Arg, BinaryOp, DeclKind, Expr, ExprKind, File, Spanned, Statement, TextKind, UnaryOp,
    WithoutSpans,
};
use qexp::syntax::{self, Span};

const NAMES: &[&str] = &[
    "x",
    "loss",
    "loss_diff",
    "HEAD",
    "L1H11",
    "stories",
    "top_k_features",
    "all",
    "_tmp2",
];
const PATHS: &[&str] = &[
    "blocks.1.attn.hook_q",
    "hook_embed",
    "blocks.0.ln1.hook_normalized",
    "ln_final.hook_scale",
];
const NUMBERS: &[&str] = &[
    "0",
    "7",
    "11",
    "2_000_000",
    "0.5",
    "5e-4",
    "1.25E+3",
    "4096",
];

fn name() -> BoxedStrategy<Spanned<String>> {
    prop::sample::select(NAMES)
        .prop_map(|n| Spanned::new(n.to_owned(), Span::default()))
        .boxed()
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        prop::sample::select(NUMBERS).prop_map(|t| ExprKind::Number {
            value: t.replace('_', "").parse().unwrap(),
            text: t.to_owned()
        }),
        "[ -~\n\t\"\\\\é]{0,12}".prop_map(ExprKind::Str),
        any::<bool>().prop_map(ExprKind::Bool),
        prop::sample::select(NAMES).prop_map(|p| ExprKind::Ref {
            path: p.to_owned(),
            selector: None
        }),
    ]
    .prop_map(|kind| Expr {
        kind,
        span: Span::default(),
    });
    leaf.prop_recursive(3, 24, 4, |inner| {
        let arg = (prop::option::of(name()), inner.clone())
            .prop_map(|(name, value)| Arg { name, value })
            .boxed();
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(ExprKind::List),
            (
                prop::sample::select(PATHS),
                prop::option::of(prop::collection::vec(arg.clone(), 0..2))
            )
                .prop_map(|(p, selector)| ExprKind::Ref {
                    path: p.to_owned(),
                    selector
                }),
            (name(), prop::collection::vec(arg, 0..3))
                .prop_map(|(function, args)| ExprKind::Call { function, args }),
            (
                prop::sample::select(&[UnaryOp::Neg, UnaryOp::Not][..]),
                inner.clone()
            )
                .prop_map(|(op, operand)| ExprKind::Unary {
                    op,
                    operand: Box::new(operand)
                }),
            (
                prop::sample::select(
                    &[
                        BinaryOp::Pipe,
                        BinaryOp::Or,
                        BinaryOp::And,
                        BinaryOp::Eq,
                        BinaryOp::Ne,
                        BinaryOp::Lt,
                        BinaryOp::Le,
                        BinaryOp::Gt,
                        BinaryOp::Ge,
                        BinaryOp::Add,
                        BinaryOp::Sub,
                        BinaryOp::Mul,
                        BinaryOp::Div,
                    ][..]
                ),
                inner.clone(),
                inner
            )
                .prop_map(|(op, lhs, rhs)| ExprKind::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs)
                }),
        ]
        .prop_map(|kind| Expr {
            kind,
            span: Span::default(),
        })
    })
}

fn call() -> impl Strategy<Value = Expr> {
    (
        name(),
        prop::collection::vec(
            (prop::option::of(name()), expr()).prop_map(|(name, value)| Arg { name, value }),
            0..3,
        ),
    )
        .prop_map(|(function, args)| Expr {
            kind: ExprKind::Call { function, args },
            span: Span::default(),
        })
}

fn statement() -> impl Strategy<Value = Spanned<Statement>> {
    let simple = prop_oneof![
        name().prop_map(Statement::Experiment),
        (
            "[a-z/._-]{1,12}",
            prop::collection::vec(
                (prop::option::of(name()), expr()).prop_map(|(name, value)| Arg { name, value }),
                0..2
            )
        )
            .prop_map(|(p, args)| Statement::Model {
                path: Spanned::new(p, Span::default()),
                args
            }),
        (
            prop::sample::select(&[TextKind::Title, TextKind::Section, TextKind::Paragraph][..]),
            "[ -~]{0,20}"
        )
            .prop_map(|(kind, t)| Statement::Text {
                kind,
                text: Spanned::new(t, Span::default())
            }),
        (name(), expr()).prop_map(|(name, value)| Statement::Let { name, value }),
        (
            prop::sample::select(
                &[
                    DeclKind::Dataset,
                    DeclKind::Sae,
                    DeclKind::Table,
                    DeclKind::Plot,
                    DeclKind::Dashboards
                ][..]
            ),
            name(),
            expr()
        )
            .prop_map(|(kind, name, value)| Statement::Declare { kind, name, value }),
        (name(), prop::collection::vec(call(), 0..3)).prop_map(|(name, interventions)| {
            Statement::Variant {
                name,
                interventions,
            }
        }),
    ]
    .prop_map(|node| Spanned::new(node, Span::default()));
    simple.prop_recursive(2, 8, 3, |inner| {
        (name(), expr(), prop::collection::vec(inner, 0..3)).prop_map(|(var, items, body)| {
            Spanned::new(Statement::For { var, items, body }, Span::default())
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn format_then_parse_gives_the_same_tree(statements in prop::collection::vec(statement(), 0..6)) {
        let file = File { statements };
        let text = syntax::format(&file, "");
        let parsed = syntax::parse(&text).map_err(|d| TestCaseError::fail(format!("{text}\n{}", syntax::render(&d, "generated", &text))))?;
        prop_assert_eq!(parsed.without_spans(), file.without_spans(), "text:\n{}", text);
    }
}
