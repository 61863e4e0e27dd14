//! The mining inputs as `mine_hard_negatives` arranges them: unique queries in order of first
//! appearance, each with its unique positives, and the corpus (the given corpus, then the
//! positives, de-duplicated keeping first occurrences).

use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::MineError;
use crate::io::input::{read_whole, InputFile, InputReader};
use crate::io::text_input::{
    list_corpus_inputs, text_kind, Compression, TextError, TextFormat, TextOptions, TextShardRead,
    TextSlice,
};
use crate::io::{AllowedRoots, StoreUrl};

/// Queries, their positives and the candidate corpus.
#[derive(Debug, Clone)]
pub struct MiningData {
    /// The anchor column's name (the output keeps it).
    pub anchor_column: String,
    /// The positive column's name (the output keeps it).
    pub positive_column: String,
    /// Unique queries, in order of first appearance.
    pub queries: Vec<String>,
    /// Corpus positions of each query's unique positives, in order of appearance.
    pub positives: Vec<Vec<u32>>,
    /// The de-duplicated corpus.
    pub corpus: Vec<String>,
    /// The most rows any query has (ST's `max_positives`: duplicate rows count).
    pub max_positives: usize,
    /// Dataset rows.
    pub rows: usize,
}

/// Text columns of every parquet file at one URL, in file order.
pub struct TextColumns {
    /// The column names, as resolved.
    pub names: Vec<String>,
    /// Texts by column.
    pub columns: Vec<Vec<String>>,
}

impl MiningData {
    /// Arranges `anchors`/`positives` (dataset rows) and an optional separate `corpus`.
    pub fn new(dataset: TextColumns, corpus: Option<Vec<String>>) -> Self {
        let mut columns = dataset.columns.into_iter();
        let anchors = columns.next().unwrap_or_default();
        let positive_texts = columns.next().unwrap_or_default();
        let mut corpus_idx: HashMap<String, u32> = HashMap::new();
        let mut texts: Vec<String> = Vec::new();
        for t in corpus
            .into_iter()
            .flatten()
            .chain(positive_texts.iter().cloned())
        {
            if !corpus_idx.contains_key(&t) {
                corpus_idx.insert(t.clone(), texts.len() as u32);
                texts.push(t);
            }
        }
        let mut query_idx: HashMap<&str, usize> = HashMap::new();
        let mut queries: Vec<String> = Vec::new();
        let mut positives: Vec<Vec<u32>> = Vec::new();
        let mut row_counts: Vec<usize> = Vec::new();
        for (anchor, positive) in anchors.iter().zip(&positive_texts) {
            let q = *query_idx.entry(anchor.as_str()).or_insert_with(|| {
                queries.push(anchor.clone());
                positives.push(Vec::new());
                row_counts.push(0);
                queries.len() - 1
            });
            let p = corpus_idx[positive];
            if !positives[q].contains(&p) {
                positives[q].push(p);
            }
            row_counts[q] += 1;
        }
        let mut names = dataset.names.into_iter();
        Self {
            anchor_column: names.next().unwrap_or_default(),
            positive_column: names.next().unwrap_or_default(),
            max_positives: row_counts.iter().copied().max().unwrap_or(0),
            rows: anchors.len(),
            queries,
            positives,
            corpus: texts,
        }
    }
}

/// Reads the text columns `wanted` of every parquet file at `url` (a file, folder, prefix or
/// glob; without parquet files, its JSON lines, TSV or CSV files, plain, .gz or .zst, as
/// `sparq encode` reads them); `None` entries take the file's first, second, ... column, as ST
/// does when no name is given. Errors name the file, column and row (a text file's line) and
/// say which option picks the column.
pub fn read_text_columns(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    wanted: &[(Option<&str>, &str)],
    roots: &AllowedRoots,
) -> Result<TextColumns, MineError> {
    let root = StoreUrl::parse(url)?;
    let (store, files) = runtime.block_on(list_corpus_inputs(&root, roots))?;
    let mut out: Option<TextColumns> = None;
    for file in files {
        if let Some((format, compression)) = text_kind(&file.url, None) {
            let read = read_text_file(
                runtime,
                store.clone(),
                &file,
                roots,
                (format, compression),
                wanted,
            )?;
            let data = out.get_or_insert_with(|| TextColumns {
                names: read.names.clone(),
                columns: vec![Vec::new(); read.names.len()],
            });
            if data.names != read.names {
                return Err(MineError::Data {
                    file: file.url.clone(),
                    detail: format!(
                        "its columns {:?} differ from the earlier files' {:?}: give files of one schema",
                        read.names, data.names
                    ),
                });
            }
            for (all, these) in data.columns.iter_mut().zip(read.columns) {
                all.extend(these);
            }
            continue;
        }
        let bytes = runtime.block_on(read_whole(store.clone(), &file, roots))?;
        let bad = |detail: String| MineError::Data {
            file: file.url.clone(),
            detail,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| bad(format!("not a readable parquet file ({e})")))?;
        let schema = builder.schema().clone();
        let available = || {
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut names = Vec::new();
        for (position, (name, option)) in wanted.iter().enumerate() {
            let field = match name {
                Some(name) => schema.field_with_name(name).map_err(|_| {
                    bad(format!(
                        "no column `{name}` (columns: {}); pick it with {option}",
                        available()
                    ))
                })?,
                None => schema
                    .fields()
                    .get(position)
                    .map(|f| f.as_ref())
                    .ok_or_else(|| {
                        bad(format!(
                            "has {} column(s) ({}) but column {} is needed; name it with {option}",
                            schema.fields().len(),
                            available(),
                            position + 1
                        ))
                    })?,
            };
            if !matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                return Err(bad(format!(
                    "column `{}` is {}, not text; pick a text column with {option}",
                    field.name(),
                    field.data_type()
                )));
            }
            names.push(field.name().clone());
        }
        let data = out.get_or_insert_with(|| TextColumns {
            names: names.clone(),
            columns: vec![Vec::new(); names.len()],
        });
        if data.names != names {
            return Err(bad(format!(
                "its columns {names:?} differ from the earlier files' {:?}: give files of one schema",
                data.names
            )));
        }
        let reader = builder.build().map_err(|e| bad(e.to_string()))?;
        let mut row = 0usize;
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            for (c, (name, option)) in names.iter().zip(wanted.iter().map(|w| w.1)).enumerate() {
                let array = batch.column_by_name(name).expect("checked above");
                for i in 0..array.len() {
                    if array.is_null(i) {
                        return Err(bad(format!(
                            "row {} column `{name}` is null; drop or fill such rows (or pick \
                             another column with {option})",
                            row + i
                        )));
                    }
                    let text = match array.data_type() {
                        DataType::Utf8 => array.as_string::<i32>().value(i),
                        DataType::LargeUtf8 => array.as_string::<i64>().value(i),
                        _ => array.as_string_view().value(i),
                    };
                    data.columns[c].push(text.to_string());
                }
            }
            row += batch.num_rows();
        }
    }
    let data = out.ok_or_else(|| MineError::Data {
        file: url.to_string(),
        detail: "no parquet, JSON lines, TSV or CSV files".into(),
    })?;
    if data.columns.first().is_none_or(Vec::is_empty) {
        return Err(MineError::Data {
            file: url.to_string(),
            detail: "no rows: the dataset is empty".into(),
        });
    }
    Ok(data)
}

