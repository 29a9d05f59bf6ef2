//! `logit_attribution(prompt, answer; versus, pos)`: the residual stream at one position
//! split into what each component wrote (the embeddings, each head, each attention
//! output bias, each MLP), each read through the final norm (its scale frozen at the
//! clean run's) and the unembedding: TransformerLens' `decompose_resid` and
//! `stack_head_results` with `residual_stack_to_logit_diff`. The rows sum to the answer's
//! logit (or the logit difference) less any unembedding bias, before any final soft cap
//! (Gemma-2's). Where heads' outputs pass a post-attention norm (Gemma-2's `ln1_post`),
//! each head's write is read through it with its scale frozen, as the final norm's is.

use ndarray::{Array1, s};

use crate::builtins::args::{Args, BindError, Columns, Text, columns};
use crate::builtins::measurements::{Graph, Measure, Reads, table};
use crate::builtins::spec::{Builtin, Produces, Type, opt, req};
use crate::hooks::{self, MLP_OUT, Z};

/// The post-attention norm's divisor (Gemma-2), which each head's write passes through.
const POST_ATTN_SCALE: &str = "ln1_post.hook_scale";
use crate::plan::{ColumnType, Plan};
use crate::results::{Cell, Table};
use crate::session::{Failure, OnePrompt, Session, position};

pub const SPEC: Builtin = Builtin {
    name: "logit_attribution",
    produces: Produces::Table,
    summary: "each component's direct effect (embeddings, every head, every MLP) on an answer's logit or a logit difference",
    params: &[
        req("prompt", Type::Str).non_empty(),
        req("answer", Type::Str).non_empty(),
        opt("versus", Type::Str).non_empty(),
        opt("pos", Type::OnePosition),
    ],
};

#[derive(Debug, Clone, PartialEq)]
pub struct LogitAttribution {
    pub prompt: Text,
    pub answer: Text,
    /// A second answer: the attribution is to the logit difference, answer minus this.
    pub versus: Option<Text>,
    /// The position read, negative from the end; the last token when absent.
    pub pos: Option<i64>,
}

/// One component's write to the residual stream at the position read.
struct Component {
    name: String,
    kind: &'static str,
    layer: Option<usize>,
    head: Option<usize>,
    write: Array1<f32>,
}

impl LogitAttribution {
    /// The hooks holding every component's write: the embeddings, each block's heads'
    /// values (`hook_z`, times `W_O` here: reading `hook_result` from the graph costs
    /// the runtime far more than the product) and MLP output.
    fn hooks(n_layers: Option<usize>, learned_positions: bool, post_norms: bool) -> Vec<String> {
        let mut hooks = vec![hooks::EMBED.to_owned()];
        if learned_positions {
            hooks.push(hooks::POS_EMBED.to_owned());
        }
        hooks.extend(hooks::every_block(n_layers, Z));
        if post_norms {
            hooks.extend(hooks::every_block(n_layers, POST_ATTN_SCALE));
        }
        hooks.extend(hooks::every_block(n_layers, MLP_OUT));
        hooks
    }
}

impl Measure for LogitAttribution {
    fn bind(args: &Args) -> Result<Self, BindError> {
        Ok(Self {
            prompt: args.text("prompt")?,
            answer: args.text("answer")?,
            versus: args.opt_text("versus")?,
            pos: args.position("pos")?,
        })
    }

    fn columns(&self) -> Columns {
        use ColumnType::{Integer, Number, Str};
        columns(&[
            ("component", Str),
            ("kind", Str),
            ("layer", Integer),
            ("head", Integer),
            ("attribution", Number),
        ])
    }

    fn reads(&self, plan: &Plan) -> Reads {
        let mut reads = Reads::default();
        // Without the manifest the plan cannot tell; rotary models have no position
        // embedding hook, and the plan lists what the run will read where it knows.
        let model = &plan.model;
        for hook in Self::hooks(model.n_layers, !model.rotary, model.post_norms) {
            reads.add(Graph::Clean, hook);
        }
        reads.add(Graph::Clean, hooks::FINAL_SCALE);
        reads
    }

