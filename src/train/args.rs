//! `sparq train` options: a TOML file (`--config`) whose keys are the flags' names with `_`
//! for `-`, and the flags themselves, which win.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::collective::CollectiveKind;
use super::loss::{LossKind, LossSpec};
use super::mappings::{learning_rate_mappings, ordered_table, router_mappings, KeyValue};
use super::TrainError;
use crate::model::{DeviceSpec, Dtype, InputKind};

/// Options of `sparq train` (every one may also be a key of the `--config` file).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainArgs {
    /// TOML file of options (keys as the flags, `learning_rate = 2e-5`); flags win.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Model folder to start from (sentence-transformers SparseEncoder or HF *ForMaskedLM).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training pairs: a parquet file or folder, local or s3://. Column 1 is the anchor
    /// (query), column 2 the positive, further columns hard negatives.
    #[arg(long)]
    pub train_data: Option<String>,
    /// Columns to use, in order (anchor, positive, negatives...); default: all, in file order.
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// Output folder or s3:// prefix: checkpoint-<step>/ folders, then the final model.
    #[arg(long)]
    pub output: Option<String>,
    /// Optimizer steps to run (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Passes over the data (default 1).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Pairs per step on each process (default 16).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (default 2e-5).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Fraction of steps of linear learning-rate warm-up (default 0.1).
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// AdamW weight decay, not applied to biases and LayerNorm weights (default 0).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Gradient clipping: largest total gradient norm (default 1.0).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// FLOPS regularizer weight of the queries (default 5e-5), or `none`: no query regularizer
    /// (sentence-transformers' query_regularizer_weight=None, e.g. for inference-free queries).
    #[arg(long)]
    pub lambda_query: Option<RegularizerWeight>,
    /// FLOPS regularizer weight of the documents (default 3e-5).
    #[arg(long)]
    pub lambda_document: Option<f64>,
    /// The loss inside SpladeLoss: `mnrl` (SparseMultipleNegativesRankingLoss, the default;
    /// in-batch and hard negatives, across all processes), `margin-mse` (SparseMarginMSELoss:
    /// labels are the gold margins, one per negative column, or the teacher's scores
    /// [positive, negative_1, ...]) or `distill-kl` (SparseDistillKLDivLoss: labels are the
    /// teacher's scores [positive, negative_1, ...]). sentence-transformers' class names work too.
    #[arg(long)]
    pub loss: Option<LossKind>,
    /// The label column of --train-data (a float or list<float> per row; not a text column).
    /// Default: the first of label, labels, score, scores present, as sentence-transformers.
    #[arg(long)]
    pub label_column: Option<String>,
    /// distill-kl: softmax temperature of the student's and the teacher's scores (default 2.0);
    /// the loss is multiplied by the student temperature squared.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// distill-kl: the student's temperature (default: --temperature).
    #[arg(long)]
    pub student_temperature: Option<f64>,
    /// distill-kl: the teacher's temperature (default: --temperature).
    #[arg(long)]
    pub teacher_temperature: Option<f64>,
    /// The query regularizer counts only queries with more than N active dimensions.
    #[arg(long)]
    pub query_regularizer_threshold: Option<u64>,
    /// The document regularizer counts only documents with more than N active dimensions.
    #[arg(long)]
    pub document_regularizer_threshold: Option<u64>,
    /// Every column is regularized as a document, with --lambda-document (no query term), e.g.
    /// for symmetric pairs of documents.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub use_document_regularizer_only: Option<bool>,
    /// Gradient caching (sentence-transformers' CachedSpladeLoss): embed the batch M rows at a
    /// time without gradients, take the loss on all of it, then re-run each M rows with the same
    /// dropout and back-propagate; a large --batch-size then needs the memory of M rows.
    #[arg(long)]
    pub cached_mini_batch_size: Option<usize>,
    /// Seed of the data order and dropout (default 12).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a checkpoint every K steps (0: only the final model; default 500).
    #[arg(long)]
    pub save_steps: Option<u64>,
    /// Keep at most N checkpoints (older ones are deleted; default: all).
    #[arg(long)]
    pub save_total_limit: Option<usize>,
    /// Log a JSON line every K steps (default 10).
    #[arg(long)]
    pub logging_steps: Option<u64>,
    /// BEIR folder to evaluate on (`sparq eval`'s metrics).
    #[arg(long)]
    pub eval_beir: Option<PathBuf>,
    /// Evaluate every K steps (default: at each checkpoint).
    #[arg(long)]
    pub eval_steps: Option<u64>,
    /// Write the best evaluated model (nDCG@10) to the output instead of the last one.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub load_best_at_end: Option<bool>,
    /// Device: cpu, cuda or cuda:N (with several processes, rank r uses cuda:r).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Precision of the forward pass: f32, or bf16 autocast (CUDA only; master weights stay f32).
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Route of a data column in a Router (inference-free) model, as sentence-transformers'
    /// `router_mapping`: COLUMN=query or COLUMN=document; repeatable (a `[router_mapping]`
    /// table in --config). Default: the first column through the query route (the static
    /// weights), every other column through the document route (the MLM).
    #[arg(long, value_name = "COLUMN=ROUTE")]
    #[serde(deserialize_with = "ordered_table")]
    pub router_mapping: Option<Vec<KeyValue>>,
    /// Peak learning rate of the parameters whose name matches REGEX, as sentence-transformers'
    /// `learning_rate_mapping`: e.g. 'SparseStaticEmbedding\..*=1e-3' for an inference-free
    /// model's static query weights; repeatable, the last matching pattern wins (a
    /// `[learning_rate_mapping]` table in --config). Patterns are searched in the trainer's
    /// names (`model.0.sub_modules.query.0.weight`, `model.0.model.bert.…`) and in names by
    /// module folder (`query_0_SparseStaticEmbedding.weight`); warm-up and decay scale every
    /// rate alike.
    #[arg(long, value_name = "REGEX=LR")]
    #[serde(deserialize_with = "ordered_table")]
    pub learning_rate_mapping: Option<Vec<KeyValue>>,
    /// Continue from the latest complete checkpoint in --output.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub resume: Option<bool>,
    /// Start N processes on this machine, one per device (torchrun-style variables otherwise).
    #[arg(long)]
    pub nproc_per_node: Option<usize>,
    /// Intra-op threads per process (default: cores / processes).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How the processes exchange gradients: `auto` (the default: NCCL when every process
    /// runs on CUDA, the TCP collective otherwise; a single process exchanges nothing), `tcp`
    /// (through host memory, rank 0 the hub; CPU or CUDA), or `nccl` (on the GPUs, in ~25 MB
    /// buckets; libnccl.so.2 from the torch wheel's nvidia-nccl, LD_LIBRARY_PATH,
    /// SPARQ_NCCL_LIBRARY or the system; with one process it still runs every exchange).
    #[arg(long)]
    pub collective: Option<CollectiveKind>,
    /// Seconds a collective waits for the other processes before failing (default 300); it
    /// also bounds how long the other ranks wait for rank 0's evaluations and checkpoints.
    #[arg(long)]
    pub collective_timeout: Option<u64>,
    /// Internal (set by `sparq worker`): also write a failure as a `{"train_error": ...}` line
    /// on stdout, so the worker can report why.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub events: bool,
    /// Internal (set by `sparq worker` for service jobs): the folders local paths must resolve
    /// under, as JSON.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub allowed_roots: Option<String>,
    /// Internal (set by `sparq worker`): the service lease's attempt. Checkpoints are written
    /// only while no newer attempt has claimed --output.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub attempt: Option<u32>,
}

