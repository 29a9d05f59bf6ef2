//! References to heads (`L1H4`) and hook points (`blocks.1.attn.hook_q[head = 4]`),
//! checked against the model's manifest when there is one, by pattern when not.

use super::args::number;
use super::*;

impl Checker<'_> {
    pub(super) fn head(&mut self, path: &str, span: Span) -> Option<Value> {
        let Some((layer, head)) = hooks::parse_head(path) else {
            self.error(
                span,
                format!("expected a head like `L1H11`, found `{path}`"),
            );
            return None;
        };
        if let Some(m) = self.manifest() {
            let (layers, heads) = (m.config.n_layers, m.config.n_heads);
            if layer >= layers || head >= heads {
                self.error(span, format!("the model has no head {path}"))
                    .hint = Some(format!(
                    "it has layers 0..{} with heads 0..{}",
                    layers - 1,
                    heads - 1
                ));
                return None;
            }
        }
        Some(Value::Head { layer, head })
    }

    /// `blocks.L.attn.hook_z` with `L` a loop variable (or `let`) bound to a whole
    /// number: `blocks.3.attn.hook_z` in the pass over 3.
    fn expand_layer(&self, path: &str) -> String {
        let mut parts: Vec<&str> = path.split('.').collect();
        let layer = match parts.get(1) {
            Some(name) if parts[0] == "blocks" => self
                .lookup(name)
                .and_then(|(_, (binding, _))| match binding {
                    Binding::Literal(bound) => number(bound),
                    _ => None,
                })
                .filter(|n| n.fract() == 0.0 && *n >= 0.0)
                .map(|n| (n as u64).to_string()),
            _ => None,
        };
        match layer {
            Some(layer) => {
                parts[1] = &layer;
                parts.join(".")
            }
            None => path.to_owned(),
        }
    }

    /// `expr`, or what a `let` or loop variable it names is bound to (followed through
    /// names bound to names).
    pub(super) fn dereference(&self, expr: &Expr) -> Expr {
        let mut expr = expr.clone();
        for _ in 0..64 {
            let ExprKind::Ref {
                path,
                selector: None,
            } = &expr.kind
            else {
                break;
            };
            match self.lookup(path) {
                Some((_, (Binding::Literal(bound), _))) => expr = bound.clone(),
                _ => break,
            }
        }
        expr
    }

    pub(super) fn hook(
        &mut self,
        path: &str,
        selector: Option<&[Arg]>,
        span: Span,
    ) -> Option<HookRef> {
        let expanded = self.expand_layer(path);
        let path = expanded.as_str();
        let known: Vec<String> = match self.manifest() {
            Some(m) => m.hooks.iter().map(|h| h.name.clone()).collect(),
            None => hooks::generic_names(path),
        };
        if !known.iter().any(|k| k == path) {
            let candidates: Vec<&str> = known.iter().map(String::as_str).collect();
            let parallel = self.manifest().is_some_and(|m| m.config.parallel_attn_mlp);
            let hint = match nearest(path, &candidates) {
                _ if parallel && path.ends_with(hooks::RESID_MID) => "this model's attention and \
                    MLP both read hook_resid_pre (parallel blocks), so there is no stream \
                    between them; hook_attn_out and hook_mlp_out are what each adds"
                    .to_owned(),
                Some(n) => format!("did you mean `{n}`?"),
                None => "`qexp hooks MODEL` lists the hook points".to_owned(),
            };
            self.error(span, format!("unknown hook point `{path}`"))
                .hint = Some(hint);
            return None;
        }
        let mut hook = HookRef {
            name: path.to_owned(),
            head: None,
            head_from: None,
            pos: None,
        };
        for arg in selector.unwrap_or(&[]) {
            let Some(key) = &arg.name else {
                self.error(arg.value.span, "selectors are `head = h` or `pos = p`");
                continue;
            };
            match key.node.as_str() {
                "head" => {
                    let Some(heads) = hooks::head_count(path, self.manifest()) else {
                        self.error(key.span, format!("`{path}` has no head dimension")).hint =
                            Some("heads can be selected on attn.hook_q/k/v/rot_q/rot_k/z/result/attn_scores/pattern".into());
                        continue;
                    };
                    // A loop variable or `let` bound to a number is that number.
                    let value = self.dereference(&arg.value);
                    // `head = HEAD` where HEAD is a head (`L1H11`, or computed at run time).
                    if let ExprKind::Ref {
                        path: head_name,
                        selector: None,
                    } = &value.kind
                    {
                        match self.value(&arg.value, Type::Head, None) {
                            Some(Value::Head { layer, head }) => {
                                if hooks::layer_of(path) != Some(layer) {
                                    self.error(
                                        arg.value.span,
                                        format!(
                                            "{head_name} is in layer {layer}, but `{path}` is not"
                                        ),
                                    );
                                }
                                hook.head = Some(head);
                            }
                            Some(Value::Computed(name)) => hook.head_from = Some(name),
                            _ => {}
                        }
                        continue;
                    }
                    let Some(n) = number(&value).filter(|n| n.fract() == 0.0 && *n >= 0.0) else {
                        self.error(
                            arg.value.span,
                            "`head` takes a head index or a head like `L1H11`",
                        );
                        continue;
                    };
                    if let Some(heads) = heads
                        && n as usize >= heads
                    {
                        self.error(
                            arg.value.span,
                            format!(
                                "head {n} is out of range: `{path}` has heads 0..{}",
                                heads - 1
                            ),
                        );
                        continue;
                    }
                    hook.head = Some(n as usize);
                }
                "pos" => match self.value(&arg.value, Type::Position, None) {
                    Some(Value::Integer(p)) => hook.pos = Some(p),
                    Some(_) => hook.pos = None,
                    None => {}
                },
                other => {
                    self.error(key.span, format!("unknown selector `{other}`"))
                        .hint = Some("selectors are `head` and `pos`".into());
                }
            }
        }
        Some(hook)
    }
}
