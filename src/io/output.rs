//! Parquet output: the `sparse: list<struct<id: uint32, weight: float32>>` column and the
//! writer of one shard's part file, built in a file (row groups written out as they fill, so
//! memory stays flat however large the shard) and refused past the job's part-size cap.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, ListArray, RecordBatch, StructArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use super::commit::PartFile;
use super::StoreError;
use crate::encode::SparseVector;

/// Name of the output vector column.
pub const SPARSE_COLUMN: &str = "sparse";

/// The struct fields of one sparse entry: `id: uint32`, `weight: float32`.
pub fn entry_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::UInt32, false),
        Field::new("weight", DataType::Float32, false),
    ])
}

/// `list<struct<id: uint32, weight: float32>>`.
pub fn sparse_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(entry_fields()),
        false,
    )))
}

/// Output schema: the input id field, `sparse`, then the kept fields.
pub fn output_schema(id: &Field, keep: &[Field]) -> SchemaRef {
    let mut fields = vec![id.clone(), Field::new(SPARSE_COLUMN, sparse_type(), true)];
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

/// Builds the sparse column; `None` rows (inputs that failed) are null.
pub fn sparse_array(vectors: &[Option<SparseVector>]) -> ArrayRef {
    let total: usize = vectors
        .iter()
        .map(|v| v.as_ref().map_or(0, |v| v.len()))
        .sum();
    let mut ids = Vec::with_capacity(total);
    let mut weights = Vec::with_capacity(total);
    let mut lengths = Vec::with_capacity(vectors.len());
    for v in vectors {
        let v = v.as_ref();
        lengths.push(v.map_or(0, |v| v.len()));
        if let Some(v) = v {
            ids.extend_from_slice(&v.indices);
            weights.extend_from_slice(&v.values);
        }
    }
    let entries = StructArray::new(
        entry_fields(),
        vec![
            Arc::new(UInt32Array::from(ids)) as ArrayRef,
            Arc::new(Float32Array::from(weights)),
        ],
        None,
    );
    let nulls = vectors
        .iter()
        .any(Option::is_none)
        .then(|| NullBuffer::from_iter(vectors.iter().map(Option::is_some)));
    let DataType::List(item) = sparse_type() else {
        unreachable!("sparse_type is a list")
    };
    Arc::new(ListArray::new(
        item,
        OffsetBuffer::from_lengths(lengths),
        Arc::new(entries),
        nulls,
    ))
}

/// Reads the sparse column back into vectors (`None` for null rows).
pub fn read_sparse(array: &dyn Array) -> Option<Vec<Option<SparseVector>>> {
    let list = array.as_any().downcast_ref::<ListArray>()?;
    let entries = list.values().as_any().downcast_ref::<StructArray>()?;
    let ids = entries.column(0).as_any().downcast_ref::<UInt32Array>()?;
    let weights = entries.column(1).as_any().downcast_ref::<Float32Array>()?;
    let offsets = list.value_offsets();
    Some(
        (0..list.len())
            .map(|row| {
                list.is_valid(row).then(|| {
                    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                    SparseVector {
                        indices: ids.values()[start..end].to_vec(),
                        values: weights.values()[start..end].to_vec(),
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
}

impl PartWriter {
    /// A writer for `schema` into `file` (snappy compression: every reader supports it), that
    /// refuses to grow past `max_bytes`.
    pub fn new(schema: SchemaRef, file: PartFile, max_bytes: u64) -> Result<Self, PartError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(64 * 1024))
            .build();
        let sink = FileSink {
            file: file.writer()?,
            failed: None,
        };
        Ok(Self {
            writer: ArrowWriter::try_new(sink, schema.clone(), Some(props))?,
            schema,
            file,
            max_bytes,
        })
    }

    /// Appends rows: the id column, the vectors, and the kept columns, all the same length.
    pub fn write(
        &mut self,
        id: ArrayRef,
        vectors: &[Option<SparseVector>],
        keep: Vec<ArrayRef>,
    ) -> Result<(), PartError> {
        let mut columns = vec![id, sparse_array(vectors)];
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
