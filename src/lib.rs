//! qexp: declarative mechanistic-interpretability experiments on ONNX Runtime.
//!
//! The pipeline reads top to bottom; see ARCHITECTURE.md for the map.

pub mod checkpoint;
pub mod cli;
pub mod compile;
pub mod export;
pub mod manifest;
pub mod model;
pub mod onnx;
pub mod runtime;