/// Reads the columns `wanted` of one text file, whole (mining holds every text anyway): TSV/CSV
/// columns by their header's names or positions, JSON lines fields by name.
fn read_text_file(
    runtime: &tokio::runtime::Runtime,
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    file: &InputFile,
    roots: &AllowedRoots,
    (format, compression): (TextFormat, Compression),
    wanted: &[(Option<&str>, &str)],
) -> Result<TextColumns, MineError> {
    let bad = |detail: String| MineError::Data {
        file: file.url.clone(),
        detail,
    };
    let text_error = |e: TextError| match e {
        TextError::Store(e) => MineError::Store(e),
        TextError::BadLine(line) => MineError::Options(format!(
            "{}. Fix the line (or pick the columns with --anchor-column / --positive-column / \
             --corpus-column)",
            line.short()
        )),
        TextError::Data(detail) => MineError::Options(detail),
    };
    let reader = InputReader::open(store, file, roots)?;
    let options = TextOptions::default();
    let slice = TextSlice {
        format,
        compression,
        start: 0,
        end: file.size,
        options: options.clone(),
    };
    let read = |wanted| TextShardRead {
        reader: reader.clone(),
        slice: &slice,
        options: &options,
        wanted,
        batch_rows: 1024,
    };
    // The header's names, for columns given by position.
    let header = read(&[])
        .layout(runtime)
        .map_err(text_error)?
        .names()
        .to_vec();
    let mut names = Vec::new();
    for (position, (name, option)) in wanted.iter().enumerate() {
        let name = match name {
            Some(name) if format == TextFormat::Jsonl || header.iter().any(|h| h == name) => {
                name.to_string()
            }
            Some(name) => {
                return Err(bad(format!(
                    "no column `{name}` (columns: {}); pick it with {option}",
                    header.join(", ")
                )))
            }
            None if format == TextFormat::Jsonl => {
                return Err(bad(format!(
                    "JSON lines name their fields: name the field with {option}"
                )))
            }
            None => header.get(position).cloned().ok_or_else(|| {
                bad(format!(
                    "has {} column(s) ({}) but column {} is needed; name it with {option}",
                    header.len(),
                    header.join(", "),
                    position + 1
                ))
            })?,
        };
        names.push(name);
    }
    let shard = read(&names[..]);
    let layout = shard.layout(runtime).map_err(text_error)?;
    let mut columns = vec![Vec::new(); names.len()];
    let mut failure = None;
    let mut row = 0usize;
    shard
        .read(runtime, &layout, |batch| {
            for (c, name) in names.iter().enumerate() {
                let array = batch
                    .column_by_name(name)
                    .expect("a wanted column")
                    .as_string::<i32>();
                for (i, text) in array.iter().enumerate() {
                    match text {
                        Some(text) => columns[c].push(text.to_string()),
                        None => {
                            let option = wanted[c].1;
                            failure = Some(bad(format!(
                                "row {} column `{name}` is null; drop or fill such rows (or \
                                 pick another column with {option})",
                                row + i
                            )));
                            return false;
                        }
                    }
                }
            }
            row += batch.num_rows();
            true
        })
        .map_err(text_error)?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(TextColumns { names, columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(rows: &[(&str, &str)]) -> TextColumns {
        TextColumns {
            names: vec!["q".into(), "p".into()],
            columns: vec![
                rows.iter().map(|r| r.0.to_string()).collect(),
                rows.iter().map(|r| r.1.to_string()).collect(),
            ],
        }
    }

    #[test]
    fn queries_positives_and_corpus_are_deduplicated_as_sentence_transformers_does() {
        let data = MiningData::new(
            cols(&[("a", "x"), ("b", "y"), ("a", "z"), ("a", "x")]),
            Some(vec!["y".into(), "w".into()]),
        );
        assert_eq!(data.queries, ["a", "b"]);
        assert_eq!(data.corpus, ["y", "w", "x", "z"]);
        assert_eq!(data.positives, [vec![2, 3], vec![0]]);
        assert_eq!(
            data.max_positives, 3,
            "duplicate rows count, as pandas' groupby count"
        );
    }
}
