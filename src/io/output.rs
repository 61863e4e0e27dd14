//! Parquet output: the `sparse: list<struct<id: uint32, weight: float32>>` column and the
//! writer of one shard's part file, built in a file (row groups written out as they fill, so
//! memory stays flat however large the shard) and refused past the job's part-size cap.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float16Array, Float32Array, ListArray, RecordBatch, StructArray, UInt32Array,
    UInt8Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::commit::PartFile;
use super::compact::{
    dequantize_u8, quantize_u8, round_bf16, VectorFormat, WeightType, SCALE_KEY, TYPE_KEY,
};
use super::StoreError;
use crate::encode::SparseVector;

/// Name of the output vector column.
pub const SPARSE_COLUMN: &str = "sparse";

/// The struct fields of one sparse entry: `id: uint32` and the weight, `float32` unless the
/// format says otherwise (f16: float16; bf16: float32 marked bf16; u8: uint8 with its scale in
/// the field's metadata).
pub fn entry_fields(format: &VectorFormat) -> Fields {
    let weight = match format.weight_type {
        WeightType::F32 => Field::new("weight", DataType::Float32, false),
        WeightType::F16 => Field::new("weight", DataType::Float16, false),
        WeightType::Bf16 => Field::new("weight", DataType::Float32, false),
        WeightType::U8 => Field::new("weight", DataType::UInt8, false),
    };
    let weight = if format.weight_type.is_f32() {
        weight
    } else {
        let mut meta = std::collections::HashMap::from([(
            TYPE_KEY.to_string(),
            format.weight_type.to_string(),
        )]);
        if format.weight_type == WeightType::U8 {
            meta.insert(SCALE_KEY.to_string(), format.scale.to_string());
        }
        weight.with_metadata(meta)
    };
    Fields::from(vec![Field::new("id", DataType::UInt32, false), weight])
}

/// `list<struct<id: uint32, weight: float32>>` (the weight as the format stores it).
pub fn sparse_type(format: &VectorFormat) -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(entry_fields(format)),
        false,
    )))
}

/// Output schema: the input id field, `sparse`, then the kept fields.
pub fn output_schema(id: &Field, keep: &[Field], format: &VectorFormat) -> SchemaRef {
    let mut fields = vec![
        id.clone(),
        Field::new(SPARSE_COLUMN, sparse_type(format), true),
    ];
    fields.extend(keep.iter().cloned());
    Arc::new(Schema::new(fields))
}

/// Name of the column `sparq score` writes.
pub const SCORE_COLUMN: &str = "score";

/// `sparq score`'s output schema: the input id field, then `score: float32`.
pub fn score_schema(id: &Field) -> SchemaRef {
    Arc::new(Schema::new(vec![
        id.clone(),
        Field::new(SCORE_COLUMN, DataType::Float32, false),
    ]))
}

/// Entries a sparse column holds, and those whose u8 weight was clamped to 255.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryCounts {
    /// Entries stored.
    pub entries: u64,
    /// u8 weights past 255 × scale, stored as 255.
    pub clamped: u64,
}

/// Builds the sparse column, each vector pruned then stored as the format says; `None` rows
/// (inputs that failed) are null.
pub fn sparse_array(
    vectors: &[Option<SparseVector>],
    format: &VectorFormat,
) -> (ArrayRef, EntryCounts) {
    let pruned: Vec<Option<std::borrow::Cow<SparseVector>>> = vectors
        .iter()
        .map(|v| {
            v.as_ref().map(|v| match &format.prune {
                Some(p) => std::borrow::Cow::Owned(p.apply(v.clone())),
                None => std::borrow::Cow::Borrowed(v),
            })
        })
        .collect();
    let total: usize = pruned
        .iter()
        .map(|v| v.as_ref().map_or(0, |v| v.len()))
        .sum();
    let mut ids = Vec::with_capacity(total);
    let mut weights = Vec::with_capacity(total);
    let mut quantized: Vec<u8> = Vec::new();
    let mut halves: Vec<half::f16> = Vec::new();
    let mut lengths = Vec::with_capacity(pruned.len());
    let mut counts = EntryCounts::default();
    for v in &pruned {
        let before = ids.len();
        if let Some(v) = v {
            match format.weight_type {
                WeightType::F32 => {
                    ids.extend_from_slice(&v.indices);
                    weights.extend_from_slice(&v.values);
                }
                WeightType::Bf16 => {
                    ids.extend_from_slice(&v.indices);
                    weights.extend(v.values.iter().map(|&w| round_bf16(w)));
                }
                WeightType::F16 => {
                    for (&i, &w) in v.indices.iter().zip(&v.values) {
                        let h = half::f16::from_f32(w);
                        // Past float16's range: its largest finite value, counted as clamped.
                        let h = if h.is_infinite() {
                            counts.clamped += 1;
                            half::f16::MAX
                        } else {
                            h
                        };
                        if h.to_f32() != 0.0 {
                            ids.push(i);
                            halves.push(h);
                        }
                    }
                }
                WeightType::U8 => {
                    for (&i, &w) in v.indices.iter().zip(&v.values) {
                        let (q, clamped) = quantize_u8(w, format.scale);
                        counts.clamped += u64::from(clamped);
                        if q != 0 {
                            ids.push(i);
                            quantized.push(q);
                        }
                    }
                }
            }
        }
        lengths.push(ids.len() - before);
    }
    counts.entries = ids.len() as u64;
    let weight: ArrayRef = match format.weight_type {
        WeightType::F32 | WeightType::Bf16 => Arc::new(Float32Array::from(weights)),
        WeightType::F16 => Arc::new(Float16Array::from(halves)),
        WeightType::U8 => Arc::new(UInt8Array::from(quantized)),
    };
    let entries = StructArray::new(
        entry_fields(format),
        vec![Arc::new(UInt32Array::from(ids)) as ArrayRef, weight],
        None,
    );
    let nulls = vectors
        .iter()
        .any(Option::is_none)
        .then(|| NullBuffer::from_iter(vectors.iter().map(Option::is_some)));
    let DataType::List(item) = sparse_type(format) else {
        unreachable!("sparse_type is a list")
    };
    let array = ListArray::new(
        item,
        OffsetBuffer::from_lengths(lengths),
        Arc::new(entries),
        nulls,
    );
    (Arc::new(array), counts)
}

