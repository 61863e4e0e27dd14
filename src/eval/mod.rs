//! `sparq eval`: BEIR-style datasets, exact sparse retrieval through an inverted index, and
//! the metrics of sentence-transformers' `SparseInformationRetrievalEvaluator`.

pub mod dataset;
pub mod index;
pub mod metrics;
pub mod run;

pub use dataset::IrDataset;
pub use index::InvertedIndex;
pub use metrics::{IrMetrics, SparsityCounts};

use crate::io::StoreError;
use crate::model::ModelError;

/// Everything that stops an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A dataset file is missing.
    #[error("{path}: missing: {hint}")]
    MissingFile {
        /// The file expected.
        path: std::path::PathBuf,
        /// What the folder should hold.
        hint: String,
    },
    /// A dataset file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line or row is malformed.
    #[error("{path}, line {line}: {detail}")]
    Malformed {
        /// The file.
        path: std::path::PathBuf,
        /// 1-based line (or row) number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The dataset cannot give meaningful metrics.
    #[error("{dataset}: {detail}")]
    Empty {
        /// Dataset name.
        dataset: String,
        /// What is missing.
        detail: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Storage failed (corpus vectors).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Invalid options.
    #[error("{0}")]
    Options(String),
}
