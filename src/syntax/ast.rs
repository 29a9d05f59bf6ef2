//! The syntax tree of a `.qexp` file: what was written, where, not yet what it means.

use super::Span;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(node: T, span: Span) -> Self {
        Self { node, span }
    }
}

pub type Name = Spanned<String>;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct File {
    pub statements: Vec<Spanned<Statement>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TextKind {
    Title,
    Section,
    Paragraph,
}

/// What a `NAME = expr` declaration makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DeclKind {
    Dataset,
    Sae,
    Table,
    Plot,
    Dashboards,
}

impl DeclKind {
    pub fn keyword(self) -> &'static str {
        match self {
            DeclKind::Dataset => "dataset",
            DeclKind::Sae => "sae",
            DeclKind::Table => "table",
            DeclKind::Plot => "plot",
            DeclKind::Dashboards => "dashboards",
        }
    }
}

impl TextKind {
    pub fn keyword(self) -> &'static str {
        match self {
            TextKind::Title => "title",
            TextKind::Section => "section",
            TextKind::Paragraph => "paragraph",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Statement {
    Experiment(Name),
    Model {
        path: Spanned<String>,
        args: Vec<Arg>,
    },
    Text {
        kind: TextKind,
        text: Spanned<String>,
    },
    Let {
        name: Name,
        value: Expr,
    },
    Declare {
        kind: DeclKind,
        name: Name,
        value: Expr,
    },
    /// A named set of interventions applied together; each is a call.
    Variant {
        name: Name,
        interventions: Vec<Expr>,
    },
    /// `for f in [1669, 3489] { ... }`: the body once per item, with `f` bound.
    For {
        var: Name,
        items: Expr,
        body: Vec<Spanned<Statement>>,
    },
    /// `expect "text" = table | ops | all(condition)`: a claim the run checks and the
    /// report's summary shows.
    Expect {
        text: Spanned<String>,
        claim: Expr,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum ExprKind {
    /// The literal as written (`5e-4`, `2_000_000`), so formatting keeps it.
    Number {
        value: f64,
        text: String,
    },
    Str(String),
    Bool(bool),
    List(Vec<Expr>),
    /// A name or dotted path, with an optional `[key = value]` selector:
    /// `loss_diff`, `L1H11`, `blocks.1.attn.hook_q[head = 11]`.
    Ref {
        path: String,
        selector: Option<Vec<Arg>>,
    },
    Call {
        function: Name,
        args: Vec<Arg>,
    },
    Unary {
        op: UnaryOp,
        operand: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

impl Expr {
    /// `source | stage1 | stage2` as the source and its stages in order; an expression
    /// with no pipe is its own source with no stages.
    pub fn pipeline(&self) -> (&Expr, Vec<&Expr>) {
        let mut stages = Vec::new();
        let mut source = self;
        while let ExprKind::Binary {
            op: BinaryOp::Pipe,
            lhs,
            rhs,
        } = &source.kind
        {
            stages.push(rhs.as_ref());
            source = lhs;
        }
        stages.reverse();
        (source, stages)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Arg {
    pub name: Option<Name>,
    pub value: Expr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BinaryOp {
    /// `table | call(...)`: the table becomes the call's first argument.
    Pipe,
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Pipe => "|",
            BinaryOp::Or => "or",
            BinaryOp::And => "and",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
        }
    }

    /// Binding strength, higher binds tighter; the formatter uses it to place parentheses.
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Pipe => 1,
            BinaryOp::Or => 2,
            BinaryOp::And => 3,
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => 4,
            BinaryOp::Add | BinaryOp::Sub => 5,
            BinaryOp::Mul | BinaryOp::Div => 6,
        }
    }
}

/// The tree without positions, for comparing two parses of differently laid-out text.
pub trait WithoutSpans {
    fn without_spans(&self) -> Self;
}

impl WithoutSpans for File {
    fn without_spans(&self) -> Self {
        File {
            statements: self.statements.iter().map(strip_statement).collect(),
        }
    }
}

fn name(n: &Name) -> Name {
    Spanned::new(n.node.clone(), Span::default())
}

fn strip_statement(s: &Spanned<Statement>) -> Spanned<Statement> {
    let node = match &s.node {
        Statement::Experiment(n) => Statement::Experiment(name(n)),
        Statement::Model { path, args } => Statement::Model {
            path: name(path),
            args: args.iter().map(strip_arg).collect(),
        },
        Statement::Text { kind, text } => Statement::Text {
            kind: *kind,
            text: name(text),
        },
        Statement::Let { name: n, value } => Statement::Let {
            name: name(n),
            value: strip_expr(value),
        },
        Statement::Declare {
            kind,
            name: n,
            value,
        } => Statement::Declare {
            kind: *kind,
            name: name(n),
            value: strip_expr(value),
        },
        Statement::Variant {
            name: n,
            interventions,
        } => Statement::Variant {
            name: name(n),
            interventions: interventions.iter().map(strip_expr).collect(),
        },
        Statement::For { var, items, body } => Statement::For {
            var: name(var),
            items: strip_expr(items),
            body: body.iter().map(strip_statement).collect(),
        },
        Statement::Expect { text, claim } => Statement::Expect {
            text: name(text),
            claim: strip_expr(claim),
        },
    };
    Spanned::new(node, Span::default())
}

fn strip_arg(a: &Arg) -> Arg {
    Arg {
        name: a.name.as_ref().map(name),
        value: strip_expr(&a.value),
    }
}

fn strip_expr(e: &Expr) -> Expr {
    let kind = match &e.kind {
        ExprKind::Number { value, .. } => ExprKind::Number {
            value: *value,
            text: String::new(),
        },
        ExprKind::Str(s) => ExprKind::Str(s.clone()),
        ExprKind::Bool(b) => ExprKind::Bool(*b),
        ExprKind::List(items) => ExprKind::List(items.iter().map(strip_expr).collect()),
        ExprKind::Ref { path, selector } => ExprKind::Ref {
            path: path.clone(),
            selector: selector.as_ref().map(|s| s.iter().map(strip_arg).collect()),
        },
        ExprKind::Call { function, args } => ExprKind::Call {
            function: name(function),
            args: args.iter().map(strip_arg).collect(),
        },
        ExprKind::Unary { op, operand } => ExprKind::Unary {
            op: *op,
            operand: Box::new(strip_expr(operand)),
        },
        ExprKind::Binary { op, lhs, rhs } => ExprKind::Binary {
            op: *op,
            lhs: Box::new(strip_expr(lhs)),
            rhs: Box::new(strip_expr(rhs)),
        },
    };
    Expr {
        kind,
        span: Span::default(),
    }
}

/// The tree as S-expressions, one statement a line: what the parser understood,
/// precedence made explicit. Parser snapshots are written in it.
pub fn sexpr(file: &File) -> String {
    let mut out = String::new();
    for statement in &file.statements {
        statement_sexpr(&statement.node, 0, &mut out);
    }
    out
}

fn statement_sexpr(statement: &Statement, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let args = |args: &[Arg]| args.iter().map(arg_sexpr).collect::<Vec<_>>().join(" ");
    let line = match statement {
        Statement::Experiment(n) => format!("(experiment {})", n.node),
        Statement::Model { path, args: a } => format!("(model {:?} {})", path.node, args(a)),
        Statement::Text { kind, text } => format!("({} {:?})", kind.keyword(), text.node),
        Statement::Let { name, value } => format!("(let {} {})", name.node, expr_sexpr(value)),
        Statement::Declare { kind, name, value } => {
            format!("({} {} {})", kind.keyword(), name.node, expr_sexpr(value))
        }
        Statement::Variant {
            name,
            interventions,
        } => {
            let calls: Vec<String> = interventions.iter().map(expr_sexpr).collect();
            format!("(variant {} {})", name.node, calls.join(" "))
        }
        Statement::For { var, items, body } => {
            out.push_str(&format!(
                "{indent}(for {} {}\n",
                var.node,
                expr_sexpr(items)
            ));
            for s in body {
                statement_sexpr(&s.node, depth + 1, out);
            }
            out.push_str(&format!("{indent})\n"));
            return;
        }
        Statement::Expect { text, claim } => {
            format!("(expect {:?} {})", text.node, expr_sexpr(claim))
        }
    };
    out.push_str(&indent);
    out.push_str(&line);
    out.push('\n');
}

fn arg_sexpr(arg: &Arg) -> String {
    match &arg.name {
        Some(name) => format!("({} = {})", name.node, expr_sexpr(&arg.value)),
        None => expr_sexpr(&arg.value),
    }
}

fn expr_sexpr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number { text, value } => {
            if text.is_empty() {
                value.to_string()
            } else {
                text.clone()
            }
        }
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::List(items) => format!(
            "[{}]",
            items.iter().map(expr_sexpr).collect::<Vec<_>>().join(" ")
        ),
        ExprKind::Ref {
            path,
            selector: None,
        } => path.clone(),
        ExprKind::Ref {
            path,
            selector: Some(args),
        } => {
            format!(
                "(hook {path} [{}])",
                args.iter().map(arg_sexpr).collect::<Vec<_>>().join(" ")
            )
        }
        ExprKind::Call { function, args } => {
            let args: Vec<String> = args.iter().map(arg_sexpr).collect();
            if args.is_empty() {
                format!("({})", function.node)
            } else {
                format!("({} {})", function.node, args.join(" "))
            }
        }
        ExprKind::Unary { op, operand } => {
            format!(
                "({} {})",
                if *op == UnaryOp::Neg { "neg" } else { "not" },
                expr_sexpr(operand)
            )
        }
        ExprKind::Binary { op, lhs, rhs } => {
            format!("({} {} {})", op.symbol(), expr_sexpr(lhs), expr_sexpr(rhs))
        }
    }
}
