//! `attention(prompt, head; pos, variants)`: a head's attention from one query position
//! (or, with `pos = all`, from every one) to every earlier position, clean and under
//! each variant.

use ndarray::s;

use crate::builtins::args::{Args, BindError, Columns, HeadArg, Text, columns};
use crate::builtins::measurements::{Measure, Reads, clean_then, table};
use crate::builtins::spec::{Builtin, Produces, Type, VARIANTS, opt, req};
use crate::hooks;
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, OnePrompt, Session, context, position};

pub const SPEC: Builtin = Builtin {
    name: "attention",
    produces: Produces::Table,
    summary: "a head's attention from one position (or every one), under variants",
    params: &[
        req("prompt", Type::Str).non_empty(),
        req("head", Type::Head),
        opt("pos", Type::Position),
        opt("variants", VARIANTS),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    pub prompt: Text,
    pub head: HeadArg,
    /// The query position, negative from the end; the last token when absent.
    pub pos: Option<i64>,
    /// `pos = all`: a row for every query and key position.
    pub every_query: bool,
    pub variants: Vec<String>,
}

impl Measure for Attention {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            prompt: args.text("prompt")?,
            head: args.head("head")?,
            pos: args.position("pos")?,
            every_query: args.is_all("pos"),
            variants: args.names("variants")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        let mut c = if self.every_query {
            columns(&[("query_pos", Integer), ("query_str_tokens", Str)])
        } else {
            Vec::new()
        };
        c.extend(columns(&[
            ("pos", Integer),
            ("str_tokens", Str),
            ("context", Str),
            ("attn", Number),
        ]));
        c.extend(self.variants.iter().map(|v| (format!("{v}_attn"), Number)));
        c
    }

    fn reads(&self, _plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        reads.clean_and_variants(&self.variants, &self.head.hook(hooks::PATTERN));
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let (layer, head) = self.head.resolve(&s.values)?;
        let OnePrompt { tokens, batch } = s.one_prompt(&self.prompt)?;
        let queries = if self.every_query {
            0..tokens.len()
        } else {
            let query = position(&tokens, self.pos)?;
            query..query + 1
        };
        let hook = hooks::block(layer, hooks::PATTERN);
        let mut patterns = Vec::new();
        for variant in clean_then(&self.variants) {
            let forward = s.forward(variant, &batch, &[&hook])?;
            patterns.push(forward.hooks[&hook].slice(s![0, head, .., ..]).to_owned());
        }
        let strs = s.str_tokens(&tokens)?;
        let mut table = table(name, &self.columns());
        for query in queries {
            for key in 0..=query {
                let mut cells = Vec::new();
                if self.every_query {
                    cells.push(Cell::Integer(query as i64));
                    cells.push(Cell::Str(strs[query].clone()));
                }
                cells.extend([
                    Cell::Integer(key as i64),
                    Cell::Str(strs[key].clone()),
                    Cell::Str(context(&strs, key, 3)),
                ]);
                cells.extend(patterns.iter().map(|p| Cell::Number(f64::from(p[[query, key]]))));
                table.rows.push(cells);
            }
        }
        Ok(table)
    }
}
