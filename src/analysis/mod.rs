//! Weights-only analyses: numbers read off the model's parameters, no forward pass.

pub mod composition;
pub mod logit_attribution;
pub mod score_attribution;
