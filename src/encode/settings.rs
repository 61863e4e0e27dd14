//! What a shard is encoded with: the job's settings, shared by every worker and stored with the
//! plan, and each worker's own (device, threads).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::io::AllowedRoots;
use crate::model::{LongDocs, LongDocsMode};
use crate::types::{DeviceSpec, Dtype};

/// What a job computes for each row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowTask {
    /// The sparse vector of the text column (`sparq encode`).
    #[default]
    Encode,
    /// The cross-encoder score of the pair (query column, text column) (`sparq score`).
    Score {
        /// Column holding the queries.
        query_column: String,
        /// Pairs per forward pass.
        batch_size: usize,
    },
}

/// The settings every worker of a job encodes with (sent once; stored with the plan).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeSettings {
    /// Absolute model folder.
    pub model: PathBuf,
    /// Precision of the whole job.
    pub dtype: Dtype,
    /// Real tokens per forward pass (`None`: the device's default).
    pub batch_tokens: Option<usize>,
    /// Top-k per vector.
    pub max_active_dims: Option<usize>,
    /// Id column name.
    pub id_column: String,
    /// Text column name.
    pub text_column: String,
    /// Pass-through columns.
    pub keep_columns: Vec<String>,
    /// Column whose text goes before the text, joined by a space (`--title-column`).
    #[serde(default)]
    pub title_column: Option<String>,
    /// Encode as queries.
    pub query: bool,
    /// Texts past the model's maximum length: truncated or windowed.
    #[serde(default)]
    pub long_docs: LongDocsMode,
    /// Tokens consecutive windows share.
    #[serde(default)]
    pub window_stride: usize,
    /// Output URL.
    pub output: String,
    /// Folders local inputs, the model and the output must resolve under (service jobs).
    #[serde(default)]
    pub allowed_roots: AllowedRoots,
    /// Encode texts or score pairs.
    #[serde(default)]
    pub task: RowTask,
    /// Leave each committed shard's report under `_reports/` (array tasks, whose manifest is
    /// written later by `--finalize`).
    #[serde(default)]
    pub shard_reports: bool,
    /// The job the output's lock must name at every commit (`None`: unchecked).
    #[serde(default)]
    pub lock_job: Option<String>,
    /// How vectors are stored: pruned, then converted to the output's weight type.
    #[serde(default)]
    pub vectors: crate::io::compact::VectorFormat,
    /// A part may grow to this many bytes (`None`: the default, 1 GiB); a larger one fails
    /// its shard.
    #[serde(default)]
    pub max_part_bytes: Option<u64>,
}

impl EncodeSettings {
    /// How long texts are encoded.
    pub fn long_docs(&self) -> LongDocs {
        LongDocs::new(self.long_docs, self.window_stride)
    }

    /// The most bytes a part may have.
    pub fn max_part_bytes(&self) -> u64 {
        self.max_part_bytes
            .unwrap_or(crate::io::output::DEFAULT_MAX_PART_BYTES)
    }
}

/// One worker's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSettings {
    /// Its device.
    pub device: DeviceSpec,
    /// Intra-op threads.
    pub threads: usize,
}
