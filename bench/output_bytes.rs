//! Bytes per document of an encode output's vectors under each parquet codec, dictionary,
//! encoding, weight type and pruning: the measurement behind the part writer's defaults and
//! `--weight-type`/`--prune` (bench/RESULTS.md, "Compact outputs").
//!
//!   cargo run --release --example output_bytes -- OUTPUT_DIR
//!
//! OUTPUT_DIR is a `sparq encode` output made with the defaults (f32 weights, no pruning); its
//! vectors are read once and rewritten in memory with each setting (id column and vectors only,
//! one part, 64 Ki rows per row group as the encoder writes). Byte counts do not depend on the
//! machine's load. It also prints the weight distribution that sizes u8's default scale.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ListArray, RecordBatch, StructArray, UInt16Array, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sparq::encode::SparseVector;
use sparq::io::compact::{Prune, VectorFormat, WeightType, DEFAULT_WEIGHT_SCALE};
use sparq::io::output::{output_schema, read_sparse, sparse_array};

/// How one part is written.
struct Setting {
    name: String,
    codec: Compression,
    dictionary: bool,
    split_weights: bool,
    format: VectorFormat,
    /// bf16 as raw uint16 bits (the alternative to float32 with zero low bytes).
    bf16_bits: bool,
}

fn entry(name: &str) -> ColumnPath {
    ColumnPath::new(vec![
        "sparse".into(),
        "list".into(),
        "item".into(),
        name.into(),
    ])
}

fn bytes_of(ids: &ArrayRef, vectors: &[Option<SparseVector>], s: &Setting) -> usize {
    let id_field = Field::new("id", ids.data_type().clone(), true);
    let mut props = WriterProperties::builder()
        .set_compression(s.codec)
        .set_max_row_group_row_count(Some(64 * 1024))
        .set_column_dictionary_enabled(entry("id"), s.dictionary)
        .set_column_dictionary_enabled(entry("weight"), s.dictionary);
    if s.split_weights {
        props = props.set_column_encoding(entry("weight"), Encoding::BYTE_STREAM_SPLIT);
    }
    let (sparse, schema) = if s.bf16_bits {
        bf16_bits_column(vectors, &id_field)
    } else {
        let (sparse, _) = sparse_array(vectors, &s.format);
        (sparse, output_schema(&id_field, &[], &s.format))
    };
    let batch = RecordBatch::try_new(schema.clone(), vec![ids.clone(), sparse]).unwrap();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props.build())).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out.len()
}