/// Resolved training settings (defaults applied).
#[derive(Debug, Clone, serde::Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// Starting model folder.
    pub model: PathBuf,
    /// Training data URL.
    pub train_data: String,
    /// Columns, in order (empty: all).
    pub columns: Vec<String>,
    /// Output URL.
    pub output: String,
    /// Steps, if given.
    pub max_steps: Option<u64>,
    /// Epochs.
    pub epochs: u64,
    /// Per-process batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Warm-up fraction.
    pub warmup_ratio: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Gradient clipping norm.
    pub max_grad_norm: f64,
    /// λ of queries.
    pub lambda_query: f64,
    /// λ of documents.
    pub lambda_document: f64,
    /// Seed.
    pub seed: u64,
    /// Checkpoint interval (0: none).
    pub save_steps: u64,
    /// Checkpoints kept.
    pub save_total_limit: Option<usize>,
    /// Logging interval.
    pub logging_steps: u64,
    /// Evaluation data.
    pub eval_beir: Option<PathBuf>,
    /// Evaluation interval.
    pub eval_steps: Option<u64>,
    /// Keep the best model.
    pub load_best_at_end: bool,
    /// Device (of rank 0; rank r of a CUDA job uses cuda:r).
    pub device: DeviceSpec,
    /// Forward precision.
    pub dtype: Dtype,
    /// Route of data columns by name (Router models).
    #[serde(default)]
    pub router_mapping: Vec<(String, InputKind)>,
    /// Peak learning rates by parameter-name pattern, in order.
    #[serde(default)]
    pub learning_rate_mapping: Vec<(String, f64)>,
    /// SpladeLoss's settings.
    #[serde(default)]
    pub loss: LossSpec,
    /// The label column named by --label-column.
    #[serde(default)]
    pub label_column: Option<String>,
    /// Gradient caching: rows per forward pass.
    #[serde(default)]
    pub cached_mini_batch_size: Option<usize>,
}