/// The weight type and u8 scale of a sparse column's type (`None` when it is not one).
pub fn weight_format(data_type: &DataType) -> Option<(WeightType, Option<f32>)> {
    let DataType::List(item) = data_type else {
        return None;
    };
    let DataType::Struct(fields) = item.data_type() else {
        return None;
    };
    let weight = fields.iter().find(|f| f.name() == "weight")?;
    let scale = weight
        .metadata()
        .get(SCALE_KEY)
        .and_then(|s| s.parse::<f32>().ok());
    let marked = weight.metadata().get(TYPE_KEY).map(String::as_str);
    let kind = match (weight.data_type(), marked) {
        (DataType::Float32, Some("bf16")) => WeightType::Bf16,
        (DataType::Float32, _) => WeightType::F32,
        (DataType::Float16, _) => WeightType::F16,
        (DataType::UInt8, _) if scale.is_some_and(|s| s.is_finite() && s > 0.0) => WeightType::U8,
        _ => return None,
    };
    Some((kind, scale.filter(|_| kind == WeightType::U8)))
}

/// Reads the sparse column back into vectors (`None` for null rows), every weight type as
/// float32 (u8 weights dequantized: q × scale).
pub fn read_sparse(array: &dyn Array) -> Option<Vec<Option<SparseVector>>> {
    let (kind, scale) = weight_format(array.data_type())?;
    let list = array.as_any().downcast_ref::<ListArray>()?;
    let entries = list.values().as_any().downcast_ref::<StructArray>()?;
    let ids = entries
        .column_by_name("id")?
        .as_any()
        .downcast_ref::<UInt32Array>()?;
    let weight = entries.column_by_name("weight")?;
    let weights: Vec<f32> = match kind {
        WeightType::F32 | WeightType::Bf16 => weight
            .as_any()
            .downcast_ref::<Float32Array>()?
            .values()
            .to_vec(),
        WeightType::F16 => weight
            .as_any()
            .downcast_ref::<Float16Array>()?
            .values()
            .iter()
            .map(|h| h.to_f32())
            .collect(),
        WeightType::U8 => {
            let scale = scale?;
            weight
                .as_any()
                .downcast_ref::<UInt8Array>()?
                .values()
                .iter()
                .map(|&q| dequantize_u8(q, scale))
                .collect()
        }
    };
    let offsets = list.value_offsets();
    Some(
        (0..list.len())
            .map(|row| {
                list.is_valid(row).then(|| {
                    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                    SparseVector {
                        indices: ids.values()[start..end].to_vec(),
                        values: weights[start..end].to_vec(),
                    }
                })
            })
            .collect(),
    )
}

/// Encoded bytes a row group may buffer before it is written out to the part's file.
const FLUSH_BYTES: usize = 32 << 20;

/// The default `--max-part-bytes`: 1 GiB, well under the 5 GiB of one S3 `PUT`.
pub const DEFAULT_MAX_PART_BYTES: u64 = 1 << 30;

/// Why a part could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// The parquet encoder failed.
    #[error("writing the part: {0}")]
    Parquet(#[from] ParquetError),
    /// Writing its file failed (a full disk, say).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The part grew past the job's cap.
    #[error(
        "the part reached {bytes} bytes, past --max-part-bytes {max}: nothing was committed. \
         Rerun with a larger --max-part-bytes, or re-encode into a new output with a smaller \
         --shard-rows (a resumed output keeps the shard size it was planned with)"
    )]
    TooLarge {
        /// Bytes written so far.
        bytes: u64,
        /// The cap.
        max: u64,
    },
}

