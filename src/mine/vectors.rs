//! Vectors for the texts being mined: encoded by a model (queries through the query route,
//! documents through the document route, as a SparseEncoder's `encode_query` /
//! `encode_document`), or read from a `sparq encode` output keyed by a text column.

use std::collections::HashMap;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::MineError;
use crate::encode::SparseVector;
use crate::io::input::{list_inputs, read_whole};
use crate::io::output::read_sparse;
use crate::io::{AllowedRoots, StoreUrl};
use crate::model::{EncodeOptions, InputKind, SparseEncode};

/// Texts encoded per call, so progress shows and peak memory stays that of one block.
const BLOCK: usize = 4096;

/// Where a set of texts gets its vectors.
pub enum VectorSource<'a> {
    /// Encoded by a model.
    Model(&'a dyn SparseEncode, EncodeOptions),
    /// Read from an encode output: vectors by the text in its key column.
    Stored {
        /// The output's URL (for messages).
        url: String,
        /// The key column.
        column: String,
        /// Vectors by text.
        vectors: HashMap<String, SparseVector>,
    },
}

impl VectorSource<'_> {
    /// The vectors of `texts` as `kind`, in order.
    pub fn vectors(
        &mut self,
        texts: &[&str],
        kind: InputKind,
        what: &str,
    ) -> Result<Vec<SparseVector>, MineError> {
        match self {
            VectorSource::Model(model, opts) => {
                let mut out = Vec::with_capacity(texts.len());
                for (b, block) in texts.chunks(BLOCK).enumerate() {
                    let block: Vec<Option<&str>> = block.iter().map(|t| Some(*t)).collect();
                    out.extend(model.encode_texts(&block, kind, *opts)?);
                    if texts.len() > BLOCK {
                        tracing::info!(
                            "encoded {} of {} {what}",
                            (b * BLOCK + block.len()),
                            texts.len()
                        );
                    }
                }
                Ok(out)
            }
            VectorSource::Stored {
                url,
                column,
                vectors,
            } => texts
                .iter()
                .map(|t| {
                    vectors.get(*t).cloned().ok_or_else(|| {
                        let short: String = t.chars().take(80).collect();
                        MineError::Options(format!(
                            "{url} has no vector for the {what} text {short:?} (column `{column}`): \
                             encode every {what} text, keeping it with --keep-columns, or drop \
                             the option to encode with --model"
                        ))
                    })
                })
                .collect(),
        }
    }
}

/// Reads a `sparq encode` output at `url`: each row's `sparse` vector under the text of its
/// `column`.
pub fn read_stored(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    column: &str,
    option: &str,
) -> Result<HashMap<String, SparseVector>, MineError> {
    let root = StoreUrl::parse(url)?;
    let roots = AllowedRoots::anywhere();
    let (store, files) = runtime.block_on(list_inputs(&root, &roots))?;
    let mut out = HashMap::new();
    for file in &files {
        let bytes = runtime.block_on(read_whole(store.clone(), file, &roots))?;
        let bad = |detail: String| MineError::Data {
            file: file.url.clone(),
            detail,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| bad(format!("not a readable parquet file ({e})")))?;
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            let keys = batch.column_by_name(column).ok_or_else(|| {
                bad(format!(
                    "no column `{column}` holding the encoded texts (encode with --keep-columns \
                     {column}, or name the column with {option})"
                ))
            })?;
            let sparse =
                batch
                    .column_by_name("sparse")
                    .and_then(|c| read_sparse(c.as_ref()))
                    .ok_or_else(|| {
                        bad("no `sparse` column of list<struct<id: uint32, weight: float32>>: give \
                         the output of `sparq encode`"
                        .into())
                    })?;
            let f = ArrayFormatter::try_new(keys.as_ref(), &FormatOptions::default())
                .map_err(|e| bad(e.to_string()))?;
            for (i, v) in sparse.into_iter().enumerate() {
                out.insert(f.value(i).to_string(), v.unwrap_or_default());
            }
        }
    }
    Ok(out)
}

/// The dot product of two sparse vectors (indices ascending).
pub fn dot(a: &SparseVector, b: &SparseVector) -> f32 {
    let (mut i, mut j, mut sum) = (0, 0, 0f32);
    while i < a.indices.len() && j < b.indices.len() {
        match a.indices[i].cmp(&b.indices[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                sum += a.values[i] * b.values[j];
                i += 1;
                j += 1;
            }
        }
    }
    sum
}
