//! Weights-only analyses: numbers read off the model's parameters, no forward pass.

pub mod composition;
