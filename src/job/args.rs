//! `sparq encode`'s options, and what they decide for the job's workers.

use std::path::PathBuf;

use crate::types::{DeviceSpec, Dtype};

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
    #[arg(long, env = "SPARQ_MODEL", default_value_os_t = crate::model::default_model_dir())]
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
