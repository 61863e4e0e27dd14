//! `sparq score`'s options: an encode job whose rows are (query, text) pairs scored by a
//! cross-encoder, with the same plan, workers, commit and resume.

use std::path::PathBuf;

use super::args::{EncodeConfig, Fleet};
use crate::encode::settings::RowTask;
use crate::io::output::SCORE_COLUMN;

/// Options of `sparq score`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    /// Cross-encoder folder: as sentence-transformers' `CrossEncoder.save` writes it, or a
    /// Hugging Face `BertForSequenceClassification` / `(XLM)RobertaForSequenceClassification`
    /// folder with one label. Scores are
    /// `CrossEncoder.predict`'s: the logit through the folder's activation (Sigmoid unless
    /// config_sentence_transformers.json sets another).
    #[arg(long)]
    pub model: PathBuf,
    /// Input parquet or text, as `sparq encode` takes it: a file, a folder or prefix (every
    /// *.parquet under it, else every *.jsonl/*.tsv/*.csv, plain, .gz or .zst), a glob, or
    /// s3://bucket/prefix (S3 configured as for `sparq encode`).
    #[arg(long)]
    pub input: String,
    /// Output folder or s3://bucket/prefix: part-*.parquet files with the id column and `score`
    /// (float32), then _manifest.json and _SUCCESS.
    #[arg(long)]
    pub output: String,
    /// Column holding the row ids (any type; copied to the output as is).
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Column holding the queries (string); a null query fails its shard, naming the row.
    #[arg(long, default_value = "query")]
    pub query_column: String,
    /// Column holding the passages (string); a null text fails its shard, naming the row.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Pairs per forward pass (sentence-transformers' `batch_size`; scores do not depend on it).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Replace an existing output made with other settings (deletes its parts first).
    #[arg(long)]
    pub overwrite: bool,
    /// Most rows per shard (the unit of leasing, retry and commit). Default as `sparq encode`.
    #[arg(long)]
    pub shard_rows: Option<u64>,
    /// Attempts per shard before it is reported failed.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds without progress after which a worker is considered stalled and replaced.
    #[arg(long, default_value_t = 300)]
    pub lease_timeout: u64,
    /// Print the plan (input files, shards, rows, what is committed) and write nothing.
    #[arg(long)]
    pub plan: bool,
    /// Format of text inputs whose name does not say it (as `sparq encode`).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub input_format: Option<crate::io::text_input::TextFormat>,
    /// Names of the columns of TSV/CSV inputs without a header line, in order (e.g. --columns
    /// id,query,text). Without it, a file's first line is its header.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub columns: Vec<String>,
    /// A line of a text input that cannot be parsed: `fail` fails its shard naming the file,
    /// line and column; `skip` leaves it out and counts it in the manifest.
    #[arg(long, value_enum, default_value_t = crate::io::text_input::BadLines::Fail)]
    pub bad_lines: crate::io::text_input::BadLines,
    /// The workers.
    #[command(flatten)]
    pub fleet: Fleet,
}

impl ScoreArgs {
    /// The job: an encode job of the score task, in fp32.
    pub fn job(&self) -> Result<EncodeConfig, String> {
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        if self.id_column == SCORE_COLUMN {
            return Err(format!(
                "--id-column `{SCORE_COLUMN}`: the output writes its own `{SCORE_COLUMN}` \
                 column; rename the id column"
            ));
        }
        Ok(EncodeConfig {
            input: self.input.clone(),
            output: self.output.clone(),
            model: self.model.clone(),
            id_column: self.id_column.clone(),
            text_column: self.text_column.clone(),
            batch_tokens: None,
            max_active_dims: None,
            weight_type: Default::default(),
            weight_scale: None,
            prune: None,
            dtype: Some(crate::types::Dtype::F32),
            keep_columns: Vec::new(),
            title_column: None,
            query: false,
            long_docs: Default::default(),
            window_stride: 0,
            overwrite: self.overwrite,
            shard_rows: self.shard_rows,
            max_part_bytes: None,
            max_attempts: self.max_attempts,
            lease_timeout: self.lease_timeout,
            input_format: self.input_format,
            columns: self.columns.clone(),
            bad_lines: self.bad_lines,
            task: RowTask::Score {
                query_column: self.query_column.clone(),
                batch_size: self.batch_size,
            },
        })
    }
}
