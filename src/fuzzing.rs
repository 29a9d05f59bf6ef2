//! Valid-looking experiments made from arbitrary bytes, for fuzzing the checker and the
//! plan: every built-in of the checker's table, called with arguments of the right
//! shape and of extreme values (huge, negative, empty, escaped, deeply nested). The
//! fuzz target `check` feeds it libFuzzer's bytes; a test feeds it seeded random bytes
//! for a bounded time on every CI run.

use crate::check::builtins::{BUILTINS, Builtin, Param, Produces, Type};

/// Reads choices from bytes; when they run out every choice is the first option.
struct Choices<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            (usize::from(self.byte()) << 8 | usize::from(self.byte())) % n
        }
    }

    fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Numbers a careful program uses: in range for almost every argument.
const SMALL_NUMBERS: &[&str] = &["0", "1", "2", "3"];
/// Hooks the tiny test model has.
const REAL_HOOKS: usize = 8;

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "-5",
    "7",
    "0.5",
    "1e9",
    "1e12",
    "1e15",
    "1e308",
    "-1e308",
    "4096",
    "65536",
    "99999999999999999999",
    "0.000001",
    "1_000_000",
    "-0.0",
    "128",
];
const STRINGS: &[&str] = &[
    "",
    "the cat sat",
    "\\n",
    "\\\"quoted\\\"",
    "\\\\",
    "=cmd()",
    "<script>",
    "ü∂",
    "a b c",
    "../../etc/passwd",
    "/tmp/x",
    ".",
    "saes/x",
    "reports",
    "\\t",
];
const HOOKS: &[&str] = &[
    "blocks.0.attn.hook_q",
    "blocks.1.attn.hook_q",
    "blocks.1.attn.hook_k",
    "blocks.0.attn.hook_z",
    "blocks.1.attn.hook_pattern",
    "blocks.0.hook_resid_pre",
    "blocks.1.hook_resid_post",
    "blocks.0.mlp.hook_post",
    "blocks.9.attn.hook_q",
    "hook_embed",
    "ln_final.hook_normalized",
    "blocks.1.attn.hook_nothing",
];
const COLUMNS: &[&str] = &[
    "loss", "score", "layer1", "head2", "pos", "token", "feature", "count", "x",
];
const OPERATORS: &[&str] = &[
    " + ", " - ", " * ", " / ", " == ", " < ", " >= ", " and ", " or ",
];

/// Builds an experiment's source from `bytes`; the same bytes give the same source.
pub fn program(bytes: &[u8]) -> String {
    let mut g = Generator {
        c: Choices { bytes, at: 0 },
        names: Names::default(),
        out: String::new(),
        careful: false,
    };
    g.careful = g.c.chance(50);
    g.program();
    g.out
}

#[derive(Default)]
struct Names {
    datasets: Vec<String>,
    saes: Vec<String>,
    variants: Vec<String>,
    tables: Vec<String>,
    counter: usize,
}

impl Names {
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }
}

struct Generator<'a> {
    c: Choices<'a>,
    names: Names,
    out: String,
    /// Half the programs make no deliberate mistakes, so that they reach a plan and
    /// exercise what comes after the checks.
    careful: bool,
}

