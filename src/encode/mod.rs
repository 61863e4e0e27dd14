//! Encoding pipelines: sparse vectors and the `encode-text` command.

pub mod sparse;
pub mod text;

pub use sparse::SparseVector;
