//! Messages between the coordinator and its worker processes: JSON lines over the worker's
//! stdin (coordinator → worker) and stdout (worker → coordinator).

use serde::{Deserialize, Serialize};

use super::plan::ShardSpec;
use crate::encode::job::WorkerConfig;

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Job settings; the first message.
    Init(WorkerConfig),
    /// A lease on one shard.
    Shard {
        /// The shard.
        shard: ShardSpec,
        /// 1-based attempt number.
        attempt: u32,
    },
    /// Finish and exit.
    Stop,
}

/// A row that could not be encoded (its output row has a null vector).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowFailure {
    /// Input file.
    pub file: String,
    /// Row group.
    pub row_group: usize,
    /// Row index within the file.
    pub row: u64,
    /// Column.
    pub column: String,
    /// What was wrong.
    pub reason: String,
}

/// What a worker reports for a finished shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardReport {
    /// Shard id.
    pub shard: usize,
    /// Rows written.
    pub rows: u64,
    /// Tokens encoded (special tokens included, after truncation).
    pub tokens: u64,
    /// Sum of active dims over rows.
    pub active_dims: u64,
    /// Rows whose text was null (empty vectors).
    pub null_texts: u64,
    /// Rows that failed (null vectors), with the first few causes.
    pub failed_rows: u64,
    /// First failures, for the manifest and messages.
    pub failures: Vec<RowFailure>,
    /// Rows whose id is null (their vectors are written; the id cannot name them).
    #[serde(default)]
    pub null_ids: u64,
    /// Where the first few are: `file, row N`.
    #[serde(default)]
    pub null_id_examples: Vec<String>,
    /// Whether another attempt had committed the part already (nothing was written).
    pub already_committed: bool,
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// Model loaded; ready for shards.
    Ready,
    /// Heartbeat with rows done in the current shard.
    Progress {
        /// Shard id, if one is leased.
        shard: Option<usize>,
        /// Rows encoded so far in it.
        rows: u64,
        /// Tokens encoded so far in it.
        tokens: u64,
    },
    /// Shard committed.
    Done(ShardReport),
    /// Shard failed.
    Failed {
        /// Shard id.
        shard: usize,
        /// Cause, naming file, row group and column where known.
        error: String,
        /// Whether another attempt may succeed (I/O) or not (bad data).
        retryable: bool,
    },
    /// The worker cannot work at all (model or device); the job stops.
    Fatal {
        /// Cause.
        error: String,
    },
}
