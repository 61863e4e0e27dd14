//! `sparq encode` options, and the settings every worker of a job shares.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{DeviceSpec, Dtype};

/// Options of `sparq encode`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    /// Input parquet: a file, a folder or prefix (every *.parquet under it, skipping names that
    /// start with `_` or `.`), a glob ('data/*.parquet'), or s3://bucket/prefix. S3 is configured
    /// by AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP.
    #[arg(long)]
    pub input: String,
    /// Output folder or s3://bucket/prefix: part-*.parquet files, then _manifest.json and _SUCCESS.
    #[arg(long)]
    pub output: String,
    /// Model folder (sentence-transformers SparseEncoder or HF *ForMaskedLM).
    #[arg(long, env = "SPARQ_MODEL", default_value_os_t = crate::default_model_dir())]
    pub model: PathBuf,
    /// Column holding the row ids (any type; copied to the output as is).
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Column holding the texts (string, or binary holding UTF-8).
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// One worker process per listed device, e.g. cpu,cpu or cuda:0,cuda:1.
    #[arg(long, value_delimiter = ',', conflicts_with = "workers")]
    pub devices: Vec<DeviceSpec>,
    /// Number of CPU worker processes (when --devices is not given).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Real tokens per forward pass (the packed batch; no padding counted). Default: 4096 on
    /// CPU, 65536 on CUDA.
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Keep only the K largest weights of each vector (default: the model's setting, else all).
    #[arg(long, value_name = "K")]
    pub max_active_dims: Option<usize>,
    /// Precision: f32 or bf16. Default: f32 when every device is a CPU, else bf16.
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Input columns copied to the output beside the id and the vector.
    #[arg(long, value_delimiter = ',')]
    pub keep_columns: Vec<String>,
    /// Encode texts as queries (the model's query prompt) instead of documents.
    #[arg(long)]
    pub query: bool,
    /// Replace an existing output made with other settings (deletes its parts first).
    #[arg(long)]
    pub overwrite: bool,
    /// Most rows per shard (the unit of leasing, retry and commit).
    #[arg(long, default_value_t = 20_000)]
    pub shard_rows: u64,
    /// Intra-op threads per worker (default: cores / workers).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Attempts per shard before it is reported failed.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds without progress after which a worker is considered stalled, killed, and its
    /// shard leased to another worker.
    #[arg(long, default_value_t = 300)]
    pub lease_timeout: u64,
}

/// What a worker needs to encode any shard of the job (sent once, at start-up).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Absolute model folder.
    pub model: PathBuf,
    /// This worker's device.
    pub device: String,
    /// Precision of the whole job.
    pub dtype: Dtype,
    /// Intra-op threads.
    pub threads: usize,
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
    /// Encode as queries.
    pub query: bool,
    /// Output URL.
    pub output: String,
    /// Folders local inputs, the model and the output must resolve under (service jobs).
    #[serde(default)]
    pub allowed_roots: crate::io::AllowedRoots,
}

/// One input file as the output's identity records it: what the store can prove cheaply about
/// its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "InputRecordRepr")]
pub struct InputRecord {
    /// File URL.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// S3 ETag, or `<size>-<mtime ns>` of a local file (`None` in records of sparq ≤ 0.1.0).
    pub version: Option<String>,
    /// Rows, from the footer.
    pub rows: Option<u64>,
    /// SHA-256 of the parquet footer.
    pub footer: Option<String>,
}

/// Today's record, or the `[url, size]` pair older outputs hold.
#[derive(Deserialize)]
#[serde(untagged)]
enum InputRecordRepr {
    Full {
        url: String,
        size: u64,
        version: Option<String>,
        rows: Option<u64>,
        footer: Option<String>,
    },
    Pair(String, u64),
}

impl From<InputRecordRepr> for InputRecord {
    fn from(r: InputRecordRepr) -> Self {
        match r {
            InputRecordRepr::Full {
                url,
                size,
                version,
                rows,
                footer,
            } => Self {
                url,
                size,
                version,
                rows,
                footer,
            },
            InputRecordRepr::Pair(url, size) => Self {
                url,
                size,
                version: None,
                rows: None,
                footer: None,
            },
        }
    }
}