    fn run(&self, s: &mut Session, name: &str) -> Result<Table, Failure> {
        let answer = s.answer(&self.answer)?;
        let versus = self.versus.as_ref().map(|v| s.answer(v)).transpose()?;
        let OnePrompt { tokens, batch } = s.one_prompt(&self.prompt)?;
        let at = position(&tokens, self.pos)?;
        let config = s.model.manifest.config.clone();
        let learned_positions = !matches!(
            config.positional,
            crate::model::Positional::Rotary { .. }
        );
        let hooks = Self::hooks(Some(config.n_layers), learned_positions, config.post_norms);
        let mut wanted: Vec<&str> = hooks.iter().map(String::as_str).collect();
        wanted.push(hooks::FINAL_SCALE);
        let forward = s.forward(None, &batch, &wanted)?;
        let scale = forward.hooks[hooks::FINAL_SCALE][[0, at, 0]];
        let at_pos = |hook: &str| forward.hooks[hook].slice(s![0, at, ..]).to_owned();

        let mut components = vec![Component {
            name: "embed".into(),
            kind: "embed",
            layer: None,
            head: None,
            write: at_pos(hooks::EMBED),
        }];
        if learned_positions {
            components.push(Component {
                name: "pos_embed".into(),
                kind: "pos_embed",
                layer: None,
                head: None,
                write: at_pos(hooks::POS_EMBED),
            });
        }
        for layer in 0..config.n_layers {
            let z = &forward.hooks[&hooks::block(layer, Z)];
            let w_o = s
                .model
                .weight(&format!("blocks.{layer}.attn.W_O"))
                .map_err(Session::runtime)?
                .into_dimensionality::<ndarray::Ix2>()
                .map_err(|e| e.to_string())?;
            let d_head = z.shape()[3];
            // Gemma-2: attention's sum passes `ln1_post` (its scale frozen here) first.
            let post_norm = if config.post_norms {
                let scale = forward.hooks[&hooks::block(layer, POST_ATTN_SCALE)][[0, at, 0]];
                let weight = s
                    .model
                    .weight(&format!("blocks.{layer}.ln1_post.w"))
                    .map_err(Session::runtime)?
                    .into_dimensionality::<ndarray::Ix1>()
                    .map_err(|e| e.to_string())?;
                Some(weight / scale)
            } else {
                None
            };
            for head in 0..z.shape()[2] {
                let z_head = z
                    .slice(s![0, at, head, ..])
                    .into_dimensionality::<ndarray::Ix1>()
                    .map_err(|e| e.to_string())?;
                let w_o_head = w_o.slice(s![head * d_head..(head + 1) * d_head, ..]);
                components.push(Component {
                    name: format!("L{layer}H{head}"),
                    kind: "head",
                    layer: Some(layer),
                    head: Some(head),
                    write: match &post_norm {
                        Some(scaled_weight) => z_head.dot(&w_o_head) * scaled_weight,
                        None => z_head.dot(&w_o_head),
                    },
                });
            }
            // The attention output bias is written at every position whatever the heads
            // do: a component of its own, where the model has one.
            if let Ok(bias) = s.model.weight(&format!("blocks.{layer}.attn.b_O")) {
                components.push(Component {
                    name: format!("attn_bias{layer}"),
                    kind: "attn_bias",
                    layer: Some(layer),
                    head: None,
                    write: bias
                        .into_dimensionality::<ndarray::Ix1>()
                        .map_err(|e| e.to_string())?,
                });
            }
            components.push(Component {
                name: format!("mlp{layer}"),
                kind: "mlp",
                layer: Some(layer),
                head: None,
                write: at_pos(&hooks::block(layer, MLP_OUT)),
            });
        }

        let readout = s.readout()?;
        let index = |n: Option<usize>| n.map_or(Cell::Str(String::new()), |n| Cell::Integer(n as i64));
        let mut table = table(name, &self.columns());
        for component in components {
            let logit = |token| readout.logit(component.write.view(), scale, token);
            let attribution = match versus {
                Some(versus) => logit(answer) - logit(versus),
                None => logit(answer),
            };
            table.rows.push(vec![
                Cell::Str(component.name),
                Cell::Str(component.kind.into()),
                index(component.layer),
                index(component.head),
                Cell::Number(attribution),
            ]);
        }
        Ok(table)
    }
}
