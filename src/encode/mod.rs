//! Encoding: sparse vectors, the token-budget batcher, the per-shard pipeline of a worker,
//! and the `encode-text` command.

pub mod batcher;
pub mod job;
pub mod pipeline;
pub mod text;

/// Re-exported from [`crate::types`].
pub use crate::types::SparseVector;
pub use batcher::TokenBudgetBatcher;