impl InputRecord {
    /// How `now` differs from this record (`None` when it is the same file as far as both
    /// records can tell: an older record without version or digest compares the size only).
    pub fn change(&self, now: &InputRecord) -> Option<String> {
        let differs =
            |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if a != b);
        if self.size != now.size {
            Some(format!("{} bytes, was {}", now.size, self.size))
        } else if matches!((self.rows, now.rows), (Some(a), Some(b)) if a != b) {
            Some(format!(
                "{} rows, was {}",
                now.rows.unwrap_or(0),
                self.rows.unwrap_or(0)
            ))
        } else if differs(&self.footer, &now.footer) {
            Some("its parquet footer (row groups, sizes, statistics) differs".into())
        } else if differs(&self.version, &now.version) {
            Some(if now.url.starts_with("s3://") {
                "its ETag differs".into()
            } else {
                "modified since: same size, new modification time".into()
            })
        } else {
            None
        }
    }
}

/// The settings that decide the output's content: an existing output is resumed only when
/// these are equal (`_sparq_job.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobIdentity {
    /// Model fingerprint (see [`crate::model::fingerprint`]).
    pub model: String,
    /// Input URL.
    pub input: String,
    /// Input files, in order: shard names depend on them.
    pub input_files: Vec<InputRecord>,
    /// Id column.
    pub id_column: String,
    /// Text column.
    pub text_column: String,
    /// Kept columns.
    pub keep_columns: Vec<String>,
    /// Top-k.
    pub max_active_dims: Option<usize>,
    /// Precision.
    pub dtype: Dtype,
    /// Queries or documents.
    pub query: bool,
    /// Shard size.
    pub shard_rows: u64,
}

impl JobIdentity {
    /// What differs from `other` (the recorded identity): each setting named, with the
    /// input files that changed.
    pub fn differences(&self, other: &JobIdentity) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |same: bool, name: &'static str| {
            if !same {
                out.push(name.to_string())
            }
        };
        check(self.model == other.model, "model");
        let urls = |id: &JobIdentity| {
            id.input_files
                .iter()
                .map(|f| f.url.clone())
                .collect::<Vec<_>>()
        };
        if self.input != other.input || urls(self) != urls(other) {
            out.push("input files".into());
        } else {
            for (now, was) in self.input_files.iter().zip(&other.input_files) {
                if let Some(change) = was.change(now) {
                    out.push(format!("content of input file {} ({change})", now.url));
                }
            }
        }
        let mut check = |same: bool, name: &'static str| {
            if !same {
                out.push(name.to_string())
            }
        };
        check(self.id_column == other.id_column, "--id-column");
        check(self.text_column == other.text_column, "--text-column");
        check(self.keep_columns == other.keep_columns, "--keep-columns");
        check(
            self.max_active_dims == other.max_active_dims,
            "--max-active-dims",
        );
        check(self.dtype == other.dtype, "--dtype");
        check(self.query == other.query, "--query");
        check(self.shard_rows == other.shard_rows, "--shard-rows");
        out
    }
}

/// Devices of the job: `--devices`, else `--workers` CPU workers (default 1).
pub fn job_devices(args: &EncodeArgs) -> Vec<DeviceSpec> {
    if args.devices.is_empty() {
        vec![DeviceSpec::Cpu; args.workers.unwrap_or(1).max(1)]
    } else {
        args.devices.clone()
    }
}

/// The job's precision: `--dtype`, else f32 on an all-CPU job, else bf16.
pub fn job_dtype(args: &EncodeArgs, devices: &[DeviceSpec]) -> Dtype {
    args.dtype
        .unwrap_or(if devices.iter().all(|d| *d == DeviceSpec::Cpu) {
            Dtype::F32
        } else {
            Dtype::Bf16
        })
}
