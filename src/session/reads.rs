//! What a step read: which graph (the clean model, a variant, an SAE spliced in or its
//! hook ablated) and which output. Built-ins declare their reads in these terms for
//! `qexp plan`; the session records the reads it actually makes, so a test can hold
//! the two together.

use std::fmt;

/// A graph a run executes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Graph {
    Clean,
    /// A declared variant.
    Variant(String),
    /// An SAE spliced in place of its hook, without the error term.
    Spliced(String),
    /// The hook of an SAE zero-ablated (the baseline of SAE metrics).
    Ablated(String),
    /// A hook replaced by values fed in: another prompt's run of it, in part
    /// (activation patching).
    Patched(String),
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Graph::Clean => write!(f, "clean"),
            Graph::Variant(v) => write!(f, "variant {v}"),
            Graph::Spliced(sae) => write!(f, "{sae} spliced in"),
            Graph::Ablated(sae) => write!(f, "{sae}'s hook zero-ablated"),
            Graph::Patched(hook) => write!(f, "{hook} patched from the clean prompt"),
        }
    }
}

/// One output (a hook, or `logits`) read from one graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Read {
    pub graph: Graph,
    pub output: String,
}
