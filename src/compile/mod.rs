//! Graph rewrites that turn an exported model into the graph one run needs:
//! interventions (one [`interventions::Pass`] per kind: ablation, steering, patching,
//! SAEs) rewrite hooks, then `select_outputs` exposes the hooks a run reads and prunes
//! everything they do not depend on, so a run that only needs layer 1's query never
//! computes layers 2..N or the unembedding. `kv_cache` adds a key/value cache for
//! generation, and `four_bit` has its products read weights stored as 4-bit blocks.

pub mod four_bit;
pub mod interventions;
pub mod kv_cache;
mod prune;

pub use interventions::{Intervention, SaeEdit, Target};
pub use prune::{CompileError, select_outputs};
