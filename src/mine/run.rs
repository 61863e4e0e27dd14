//! Running `sparq mine`: read the pairs, get the corpus vectors and index them once, then mine
//! query shards, each committed create-once as one parquet part, so a killed run resumes where
//! it stopped and every query's rows appear exactly once.

use std::collections::HashSet;

use serde::Serialize;

use super::args::{Layout, MineArgs};
use super::data::{read_text_columns, MiningData};
use super::select::{PairScorer, Selection, Skipped};
use super::shard::{parquet_bytes, Shard};
use super::vectors::{read_stored, VectorSource};
use super::MineError;
use crate::eval::InvertedIndex;
use crate::io::{AllowedRoots, CommitOutcome, Committer, StoreUrl};
use crate::job::{is_part, part_name, SUCCESS};
use crate::model::{InputKind, SparseEncode};

/// The file recording the settings an output was mined with.
pub const MINE_FILE: &str = "_sparq_mine.json";

/// What a run did (printed as one JSON line).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MineSummary {
    /// Dataset rows read.
    pub rows: usize,
    /// Unique queries.
    pub queries: usize,
    /// Candidate documents (de-duplicated).
    pub corpus: usize,
    /// range_max as used.
    pub range_max: usize,
    /// Query shards of the whole run.
    pub shards: usize,
    /// Shards this process committed.
    pub committed: usize,
    /// Output rows in those shards.
    pub output_rows: usize,
    /// Queries of those shards that got fewer than num_negatives negatives.
    pub short_queries: usize,
    /// Candidates each filter dropped in those shards.
    pub skipped: Skipped,
    /// Whether every shard is committed (`_SUCCESS` written).
    pub complete: bool,
}

/// The settings an output records; a rerun resumes only with the same ones.
#[derive(Serialize)]
struct Identity<'a> {
    dataset: &'a str,
    corpus: Option<&'a str>,
    columns: (&'a str, &'a str),
    corpus_column: &'a str,
    selection: &'a Selection,
    layout: Layout,
    model: Option<String>,
    corpus_vectors: Option<&'a str>,
    query_vectors: Option<&'a str>,
    vectors_text_column: &'a str,
    cross_encoder: Option<String>,
    shard_queries: usize,
    rows: usize,
    queries: usize,
    corpus_size: usize,
}

/// A run whose inputs are read and checked and whose output is claimed: what is left is
/// this process's pending shards.
pub struct MineRun<'a> {
    args: &'a MineArgs,
    runtime: tokio::runtime::Runtime,
    data: MiningData,
    layout: Layout,
    selection: Selection,
    committer: Committer,
    pending: Vec<usize>,
    summary: MineSummary,
}

/// Reads the pairs (and corpus), checks the options and claims the output (recording the
/// settings, or checking them against those recorded).
pub fn prepare(args: &MineArgs) -> Result<MineRun<'_>, MineError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MineError::Options(format!("cannot start the I/O runtime: {e}")))?;
    let roots = AllowedRoots::anywhere();
    let dataset = read_text_columns(
        &runtime,
        &args.dataset,
        &[
            (args.anchor_column.as_deref(), "--anchor-column"),
            (args.positive_column.as_deref(), "--positive-column"),
        ],
        &roots,
    )?;
    let corpus = match &args.corpus {
        Some(url) => Some(
            read_text_columns(
                &runtime,
                url,
                &[(Some(&args.corpus_column), "--corpus-column")],
                &roots,
            )?
            .columns
            .remove(0),
        ),
        None => None,
    };
    let data = MiningData::new(dataset, corpus);
    let layout = args.layout();
    let selection = args.selection(data.max_positives)?;
    if args.cross_encoder.is_some() && !selection.rescores() {
        tracing::warn!(
            "--cross-encoder is not used: sentence-transformers rescores only when a margin, \
             --max-score or --min-score is set"
        );
    }
    let shards = data.queries.len().div_ceil(args.shard_queries);
    let summary = MineSummary {
        rows: data.rows,
        queries: data.queries.len(),
        corpus: data.corpus.len(),
        range_max: selection.range_max,
        shards,
        ..Default::default()
    };
    let identity = Identity {
        dataset: &args.dataset,
        corpus: args.corpus.as_deref(),
        columns: (&data.anchor_column, &data.positive_column),
        corpus_column: &args.corpus_column,
        selection: &selection,
        layout,
        model: args.model_dir().map(|d| d.display().to_string()),
        corpus_vectors: args.corpus_vectors.as_deref(),
        query_vectors: args.query_vectors.as_deref(),
        vectors_text_column: &args.vectors_text_column,
        cross_encoder: args
            .cross_encoder
            .as_ref()
            .filter(|_| selection.rescores())
            .map(|d| d.display().to_string()),
        shard_queries: args.shard_queries,
        rows: data.rows,
        queries: data.queries.len(),
        corpus_size: data.corpus.len(),
    };
    let committer = Committer::new(&StoreUrl::parse(&args.output)?)?;
    let committed = claim_output(&runtime, &committer, &identity, args.overwrite)?;
    let pending: Vec<usize> = (0..shards)
        .filter(|s| s % args.workers == args.worker_index)
        .filter(|&s| !committed.contains(&part_name(0, (s * args.shard_queries) as u64)))
        .collect();
    Ok(MineRun {
        args,
        runtime,
        data,
        layout,
        selection,
        committer,
        pending,
        summary,
    })
}

