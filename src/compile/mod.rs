//! Graph rewrites that turn an exported model into the graph one run needs.
//!
//! Today: expose hook points as graph outputs and prune everything the requested outputs
//! do not depend on, so a run that only needs layer 1's query never computes layers 2..N
//! or the unembedding. Interventions (ablation, SAE splices, patching) are further passes
//! over the same `ModelProto`.

pub mod interventions;
mod prune;

pub use interventions::{Intervention, SaeEdit, Target};
pub use prune::{CompileError, select_outputs};
