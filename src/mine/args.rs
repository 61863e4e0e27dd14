//! The options of `sparq mine`: those of `mine_hard_negatives`, where the inputs come from,
//! and how the work is split into shards.

use std::path::PathBuf;

use super::output::OutputFormat;
use super::select::{Sampling, Selection};
use super::MineError;
use crate::model::ModelArgs;

/// Options of `sparq mine`.
///
/// Memory model: one process holds the dataset's texts, the de-duplicated corpus texts, the
/// corpus vectors and their inverted index (about twice the vectors' non-zeros × 8 bytes),
/// plus one shard of query vectors and candidates. Query shards are committed one by one;
/// several processes (`--workers N --worker-index I`, on one machine or many) split the
/// shards between them and each builds its own index (or reads --corpus-vectors).
#[derive(Debug, Clone, clap::Args)]
pub struct MineArgs {
    #[command(flatten)]
    /// Model, device and batching (queries through the query route, documents through the
    /// document route, scores by dot product).
    pub model: ModelArgs,
    /// The (anchor, positive) pairs: parquet, or JSON lines / TSV / CSV with a header (plain,
    /// .gz or .zst) as `sparq encode` reads them (local or s3://; a file, folder, prefix or glob).
    /// A query given in several rows has all those positives; duplicate rows count once.
    #[arg(long)]
    pub dataset: String,
    /// Column of the anchors/queries (default: the dataset's first column).
    #[arg(long)]
    pub anchor_column: Option<String>,
    /// Column of the positives (default: the dataset's second column).
    #[arg(long)]
    pub positive_column: Option<String>,
    /// Extra candidate documents: parquet (or text, as --dataset) with a text column. The candidates are this corpus
    /// followed by the dataset's positives, de-duplicated (first occurrence kept). Default:
    /// the positives alone.
    #[arg(long)]
    pub corpus: Option<String>,
    /// The text column of --corpus.
    #[arg(long, default_value = "text")]
    pub corpus_column: String,
    /// Where the mined dataset goes (local folder or s3:// prefix): parquet parts, one per
    /// query shard, in query order, then `_SUCCESS`.
    #[arg(long)]
    pub output: String,
    /// Skip the first N candidates (the most similar: likely unlabelled positives).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub range_min: usize,
    /// Consider candidates up to rank N (default: range_min + num_negatives + the most
    /// positives of a query, or range_min + 10 × num_negatives + that with a margin or
    /// --max-score set, as sentence-transformers derives it).
    #[arg(long, value_name = "N")]
    pub range_max: Option<usize>,
    /// Drop candidates scoring above this.
    #[arg(long)]
    pub max_score: Option<f32>,
    /// Drop candidates scoring below this.
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Drop candidates with `score + margin > least positive score` (0: never above the positive).
    #[arg(long)]
    pub absolute_margin: Option<f32>,
    /// Drop candidates with `score > p - |p| × margin`, p the least positive score
    /// (0.05: at least 5% below it; NV-Retriever's TopK-PercPos).
    #[arg(long)]
    pub relative_margin: Option<f32>,
    /// Negatives per query.
    #[arg(long, default_value_t = 3)]
    pub num_negatives: usize,
    /// `top`: the best remaining candidates; `random`: a uniform sample of the candidates in
    /// the range that passed the filters (sorted by score), drawn from --seed and the query's
    /// position, so reruns and any sharding give the same sample. sentence-transformers draws
    /// from Python's `random`, so its random samples differ from sparq's.
    #[arg(long, value_enum, default_value_t = Sampling::Top)]
    pub sampling_strategy: Sampling,
    /// Seed of --sampling-strategy random.
    #[arg(long, default_value_t = 12)]
    pub seed: u64,
    /// Keep the positives among the candidates (for reranking evaluation sets); forces the
    /// n-tuple format, as sentence-transformers does.
    #[arg(long)]
    pub include_positives: bool,
    /// triplet: (anchor, positive, negative), a row per negative; n-tuple: (anchor, positive,
    /// negative_1..negative_n), queries with fewer negatives dropped; labeled-pair: (anchor,
    /// positive, label) with positives 1 and negatives 0; labeled-list: (anchor, [docs],
    /// labels), queries without negatives dropped. n-tuple-scores is n-tuple --output-scores.
    #[arg(long, value_enum, default_value_t = OutputFormat::Triplet)]
    pub output_format: OutputFormat,
    /// Add the scores: `scores` [positive, negatives...] (triplet, n-tuple), `score` instead of
    /// `label` (labeled-pair), `scores` instead of `labels` (labeled-list).
    #[arg(long)]
    pub output_scores: bool,
    /// Read the corpus vectors from this `sparq encode` output instead of encoding them: its
    /// rows are matched to corpus texts (the positives included) by --vectors-text-column.
    #[arg(long)]
    pub corpus_vectors: Option<String>,
    /// Read the query vectors from this `sparq encode --query` output, matched by text.
    #[arg(long)]
    pub query_vectors: Option<String>,
    /// Column of --corpus-vectors / --query-vectors holding the encoded text (encode with
    /// `--keep-columns` to keep it).
    #[arg(long, default_value = "text")]
    pub vectors_text_column: String,
    /// Rescore the candidates with this cross-encoder (a sentence-transformers CrossEncoder /
    /// BertForSequenceClassification folder), as sentence-transformers does: only when a
    /// margin, --max-score or --min-score is set; then every retrieved candidate and every
    /// (query, positive) pair is scored, the filters, ranking and output scores use those
    /// scores, and --min-score deepens the default --range-max too. Runs on --device with
    /// --batch-size pairs at a time.
    #[arg(long, value_name = "DIR")]
    pub cross_encoder: Option<PathBuf>,
    /// Unique queries per output part (the unit of resuming).
    #[arg(long, default_value_t = 10_000)]
    pub shard_queries: usize,
    /// Processes sharing this run (each started with its own --worker-index).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// This process's index among --workers: it mines shards i with i % workers == index.
    #[arg(long, default_value_t = 0)]
    pub worker_index: usize,
    /// Delete the parts of an earlier run with other settings and mine again.
    #[arg(long)]
    pub overwrite: bool,
}

