//! IR datasets on disk: the BEIR layout (`corpus.jsonl`, `queries.jsonl`,
//! `qrels/<split>.tsv`) and the NanoBEIR parquet layout (`corpus/`, `queries/`, `qrels/`
//! folders of parquet files, or `corpus.parquet`, ...), read the way sentence-transformers'
//! NanoBEIR evaluator reads them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use super::EvalError;
use crate::encode::columns::with_title;

/// Queries, corpus and relevance judgements of one dataset.
#[derive(Debug, Clone, Default)]
pub struct IrDataset {
    /// Name (the folder name).
    pub name: String,
    /// `(id, text)` of every query with a non-empty text, in file order.
    pub queries: Vec<(String, String)>,
    /// `(id, text)` of every document with a non-empty text, in file order.
    pub corpus: Vec<(String, String)>,
    /// Relevant document ids per query id (judgements with score > 0).
    pub relevant: HashMap<String, HashSet<String>>,
    /// Judgements naming a query that is not in the queries file (ignored, as the reference does).
    pub unknown_queries: usize,
    /// Judgements naming a document that is not in the corpus (kept, as the reference keeps them:
    /// they count as relevant but can never be retrieved).
    pub unknown_documents: usize,
}

impl IrDataset {
    /// Loads the dataset folder `dir`; `split` picks `qrels/<split>.tsv` (BEIR) or the parquet
    /// files whose names start with it (NanoBEIR), if any. With `title`, a document's text is
    /// `title + " " + text` (the BEIR convention); otherwise its `text` only, as the
    /// NanoBEIR evaluator builds it.
    pub fn load(dir: &Path, split: &str, title: bool) -> Result<Self, EvalError> {
        if !dir.is_dir() {
            return Err(EvalError::MissingFile {
                path: dir.to_path_buf(),
                hint: "--beir takes a folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv (BEIR), or corpus/, queries/, qrels/ parquet files (NanoBEIR)".into(),
            });
        }
        let name = dir
            .file_name()
            .map_or("dataset".into(), |n| n.to_string_lossy().into_owned());
        let (corpus, queries, qrels) = if let Some(corpus) =
            compressed_or_plain(dir, "corpus.jsonl")
        {
            let qrels = dir.join("qrels").join(format!("{split}.tsv"));
            let Some(qrels_path) = compressed_or_plain(&dir.join("qrels"), &format!("{split}.tsv"))
            else {
                return Err(EvalError::MissingFile { path: qrels, hint: "BEIR judgements: a TSV with a header `query-id corpus-id score` (pick the file with --split)".into() });
            };
            let queries = compressed_or_plain(dir, "queries.jsonl")
                .unwrap_or_else(|| dir.join("queries.jsonl"));
            (
                read_jsonl_texts(&corpus, title)?,
                read_jsonl_texts(&queries, false)?,
                read_qrels_tsv(&qrels_path)?,
            )
        } else {
            let corpus = parquet_files(dir, "corpus", split)?;
            let queries = parquet_files(dir, "queries", split)?;
            let qrels = parquet_files(dir, "qrels", split)?;
            (
                read_parquet_texts(&corpus, title)?,
                read_parquet_texts(&queries, false)?,
                read_parquet_qrels(&qrels)?,
            )
        };
        let mut ds = IrDataset {
            name,
            queries: dedup(queries),
            corpus: dedup(corpus),
            ..Default::default()
        };
        let query_ids: HashSet<&str> = ds.queries.iter().map(|(id, _)| id.as_str()).collect();
        let doc_ids: HashSet<&str> = ds.corpus.iter().map(|(id, _)| id.as_str()).collect();
        for (q, d) in qrels {
            if !query_ids.contains(q.as_str()) {
                ds.unknown_queries += 1;
            }
            if !doc_ids.contains(d.as_str()) {
                ds.unknown_documents += 1;
            }
            ds.relevant.entry(q).or_default().insert(d);
        }
        if ds.corpus.is_empty() {
            return Err(EvalError::Empty {
                dataset: ds.name,
                detail: "the corpus has no document with text".into(),
            });
        }
        if !ds.queries.iter().any(|(q, _)| ds.relevant.contains_key(q)) {
            return Err(EvalError::Empty {
                dataset: ds.name,
                detail: format!("no query has relevance judgements in split `{split}`"),
            });
        }
        Ok(ds)
    }