impl MineRun<'_> {
    /// Whether a model must be loaded: some shard is pending and some vectors are encoded.
    pub fn needs_model(&self) -> bool {
        !self.pending.is_empty() && self.args.model_dir().is_some()
    }

    /// The cross-encoder to load: given, some shard pending, and a margin or score bound set
    /// (ST rescores only then).
    pub fn cross_encoder(&self) -> Option<&std::path::Path> {
        self.args
            .cross_encoder
            .as_deref()
            .filter(|_| !self.pending.is_empty() && self.selection.rescores())
    }

    /// Mines the pending shards, committing each; writes `_SUCCESS` when every shard of the
    /// run is committed. `model`: the encoder when [`Self::needs_model`]; `cross_encoder`:
    /// rescores the candidates when given.
    pub fn run(
        self,
        model: Option<(&dyn SparseEncode, crate::model::EncodeOptions)>,
        mut cross_encoder: Option<&mut PairScorer<'_>>,
    ) -> Result<MineSummary, MineError> {
        let MineRun {
            args,
            runtime,
            data,
            layout,
            selection,
            committer,
            pending,
            mut summary,
        } = self;
        let shards = summary.shards;
        if !pending.is_empty() {
            let mut corpus_source = source(&runtime, model, &args.corpus_vectors, args)?;
            let texts: Vec<&str> = data.corpus.iter().map(String::as_str).collect();
            let docs = corpus_source.vectors(&texts, InputKind::Document, "corpus")?;
            drop(corpus_source);
            let mut query_source = source(&runtime, model, &args.query_vectors, args)?;
            let index = InvertedIndex::build_in_order(&docs);
            let shard = Shard {
                data: &data,
                docs: &docs,
                index: &index,
                selection: &selection,
                layout,
                threads: args.model.threads(),
            };
            for s in pending {
                let first = s * args.shard_queries;
                let end = (first + args.shard_queries).min(data.queries.len());
                let (rows, short) = shard.mine(
                    first..end,
                    &mut query_source,
                    cross_encoder.as_deref_mut(),
                    &mut summary.skipped,
                )?;
                let name = part_name(0, first as u64);
                let bytes = parquet_bytes(&rows).map_err(|detail| MineError::Write {
                    part: name.clone(),
                    detail,
                })?;
                if runtime.block_on(committer.commit(&name, bytes))? == CommitOutcome::Committed {
                    summary.committed += 1;
                    summary.output_rows += rows.len();
                    summary.short_queries += short;
                }
                tracing::info!("shard {} of {shards}: {} rows ({name})", s + 1, rows.len());
            }
        }
        let listed = runtime.block_on(committer.list())?;
        let done: HashSet<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        summary.complete = (0..shards)
            .all(|s| done.contains(part_name(0, (s * args.shard_queries) as u64).as_str()));
        if summary.complete {
            committer.remove_attempts();
            runtime.block_on(committer.put(SUCCESS, Vec::new()))?;
        }
        Ok(summary)
    }
}

/// Where one kind of vector comes from.
fn source<'a>(
    runtime: &tokio::runtime::Runtime,
    model: Option<(&'a dyn SparseEncode, crate::model::EncodeOptions)>,
    stored: &Option<String>,
    args: &MineArgs,
) -> Result<VectorSource<'a>, MineError> {
    Ok(match (stored, model) {
        (Some(url), _) => VectorSource::Stored {
            url: url.clone(),
            column: args.vectors_text_column.clone(),
            vectors: read_stored(
                runtime,
                url,
                &args.vectors_text_column,
                "--vectors-text-column",
            )?,
        },
        (None, Some((m, opts))) => VectorSource::Model(m, opts),
        (None, None) => {
            return Err(MineError::Options(
                "no model was loaded to encode with: give --model".into(),
            ))
        }
    })
}

/// Records the settings in a new output, or checks them against the recorded ones; returns
/// the parts already committed.
fn claim_output(
    runtime: &tokio::runtime::Runtime,
    committer: &Committer,
    identity: &Identity<'_>,
    overwrite: bool,
) -> Result<HashSet<String>, MineError> {
    let wanted = serde_json::to_value(identity).expect("serializable");
    runtime.block_on(committer.probe())?;
    let recorded = runtime.block_on(committer.get(MINE_FILE))?;
    let parts: Vec<String> = runtime
        .block_on(committer.list())?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| is_part(n))
        .collect();
    let differences: Vec<String> = match &recorded {
        Some(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(serde_json::Value::Object(old)) => wanted
                .as_object()
                .expect("an object")
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k}: {} now, {} recorded",
                        v,
                        old.get(k).unwrap_or(&serde_json::Value::Null)
                    )
                })
                .collect(),
            _ => vec![format!("{MINE_FILE} is not sparq's")],
        },
        None if parts.is_empty() => Vec::new(),
        None => vec![format!("parts without {MINE_FILE}")],
    };
    if !differences.is_empty() {
        if !overwrite {
            return Err(MineError::OutputMismatch {
                output: committer.url().raw.clone(),
                differences,
            });
        }
        let mut doomed = parts.clone();
        doomed.push(SUCCESS.into());
        runtime.block_on(committer.delete(&doomed))?;
    }
    if recorded.is_none() || !differences.is_empty() {
        let bytes = serde_json::to_vec_pretty(&wanted).expect("serializable");
        runtime.block_on(committer.put(MINE_FILE, bytes))?;
        return Ok(HashSet::new());
    }
    Ok(parts.into_iter().collect())
}