/// The output layout, resolved.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Layout {
    /// Triplet, n-tuple, labeled-pair or labeled-list (never n-tuple-scores).
    pub format: OutputFormat,
    /// Whether scores replace or join the labels.
    pub scores: bool,
}

impl MineArgs {
    /// The layout, with ST's rewrites: n-tuple-scores is n-tuple with scores, and
    /// --include-positives forces n-tuple.
    pub fn layout(&self) -> Layout {
        let mut format = self.output_format;
        let mut scores = self.output_scores;
        if format == OutputFormat::NTupleScores {
            format = OutputFormat::NTuple;
            scores = true;
        }
        if self.include_positives && format != OutputFormat::NTuple {
            tracing::warn!(
                "--include-positives: the output format becomes n-tuple, which keeps the ranking \
                 order (as sentence-transformers does)"
            );
            format = OutputFormat::NTuple;
        }
        Layout { format, scores }
    }

    /// The selection, with range_max derived as ST derives it and checked as ST checks it.
    pub fn selection(&self, max_positives: usize) -> Result<Selection, MineError> {
        let cross_encoder = self.cross_encoder.is_some();
        if self.num_negatives < 1 {
            return Err(MineError::Options(format!(
                "--num-negatives must be at least 1, got {}",
                self.num_negatives
            )));
        }
        let filtered = self.absolute_margin.is_some()
            || self.relative_margin.is_some()
            || self.max_score.is_some()
            || (cross_encoder && self.min_score.is_some());
        let range_max = self.range_max.unwrap_or_else(|| {
            // Some candidates may be filtered out: look 10× deeper then.
            let depth = if filtered { 10 } else { 1 };
            self.range_min + self.num_negatives * depth + max_positives
        });
        if self.range_min >= range_max {
            return Err(MineError::Options(format!(
                "--range-min must be smaller than --range-max, got {} and {range_max}",
                self.range_min
            )));
        }
        if self.num_negatives > range_max - self.range_min {
            return Err(MineError::Options(format!(
                "cannot mine {} negatives per query: only {} candidates remain after skipping the \
                 first --range-min {} of --range-max {range_max}; lower --num-negatives or \
                 --range-min, or raise --range-max",
                self.num_negatives,
                range_max - self.range_min,
                self.range_min
            )));
        }
        if self.shard_queries == 0 || self.workers == 0 || self.worker_index >= self.workers {
            return Err(MineError::Options(format!(
                "--shard-queries and --workers must be positive and --worker-index below \
                 --workers (got {}, {}, {})",
                self.shard_queries, self.workers, self.worker_index
            )));
        }
        Ok(Selection {
            range_min: self.range_min,
            range_max,
            max_score: self.max_score,
            min_score: self.min_score,
            absolute_margin: self.absolute_margin,
            relative_margin: self.relative_margin,
            num_negatives: self.num_negatives,
            sampling: self.sampling_strategy,
            include_positives: self.include_positives,
            seed: self.seed,
        })
    }

    /// The model folder, when one encodes something.
    pub fn model_dir(&self) -> Option<&PathBuf> {
        (self.corpus_vectors.is_none() || self.query_vectors.is_none()).then_some(&self.model.model)
    }
}
