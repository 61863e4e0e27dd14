//! sparq: SPLADE learned-sparse encoding at scale on libtorch, exact to sentence-transformers.
#![warn(missing_docs)]

pub mod cli;
pub mod coord;
pub mod encode;
pub mod eval;
pub mod export;
pub mod io;
pub mod job;
pub mod mine;
pub mod model;
pub mod serve;
pub mod train;
pub mod types;

pub use model::default_model::default_model_dir;
