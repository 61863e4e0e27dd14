//! `sparq eval`: encode (or load) vectors, retrieve, score, print.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::dataset::IrDataset;
use super::index::InvertedIndex;
use super::metrics::{ranking_metrics, IrMetrics, SparsityCounts, MAX_K};
use super::EvalError;
use crate::encode::SparseVector;
use crate::io::input::list_inputs;
use crate::io::output::read_sparse;
use crate::io::StoreUrl;
use crate::model::{EncodeOptions, InputKind, ModelArgs, SparseEncode};

/// Options of `sparq eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    /// Model, device and batching.
    pub model: ModelArgs,
    /// Dataset folder(s): BEIR (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or NanoBEIR
    /// parquet (corpus/, queries/, qrels/). Repeat to evaluate several and print their mean.
    /// Queries are encoded as queries, documents as documents; a document's text is its `text`
    /// field (as sentence-transformers' NanoBEIR evaluator builds it; see --title). Judgements
    /// with score > 0 are relevant; a judgement naming an unknown query is ignored and one
    /// naming an unknown document still counts as relevant (both as the reference does), with
    /// a warning.
    #[arg(long, required = true)]
    pub beir: Vec<PathBuf>,
    /// Judgements split: qrels/<split>.tsv, or parquet files whose names start with it.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Prepend each document's title (`title + " " + text`, the BEIR convention).
    #[arg(long)]
    pub title: bool,
    /// Write the rankings as a TREC run (`qid Q0 docid rank score sparq`); with several
    /// datasets, one file each (`-<dataset>` before the extension).
    #[arg(long)]
    pub run_file: Option<PathBuf>,
    /// Evaluate the vectors of an existing `sparq encode` output (local or s3://) instead of
    /// encoding the corpus; its id column must hold the corpus `_id`s.
    #[arg(long)]
    pub corpus_vectors: Option<String>,
    /// Column of --corpus-vectors holding the document ids.
    #[arg(long, default_value = "_id")]
    pub corpus_id_column: String,
}

/// Result of one dataset.
pub struct DatasetResult {
    /// Dataset name.
    pub name: String,
    /// Metrics with the reference's names.
    pub metrics: IrMetrics,
    /// Counts for the aggregate sparsity stats.
    pub counts: SparsityCounts,
    /// Number of evaluated queries and documents (weights of the aggregate).
    pub sizes: (usize, usize),
}

/// How datasets are evaluated, whatever model encodes them.
#[derive(Debug, Clone, Default)]
pub struct EvalSettings {
    /// Sequences per forward pass and the top-k per vector.
    pub encode: EncodeOptions,
    /// Retrieval threads.
    pub threads: usize,
    /// Write each dataset's rankings as a TREC run here (`-<dataset>` added for several).
    pub run_file: Option<PathBuf>,
    /// Take the corpus vectors from this `sparq encode` output instead of encoding them.
    pub corpus_vectors: Option<String>,
    /// The id column of `corpus_vectors`.
    pub corpus_id_column: String,
}

impl EvalArgs {
    /// The datasets named by `--beir`, loaded.
    pub fn datasets(&self) -> Result<Vec<IrDataset>, EvalError> {
        if self.corpus_vectors.is_some() && self.beir.len() > 1 {
            return Err(EvalError::Options(
                "--corpus-vectors holds one corpus: give one --beir".into(),
            ));
        }
        self.beir
            .iter()
            .map(|d| IrDataset::load(d, &self.split, self.title))
            .collect()
    }

    /// The evaluation settings these options give (`opts`: the model's encoding options).
    pub fn settings(&self, opts: EncodeOptions) -> EvalSettings {
        EvalSettings {
            encode: opts,
            threads: self.model.threads(),
            run_file: self.run_file.clone(),
            corpus_vectors: self.corpus_vectors.clone(),
            corpus_id_column: self.corpus_id_column.clone(),
        }
    }
}

/// Evaluates `model` on `datasets`: queries encoded as queries, documents as documents.
pub fn evaluate_model(
    model: &dyn SparseEncode,
    datasets: &[IrDataset],
    settings: &EvalSettings,
) -> Result<Vec<DatasetResult>, EvalError> {
    let opts = settings.encode;
    let mut results = Vec::new();
    for ds in datasets {
        if ds.unknown_queries > 0 || ds.unknown_documents > 0 {
            tracing::warn!(
                "{}: {} judgement(s) name unknown queries (ignored), {} name unknown documents \
                 (counted as relevant, never retrieved), as sentence-transformers does",
                ds.name,
                ds.unknown_queries,
                ds.unknown_documents
            );
        }
        let judged = ds.judged_queries();
        let query_texts: Vec<Option<&str>> = judged.iter().map(|(_, t)| Some(t.as_str())).collect();
        let queries = model.encode_texts(&query_texts, InputKind::Query, opts)?;
        let corpus_ids: Vec<String> = ds.corpus.iter().map(|(id, _)| id.clone()).collect();
        let docs = match &settings.corpus_vectors {
            Some(url) => load_corpus_vectors(url, &settings.corpus_id_column, &corpus_ids)?,
            None => {
                let texts: Vec<Option<&str>> =
                    ds.corpus.iter().map(|(_, t)| Some(t.as_str())).collect();
                model.encode_texts(&texts, InputKind::Document, opts)?
            }
        };
        let counts = SparsityCounts::new(model.dimension() as usize, &queries, &docs);
        let mut metrics = evaluate(
            &queries,
            &docs,
            &corpus_ids,
            &judged.iter().map(|(q, _)| q.as_str()).collect::<Vec<_>>(),
            ds,
            settings.threads,
            settings
                .run_file
                .as_ref()
                .map(|p| run_path(p, &ds.name, datasets.len())),
        )?;
        metrics.extend(counts.metrics());
        results.push(DatasetResult {
            name: ds.name.clone(),
            metrics,
            counts,
            sizes: (queries.len(), docs.len()),
        });
    }
    Ok(results)
}