impl Generator<'_> {
    /// A deliberate mistake, `percent` of the time, in programs that make them.
    fn mistake(&mut self, percent: usize) -> bool {
        !self.careful && self.c.chance(percent)
    }

    fn program(&mut self) {
        if !self.mistake(3) {
            self.out.push_str("experiment fuzzed\n");
        }
        if !self.mistake(3) {
            self.out.push_str("model \"models/tiny\"");
            if self.c.chance(30) {
                let n = if self.careful {
                    "2".into()
                } else {
                    self.number()
                };
                self.out.push_str(&format!(" (batch_size = {n})"));
            }
            self.out.push('\n');
        }
        if self.careful {
            // Something of each kind to refer to.
            self.out.push_str(concat!(
                "dataset d0 = prompts([\"the cat sat\", \"a dog ran\"])\n",
                "table t0 = composition_scores(mode = Q)\n",
                "sae s0 = train(hook = blocks.1.attn.hook_q[head = 2], dataset = d0, d_sae = 16)\n",
                "variant v0 {\n    zero(blocks.0.attn.hook_z[head = 1])\n}\n",
            ));
            self.names.datasets.push("d0".into());
            self.names.tables.push("t0".into());
            self.names.saes.push("s0".into());
            self.names.variants.push("v0".into());
        }
        let statements = 1 + self.c.below(12);
        for _ in 0..statements {
            self.statement(0);
        }
    }

    fn statement(&mut self, depth: usize) {
        match self.c.below(8) {
            0 => {
                let name = self.names.fresh("d");
                let call = self.call_producing(|p| p == Produces::Dataset);
                self.out.push_str(&format!("dataset {name} = {call}\n"));
                self.names.datasets.push(name);
            }
            1 => {
                let name = self.names.fresh("s");
                let call = self.call_producing(|p| p == Produces::Sae);
                self.out.push_str(&format!("sae {name} = {call}\n"));
                self.names.saes.push(name);
            }
            2 => {
                let name = self.names.fresh("v");
                let count = self.c.below(3);
                let calls: Vec<String> = (0..count)
                    .map(|_| self.call_producing(|p| p == Produces::Intervention))
                    .collect();
                self.out
                    .push_str(&format!("variant {name} {{\n{}\n}}\n", calls.join("\n")));
                self.names.variants.push(name);
            }
            3 | 4 => {
                let name = self.names.fresh("t");
                let mut pipeline = self.call_producing(|p| p == Produces::Table);
                for _ in 0..self.c.below(4) {
                    let op = self.call_producing(|p| p == Produces::TableOp);
                    pipeline.push_str(&format!(" | {op}"));
                }
                if self.c.chance(25) {
                    let check = self.call_producing(|p| p == Produces::Check);
                    self.out
                        .push_str(&format!("expect \"a claim\" = {pipeline} | {check}\n"));
                } else {
                    self.out.push_str(&format!("table {name} = {pipeline}\n"));
                    self.names.tables.push(name);
                }
            }
            5 => {
                let call =
                    self.call_producing(|p| matches!(p, Produces::Plot | Produces::Dashboards));
                let keyword = if call.starts_with("feature_dashboards") {
                    "dashboards"
                } else {
                    "plot"
                };
                let name = self.names.fresh("p");
                self.out.push_str(&format!("{keyword} {name} = {call}\n"));
            }
            6 => {
                let name = self.names.fresh("L");
                let value = match self.c.below(3) {
                    0 => self.number(),
                    1 => self.list(&Type::Integer),
                    _ => self.call_producing(|p| matches!(p, Produces::Value(_))),
                };
                self.out.push_str(&format!("let {name} = {value}\n"));
            }
            _ if depth < 3 => {
                let items = self.list(&Type::Integer);
                self.out.push_str(&format!("for x{depth} in {items} {{\n"));
                for _ in 0..1 + self.c.below(3) {
                    self.statement(depth + 1);
                }
                self.out.push_str("}\n");
            }
            _ => self.out.push_str("title \"t\"\n"),
        }
    }

    fn call_producing(&mut self, produces: impl Fn(Produces) -> bool) -> String {
        let candidates: Vec<&Builtin> = BUILTINS.iter().filter(|b| produces(b.produces)).collect();
        if candidates.is_empty() {
            return "nothing()".into();
        }
        let builtin = *self.c.pick(&candidates);
        self.call(builtin)
    }

    fn call(&mut self, builtin: &Builtin) -> String {
        let mut args = Vec::new();
        for param in builtin.params {
            // Required arguments usually, optional ones sometimes, and now and then an
            // argument that should not be there.
            let include = if param.required {
                !self.mistake(5)
            } else {
                self.c.chance(35)
            };
            if include {
                args.push(self.argument(param));
            }
        }
        if self.mistake(3) {
            args.push(format!("bogus = {}", self.number()));
        }
        format!("{}({})", builtin.name, args.join(", "))
    }

    fn argument(&mut self, param: &Param) -> String {
        let value = if self.mistake(5) {
            // The wrong type.
            self.value(&Type::Str)
        } else {
            self.value(&param.ty)
        };
        format!("{} = {value}", param.name)
    }

    fn value(&mut self, ty: &Type) -> String {
        match ty {
            Type::Number | Type::Integer => self.number(),
            Type::Str => format!("\"{}\"", self.c.pick(STRINGS)),
            Type::Bool => (*self.c.pick(&["true", "false"])).to_owned(),
            Type::Hook => {
                let hook = if self.careful {
                    *self.c.pick(&HOOKS[..REAL_HOOKS])
                } else {
                    *self.c.pick(HOOKS)
                };
                if self.careful && !hook.contains(".attn.") {
                    return hook.to_owned();
                }
                match self.c.below(4) {
                    0 => hook.to_owned(),
                    1 => format!("{hook}[head = {}]", self.number()),
                    2 => format!(
                        "{hook}[head = {}, pos = {}]",
                        self.c.below(6),
                        self.number()
                    ),
                    _ => format!("{hook}[pos = {}]", self.number()),
                }
            }
            Type::Head if self.careful => format!("L{}H{}", self.c.below(2), self.c.below(4)),
            Type::Head => format!("L{}H{}", self.c.below(4), self.c.below(8)),
            Type::Dataset => self.name_from(|n| &n.datasets),
            Type::Sae => self.name_from(|n| &n.saes),
            Type::Variant => self.name_from(|n| &n.variants),
            Type::Table | Type::Shown => self.name_from(|n| &n.tables),
            Type::Column => (*self.c.pick(COLUMNS)).to_owned(),
            Type::NewColumn => {
                if self.mistake(10) {
                    (*self.c.pick(COLUMNS)).to_owned()
                } else {
                    format!("made_{}", self.c.below(3))
                }
            }
            Type::ColumnExpr => self.column_expr(0),
            Type::Choice(options) => {
                if self.mistake(10) {
                    "nonsense".into()
                } else {
                    (*self.c.pick(options)).to_owned()
                }
            }
            Type::Position | Type::OnePosition => {
                if self.c.chance(20) {
                    "all".into()
                } else {
                    self.number()
                }
            }
            Type::Features => {
                if self.c.chance(20) {
                    "all".into()
                } else {
                    self.list(&Type::Integer)
                }
            }
            Type::ListOf(inner) => self.list(inner),
        }
    }

    fn name_from(&mut self, names: impl Fn(&Names) -> &Vec<String>) -> String {
        let declared = names(&self.names).clone();
        if declared.is_empty() || self.mistake(5) {
            "undeclared".into()
        } else {
            self.c.pick(&declared).clone()
        }
    }

    fn list(&mut self, inner: &Type) -> String {
        let items: Vec<String> = (0..self.c.below(5)).map(|_| self.value(inner)).collect();
        format!("[{}]", items.join(", "))
    }

    fn number(&mut self) -> String {
        if self.careful {
            (*self.c.pick(SMALL_NUMBERS)).to_owned()
        } else {
            (*self.c.pick(NUMBERS)).to_owned()
        }
    }

    fn column_expr(&mut self, depth: usize) -> String {
        match self.c.below(if depth > 4 { 3 } else { 8 }) {
            0 => (*self.c.pick(COLUMNS)).to_owned(),
            6 => format!(
                "contains([{}, {}], {})",
                self.number(),
                self.number(),
                self.column_expr(depth + 1)
            ),
            7 => format!(
                "ends_with({}, \"{}\")",
                self.column_expr(depth + 1),
                self.c.pick(STRINGS)
            ),
            1 => self.number(),
            2 => format!("\"{}\"", self.c.pick(STRINGS)),
            3 => format!("not {}", self.column_expr(depth + 1)),
            4 => format!("({})", self.column_expr(depth + 1)),
            _ => {
                let op = *self.c.pick(OPERATORS);
                format!(
                    "{}{op}{}",
                    self.column_expr(depth + 1),
                    self.column_expr(depth + 1)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_bytes_make_the_same_program_and_empty_bytes_make_a_valid_one() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(super::program(&bytes), super::program(&bytes));
        let empty = super::program(&[]);
        assert!(
            empty.starts_with("experiment fuzzed\nmodel \"models/tiny\" (batch_size = 2)\n"),
            "{empty}"
        );
        assert!(crate::syntax::parse(&empty).is_ok(), "{empty}");
    }
}
