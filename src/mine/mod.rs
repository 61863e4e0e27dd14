//! `sparq mine`: hard negatives for (anchor, positive) pairs, selected exactly as
//! sentence-transformers' `mine_hard_negatives` selects them, retrieved through sparq's own
//! inverted index and written in query shards with the create-once commit protocol.

pub mod args;
pub mod data;
pub mod output;
pub mod run;
pub mod select;
mod shard;
pub mod vectors;

pub use args::MineArgs;
pub use run::{prepare, MineRun, MineSummary};

use crate::io::StoreError;
use crate::model::ModelError;

/// Everything that stops a mining run.
#[derive(Debug, thiserror::Error)]
pub enum MineError {
    /// Invalid options.
    #[error("{0}")]
    Options(String),
    /// An input file is unusable.
    #[error("{file}: {detail}")]
    Data {
        /// The file (or URL).
        file: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output holds a run with other settings.
    #[error("{output} already holds hard negatives mined with other settings ({}): rerun with the recorded settings to resume, use another --output, or pass --overwrite to delete its parts and mine again", differences.join("; "))]
    OutputMismatch {
        /// The output URL.
        output: String,
        /// What differs.
        differences: Vec<String>,
    },
    /// Writing a part failed.
    #[error("writing part {part}: {detail}")]
    Write {
        /// The part.
        part: String,
        /// What the writer said.
        detail: String,
    },
}