/// Retrieval metrics of `queries` against `docs`; writes the TREC run to `run_file` if given.
pub fn evaluate(
    queries: &[SparseVector],
    docs: &[SparseVector],
    corpus_ids: &[String],
    query_ids: &[&str],
    ds: &IrDataset,
    threads: usize,
    run_file: Option<PathBuf>,
) -> Result<IrMetrics, EvalError> {
    let index = InvertedIndex::build(docs, corpus_ids);
    let hits = index.search(queries, MAX_K, threads);
    if let Some(path) = run_file {
        let io = |e| EvalError::Io {
            path: path.clone(),
            source: e,
        };
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        for (q, list) in query_ids.iter().zip(&hits) {
            for (rank, h) in list.iter().enumerate() {
                writeln!(
                    w,
                    "{q} Q0 {} {} {} sparq",
                    corpus_ids[h.doc as usize],
                    rank + 1,
                    h.score
                )
                .map_err(io)?;
            }
        }
        w.flush().map_err(io)?;
    }
    let rankings: Vec<Vec<&str>> = hits
        .iter()
        .map(|l| {
            l.iter()
                .map(|h| corpus_ids[h.doc as usize].as_str())
                .collect()
        })
        .collect();
    let relevant: Vec<_> = query_ids.iter().map(|q| &ds.relevant[*q]).collect();
    Ok(ranking_metrics(&rankings, &relevant))
}

/// The mean over datasets, as the NanoBEIR evaluator aggregates: ranking metrics averaged,
/// active dims and sparsity ratios weighted by query/document counts, FLOPS from pooled counts.
pub fn aggregate(results: &[DatasetResult]) -> IrMetrics {
    let mut out = IrMetrics::new();
    let n = results.len() as f64;
    for key in results[0].metrics.keys() {
        out.insert(
            key.clone(),
            results.iter().map(|r| r.metrics[key]).sum::<f64>() / n,
        );
    }
    let mut counts = results[0].counts.clone();
    for r in &results[1..] {
        counts.merge(&r.counts);
    }
    let (tq, td) = results
        .iter()
        .fold((0usize, 0usize), |(a, b), r| (a + r.sizes.0, b + r.sizes.1));
    for (key, total, pick) in [
        ("query_active_dims", tq, 0usize),
        ("query_sparsity_ratio", tq, 0),
        ("corpus_active_dims", td, 1),
        ("corpus_sparsity_ratio", td, 1),
    ] {
        let weighted: f64 = results
            .iter()
            .map(|r| r.metrics[key] * if pick == 0 { r.sizes.0 } else { r.sizes.1 } as f64)
            .sum();
        out.insert(key.into(), weighted / total as f64);
    }
    out.insert("avg_flops".into(), counts.metrics()["avg_flops"]);
    out
}

fn run_path(path: &std::path::Path, dataset: &str, datasets: usize) -> PathBuf {
    if datasets == 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map_or(String::new(), |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
    path.with_file_name(format!("{stem}-{dataset}{ext}"))
}

/// Reads the vectors of a `sparq encode` output, in the order of `corpus_ids`.
fn load_corpus_vectors(
    url: &str,
    id_column: &str,
    corpus_ids: &[String],
) -> Result<Vec<SparseVector>, EvalError> {
    let url = StoreUrl::parse(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EvalError::Options(e.to_string()))?;
    let (store, files) =
        runtime.block_on(list_inputs(&url, &crate::io::AllowedRoots::anywhere()))?;
    let mut by_id: HashMap<String, SparseVector> = HashMap::new();
    for file in &files {
        let bytes = runtime
            .block_on(async {
                object_store::ObjectStoreExt::get(store.as_ref(), &file.path)
                    .await?
                    .bytes()
                    .await
            })
            .map_err(|e| crate::io::StoreError::object("reading", &file.url, e))?;
        let bad = |detail: String| EvalError::Malformed {
            path: PathBuf::from(&file.url),
            line: 0,
            detail,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| bad(e.to_string()))?;
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            let ids = batch.column_by_name(id_column).ok_or_else(|| {
                bad(format!(
                    "no id column `{id_column}` (pick it with --corpus-id-column)"
                ))
            })?;
            let sparse = batch
                .column_by_name("sparse")
                .and_then(|c| read_sparse(c.as_ref()))
                .ok_or_else(|| {
                    bad("no `sparse` column of list<struct<id: uint32, weight: float32>>".into())
                })?;
            let f = ArrayFormatter::try_new(ids.as_ref(), &FormatOptions::default())
                .map_err(|e| bad(e.to_string()))?;
            for (i, v) in sparse.into_iter().enumerate() {
                by_id.insert(f.value(i).to_string(), v.unwrap_or_default());
            }
        }
    }
    let missing: Vec<&String> = corpus_ids
        .iter()
        .filter(|id| !by_id.contains_key(*id))
        .take(3)
        .collect();
    if !missing.is_empty() {
        return Err(EvalError::Options(format!(
            "--corpus-vectors {} has no vector for corpus id(s) {missing:?}: encode the same corpus (ids in `{id_column}`)",
            url.raw
        )));
    }
    Ok(corpus_ids
        .iter()
        .map(|id| by_id.remove(id).unwrap_or_default())
        .collect())
}