/// A regularizer weight, or `none` (no regularizer term at all).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegularizerWeight(pub Option<f64>);

impl std::str::FromStr for RegularizerWeight {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self(None));
        }
        s.parse::<f64>()
            .map(|w| Self(Some(w)))
            .map_err(|_| format!("`{s}` is neither a number nor `none`"))
    }
}

impl<'de> Deserialize<'de> for RegularizerWeight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(w) => Ok(Self(Some(w))),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl TrainArgs {
    /// The folders local paths must resolve under (anywhere unless a service job says).
    pub fn roots(&self) -> Result<crate::io::AllowedRoots, TrainError> {
        match &self.allowed_roots {
            None => Ok(crate::io::AllowedRoots::anywhere()),
            Some(json) => serde_json::from_str(json)
                .map_err(|e| TrainError::Option(format!("--allowed-roots: {e}"))),
        }
    }

    /// Reads `--config` (if any) and lets the flags override it.
    pub fn merged(&self) -> Result<TrainArgs, TrainError> {
        let Some(path) = &self.config else {
            return Ok(self.clone());
        };
        let file = read_config(path)?;
        macro_rules! pick {
            ($($f:ident),*) => { TrainArgs { config: self.config.clone(), events: self.events, allowed_roots: self.allowed_roots.clone(), attempt: self.attempt, $($f: self.$f.clone().or(file.$f),)* } };
        }
        Ok(pick!(
            model,
            train_data,
            columns,
            output,
            max_steps,
            epochs,
            batch_size,
            learning_rate,
            warmup_ratio,
            weight_decay,
            max_grad_norm,
            lambda_query,
            lambda_document,
            loss,
            label_column,
            temperature,
            student_temperature,
            teacher_temperature,
            query_regularizer_threshold,
            document_regularizer_threshold,
            use_document_regularizer_only,
            cached_mini_batch_size,
            seed,
            save_steps,
            save_total_limit,
            logging_steps,
            eval_beir,
            eval_steps,
            load_best_at_end,
            device,
            dtype,
            router_mapping,
            learning_rate_mapping,
            resume,
            nproc_per_node,
            threads,
            collective,
            collective_timeout
        ))
    }

