//! `sparq encode`'s settings: the job's own ([`EncodeConfig`], also a service job spec) and the
//! worker fleet that runs it here (devices, processes, threads).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::LongDocsMode;
use crate::types::{DeviceSpec, Dtype};

/// Defaults shared by the command line and job specs.
mod defaults {
    pub fn model() -> std::path::PathBuf {
        crate::model::default_model_dir()
    }
    pub fn id_column() -> String {
        "id".into()
    }
    pub fn text_column() -> String {
        "text".into()
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn lease_timeout() -> u64 {
        300
    }
}

/// What an encode job is: the settings that decide its output and how it is leased. The flags
/// of `sparq encode`, and the keys of a service job spec (`kind = "encode"`), are these.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeConfig {
    /// Input parquet or text: a file, a folder or prefix (every *.parquet under it, else every
    /// *.jsonl/*.tsv/*.csv, plain, .gz or .zst; skipping names that start with `_` or `.`), a
    /// glob ('data/*.parquet'), or s3://bucket/prefix. S3 is configured by AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP.
    #[arg(
        long,
        required_unless_present = "job_file",
        default_value = "",
        hide_default_value = true
    )]
    pub input: String,
    /// Output folder or s3://bucket/prefix: part-*.parquet files, then _manifest.json and _SUCCESS.
    #[arg(
        long,
        required_unless_present = "job_file",
        default_value = "",
        hide_default_value = true
    )]
    pub output: String,
    /// Model folder (sentence-transformers SparseEncoder or HF *ForMaskedLM), or a hub id
    /// `owner/name[@revision]` (Hugging Face cache, downloaded when absent unless HF_HUB_OFFLINE=1).
    #[arg(long, env = "SPARQ_MODEL", default_value_os_t = defaults::model())]
    #[serde(default = "defaults::model")]
    pub model: PathBuf,
    /// Column holding the row ids (any type; copied to the output as is).
    #[arg(long, default_value_t = defaults::id_column())]
    #[serde(default = "defaults::id_column")]
    pub id_column: String,
    /// Column holding the texts (string, or binary holding UTF-8).
    #[arg(long, default_value_t = defaults::text_column())]
    #[serde(default = "defaults::text_column")]
    pub text_column: String,
    /// Real tokens per forward pass (the packed batch; no padding counted). Default: 4096 on
    /// CPU, 65536 on CUDA.
    #[arg(long)]
    #[serde(default)]
    pub batch_tokens: Option<usize>,
    /// Keep only the K largest weights of each vector (default: the model's setting, else all).
    #[arg(long, value_name = "K")]
    #[serde(default)]
    pub max_active_dims: Option<usize>,
    /// How the output stores weights: f32 (exact), f16 (Arrow Float16), bf16 (float32 rounded
    /// to bfloat16, low bytes zero; every reader sees float32), or u8 (q = round(w / scale)
    /// capped at 255, weight ≈ q × scale, q = 0 dropped; the scale is in the field metadata and
    /// the manifest).
    #[arg(long, value_enum, default_value_t = crate::io::compact::WeightType::F32)]
    #[serde(default)]
    pub weight_type: crate::io::compact::WeightType,
    /// With `--weight-type u8`: the weight one step stands for [default: 0.02, so 255 steps reach
    /// 5.1]. Weights past 255 × S are stored as 255, counted in the manifest and warned about.
    #[arg(long, value_name = "S")]
    #[serde(default)]
    pub weight_scale: Option<f32>,
    /// Prune each finished vector before it is stored: top-k:N keeps the N largest weights;
    /// mass:A the largest until their sum reaches A × the total; ratio:R drops weights below
    /// R × the largest (OpenSearch's prune types). Unlike --max-active-dims, after the model.
    #[arg(long, value_name = "top-k:N|mass:A|ratio:R")]
    #[serde(default)]
    pub prune: Option<crate::io::compact::Prune>,
    /// Precision: f32 or bf16. Default: f32 when every device is a CPU, else bf16.
    #[arg(long)]
    #[serde(default)]
    pub dtype: Option<Dtype>,
    /// Input columns copied to the output beside the id and the vector.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub keep_columns: Vec<String>,
    /// Column whose text goes before each row's text (BEIR corpora: --title-column title): the
    /// text encoded is `title + " " + text`, or the text alone where the title is empty or
    /// null (as BEIR and `sparq eval --title` build documents).
    #[arg(long, value_name = "COLUMN")]
    #[serde(default)]
    pub title_column: Option<String>,
    /// Encode texts as queries (the model's query prompt) instead of documents.
    #[arg(long)]
    #[serde(default)]
    pub query: bool,
    /// Texts longer than the model's maximum length: `truncate` keeps the first window (as
    /// sentence-transformers does); `window` encodes every window of the maximum length and
    /// keeps the elementwise maximum, one vector per row.
    #[arg(long, value_enum, default_value_t = LongDocsMode::Truncate)]
    #[serde(default)]
    pub long_docs: LongDocsMode,
    /// With `--long-docs window`: tokens each window repeats from the one before (Hugging Face
    /// tokenizers' `stride`); below the window's text length.
    #[arg(long, default_value_t = 0, value_name = "TOKENS")]
    #[serde(default)]
    pub window_stride: usize,
    /// Replace an existing output made with other settings (deletes its parts first).
    #[arg(long)]
    #[serde(default)]
    pub overwrite: bool,
    /// Most rows per shard (the unit of leasing, retry and commit, and the most work an
    /// interrupt loses per worker). Default: enough shards for 4 per worker, 250–5,000 rows
    /// each on CPU, 1,000–20,000 on GPU; a resumed output keeps the size it was planned with.
    #[arg(long)]
    #[serde(default)]
    pub shard_rows: Option<u64>,
    /// Most bytes per part file (default 1 GiB; one S3 PUT carries at most 5 GiB). New outputs
    /// get shards small enough that a part stays under it however full its vectors are (every
    /// entry the top-k or the vocabulary allows); a part that would still pass it fails its
    /// shard instead of being committed.
    #[arg(long, value_name = "BYTES")]
    #[serde(default)]
    pub max_part_bytes: Option<u64>,
    /// Attempts per shard before it is reported failed.
    #[arg(long, default_value_t = defaults::max_attempts())]
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Seconds without progress after which a worker is considered stalled, killed, and its
    /// shard leased to another worker.
    #[arg(long, default_value_t = defaults::lease_timeout())]
    #[serde(default = "defaults::lease_timeout")]
    pub lease_timeout: u64,
    /// Format of text inputs whose name does not say it (by name: .jsonl/.ndjson/.json, .tsv,
    /// .csv, each optionally .gz or .zst).
    #[arg(long, value_enum, value_name = "FORMAT")]
    #[serde(default)]
    pub input_format: Option<crate::io::text_input::TextFormat>,
    /// Names of the columns of TSV/CSV inputs that have no header line, in order (MS MARCO's
    /// collection.tsv: --columns id,text). Without it, a file's first line is its header.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    #[serde(default)]
    pub columns: Vec<String>,
    /// A line of a text input that cannot be parsed: `fail` fails its shard naming the file,
    /// line and column; `skip` leaves it out and counts it (the manifest's summary says how
    /// many and where).
    #[arg(long, value_enum, default_value_t = crate::io::text_input::BadLines::Fail)]
    #[serde(default)]
    pub bad_lines: crate::io::text_input::BadLines,
    /// Encode texts, or score pairs (set by `sparq score`, not a flag or job-file key).
    #[arg(skip)]
    #[serde(skip)]
    pub task: crate::encode::settings::RowTask,
}

