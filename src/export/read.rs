//! Reading a `sparq encode` output part by part (memory bounded by one part), the tokenizer
//! that names its dimensions, and `sparq inspect` / `sparq decode`.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int16Type, Int32Type, Int64Type, Int8Type};
use arrow::datatypes::{UInt16Type, UInt32Type, UInt64Type, UInt8Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use super::recorded::{tokenizer_for, tokenizer_if_any, Recorded};
use super::ExportError;
use crate::encode::SparseVector;
use crate::io::input::{list_inputs, InputFile};
use crate::io::output::{read_sparse, weight_format, SPARSE_COLUMN};
use crate::io::{AllowedRoots, Committer, StoreError, StoreUrl};
use crate::job::finish::Manifest;
use crate::job::{MANIFEST, SUCCESS};

/// The part files of an output (`part-*.parquet` at its top level, nothing else), in name
/// order. An output without `_SUCCESS` (interrupted, or with failed shards) is refused unless
/// `allow_incomplete`, which reads the parts there are after a warning.
pub fn output_parts(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    allow_incomplete: bool,
) -> Result<(Arc<dyn ObjectStore>, Vec<InputFile>), ExportError> {
    let parsed = StoreUrl::parse(url)?;
    let no_parts = || {
        ExportError::Input(format!(
            "{url}: no part-*.parquet files: pass the --output folder of a `sparq encode` run"
        ))
    };
    let (store, mut files) = match runtime.block_on(list_inputs(&parsed, &AllowedRoots::anywhere()))
    {
        Ok(found) => found,
        Err(StoreError::NoInput { .. }) => return Err(no_parts()),
        Err(e) => return Err(e.into()),
    };
    // Parts are named by sparq and sit at the top level; any other file is not read.
    let top = match &parsed.location {
        crate::io::url::Location::Local(dir) => dir.to_string_lossy().into_owned(),
        crate::io::url::Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
    };
    files.retain(|f| {
        let (dir, name) = f.url.rsplit_once('/').unwrap_or(("", &f.url));
        dir.trim_end_matches('/') == top.trim_end_matches('/')
            && name.starts_with("part-")
            && name.ends_with(".parquet")
    });
    if files.is_empty() {
        return Err(no_parts());
    }
    files.sort_by(|a, b| a.url.cmp(&b.url));
    let committer = Committer::new(&parsed)?;
    if runtime.block_on(committer.get(SUCCESS))?.is_none() {
        let manifest = runtime
            .block_on(committer.get(MANIFEST))?
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
        let why = match manifest.map(|m| m.failed_shards) {
            Some(failed) if !failed.is_empty() => {
                format!("{} shard(s) failed, so rows are missing", failed.len())
            }
            _ => "the run was interrupted or is still running".into(),
        };
        if !allow_incomplete {
            return Err(ExportError::Input(format!(
                "{url} is incomplete (no _SUCCESS: {why}): rerun the same `sparq encode` command \
                 to finish it, or pass --allow-incomplete to read the {} part(s) there are",
                files.len()
            )));
        }
        tracing::warn!(
            "{url} is incomplete ({why}): reading its {} part(s)",
            files.len()
        );
    }
    Ok((store, files))
}

/// Calls `row(id, vector)` for every row of `file` (`vector` is `None` for rows whose text
/// failed to encode); `id` is a JSON number for integer ids, else a string.
pub fn for_each_row(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    file: &InputFile,
    id_column: &str,
    mut row: impl FnMut(Value, Option<SparseVector>) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let bytes = runtime
        .block_on(async { store.get(&file.path).await?.bytes().await })
        .map_err(|e| ExportError::Input(format!("{}: {e}", file.url)))?;
    let bad = |detail: String| ExportError::Input(format!("{}: {detail}", file.url));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(1024).build())
        .map_err(|e| bad(format!("not a readable parquet file ({e})")))?;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let vectors = batch
            .column_by_name(SPARSE_COLUMN)
            .and_then(|c| read_sparse(c.as_ref()))
            .ok_or_else(|| {
                bad(format!(
                    "no `{SPARSE_COLUMN}` column of list<struct<id: uint32, weight>> (weight \
                     float32, float16, or uint8 with its `sparq.weight_scale`): not a sparq \
                     encode output"
                ))
            })?;
        let ids = batch.column_by_name(id_column).ok_or_else(|| {
            bad(format!(
                "no id column `{id_column}` (columns: {}); pick it with --id-column",
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let ids = id_values(ids).map_err(bad)?;
        for (id, v) in ids.into_iter().zip(vectors) {
            row(id, v)?;
        }
    }
    Ok(())
}

/// The ids of a column as [`for_each_row`] passes them: integers as numbers, else text.
pub(crate) fn id_values(ids: &ArrayRef) -> Result<Vec<Value>, String> {
    macro_rules! ints {
        ($t:ty) => {
            ids.as_primitive::<$t>()
                .iter()
                .map(|v| v.map_or(Value::Null, |v| Value::from(v)))
                .collect()
        };
    }
    Ok(match ids.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        _ => {
            let f = ArrayFormatter::try_new(ids.as_ref(), &FormatOptions::default())
                .map_err(|e| e.to_string())?;
            (0..ids.len())
                .map(|i| {
                    if ids.is_null(i) {
                        Value::Null
                    } else {
                        Value::String(f.value(i).to_string())
                    }
                })
                .collect()
        }
    })
}

/// Options of `sparq inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// A `sparq encode` output (folder or s3:// prefix).
    pub url: String,
    /// Model naming the dimensions in the top-token list [default: the model recorded in the
    /// output, else SPARQ_MODEL, else the bundled model]. Another model than the one that
    /// encoded the output is refused.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Tokens listed by document frequency.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// The output's id column [default: the one recorded in the output, else `id`].
    #[arg(long)]
    pub id_column: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read an output without `_SUCCESS` (failed shards, or a run not finished) after a warning.
    #[arg(long)]
    pub allow_incomplete: bool,
}

/// What `sparq inspect` finds in an output. Fields in alphabetical order, as `--json` has
/// always written them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InspectReport {
    /// Active dimensions per vector.
    pub active_dims: ActiveDims,
    /// Bytes of the part files.
    pub bytes: u64,
    /// Bytes per row.
    pub bytes_per_row: f64,
    /// Rows with an empty vector (null or empty texts).
    pub empty_vectors: u64,
    /// Part files.
    pub files: usize,
    /// Rows with a null vector (texts that failed).
    pub null_vectors: u64,
    /// Rows.
    pub rows: u64,
    /// The parts' schema, `name: type, ...`.
    pub schema: String,
    /// u8 only: weight ≈ q × scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_scale: Option<f32>,
    /// How weights are stored: f32, f16, bf16 or u8.
    #[serde(default)]
    pub weight_type: crate::io::compact::WeightType,
    /// The most frequent dimensions.
    pub top_tokens_by_document_frequency: Vec<TopToken>,
    /// The output inspected.
    pub url: String,
}

