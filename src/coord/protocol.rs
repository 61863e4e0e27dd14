//! Messages between the coordinator and its worker processes: JSON lines over the worker's
//! stdin (coordinator → worker) and stdout (worker → coordinator).

use serde::{Deserialize, Serialize};

use crate::encode::settings::{EncodeSettings, WorkerSettings};
use crate::encode::shard::{ShardReport, ShardSpec};
use crate::io::retry::S3Requests;

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// The job's settings and the worker's own; the first message.
    Init {
        /// What every shard is encoded with.
        settings: Box<EncodeSettings>,
        /// This worker's device and threads.
        worker: WorkerSettings,
    },
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
        /// Work done so far in it, of any kind (bytes read, tokens, rows, bytes committed):
        /// monotonic, so a stalled worker shows even while it heartbeats.
        #[serde(default)]
        work: u64,
    },
    /// S3 requests the worker made since its last such message, sent before each `Done` and
    /// `Failed`: the job's count of requests and retries is the coordinator's plus these.
    S3Requests(S3Requests),
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
        /// The output's filesystem is full: no shard can be committed until space is freed,
        /// so the job stops.
        #[serde(default)]
        disk_full: bool,
    },
    /// The worker cannot work at all (model or device); the job stops.
    Fatal {
        /// Cause.
        error: String,
    },
}