/// The sparse column with bf16 weights as their raw uint16 bits.
fn bf16_bits_column(vectors: &[Option<SparseVector>], id_field: &Field) -> (ArrayRef, Arc<Schema>) {
    let fields = Fields::from(vec![
        Field::new("id", DataType::UInt32, false),
        Field::new("weight", DataType::UInt16, false),
    ]);
    let (mut ids, mut bits, mut lengths) = (Vec::new(), Vec::new(), Vec::new());
    for v in vectors {
        let v = v.as_ref().unwrap();
        ids.extend_from_slice(&v.indices);
        bits.extend(v.values.iter().map(|&w| half::bf16::from_f32(w).to_bits()));
        lengths.push(v.len());
    }
    let entries = StructArray::new(
        fields.clone(),
        vec![
            Arc::new(UInt32Array::from(ids)) as ArrayRef,
            Arc::new(UInt16Array::from(bits)),
        ],
        None,
    );
    let item = Arc::new(Field::new("item", DataType::Struct(fields), false));
    let list = ListArray::new(
        item.clone(),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(entries),
        None,
    );
    let schema = Schema::new(vec![
        id_field.clone(),
        Field::new("sparse", DataType::List(item), true),
    ]);
    (Arc::new(list), Arc::new(schema))
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: output_bytes OUTPUT_DIR");
    let mut parts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("part-") && n.ends_with(".parquet")
        })
        .collect();
    parts.sort();
    let (mut id_columns, mut vectors) = (Vec::new(), Vec::new());
    let mut disk = 0;
    for p in &parts {
        disk += std::fs::metadata(p).unwrap().len();
        let file = std::fs::File::open(p).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            id_columns.push(batch.column(0).clone());
            vectors.extend(read_sparse(batch.column_by_name("sparse").unwrap().as_ref()).unwrap());
        }
    }
    let refs: Vec<&dyn Array> = id_columns.iter().map(|a| a.as_ref()).collect();
    let ids = arrow::compute::concat(&refs).unwrap();
    let rows = vectors.len();
    let entries: usize = vectors
        .iter()
        .map(|v| v.as_ref().map_or(0, |v| v.len()))
        .sum();
    let mut weights: Vec<f32> = vectors
        .iter()
        .flatten()
        .flat_map(|v| v.values.iter().copied())
        .collect();
    weights.sort_by(f32::total_cmp);
    let q = |p: f64| weights[((weights.len() - 1) as f64 * p) as usize];
    println!(
        "{rows} rows, {entries} entries ({:.1}/row), {disk} bytes on disk in {} part(s)",
        entries as f64 / rows as f64,
        parts.len()
    );
    println!(
        "weights: min {:.4}, p50 {:.3}, p99 {:.3}, p99.99 {:.3}, max {:.3}",
        q(0.0),
        q(0.5),
        q(0.99),
        q(0.9999),
        q(1.0)
    );
    let zstd = |l| Compression::ZSTD(ZstdLevel::try_new(l).unwrap());
    let f32s = VectorFormat::default();
    let typed = |t| VectorFormat {
        weight_type: t,
        scale: DEFAULT_WEIGHT_SCALE,
        prune: None,
    };
    let setting = |name: &str, codec, dictionary, split_weights, format| Setting {
        name: name.into(),
        codec,
        dictionary,
        split_weights,
        format,
        bf16_bits: false,
    };
    let mut settings = vec![
        setting(
            "f32 snappy, dictionary (sparq ≤ 0.3)",
            Compression::SNAPPY,
            true,
            false,
            f32s,
        ),
        setting(
            "f32 uncompressed, dictionary",
            Compression::UNCOMPRESSED,
            true,
            false,
            f32s,
        ),
        setting(
            "f32 snappy, no dictionary",
            Compression::SNAPPY,
            false,
            false,
            f32s,
        ),
        setting(
            "f32 snappy, no dictionary, split",
            Compression::SNAPPY,
            false,
            true,
            f32s,
        ),
    ];
    for level in [1, 3, 9, 19] {
        settings.push(setting(
            &format!("f32 zstd({level}), dictionary"),
            zstd(level),
            true,
            false,
            f32s,
        ));
        settings.push(setting(
            &format!("f32 zstd({level}), no dictionary"),
            zstd(level),
            false,
            false,
            f32s,
        ));
        settings.push(setting(
            &format!("f32 zstd({level}), no dictionary, split"),
            zstd(level),
            false,
            true,
            f32s,
        ));
    }
    settings.push(setting(
        "f32 zstd(3), dictionary, split",
        zstd(3),
        true,
        true,
        f32s,
    ));
    for t in [WeightType::F16, WeightType::Bf16, WeightType::U8] {
        settings.push(setting(
            &format!("{t} zstd(3), no dictionary"),
            zstd(3),
            false,
            false,
            typed(t),
        ));
        settings.push(setting(
            &format!("{t} zstd(3), no dictionary, split"),
            zstd(3),
            false,
            true,
            typed(t),
        ));
        settings.push(setting(
            &format!("{t} zstd(3), dictionary"),
            zstd(3),
            true,
            false,
            typed(t),
        ));
    }
    settings.push(Setting {
        bf16_bits: true,
        ..setting(
            "bf16 as uint16 bits, zstd(3), no dictionary",
            zstd(3),
            false,
            false,
            f32s,
        )
    });
    settings.push(Setting {
        bf16_bits: true,
        ..setting(
            "bf16 as uint16 bits, zstd(3), dictionary",
            zstd(3),
            true,
            false,
            f32s,
        )
    });
    for prune in ["mass:0.9", "ratio:0.1", "top-k:64"] {
        for t in [WeightType::F32, WeightType::Bf16, WeightType::U8] {
            let format = VectorFormat {
                prune: Some(prune.parse::<Prune>().unwrap()),
                ..typed(t)
            };
            settings.push(setting(
                &format!("{t} {prune} zstd(3), no dictionary, split"),
                zstd(3),
                false,
                true,
                format,
            ));
        }
    }
    let baseline = bytes_of(&ids, &vectors, &settings[0]) as f64;
    println!("| setting | bytes | bytes/doc | vs sparq ≤ 0.3 |");
    println!("|---|---:|---:|---:|");
    for s in &settings {
        let b = bytes_of(&ids, &vectors, s);
        println!(
            "| {} | {b} | {:.1} | {:+.1}% |",
            s.name,
            b as f64 / rows as f64,
            100.0 * (b as f64 / baseline - 1.0)
        );
    }
}