/// Active dimensions per vector (exact percentiles).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActiveDims {
    /// Largest.
    pub max: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: usize,
    /// 99th percentile.
    pub p99: usize,
}

/// A dimension and how many vectors use it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TopToken {
    /// Vectors holding it.
    pub documents: u64,
    /// Their fraction of the vectors.
    pub fraction: f64,
    /// Vocabulary id.
    pub id: usize,
    /// Its token string (`None` without the model's tokenizer).
    pub token: Option<String>,
}

/// Rows, files, bytes, active dimensions and the most frequent tokens of an output.
pub fn inspect(args: &InspectArgs) -> Result<InspectReport, ExportError> {
    let runtime = runtime()?;
    let (store, files) = output_parts(&runtime, &args.url, args.allow_incomplete)?;
    let recorded = Recorded::read(&runtime, &args.url)?;
    let id_column = recorded.id_column(args.id_column.as_deref());
    let tokenizer = tokenizer_if_any(&args.url, &recorded, args.model.as_deref())?;
    let (mut rows, mut nulls, mut empty, mut weights) = (0u64, 0u64, 0u64, 0u64);
    // Exact percentiles in constant memory: a histogram of active dims, document frequency by id.
    let mut dims_hist: Vec<u64> = Vec::new();
    let mut df: Vec<u64> = Vec::new();
    let mut schema = String::new();
    let mut weights_as = None;
    for file in &files {
        if schema.is_empty() {
            let bytes = runtime
                .block_on(async { store.get(&file.path).await?.bytes().await })
                .map_err(|e| ExportError::Input(format!("{}: {e}", file.url)))?;
            if let Ok(b) = ParquetRecordBatchReaderBuilder::try_new(bytes) {
                weights_as = b
                    .schema()
                    .field_with_name(SPARSE_COLUMN)
                    .ok()
                    .and_then(|f| weight_format(f.data_type()));
                schema = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| format!("{}: {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
                    .join(", ");
            }
        }
        for_each_row(&runtime, &store, file, &id_column, |_, v| {
            rows += 1;
            let Some(v) = v else {
                nulls += 1;
                return Ok(());
            };
            let n = v.indices.len();
            if n == 0 {
                empty += 1;
            }
            weights += n as u64;
            if dims_hist.len() <= n {
                dims_hist.resize(n + 1, 0);
            }
            dims_hist[n] += 1;
            for &i in &v.indices {
                let i = i as usize;
                if df.len() <= i {
                    df.resize(i + 1, 0);
                }
                df[i] += 1;
            }
            Ok(())
        })?;
    }
    let counted: u64 = dims_hist.iter().sum();
    let percentile = |p: f64| -> usize {
        let target = ((counted as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (n, &c) in dims_hist.iter().enumerate() {
            seen += c;
            if seen >= target {
                return n;
            }
        }
        0
    };
    let mut top: Vec<(usize, u64)> = df.iter().copied().enumerate().filter(|p| p.1 > 0).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(args.top);
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    Ok(InspectReport {
        url: args.url.clone(),
        files: files.len(),
        rows,
        null_vectors: nulls,
        empty_vectors: empty,
        schema,
        weight_type: weights_as.map(|w| w.0).unwrap_or_default(),
        weight_scale: weights_as.and_then(|w| w.1),
        bytes,
        bytes_per_row: if rows > 0 {
            bytes as f64 / rows as f64
        } else {
            0.0
        },
        active_dims: ActiveDims {
            mean: if counted > 0 {
                weights as f64 / counted as f64
            } else {
                0.0
            },
            p50: percentile(0.5),
            p99: percentile(0.99),
            max: dims_hist.len().saturating_sub(1),
        },
        top_tokens_by_document_frequency: top
            .iter()
            .map(|&(i, n)| TopToken {
                id: i,
                token: tokenizer.as_ref().map(|t| t.token(i as u32)),
                documents: n,
                fraction: if counted > 0 {
                    n as f64 / counted as f64
                } else {
                    0.0
                },
            })
            .collect(),
    })
}

/// Options of `sparq decode`.
#[derive(Debug, Clone, clap::Args)]
pub struct DecodeArgs {
    /// A `sparq encode` output (folder or s3:// prefix).
    pub url: String,
    /// Row ids to show (repeatable or comma-separated).
    #[arg(long = "id", required = true, value_delimiter = ',')]
    pub ids: Vec<String>,
    /// Tokens shown per row, largest weight first.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Model naming the dimensions [default: the model recorded in the output, else
    /// SPARQ_MODEL, else the bundled model]. Another model than the one that encoded the output
    /// is refused.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The output's id column [default: the one recorded in the output, else `id`].
    #[arg(long)]
    pub id_column: Option<String>,
    /// Read an output without `_SUCCESS` (failed shards, or a run not finished) after a warning.
    #[arg(long)]
    pub allow_incomplete: bool,
}

/// The top tokens of the rows with the given ids: one JSON value per id found, in the order
/// asked; ids not found are reported in the error.
pub fn decode(args: &DecodeArgs) -> Result<Vec<Value>, ExportError> {
    let runtime = runtime()?;
    let (store, files) = output_parts(&runtime, &args.url, args.allow_incomplete)?;
    let recorded = Recorded::read(&runtime, &args.url)?;
    let id_column = recorded.id_column(args.id_column.as_deref());
    let tokenizer = tokenizer_for(&args.url, &recorded, args.model.as_deref())?;
    let mut found: Vec<Option<Value>> = vec![None; args.ids.len()];
    for file in &files {
        for_each_row(&runtime, &store, file, &id_column, |id, v| {
            let key = match &id {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let Some(slot) = args.ids.iter().position(|x| *x == key) {
                let mut pairs: Vec<(u32, f32)> = v
                    .as_ref()
                    .map(|v| {
                        v.indices
                            .iter()
                            .copied()
                            .zip(v.values.iter().copied())
                            .collect()
                    })
                    .unwrap_or_default();
                pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                pairs.truncate(args.top);
                found[slot] = Some(serde_json::json!({
                    "id": id,
                    "active_dims": v.as_ref().map(|v| v.indices.len()),
                    "tokens": pairs.iter().map(|&(i, w)| serde_json::json!([tokenizer.token(i), w])).collect::<Vec<_>>(),
                }));
            }
            Ok(())
        })?;
    }
    let missing: Vec<&String> = args
        .ids
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(id, _)| id)
        .collect();
    if !missing.is_empty() {
        return Err(ExportError::Input(format!(
            "{}: no row with id {missing:?} in column `{id_column}`",
            args.url
        )));
    }
    Ok(found.into_iter().flatten().collect())
}

/// The small I/O runtime these commands use.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExportError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ExportError::Option(format!("cannot start the I/O runtime: {e}")))
}
