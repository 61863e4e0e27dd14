//! Parquet output: the `sparse: list<struct<id: uint32, weight: float32>>` column and the
//! in-memory writer of one shard's part file.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, ListArray, RecordBatch, StructArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

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

/// Writes one shard's rows into an in-memory parquet file, committed whole when complete.
pub struct PartWriter {
    writer: ArrowWriter<Vec<u8>>,
    schema: SchemaRef,
}

impl PartWriter {
    /// A writer for `schema` (snappy compression: every reader supports it).
    pub fn new(schema: SchemaRef) -> Result<Self, parquet::errors::ParquetError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(64 * 1024))
            .build();
        Ok(Self {
            writer: ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?,
            schema,
        })
    }

    /// Appends rows: the id column, the vectors, and the kept columns, all the same length.
    pub fn write(
        &mut self,
        id: ArrayRef,
        vectors: &[Option<SparseVector>],
        keep: Vec<ArrayRef>,
    ) -> Result<(), parquet::errors::ParquetError> {
        let mut columns = vec![id, sparse_array(vectors)];
        columns.extend(keep);
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch)
    }

    /// Appends rows given as whole columns, in the schema's order.
    pub fn write_columns(
        &mut self,
        columns: Vec<ArrayRef>,
    ) -> Result<(), parquet::errors::ParquetError> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch)
    }

    /// Finishes the file and returns its bytes.
    pub fn finish(self) -> Result<Vec<u8>, parquet::errors::ParquetError> {
        self.writer.into_inner()
    }
}
