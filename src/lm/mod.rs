//! Language models: a batch of token sequences with the causal shift done
//! once ([`TokenBatch`]), the one trait a causal LM implements to be
//! distilled ([`CausalLm`]), and a seeded sampler for on-policy
//! distillation and sequence-level KD ([`generate`]).
//!
//! burn's Learner trains a causal LM through
//! [`LmDistiller`](crate::train::LmDistiller) (feature `train`).

mod batch;
mod model;
mod sample;

pub use batch::TokenBatch;
pub use model::{CausalLm, OutputLayer};
pub use sample::{SamplerConfig, generate};
