//! Encoding: the shard contract (what a worker encodes and reports), the columns it reads,
//! the token-budget batcher, the per-shard pipeline of a worker, `encode-text`, and the
//! per-shard work of `sparq score`.

pub mod batcher;
pub mod columns;
pub mod pipeline;
pub mod score;
pub mod settings;
pub mod shard;
mod source;
pub mod text;

/// Re-exported from [`crate::types`].
pub use crate::types::SparseVector;
pub use batcher::TokenBudgetBatcher;
