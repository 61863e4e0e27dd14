//! Parquet corpora written by the tests, and reading sparq's output back.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use sparq::encode::SparseVector;

/// A text for row `i`: varied English with a few fixture-like oddities.
pub fn text_for(i: i64) -> Option<String> {
    const WORDS: [&str; 24] = [
        "river",
        "mountain",
        "whisky",
        "protein",
        "engine",
        "planet",
        "coffee",
        "history",
        "market",
        "music",
        "ocean",
        "bread",
        "software",
        "castle",
        "garden",
        "battery",
        "language",
        "forest",
        "medicine",
        "bridge",
        "winter",
        "harvest",
        "satellite",
        "museum",
    ];
    if i % 97 == 13 {
        return None;
    }
    if i % 89 == 7 {
        return Some(String::new());
    }
    let n = 3 + (i as usize * 7) % 40;
    let words: Vec<&str> = (0..n)
        .map(|k| WORDS[(i as usize * 31 + k * 17) % WORDS.len()])
        .collect();
    Some(format!(
        "Passage {i}: the {} near the {}.",
        words.join(" "),
        WORDS[i as usize % WORDS.len()]
    ))
}

/// Writes `ids` with their `text_for` texts and a `lang` column, in row groups of `group` rows.
pub fn write_corpus(path: &Path, ids: std::ops::Range<i64>, group: usize) {
    let ids: Vec<i64> = ids.collect();
    let texts: Vec<Option<String>> = ids.iter().map(|&i| text_for(i)).collect();
    let langs: Vec<String> = ids
        .iter()
        .map(|i| {
            if i % 2 == 0 {
                "en".into()
            } else {
                "en-GB".into()
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("lang", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids)) as ArrayRef,
            Arc::new(StringArray::from(texts)),
            Arc::new(StringArray::from(langs)),
        ],
    )
    .unwrap();
    write_batch(path, batch, group);
}

/// Writes a batch as parquet with the given row-group size.
pub fn write_batch(path: &Path, batch: RecordBatch, group: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// A corpus whose text column is binary, with invalid UTF-8 in row 2.
pub fn write_binary_corpus(path: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Binary, true),
    ]));
    let texts: Vec<Option<&[u8]>> = vec![
        Some(b"fine text"),
        Some(b"also fine"),
        Some(b"bad \xff\xfe bytes"),
        None,
    ];
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            Arc::new(BinaryArray::from(texts)),
        ],
    )
    .unwrap();
    write_batch(path, batch, 2);
}

/// Every committed part of a local output: (id, vector or null) in file order, and the names.
pub fn read_output(dir: &Path) -> (Vec<(i64, Option<SparseVector>)>, Vec<String>) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet") && !n.starts_with('_') && !n.starts_with('.'))
        .collect();
    names.sort();
    let mut rows = Vec::new();
    for name in &names {
        rows.extend(read_part(&std::fs::read(dir.join(name)).unwrap()));
    }
    (rows, names)
}

/// Rows of one part file.
pub fn read_part(bytes: &[u8]) -> Vec<(i64, Option<SparseVector>)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes))
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        let vectors =
            sparq::io::output::read_sparse(batch.column_by_name("sparse").unwrap().as_ref())
                .unwrap();
        for (i, v) in vectors.into_iter().enumerate() {
            rows.push((ids.value(i), v));
        }
    }
    rows
}

/// Checks every id of `expected` appears exactly once and its vector equals the reference.
pub fn assert_exactly_once(
    rows: &[(i64, Option<SparseVector>)],
    expected: &BTreeMap<i64, SparseVector>,
) {
    let mut seen = BTreeMap::new();
    for (id, v) in rows {
        assert!(
            seen.insert(*id, v.clone()).is_none(),
            "id {id} written twice"
        );
    }
    let missing: Vec<&i64> = expected
        .keys()
        .filter(|id| !seen.contains_key(id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "ids missing from the output, e.g. {missing:?}"
    );
    assert_eq!(seen.len(), expected.len(), "unexpected extra ids");
    let (got, want): (Vec<SparseVector>, Vec<SparseVector>) = expected
        .iter()
        .map(|(id, w)| {
            (
                seen[id].clone().expect("no null vectors expected"),
                w.clone(),
            )
        })
        .unzip();
    super::assert_close("output", &got, &want, 1e-5, 1e-5);
}

/// Reference vectors for `ids` (documents, fp32) from the library, as `encode-text` computes them.
pub fn reference_vectors(ids: &[i64]) -> BTreeMap<i64, SparseVector> {
    let encoder = sparq::model::SpladeEncoder::load(
        &super::tiny_model(),
        sparq::model::DeviceSpec::Cpu,
        None,
    )
    .unwrap();
    let texts: Vec<Option<String>> = ids.iter().map(|&i| text_for(i)).collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    let opts = sparq::model::EncodeOptions {
        batch_size: 64,
        max_active_dims: None,
        ..Default::default()
    };
    let vectors = encoder
        .encode(&refs, sparq::model::InputKind::Document, opts)
        .unwrap();
    ids.iter().copied().zip(vectors).collect()
}

/// Damages the data pages of a parquet file and leaves its footer intact: planning reads it,
/// the worker that reads its rows fails (a shard that fails at run time, not at planning).
pub fn corrupt_data_pages(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let data_end = n - 8 - footer;
    for b in &mut bytes[4..data_end.min(4 + 256)] {
        *b = 0xff;
    }
    std::fs::write(path, bytes).unwrap();
}