/// The part's file, remembering the last write error (the encoder reports it as its own).
struct FileSink {
    file: std::fs::File,
    failed: Option<std::io::Error>,
}

impl std::io::Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf).inspect_err(|e| {
            self.failed = Some(copy_error(e));
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn copy_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// Writes one shard's rows into a parquet file, committed whole when complete.
pub struct PartWriter {
    writer: ArrowWriter<FileSink>,
    schema: SchemaRef,
    file: PartFile,
    max_bytes: u64,
    format: VectorFormat,
    counts: EntryCounts,
}

/// The parquet compression of parts, as the manifest names it.
pub const PART_CODEC: &str = "zstd(3)";

/// How parts are encoded, chosen by measurement (bench/RESULTS.md, "Compact outputs"): zstd
/// level 3 (pyarrow, DuckDB, Spark and Lucene-era readers all read it), dictionary pages off
/// for the entries (token ids and weights are too many distinct values to pay for one), and
/// float weights byte-stream-split (a float's exponent bytes, alike across entries, compress
/// together; bf16's zero low bytes vanish).
fn part_properties() -> WriterProperties {
    let entry = |name: &str| {
        ColumnPath::new(vec![
            SPARSE_COLUMN.to_string(),
            "list".to_string(),
            "item".to_string(),
            name.to_string(),
        ])
    };
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("a valid level"),
        ))
        .set_max_row_group_row_count(Some(64 * 1024))
        .set_column_dictionary_enabled(entry("id"), false)
        .set_column_dictionary_enabled(entry("weight"), false)
        .set_column_encoding(entry("weight"), Encoding::BYTE_STREAM_SPLIT)
        .build()
}

impl PartWriter {
    /// A writer for `schema` into `file`, storing vectors as `format` says, that refuses to
    /// grow past `max_bytes`.
    pub fn new(
        schema: SchemaRef,
        file: PartFile,
        max_bytes: u64,
        format: VectorFormat,
    ) -> Result<Self, PartError> {
        let props = part_properties();
        let sink = FileSink {
            file: file.writer()?,
            failed: None,
        };
        Ok(Self {
            writer: ArrowWriter::try_new(sink, schema.clone(), Some(props))?,
            schema,
            file,
            max_bytes,
            format,
            counts: EntryCounts::default(),
        })
    }

    /// Entries written so far, and u8 weights clamped.
    pub fn counts(&self) -> EntryCounts {
        self.counts
    }

    /// Appends rows: the id column, the vectors, and the kept columns, all the same length.
    pub fn write(
        &mut self,
        id: ArrayRef,
        vectors: &[Option<SparseVector>],
        keep: Vec<ArrayRef>,
    ) -> Result<(), PartError> {
        let (sparse, counts) = sparse_array(vectors, &self.format);
        self.counts.entries += counts.entries;
        self.counts.clamped += counts.clamped;
        let mut columns = vec![id, sparse];
        columns.extend(keep);
        self.write_columns(columns)
    }

    /// Appends rows given as whole columns, in the schema's order.
    pub fn write_columns(&mut self, columns: Vec<ArrayRef>) -> Result<(), PartError> {
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(ParquetError::from)?;
        let written = self.writer.write(&batch).and_then(|()| {
            // A row group that has buffered enough is written out now, whatever its rows.
            if self.writer.in_progress_size() >= FLUSH_BYTES {
                self.writer.flush()
            } else {
                Ok(())
            }
        });
        self.checked(written)?;
        let bytes = (self.writer.bytes_written() + self.writer.in_progress_size()) as u64;
        if bytes > self.max_bytes {
            return Err(PartError::TooLarge {
                bytes,
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// An encoder error, or the file's own error where writing the file failed.
    fn checked<T>(&mut self, result: Result<T, ParquetError>) -> Result<T, PartError> {
        result.map_err(|e| match self.writer.inner_mut().failed.take() {
            Some(source) => PartError::Store(StoreError::Io {
                op: "writing",
                path: self.file.path().to_path_buf(),
                source,
            }),
            None => PartError::Parquet(e),
        })
    }

    /// Finishes the file (its footer written) and returns it, to be committed.
    pub fn finish(mut self) -> Result<PartFile, PartError> {
        let finished = self.writer.finish().map(|_| ());
        self.checked(finished)?;
        let bytes = self.writer.bytes_written() as u64;
        if bytes > self.max_bytes {
            return Err(PartError::TooLarge {
                bytes,
                max: self.max_bytes,
            });
        }
        Ok(self.file)
    }
}
