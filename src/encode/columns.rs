//! The columns a job reads: the id, the text and the kept columns, checked against each file's
//! schema before any work.

use std::borrow::Cow;

use arrow::datatypes::{DataType, Field, SchemaRef};

/// A document's text with its title before it, as BEIR builds corpus texts (`title + " " +
/// text`) and `sparq eval --title` does: the text alone when the title is missing or empty.
pub fn with_title<'a>(title: Option<&str>, text: &'a str) -> Cow<'a, str> {
    match title {
        Some(t) if !t.is_empty() => Cow::Owned(format!("{t} {text}")),
        _ => Cow::Borrowed(text),
    }
}

/// A column that is missing or of the wrong kind.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ColumnError {
    /// A required column is missing.
    #[error("{file}: no column `{column}` (columns: {}); pick the column with --id-column / --text-column / --keep-columns / --title-column (sparq score: --query-column)", available.join(", "))]
    Missing {
        /// The file.
        file: String,
        /// The column asked for.
        column: String,
        /// Columns present.
        available: Vec<String>,
    },
    /// The text column is not text.
    #[error("{file}: column `{column}` is {found}, not a string: pass the text column with --text-column")]
    TextType {
        /// The file.
        file: String,
        /// The column.
        column: String,
        /// Its type.
        found: String,
    },
    /// A kept column would collide with one sparq writes.
    #[error("--keep-columns `{column}`: the output already has this column; keep other columns")]
    Reserved {
        /// The column.
        column: String,
    },
}

/// Checks the columns of one file's schema: returns the fields of the id and kept columns
/// and the indices to project (id, text, kept...).
pub fn check_columns(
    file: &str,
    schema: &SchemaRef,
    id: &str,
    text: &str,
    keep: &[String],
) -> Result<(Field, Vec<Field>, Vec<usize>), ColumnError> {
    let find = |name: &str| -> Result<usize, ColumnError> {
        schema.index_of(name).map_err(|_| ColumnError::Missing {
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
        return Err(ColumnError::TextType {
            file: file.to_string(),
            column: text.to_string(),
            found: text_type.to_string(),
        });
    }
    let mut indices = vec![id_index, text_index];
    let mut kept = Vec::new();
    for name in keep {
        if name == id || name == crate::io::output::SPARSE_COLUMN {
            return Err(ColumnError::Reserved {
                column: name.to_string(),
            });
        }
        let i = find(name)?;
        indices.push(i);
        kept.push(schema.field(i).clone());
    }
    Ok((schema.field(id_index).clone(), kept, indices))
}