    /// The evaluated queries: those with at least one relevant document, in file order.
    pub fn judged_queries(&self) -> Vec<&(String, String)> {
        self.queries
            .iter()
            .filter(|(q, _)| self.relevant.get(q).is_some_and(|r| !r.is_empty()))
            .collect()
    }
}

/// Keeps the first position and the last text of a repeated id, as a Python dict does.
fn dedup(rows: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for (id, text) in rows {
        match index.get(&id) {
            Some(&i) => out[i].1 = text,
            None => {
                index.insert(id.clone(), out.len());
                out.push((id, text));
            }
        }
    }
    out
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> EvalError + '_ {
    move |e| EvalError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `dir/name`, or the first of `name.gz` and `name.zst` there (as BEIR archives unpack or users
/// compress them).
fn compressed_or_plain(dir: &Path, name: &str) -> Option<PathBuf> {
    ["", ".gz", ".zst"]
        .iter()
        .map(|ext| dir.join(format!("{name}{ext}")))
        .find(|p| p.is_file())
}

/// The text of a file, decompressed when its name ends in `.gz` or `.zst`.
fn read_text(path: &Path) -> Result<String, EvalError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(io(path))?;
    let name = path.to_string_lossy();
    let mut text = String::new();
    let read = if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(file).read_to_string(&mut text)
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(file).and_then(|mut d| d.read_to_string(&mut text))
    } else {
        std::io::BufReader::new(file).read_to_string(&mut text)
    };
    read.map_err(io(path))?;
    Ok(text)
}

/// `{"_id", "text"[, "title"]}` lines; empty texts dropped.
fn read_jsonl_texts(path: &Path, title: bool) -> Result<Vec<(String, String)>, EvalError> {
    if !path.is_file() {
        return Err(EvalError::MissingFile {
            path: path.to_path_buf(),
            hint: "JSON lines with `_id` and `text`".into(),
        });
    }
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |detail: String| EvalError::Malformed {
            path: path.to_path_buf(),
            line: n + 1,
            detail,
        };
        let v: Value =
            serde_json::from_str(line).map_err(|e| malformed(format!("not valid JSON ({e})")))?;
        let id = v
            .get("_id")
            .and_then(id_string)
            .ok_or_else(|| malformed("no `_id` string".into()))?;
        let body = match v.get("text") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => return Err(malformed(format!("`text` is {other}, not a string"))),
        };
        let title = v.get("title").and_then(Value::as_str).filter(|_| title);
        let full = with_title(title, &body).into_owned();
        if !full.is_empty() {
            out.push((id, full));
        }
    }
    Ok(out)
}

/// `query-id corpus-id score` TSV with a header; judgements with score > 0 are relevant.
fn read_qrels_tsv(path: &Path) -> Result<Vec<(String, String)>, EvalError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if n == 0 || line.trim().is_empty() {
            continue; // header
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 2 {
            return Err(EvalError::Malformed {
                path: path.to_path_buf(),
                line: n + 1,
                detail: "expected `query-id<TAB>corpus-id<TAB>score`".into(),
            });
        }
        let score: f64 = match cols.get(2) {
            Some(s) => s.trim().parse().map_err(|_| EvalError::Malformed {
                path: path.to_path_buf(),
                line: n + 1,
                detail: format!("score `{s}` is not a number"),
            })?,
            None => 1.0,
        };
        if score > 0.0 {
            out.push((cols[0].trim().to_string(), cols[1].trim().to_string()));
        }
    }
    Ok(out)
}

/// Parquet files of `subset`: `<dir>/<subset>/*.parquet` (those starting with `split` when
/// some do) or `<dir>/<subset>.parquet`.
fn parquet_files(dir: &Path, subset: &str, split: &str) -> Result<Vec<PathBuf>, EvalError> {
    let single = dir.join(format!("{subset}.parquet"));
    if single.is_file() {
        return Ok(vec![single]);
    }
    let folder = dir.join(subset);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .map_err(|_| EvalError::MissingFile {
            path: dir.join("corpus.jsonl"),
            hint: format!(
                "no BEIR corpus.jsonl and no NanoBEIR {subset}/ parquet folder in {}",
                dir.display()
            ),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    let of_split: Vec<PathBuf> = files
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(split))
        })
        .cloned()
        .collect();
    let chosen = if of_split.is_empty() { files } else { of_split };
    if chosen.is_empty() {
        return Err(EvalError::MissingFile {
            path: folder,
            hint: "parquet files".into(),
        });
    }
    Ok(chosen)
}

fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, EvalError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let corrupt = |e: parquet::errors::ParquetError| EvalError::Malformed {
        path: path.to_path_buf(),
        line: 0,
        detail: format!("unreadable parquet ({e})"),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(corrupt)?
        .build()
        .map_err(corrupt)?;
    reader
        .map(|b| {
            b.map_err(|e| EvalError::Malformed {
                path: path.to_path_buf(),
                line: 0,
                detail: e.to_string(),
            })
        })
        .collect()
}

fn column_strings(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
) -> Result<Vec<Option<String>>, EvalError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| EvalError::Malformed {
            path: path.to_path_buf(),
            line: 0,
            detail: format!(
                "no column `{name}` (columns: {})",
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    let f = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default()).map_err(|e| {
        EvalError::Malformed {
            path: path.to_path_buf(),
            line: 0,
            detail: e.to_string(),
        }
    })?;
    Ok((0..col.len())
        .map(|i| col.is_valid(i).then(|| f.value(i).to_string()))
        .collect())
}

fn read_parquet_texts(files: &[PathBuf], title: bool) -> Result<Vec<(String, String)>, EvalError> {
    let mut out = Vec::new();
    for path in files {
        for batch in read_batches(path)? {
            let ids = column_strings(path, &batch, "_id")?;
            let texts = column_strings(path, &batch, "text")?;
            let titles = if title && batch.column_by_name("title").is_some() {
                column_strings(path, &batch, "title")?
            } else {
                vec![None; ids.len()]
            };
            for ((id, text), t) in ids.into_iter().zip(texts).zip(titles) {
                let body = text.unwrap_or_default();
                let full = with_title(t.as_deref(), &body).into_owned();
                if let (Some(id), false) = (id, full.is_empty()) {
                    out.push((id, full));
                }
            }
        }
    }
    Ok(out)
}

fn read_parquet_qrels(files: &[PathBuf]) -> Result<Vec<(String, String)>, EvalError> {
    let mut out = Vec::new();
    for path in files {
        for batch in read_batches(path)? {
            let queries = column_strings(path, &batch, "query-id")?;
            let col = batch.column_by_name("corpus-id").cloned();
            let scores = if batch.column_by_name("score").is_some() {
                Some(column_strings(path, &batch, "score")?)
            } else {
                None
            };
            // NanoBEIR stores one id per row, or a list of ids.
            let docs: Vec<Vec<String>> = match col.as_ref().map(|c| c.data_type().clone()) {
                Some(DataType::List(_)) | Some(DataType::LargeList(_)) => {
                    let list = col.as_ref().unwrap();
                    let list = if let DataType::List(_) = list.data_type() {
                        list.as_list::<i32>().clone()
                    } else {
                        return Err(EvalError::Malformed {
                            path: path.clone(),
                            line: 0,
                            detail: "large lists of corpus ids are not supported".into(),
                        });
                    };
                    (0..list.len())
                        .map(|i| {
                            let values = list.value(i);
                            let f =
                                ArrayFormatter::try_new(values.as_ref(), &FormatOptions::default())
                                    .expect("formattable");
                            (0..values.len()).map(|j| f.value(j).to_string()).collect()
                        })
                        .collect()
                }
                _ => column_strings(path, &batch, "corpus-id")?
                    .into_iter()
                    .map(|d| d.into_iter().collect())
                    .collect(),
            };
            for (row, (q, ds)) in queries.into_iter().zip(docs).enumerate() {
                let positive = scores.as_ref().is_none_or(|s| {
                    s[row]
                        .as_deref()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_none_or(|v| v > 0.0)
                });
                if let (Some(q), true) = (q, positive) {
                    out.extend(ds.into_iter().map(|d| (q.clone(), d)));
                }
            }
        }
    }
    Ok(out)
}
