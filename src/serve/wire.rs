//! The service's wire format: jobs and shards as the API shows them, their states, and the
//! messages of the lease protocol between `sparq serve` and `sparq worker`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::encode::settings::EncodeSettings;
use crate::encode::shard::ShardSpec;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be planned.
    #[default]
    Queued,
    /// Being planned (inputs listed, shards cut).
    Planning,
    /// Shards being leased.
    Running,
    /// Writing the manifest.
    Finishing,
    /// Ended, complete.
    Succeeded,
    /// Ended with failed shards or an error.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Planning,
        JobState::Running,
        JobState::Finishing,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The state's name, as the API and the database spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Planning => "planning",
            JobState::Running => "running",
            JobState::Finishing => "finishing",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Where a shard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardState {
    /// Waiting for a worker.
    #[default]
    Pending,
    /// A worker holds a lease on it.
    Leased,
    /// Committed by this job.
    Done,
    /// Committed by an earlier run of the same output.
    Skipped,
    /// Failed for good.
    Failed,
    /// Its job was cancelled.
    Cancelled,
}

impl ShardState {
    /// Every state.
    pub const ALL: [ShardState; 6] = [
        ShardState::Pending,
        ShardState::Leased,
        ShardState::Done,
        ShardState::Skipped,
        ShardState::Failed,
        ShardState::Cancelled,
    ];

    /// The state's name, as the API and the database spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardState::Pending => "pending",
            ShardState::Leased => "leased",
            ShardState::Done => "done",
            ShardState::Skipped => "skipped",
            ShardState::Failed => "failed",
            ShardState::Cancelled => "cancelled",
        }
    }
}

/// What a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// `sparq encode`, cut into shards.
    #[default]
    Encode,
    /// `sparq train`, one lease for the whole run.
    Train,
}

impl JobKind {
    /// Every kind.
    pub const ALL: [JobKind; 2] = [JobKind::Encode, JobKind::Train];

    /// The kind's name, as specs, the API and the database spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Encode => "encode",
            JobKind::Train => "train",
        }
    }
}

macro_rules! state_text {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$t>::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("unknown {} `{s}`", stringify!($t)))
            }
        }
        impl rusqlite::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
        impl rusqlite::types::FromSql for $t {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
            }
        }
    };
}
state_text!(JobState);
state_text!(ShardState);
state_text!(JobKind);

/// Why one attempt at a shard (or a train run) ended without a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum FailureCause {
    /// The worker sent no heartbeat within the lease timeout.
    LeaseLost {
        /// The worker that held the lease.
        worker: String,
        /// The job's lease timeout.
        timeout_s: u64,
    },
    /// Heartbeats kept arriving but the worker's progress counter did not move.
    Stalled {
        /// The worker that held the lease.
        worker: String,
        /// The job's lease timeout.
        timeout_s: u64,
    },
    /// The worker reported the failure.
    Reported {
        /// Its message.
        error: String,
    },
    /// The service could not read what it had stored for the shard.
    Unreadable {
        /// What could not be read, and why.
        what: String,
    },
    /// The shard was counted committed, but its part was gone from the output at the finish.
    MissingAtFinish {
        /// The part's file name.
        part: String,
    },
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureCause::LeaseLost { worker, timeout_s } => write!(
                f,
                "worker {worker} lost its lease (no heartbeat for {timeout_s}s)"
            ),
            FailureCause::Stalled { worker, timeout_s } => write!(
                f,
                "worker {worker} lost its lease (heartbeats but no progress for {timeout_s}s)"
            ),
            FailureCause::Reported { error } => f.write_str(error),
            FailureCause::Unreadable { what } => {
                write!(f, "the service cannot read {what}")
            }
            FailureCause::MissingAtFinish { part } => {
                write!(
                    f,
                    "the part {part} was missing from the output at the finish"
                )
            }
        }
    }
}

/// The causes column of a shard: every failed attempt's cause, oldest first. Databases written
/// before causes were typed hold plain strings; they read as `Reported`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Causes(pub Vec<FailureCause>);

impl<'de> Deserialize<'de> for Causes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Typed(FailureCause),
            Text(String),
        }
        let stored = Vec::<Stored>::deserialize(d)?;
        Ok(Causes(
            stored
                .into_iter()
                .map(|c| match c {
                    Stored::Typed(c) => c,
                    Stored::Text(error) => FailureCause::Reported { error },
                })
                .collect(),
        ))
    }
}

