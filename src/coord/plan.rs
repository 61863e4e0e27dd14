//! Planning: input files → shards of bounded size (file × row range, split at row-group
//! boundaries where possible), with schema checks before any work.

use arrow::datatypes::{DataType, Field, SchemaRef};
use serde::{Deserialize, Serialize};

use super::JobError;

/// Part of one row group read by a shard.
pub use crate::io::input::RowGroupSlice as Segment;

/// A unit of work: a contiguous row range of one file, committed as one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    /// Index in the plan.
    pub id: usize,
    /// Input file URL.
    pub file: String,
    /// Input file size.
    pub file_size: u64,
    /// Input file version as planned (S3 ETag, or local size and mtime); a worker refuses
    /// another version.
    #[serde(default)]
    pub file_version: Option<String>,
    /// First row (within the file).
    pub first_row: u64,
    /// Number of rows.
    pub rows: u64,
    /// Row groups read, in order.
    pub segments: Vec<Segment>,
    /// Final name of the output part.
    pub part: String,
}

/// Splits one file with the given row-group sizes into shards of at most `shard_rows` rows.
pub fn shards_of_file(
    file_index: usize,
    file: &crate::io::input::InputFile,
    row_groups: &[u64],
    shard_rows: u64,
    next_id: &mut usize,
) -> Vec<ShardSpec> {
    let shard_rows = shard_rows.max(1);
    let mut out = Vec::new();
    let mut current: Vec<Segment> = Vec::new();
    let (mut current_rows, mut first_row, mut file_row) = (0u64, 0u64, 0u64);
    let mut close =
        |segments: &mut Vec<Segment>, rows: &mut u64, first: u64, out: &mut Vec<ShardSpec>| {
            if *rows > 0 {
                out.push(ShardSpec {
                    id: *next_id,
                    file: file.url.clone(),
                    file_size: file.size,
                    file_version: file.version.clone(),
                    first_row: first,
                    rows: *rows,
                    segments: std::mem::take(segments),
                    part: format!("part-{file_index:05}-{first:012}.parquet"),
                });
                *next_id += 1;
            }
            *rows = 0;
        };
    for (rg, &rg_rows) in row_groups.iter().enumerate() {
        let mut offset = 0;
        while offset < rg_rows {
            if current_rows == 0 {
                first_row = file_row;
            }
            let take = (rg_rows - offset).min(shard_rows - current_rows);
            current.push(Segment {
                row_group: rg,
                skip: offset,
                rows: take,
            });
            current_rows += take;
            offset += take;
            file_row += take;
            if current_rows == shard_rows {
                close(&mut current, &mut current_rows, first_row, &mut out);
            }
        }
    }
    close(&mut current, &mut current_rows, first_row, &mut out);
    out
}

/// Checks the columns of one file's schema: returns the fields of the id and kept columns
/// and the indices to project (id, text, kept...).
pub fn check_columns(
    file: &str,
    schema: &SchemaRef,
    id: &str,
    text: &str,
    keep: &[String],
) -> Result<(Field, Vec<Field>, Vec<usize>), JobError> {
    let find = |name: &str| -> Result<usize, JobError> {
        schema.index_of(name).map_err(|_| JobError::MissingColumn {
            file: file.to_string(),
            column: name.to_string(),
            available: schema.fields().iter().map(|f| f.name().clone()).collect(),
        })
    };
    let id_index = find(id)?;
    let text_index = find(text)?;
    let text_type = match schema.field(text_index).data_type() {
        DataType::Dictionary(_, values) => values.as_ref(),
        other => other,
    };
    if !matches!(
        text_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::Null
    ) {
        return Err(JobError::TextType {
            file: file.to_string(),
            column: text.to_string(),
            found: text_type.to_string(),
        });
    }
    let mut indices = vec![id_index, text_index];
    let mut kept = Vec::new();
    for name in keep {
        if name == id || name == crate::io::output::SPARSE_COLUMN {
            return Err(JobError::Settings(format!(
                "--keep-columns `{name}`: the output already has this column; keep other columns"
            )));
        }
        let i = find(name)?;
        indices.push(i);
        kept.push(schema.field(i).clone());
    }
    Ok((schema.field(id_index).clone(), kept, indices))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_row_once_within_bounds() {
        let mut id = 0;
        let file = crate::io::input::InputFile {
            url: "/f".into(),
            path: "f".into(),
            size: 10,
            version: None,
        };
        let shards = shards_of_file(3, &file, &[5, 30, 0, 7, 2], 10, &mut id);
        let total: u64 = shards.iter().map(|s| s.rows).sum();
        assert_eq!(total, 44);
        let mut next = 0;
        for s in &shards {
            assert!(s.rows <= 10);
            assert_eq!(s.first_row, next);
            assert_eq!(s.segments.iter().map(|g| g.rows).sum::<u64>(), s.rows);
            next += s.rows;
        }
        assert_eq!(
            shards[0].segments,
            vec![
                Segment {
                    row_group: 0,
                    skip: 0,
                    rows: 5
                },
                Segment {
                    row_group: 1,
                    skip: 0,
                    rows: 5
                }
            ]
        );
        assert_eq!(shards[1].part, "part-00003-000000000010.parquet");
        assert_eq!(id, shards.len());
    }
}
