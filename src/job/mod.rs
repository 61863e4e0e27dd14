//! The encode job: planning shards from the input, the output's identity, finishing with the
//! manifest and `_SUCCESS`, and the names of what a job writes. The local coordinator
//! (`coord`) and the service (`serve`) are two transports over this layer.

pub mod args;
pub(crate) mod duplicates;
pub mod finish;
pub mod identity;
pub mod ownership;
pub mod part_size;
pub mod plan;
pub mod score_args;
pub mod tasks;
mod text_plan;

use serde::{Deserialize, Serialize};

use crate::encode::columns::ColumnError;
use crate::io::StoreError;
use crate::model::ModelError;

/// The file that records which job made an output.
pub const JOB_FILE: &str = "_sparq_job.json";
/// The manifest, written when a job ends.
pub const MANIFEST: &str = "_manifest.json";
/// The success marker, written last.
pub const SUCCESS: &str = "_SUCCESS";
/// Where array tasks leave each committed shard's report, for `--finalize`'s manifest.
pub const REPORTS: &str = "_reports";

/// Whether `name` (relative to the output) is a part sparq writes.
pub fn is_part(name: &str) -> bool {
    !name.contains('/') && name.starts_with("part-") && name.ends_with(".parquet")
}

/// The part a shard of file `file_index` starting at row `first_row` is committed as.
pub fn part_name(file_index: usize, first_row: u64) -> String {
    format!("part-{file_index:05}-{first_row:012}.parquet")
}

/// A shard that could not be encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardFailure {
    /// Output part it would have been (empty for an unreadable file).
    pub part: String,
    /// Input file.
    pub file: String,
    /// First row and row count.
    pub rows: (u64, u64),
    /// Cause of every attempt.
    pub causes: Vec<String>,
}

/// Everything that stops an encode job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another job holds the output, or this one lost it.
    #[error(transparent)]
    Lock(#[from] crate::io::lock::LockError),
    /// The model cannot be used.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A column is missing or not text.
    #[error(transparent)]
    Columns(#[from] ColumnError),
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
    #[error("{output} already holds output made with other settings ({}): rerun with the recorded settings to resume it, use another --output, or pass --overwrite to delete what it holds and re-encode everything", differences.join("; "))]
    OutputMismatch {
        /// The output URL.
        output: String,
        /// What differs.
        differences: Vec<String>,
    },
    /// Input files that are not readable parquet (found at planning, before any output).
    #[error("{count} input file(s) cannot be read as parquet, so nothing was written: {}. Remove them from --input (or narrow it with a glob such as 'folder/*.parquet'), then rerun", files.join("; "))]
    Unreadable {
        /// How many.
        count: usize,
        /// Each file with its cause (the first few).
        files: Vec<String>,
    },
    /// SIGINT or SIGTERM stopped the job; what is committed stays.
    #[error("interrupted ({}): {committed} shard(s) ({rows} rows) committed by this run are kept, {left} shard(s) left; rerun the same command to resume", if *signal == 2 { "Ctrl-C" } else { "SIGTERM" })]
    Interrupted {
        /// The signal.
        signal: i32,
        /// Shards this run committed.
        committed: usize,
        /// Their rows.
        rows: u64,
        /// Shards not committed.
        left: usize,
    },
    /// The output's filesystem is full; what is committed stays.
    #[error("no space left for {output}: {error}. The {committed} shard(s) ({rows} rows) this run committed are kept and complete; {left} shard(s) are left. Free space there (or move the output to a bigger filesystem with its files), then rerun the same command: it resumes where this run stopped")]
    DiskFull {
        /// The output.
        output: String,
        /// The write that failed, naming its path.
        error: String,
        /// Shards this run committed.
        committed: usize,
        /// Their rows.
        rows: u64,
        /// Shards not committed.
        left: usize,
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
