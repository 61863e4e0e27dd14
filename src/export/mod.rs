//! From a `sparq encode` output to what retrieval engines index: `sparq export` (Anserini,
//! Qdrant, Elasticsearch/OpenSearch, plain JSON lines), `sparq inspect` and `sparq decode`.

pub mod format;
pub mod qdrant;
pub mod read;
pub mod recorded;
pub mod sink;

use std::path::PathBuf;

pub use format::{Format, VectorFilter};
pub use qdrant::QdrantIds;

/// What can stop an export, inspection or decode.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A bad option.
    #[error("{0}")]
    Option(String),
    /// The input is not a usable sparq output.
    #[error("{0}")]
    Input(String),
    /// Writing the output failed.
    #[error("{0}")]
    Output(String),
    /// A local file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Loading the tokenizer failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] crate::io::StoreError),
    /// `--output -`: the reader of stdout went away (`| head`); the command ends quietly.
    #[error("stdout was closed before the export was written")]
    StdoutClosed,
}

/// Options of `sparq export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// A `sparq encode` output: folder or s3:// prefix of part-*.parquet.
    #[arg(long)]
    pub input: String,
    /// Output: a file ending in .jsonl (or .jsonl.gz), else a folder/prefix of part-*.jsonl;
    /// `-` writes the lines to stdout (gzipped with --gzip) and the summary to stderr.
    #[arg(long)]
    pub output: String,
    /// anserini (JsonVectorCollection, integer impacts), qdrant (sparse vector upserts),
    /// elasticsearch (bulk lines for sparse_vector / rank_features), jsonl (ids and weights).
    /// qdrant point ids must be unsigned integers or UUIDs: integer ids and strings of digits
    /// are written as numbers, UUID strings as canonical UUIDs, and any other id refuses the
    /// export before anything is written (see --qdrant-ids).
    #[arg(long, value_enum)]
    pub format: Format,
    /// Integer weights round(w × F), zeros dropped (default 100 for anserini, none otherwise).
    #[arg(long, value_name = "F")]
    pub quantize: Option<f64>,
    /// Keep the K largest weights of each vector.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Drop weights below W.
    #[arg(long, value_name = "W")]
    pub min_weight: Option<f32>,
    /// Prune each vector (after --top-k and --min-weight): top-k:N, mass:A or ratio:R, as
    /// `sparq encode --prune` does.
    #[arg(long, value_name = "top-k:N|mass:A|ratio:R")]
    pub prune: Option<crate::io::compact::Prune>,
    /// gzip the output files (.jsonl.gz).
    #[arg(long)]
    pub gzip: bool,
    /// jsonl: also write each dimension's token string.
    #[arg(long)]
    pub tokens: bool,
    /// Model whose tokenizer names the dimensions (anserini, elasticsearch, --tokens) [default:
    /// the model recorded in the output, else SPARQ_MODEL, else the bundled model]. Another
    /// model than the one that encoded the output is refused.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The output's id column [default: the one recorded in the output, else `id`].
    #[arg(long)]
    pub id_column: Option<String>,
    /// qdrant: how point ids are made from the output's ids.
    #[arg(long, value_enum, default_value = "keep")]
    pub qdrant_ids: QdrantIds,
    /// elasticsearch: the document field holding the vector.
    #[arg(long, default_value = "splade")]
    pub field: String,
    /// elasticsearch: the index named in each bulk action (default: none, the bulk URL's).
    #[arg(long)]
    pub index: Option<String>,
    /// Export an output without `_SUCCESS` (failed shards, or a run not finished) after a warning.
    #[arg(long)]
    pub allow_incomplete: bool,
}

impl ExportArgs {
    /// Whether the lines go to stdout (`--output -`).
    pub fn to_stdout(&self) -> bool {
        self.output == "-"
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportSummary {
    /// Rows exported.
    pub rows: u64,
    /// Rows without a vector (texts that failed to encode), not exported.
    pub skipped_null: u64,
    /// Non-zero weights written.
    pub weights: u64,
    /// Files written (`-` for stdout).
    pub files: Vec<String>,
}

pub use read::{decode, inspect, DecodeArgs, InspectArgs, InspectReport};
pub use sink::run_export;