impl Causes {
    /// Each cause as a sentence.
    pub fn texts(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl rusqlite::ToSql for Causes {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        let text = serde_json::to_string(self)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        Ok(text.into())
    }
}

impl rusqlite::types::FromSql for Causes {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map_err(|e| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

/// Whether a job state (as the API spells it) is final.
pub fn is_final<S: AsRef<str> + ?Sized>(state: &S) -> bool {
    state
        .as_ref()
        .parse::<JobState>()
        .is_ok_and(JobState::is_final)
}

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;

/// A job as the API shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// The name it was submitted under, if any (`sparq submit --name`).
    #[serde(default)]
    pub name: Option<String>,
    /// What it runs.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Submission time (seconds since the epoch).
    pub created: f64,
    /// When planning ended.
    pub started: Option<f64>,
    /// When it ended.
    pub finished: Option<f64>,
    /// Shards in the plan (1 for a train job).
    pub shards_total: u64,
    /// Shards committed (by this job or an earlier run of the same output).
    pub shards_done: u64,
    /// Shards that failed for good.
    pub shards_failed: u64,
    /// Shards leased now.
    pub shards_running: u64,
    /// Rows in the plan (train: steps).
    pub rows_total: u64,
    /// Rows committed or in progress (train: steps).
    pub rows_done: u64,
    /// Rows committed, by this job or an earlier run of the same output (train: steps).
    #[serde(default)]
    pub rows_committed: u64,
    /// Rows encoded per second since the job started.
    pub docs_per_s: f64,
    /// Seconds left at the current rate.
    pub eta_s: Option<f64>,
    /// Leases granted.
    pub attempts: u64,
    /// Leases beyond the first per shard (retries after failures or lost workers).
    pub retries: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// The command's summary (encode or train), once ended.
    pub summary: Option<Value>,
    /// The normalised spec (detail only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
    /// Shards, when asked for (`?shards=all` or `?shards=causes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardView>,
}

/// One shard of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardView {
    /// Shard id.
    pub shard: usize,
    /// Rows.
    pub rows: u64,
    /// Where it is.
    pub state: ShardState,
    /// Leases granted for it.
    pub attempts: u32,
    /// Last worker holding it.
    pub worker: Option<String>,
    /// Causes of failed attempts.
    pub causes: Vec<String>,
}

/// A worker asking for work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Worker name (host-pid unless given).
    pub worker: String,
    /// Its device.
    pub device: String,
}

/// What a lease is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    /// Encode one shard with these settings (the worker fills in device and threads).
    Encode {
        /// Job settings (the worker adds its device and threads).
        #[serde(alias = "config")]
        settings: Box<EncodeSettings>,
        /// The shard.
        shard: ShardSpec,
    },
    /// Run (or resume) a training job with this spec.
    Train {
        /// The normalised spec.
        spec: Value,
    },
}

/// A lease granted to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Lease id (used in heartbeats and reports).
    pub lease: String,
    /// Job id.
    pub job: String,
    /// 1-based attempt of this shard.
    pub attempt: u32,
    /// The lease is lost after this many seconds without a heartbeat.
    pub lease_timeout_s: u64,
    /// Seconds between heartbeats.
    pub heartbeat_s: u64,
    /// The work.
    pub work: Work,
    /// The folders the service lets jobs touch: the worker checks every local path it opens
    /// against them.
    #[serde(default)]
    pub allowed_roots: crate::io::AllowedRoots,
}

/// Heartbeat body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Rows done in the shard (train: steps).
    pub rows: u64,
    /// Tokens done.
    pub tokens: u64,
    /// Work done, of any kind (bytes read, tokens, rows, bytes committed; train: event lines):
    /// monotonic, so a lease whose worker heartbeats but does nothing can be expired. 0 means
    /// "not sent" (older workers): only the heartbeat's arrival counts then.
    #[serde(default)]
    pub progress: u64,
}

/// One page of `GET /v1/jobs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobPage {
    /// The jobs, oldest first.
    pub jobs: Vec<JobView>,
    /// Pass as `?after=` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Done body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneReport {
    /// Worker name.
    pub worker: String,
    /// The shard report (encode) or train summary.
    pub report: Value,
}

/// Failed body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedReport {
    /// Cause.
    pub error: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

/// The answer to a heartbeat or report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseReply {
    /// False: stop working on this lease.
    pub keep: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LeaseReply {
    /// Go on.
    pub fn keep() -> Self {
        Self {
            keep: true,
            reason: None,
        }
    }
    /// Stop, because.
    pub fn stop(reason: &str) -> Self {
        Self {
            keep: false,
            reason: Some(reason.to_string()),
        }
    }
}