    /// The settings with defaults applied; checks them.
    pub fn resolve(&self) -> Result<TrainConfig, TrainError> {
        let bad = |m: String| Err(TrainError::Option(m));
        let Some(train_data) = self.train_data.clone() else {
            return bad("--train-data is required (a parquet file or folder of pairs)".into());
        };
        let Some(output) = self.output.clone() else {
            return bad("--output is required (a folder or s3:// prefix)".into());
        };
        let device = self.device.unwrap_or(DeviceSpec::Cpu);
        let dtype = self.dtype.unwrap_or(Dtype::F32);
        if dtype == Dtype::Bf16 && device == DeviceSpec::Cpu {
            return bad("--dtype bf16 trains with CUDA autocast: use it with --device cuda (CPU training runs in f32)".into());
        }
        let kind = self.loss.unwrap_or_default();
        if kind != LossKind::DistillKl
            && (self.temperature.is_some()
                || self.student_temperature.is_some()
                || self.teacher_temperature.is_some())
        {
            return bad(format!(
                "--temperature, --student-temperature and --teacher-temperature apply to \
                 --loss distill-kl, not {}",
                kind.name()
            ));
        }
        let temperature = self.temperature.unwrap_or(2.0);
        let document_only = self.use_document_regularizer_only.unwrap_or(false);
        let query_weight = self.lambda_query.map_or(Some(5e-5), |w| w.0);
        let loss = LossSpec {
            kind,
            student_temperature: self.student_temperature.unwrap_or(temperature),
            teacher_temperature: self.teacher_temperature.unwrap_or(temperature),
            query_regularizer: query_weight.is_some() && !document_only,
            query_threshold: self.query_regularizer_threshold,
            document_threshold: self.document_regularizer_threshold,
            document_regularizer_only: document_only,
        };
        let config = TrainConfig {
            // A hub id becomes its snapshot in the Hugging Face cache (downloaded when absent).
            model: crate::model::resolve_model(
                &self
                    .model
                    .clone()
                    .unwrap_or_else(crate::model::default_model_dir),
            )?,
            train_data,
            columns: self.columns.clone().unwrap_or_default(),
            output,
            max_steps: self.max_steps,
            epochs: self.epochs.unwrap_or(1),
            batch_size: self.batch_size.unwrap_or(16),
            learning_rate: self.learning_rate.unwrap_or(2e-5),
            warmup_ratio: self.warmup_ratio.unwrap_or(0.1),
            weight_decay: self.weight_decay.unwrap_or(0.0),
            max_grad_norm: self.max_grad_norm.unwrap_or(1.0),
            lambda_query: query_weight.unwrap_or(0.0),
            lambda_document: self.lambda_document.unwrap_or(3e-5),
            seed: self.seed.unwrap_or(12),
            save_steps: self.save_steps.unwrap_or(500),
            save_total_limit: self.save_total_limit,
            logging_steps: self.logging_steps.unwrap_or(10),
            eval_beir: self.eval_beir.clone(),
            eval_steps: self.eval_steps,
            load_best_at_end: self.load_best_at_end.unwrap_or(false),
            device,
            dtype,
            router_mapping: router_mappings(self.router_mapping.as_deref())?,
            learning_rate_mapping: learning_rate_mappings(self.learning_rate_mapping.as_deref())?,
            loss,
            label_column: self.label_column.clone(),
            cached_mini_batch_size: self.cached_mini_batch_size,
        };
        check_ranges(&config)?;
        if config.load_best_at_end && config.eval_beir.is_none() {
            return bad("--load-best-at-end needs --eval-beir".into());
        }
        Ok(config)
    }
}

/// A number's sensible range: `[low, high]`, each end open or closed.
struct Range {
    flag: &'static str,
    value: f64,
    low: (f64, bool),
    high: (f64, bool),
}

