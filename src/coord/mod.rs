//! The encode job: planning shards, the coordinator that leases them to worker processes,
//! the worker loop, and their protocol.

pub mod coordinator;
pub mod duplicates;
pub mod plan;
pub mod pool;
pub mod progress;
pub mod protocol;
pub mod worker;

use crate::io::StoreError;
use crate::model::ModelError;

/// Everything that stops an encode job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model cannot be used.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A required column is missing.
    #[error("{file}: no column `{column}` (columns: {}); pick the column with --id-column / --text-column / --keep-columns", available.join(", "))]
    MissingColumn {
        /// The file.
        file: String,
        /// The column asked for.
        column: String,
        /// Columns present.
        available: Vec<String>,
    },
    /// The text column is not text.
    #[error("{file}: column `{column}` is {found}, not a string: pass the text column with --text-column")]
    TextType {
        /// The file.
        file: String,
        /// The column.
        column: String,
        /// Its type.
        found: String,
    },
    /// Files disagree on a column type.
    #[error("{file}: column `{column}` is {found} but earlier files have {expected}: cast the files to one schema")]
    SchemaMismatch {
        /// The file.
        file: String,
        /// The column.
        column: String,
        /// Type in earlier files.
        expected: String,
        /// Type in this file.
        found: String,
    },
    /// The output holds another job.
    #[error("{output} already holds output made with a different {}: use another --output, or --overwrite to re-encode everything into it", differences.join("; "))]
    OutputMismatch {
        /// The output URL.
        output: String,
        /// What differs.
        differences: Vec<String>,
    },
    /// Invalid settings.
    #[error("{0}")]
    Settings(String),
    /// A worker could not start or work at all.
    #[error("worker on {device}: {error}")]
    Worker {
        /// Its device.
        device: String,
        /// What it said.
        error: String,
    },
    /// Spawning or talking to a worker process failed.
    #[error("worker process: {0}")]
    Process(#[from] std::io::Error),
}