/// The worker processes `sparq encode` starts on this machine.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Fleet {
    /// One worker process per listed device, e.g. cpu,cpu or cuda:0,cuda:1.
    #[arg(long, value_delimiter = ',', conflicts_with = "workers")]
    pub devices: Vec<DeviceSpec>,
    /// Number of CPU worker processes (when --devices is not given).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Intra-op threads per worker (default: cores / workers).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Options of `sparq encode`: the job, and the workers that run it here.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    /// A job file (TOML, the job-spec format: `input = ...`, `output = ...`, keys as the flags
    /// with `_` for `-`; `kind = "encode"` allowed). Relative paths in it are relative to the
    /// file's folder; flags given on the command line win.
    #[arg(long = "config", value_name = "FILE.toml", id = "job_file")]
    pub job_file: Option<PathBuf>,
    /// Print the plan (input files, shards, rows, what is committed, a token estimate) and
    /// write nothing.
    #[arg(long, alias = "dry-run")]
    pub plan: bool,
    /// Print the number of shards the job is cut into (alone, on stdout) and write nothing: to
    /// size a scheduler's array. Give the same --task-count as the tasks will (the default
    /// shard size depends on it), or --shard-rows.
    #[arg(long, conflicts_with_all = ["plan", "finalize", "task_index"])]
    pub plan_only: bool,
    /// Encode only this task's share of the shards (shard s belongs to task s % N), without a
    /// coordinator: for Slurm arrays and Kubernetes Indexed Jobs. `auto` reads
    /// SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX or RANK. Tasks do not write the manifest: run
    /// `--finalize` when all have ended. A task can be rerun, or run twice at once.
    #[arg(long, env = "SPARQ_TASK_INDEX", value_name = "I|auto")]
    pub task_index: Option<crate::job::tasks::TaskIndex>,
    /// The number of tasks sharing the job (default with `--task-index auto`: the Slurm
    /// array's task count, or WORLD_SIZE).
    #[arg(long, env = "SPARQ_TASK_COUNT", value_name = "N")]
    pub task_count: Option<usize>,
    /// After the tasks: write _manifest.json and _SUCCESS if every part exists; otherwise list
    /// the missing parts (with their task index, given --task-count) and exit 3. Encodes nothing.
    #[arg(long, conflicts_with_all = ["plan", "task_index", "overwrite"])]
    pub finalize: bool,
    /// The job.
    #[command(flatten)]
    pub config: EncodeConfig,
    /// The workers.
    #[command(flatten)]
    pub fleet: Fleet,
}

