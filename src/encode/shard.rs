//! A shard: the unit a worker encodes and commits as one part (a row range of one file), what
//! it reports, and why it can fail.

use serde::{Deserialize, Serialize};

use crate::io::commit::PartFile;
use crate::io::id_hashes;
use crate::io::lock::LockError;
use crate::io::output::PartError;
use crate::io::{CommitOutcome, Committer, StoreError};
use crate::model::ModelError;

use super::settings::EncodeSettings;

/// Part of one row group read by a shard.
pub use crate::io::input::RowGroupSlice as Segment;

/// A unit of work: a contiguous row range of one file, committed as one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    /// Index in the plan.
    pub id: usize,
    /// Input file URL.
    pub file: String,
    /// Input file size.
    pub file_size: u64,
    /// Input file version as planned (S3 ETag, or local size and mtime); a worker refuses
    /// another version.
    #[serde(default)]
    pub file_version: Option<String>,
    /// First row (within the file; 0 for a text shard, whose rows are known once read).
    pub first_row: u64,
    /// Number of rows (for a text shard, an estimate from the mean line length sampled at
    /// planning, for progress).
    pub rows: u64,
    /// Row groups read, in order.
    pub segments: Vec<Segment>,
    /// Final name of the output part.
    pub part: String,
    /// A text file's shard: its byte range (a plain file's lines starting in it) or the whole
    /// compressed file, and how its lines are read (`None`: a parquet shard). Boxed: a plan of
    /// a million parquet shards holds a million `None`s, 8 bytes each instead of 48.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Box<crate::io::text_input::TextSlice>>,
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
    /// Entries stored (after `--prune` and the weight type's zeros).
    #[serde(default)]
    pub entries: u64,
    /// u8 weights past 255 × scale, stored as 255.
    #[serde(default)]
    pub clamped_weights: u64,
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
    /// Lines of a text input left out (`--bad-lines skip`).
    #[serde(default)]
    pub skipped_lines: u64,
    /// Where the first few are and why: `file, line N, column C: what`.
    #[serde(default)]
    pub skipped_line_examples: Vec<String>,
}

/// Why a shard failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Reading the input or writing the part failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model failed.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// The input does not fit the job (columns, types).
    #[error(transparent)]
    Columns(#[from] super::columns::ColumnError),
    /// The data cannot be encoded as it is (a truncated file, a failed tokenizer, ...).
    #[error("{0}")]
    Data(String),
    /// The shard was given up: its lease was lost or its job cancelled.
    #[error("abandoned: the lease was lost or the job cancelled")]
    Abandoned,
    /// A pipeline thread panicked.
    #[error("a pipeline thread panicked")]
    Panicked,
    /// Another job holds the output now: nothing more is committed.
    #[error(transparent)]
    Lock(#[from] LockError),
}

impl ShardError {
    /// Whether another attempt may succeed: I/O, the store's own failures, a lost lease and
    /// model failures other than non-finite numbers; not bad data, a changed file, a path
    /// outside the allowed roots, or a model that gives NaN (the same model gives the same
    /// numbers).
    pub fn is_retryable(&self) -> bool {
        match self {
            ShardError::Store(e) => matches!(e, StoreError::Io { .. } | StoreError::Object { .. }),
            ShardError::Model(e) => {
                !matches!(e, ModelError::NonFinite { .. } | ModelError::Tokenize(_))
            }
            ShardError::Abandoned => true,
            ShardError::Columns(_)
            | ShardError::Data(_)
            | ShardError::Panicked
            | ShardError::Lock(_) => false,
        }
    }

    /// Whether a local write failed for want of space (or quota): every other shard would
    /// fail the same way, so the job stops instead of retrying.
    pub fn is_disk_full(&self) -> bool {
        match self {
            ShardError::Store(StoreError::Io { source, .. }) => is_no_space(source),
            _ => false,
        }
    }
}

/// Commits a finished shard's part, once the output's lock still names the job (every worker,
/// local or remote, commits through here): a run that lost the output to another job commits
/// nothing more. First, create-once, the sorted hashes of the part's ids (`ids`), which the
/// duplicate-id check at the job's end merges instead of reading the part back: so a committed
/// part always has them. One left by an attempt that died before its part holds the same ids
/// (same rows); one recording another part size (another attempt's part won) is not used.
/// `advance` counts work done between the writes (a slow disk is not a stalled worker).
pub fn commit_part(
    config: &EncodeSettings,
    runtime: &tokio::runtime::Runtime,
    committer: &Committer,
    shard: &ShardSpec,
    part: PartFile,
    ids: Vec<u128>,
    advance: impl Fn(u64),
) -> Result<CommitOutcome, ShardError> {
    if let Some(job) = &config.lock_job {
        let output = crate::io::StoreUrl::parse(&config.output)?;
        let lock = crate::io::lock::OutputLock::new(&output, &config.allowed_roots)?;
        runtime.block_on(lock.check(job))?;
    }
    let size = part.len()?;
    let sidecar = id_hashes::sidecar_name(&shard.part);
    runtime.block_on(committer.commit(&sidecar, id_hashes::encode(ids, size)))?;
    advance(1);
    let outcome = runtime.block_on(committer.commit_file(&shard.part, part))?;
    advance(size);
    Ok(outcome)
}

/// A part that could not be written, as the shard's failure: a store's error as it is (a full
/// disk stops the job), the others naming the shard and its part.
pub fn part_error(shard: &ShardSpec, e: PartError) -> ShardError {
    match e {
        PartError::Store(e) => ShardError::Store(e),
        e => ShardError::Data(format!("shard {} ({}): {e}", shard.id, shard.part)),
    }
}

/// ENOSPC or EDQUOT.
pub fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrying_is_for_what_may_pass_the_next_time() {
        let io = StoreError::Io {
            op: "reading",
            path: "/x".into(),
            source: std::io::Error::other("disk"),
        };
        assert!(ShardError::Store(io).is_retryable());
        let changed = StoreError::Changed {
            url: "/x".into(),
            detail: "modified".into(),
        };
        assert!(!ShardError::Store(changed).is_retryable());
        assert!(!ShardError::Model(ModelError::NonFinite {
            path: "/m".into(),
            detail: "NaN".into(),
        })
        .is_retryable());
        assert!(ShardError::Model(ModelError::Torch("out of memory".into())).is_retryable());
        assert!(ShardError::Abandoned.is_retryable());
        assert!(!ShardError::Data("truncated".into()).is_retryable());
        let full = ShardError::Store(StoreError::Io {
            op: "writing",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert!(full.is_disk_full());
        let other = ShardError::Store(StoreError::Io {
            op: "writing",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        });
        assert!(!other.is_disk_full());
    }
}
