//! Analyses on weights and on activations a forward pass already produced: composition
//! scores, direct logit attribution, an attention score split over SAE features.

pub mod composition;
pub mod logit_attribution;
pub mod score_attribution;