/// What can be wrong with a job file.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    /// It cannot be read.
    #[error("cannot read the job file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is not a valid encode job.
    #[error("{}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        detail: String,
    },
}

impl EncodeArgs {
    /// The job: the `--config` file's settings (relative paths resolved against its folder),
    /// overridden by the flags given on the command line (`given(id)`), or the flags alone.
    pub fn job(&self, given: impl Fn(&str) -> bool) -> Result<EncodeConfig, JobFileError> {
        let Some(path) = &self.job_file else {
            return Ok(self.config.clone());
        };
        let mut file = read_job_file(path)?;
        let flags = &self.config;
        macro_rules! flags_win {
            ($($field:ident),*) => {$(
                if given(stringify!($field)) {
                    file.$field = flags.$field.clone();
                }
            )*};
        }
        flags_win!(
            input,
            output,
            model,
            id_column,
            text_column,
            batch_tokens,
            max_active_dims,
            weight_type,
            weight_scale,
            prune,
            dtype,
            keep_columns,
            title_column,
            query,
            long_docs,
            window_stride,
            overwrite,
            shard_rows,
            max_part_bytes,
            max_attempts,
            lease_timeout,
            input_format,
            columns,
            bad_lines
        );
        Ok(file)
    }
}

/// Reads a job file: an encode job spec, its relative local paths made relative to its folder.
pub fn read_job_file(path: &std::path::Path) -> Result<EncodeConfig, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |detail: String| JobFileError::Invalid {
        path: path.to_path_buf(),
        detail,
    };
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    match table.remove("kind") {
        None => {}
        Some(toml::Value::String(k)) if k == "encode" => {}
        Some(other) => {
            return Err(invalid(format!(
            "kind = {other} is not an encode job (`sparq encode --config` runs kind = \"encode\")"
        )))
        }
    }
    let given_model = table.contains_key("model");
    let mut config: EncodeConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| {
            let key = e.path().to_string();
            invalid(format!("key `{key}`: {}", e.into_inner()))
        })?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let base = std::path::absolute(base).unwrap_or(base.to_path_buf());
    let base = crate::io::access::normalise(&base);
    let local = |p: &str| !p.contains("://") && !std::path::Path::new(p).is_absolute();
    if local(&config.input) {
        config.input = base.join(&config.input).to_string_lossy().into_owned();
    }
    if local(&config.output) {
        config.output = base.join(&config.output).to_string_lossy().into_owned();
    }
    // A hub id (`owner/name`) stays one unless the file's folder holds such a folder.
    let hub_id = crate::model::hub::stays_hub_id(&base, &config.model);
    if given_model && config.model.is_relative() && !hub_id {
        config.model = crate::io::access::normalise(&base.join(&config.model));
    }
    Ok(config)
}