impl Range {
    fn check(&self) -> Result<(), TrainError> {
        let (low, low_in) = self.low;
        let (high, high_in) = self.high;
        let above = if low_in {
            self.value >= low
        } else {
            self.value > low
        };
        let below = if high_in {
            self.value <= high
        } else {
            self.value < high
        };
        if self.value.is_finite() && above && below {
            return Ok(());
        }
        Err(TrainError::Option(format!(
            "--{} {:?} is outside its range {}{low}, {high}{} (`{}` in config files and job specs)",
            self.flag,
            self.value,
            if low_in { "[" } else { "(" },
            if high_in { "]" } else { ")" },
            self.flag.replace('-', "_")
        )))
    }
}

/// Rejects non-finite numbers and values no run can mean (a learning rate of 1e308 turns every
/// parameter into NaN; a negative λ rewards density).
fn check_ranges(c: &TrainConfig) -> Result<(), TrainError> {
    let ranges = [
        ("learning-rate", c.learning_rate, (0.0, false), (1.0, true)),
        ("warmup-ratio", c.warmup_ratio, (0.0, true), (1.0, false)),
        ("weight-decay", c.weight_decay, (0.0, true), (1.0, true)),
        ("max-grad-norm", c.max_grad_norm, (0.0, false), (1e6, true)),
        ("lambda-query", c.lambda_query, (0.0, true), (10.0, true)),
        (
            "lambda-document",
            c.lambda_document,
            (0.0, true),
            (10.0, true),
        ),
        (
            "batch-size",
            c.batch_size as f64,
            (1.0, true),
            (65536.0, true),
        ),
        (
            "student-temperature",
            c.loss.student_temperature,
            (0.0, false),
            (1e6, true),
        ),
        (
            "teacher-temperature",
            c.loss.teacher_temperature,
            (0.0, false),
            (1e6, true),
        ),
        (
            "cached-mini-batch-size",
            c.cached_mini_batch_size.unwrap_or(1) as f64,
            (1.0, true),
            (65536.0, true),
        ),
    ];
    for (flag, value, low, high) in ranges {
        Range {
            flag,
            value,
            low,
            high,
        }
        .check()?;
    }
    if c.max_steps == Some(0) || c.epochs == 0 {
        return Err(TrainError::Option(
            "--max-steps and --epochs must be at least 1".into(),
        ));
    }
    if c.logging_steps == 0 {
        return Err(TrainError::Option(
            "--logging-steps must be at least 1".into(),
        ));
    }
    Ok(())
}

fn read_config(path: &Path) -> Result<TrainArgs, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        TrainError::Option(format!("cannot read the config {}: {e}", path.display()))
    })?;
    let mut args: TrainArgs = toml::from_str(&text).map_err(|e| {
        TrainError::Option(format!(
            "{}: {} (keys are the flags' names with `_`, e.g. learning_rate = 2e-5)",
            path.display(),
            e.to_string().trim()
        ))
    })?;
    // Relative paths in the file are relative to its folder, wherever sparq runs from.
    let base = path.parent().unwrap_or(Path::new("."));
    let base = std::path::absolute(base).unwrap_or(base.to_path_buf());
    let rebase = |p: &Path| crate::io::access::normalise(&base.join(p));
    // A hub id (`owner/name`) stays one unless the file's folder holds such a folder.
    let model_is_hub_id = args
        .model
        .as_deref()
        .is_some_and(|m| crate::model::hub::stays_hub_id(&base, m));
    for (p, hub) in [
        (&mut args.model, model_is_hub_id),
        (&mut args.eval_beir, false),
    ] {
        match p {
            Some(p) if p.is_relative() && !hub => *p = rebase(p),
            _ => {}
        }
    }
    for url in [&mut args.train_data, &mut args.output]
        .into_iter()
        .flatten()
    {
        if !url.contains("://") && Path::new(url.as_str()).is_relative() {
            *url = rebase(Path::new(url.as_str()))
                .to_string_lossy()
                .into_owned();
        }
    }
    Ok(args)
}
