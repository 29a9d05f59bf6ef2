//! qexp: declarative mechanistic-interpretability experiments on ONNX Runtime.
//!
//! The pipeline reads top to bottom; see ARCHITECTURE.md for the map:
//! `syntax` (source -> AST) -> `check` (AST -> `plan`) -> `execute` (on `runtime`, with
//! graphs from `compile`) -> `report`. `checkpoint` + `export` make the model folders
//! the runtime loads.

pub mod analysis;
pub mod builtins;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod compile;
pub mod device;
pub mod estimate;
pub mod execute;
pub mod experiment;
pub mod export;
mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod hooks;
pub mod lock;
pub mod machine;
pub mod manifest;
pub mod model;
pub mod onnx;
pub mod output;
pub mod plan;
pub mod processing;
pub mod project;
pub mod report;
pub mod results;
pub mod runtime;
pub mod sae;
pub mod session;
pub mod shard;
pub mod slurm;
pub mod syntax;