impl Fleet {
    /// Devices of the job: `--devices`, else `--workers` CPU workers (default 1).
    pub fn devices(&self) -> Vec<DeviceSpec> {
        if self.devices.is_empty() {
            vec![DeviceSpec::Cpu; self.workers.unwrap_or(1).max(1)]
        } else {
            self.devices.clone()
        }
    }
}

/// The job's precision: `--dtype`, else f32 on an all-CPU job, else bf16.
pub fn job_dtype(config: &EncodeConfig, devices: &[DeviceSpec]) -> Dtype {
    config
        .dtype
        .unwrap_or(if devices.iter().all(|d| *d == DeviceSpec::Cpu) {
            Dtype::F32
        } else {
            Dtype::Bf16
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EncodeArgs,
    }

    #[test]
    fn flags_and_specs_mean_the_same_job() {
        let cli = Cli::parse_from(["x", "--input", "in", "--output", "out", "--query"]);
        let spec: EncodeConfig = serde_json::from_value(
            serde_json::json!({"input": "in", "output": "out", "query": true}),
        )
        .unwrap();
        let mut from_flags = cli.args.config;
        from_flags.model = spec.model.clone(); // SPARQ_MODEL may be set where tests run.
        assert_eq!(from_flags, spec);
        assert_eq!(cli.args.fleet.devices(), vec![DeviceSpec::Cpu]);
        assert_eq!(job_dtype(&spec, &[DeviceSpec::Cuda(0)]), Dtype::Bf16);
        let err = serde_json::from_value::<EncodeConfig>(
            serde_json::json!({"input": "in", "output": "out", "shard_rowz": 1}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("shard_rowz"), "{err}");
    }

    #[test]
    fn compact_output_flags_and_spec_keys_mean_the_same_job() {
        use crate::io::compact::{Prune, WeightType};
        let cli = Cli::parse_from([
            "x",
            "--input",
            "in",
            "--output",
            "out",
            "--weight-type",
            "u8",
            "--weight-scale",
            "0.05",
            "--prune",
            "mass:0.9",
        ]);
        let spec: EncodeConfig = toml::from_str(
            "input = \"in\"\noutput = \"out\"\nweight_type = \"u8\"\nweight_scale = 0.05\n\
             prune = \"mass:0.9\"\n",
        )
        .unwrap();
        let mut from_flags = cli.args.config;
        from_flags.model = spec.model.clone();
        assert_eq!(from_flags, spec);
        assert_eq!(spec.weight_type, WeightType::U8);
        assert_eq!(spec.prune, Some(Prune::Mass(0.9)));
        // A service spec travels as JSON: the settings survive the trip.
        let back: EncodeConfig =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        let err = toml::from_str::<EncodeConfig>(
            "input = \"in\"\noutput = \"out\"\nprune = \"mass:2\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("mass 2 is outside"), "{err}");
    }
}
