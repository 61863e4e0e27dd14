//! The rows of a text input's lines: JSON objects, tab-separated or comma-separated fields,
//! parsed into Arrow string columns (the id, text and kept columns), and bad lines named by
//! file, line and column.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use serde::{Deserialize, Serialize};

use super::StoreError;

/// The format of a text input's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TextFormat {
    /// One JSON object per line (`.jsonl`, `.ndjson`, `.json`).
    Jsonl,
    /// Tab-separated fields, no quoting (`.tsv`, MS MARCO's `collection.tsv`).
    Tsv,
    /// Comma-separated fields, `"` quoting (RFC 4180) within one line (`.csv`).
    Csv,
}

/// Everything reading a text input can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// Reading the file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A line cannot be parsed.
    #[error(transparent)]
    BadLine(#[from] BadLine),
    /// The file cannot be read as the format says (a broken compressed stream, a missing
    /// column).
    #[error("{0}")]
    Data(String),
}

/// A line that cannot be parsed, where it is and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}. Fix the line, or pass --bad-lines skip to leave such lines out (the manifest counts them)", self.short())]
pub struct BadLine {
    /// The file.
    pub file: String,
    /// Its line number (1-based).
    pub line: u64,
    /// The column: `column N` (characters, 1-based) or `field `name``.
    pub column: String,
    /// What is wrong.
    pub detail: String,
}

impl BadLine {
    /// `file, line N, column C: what`.
    pub fn short(&self) -> String {
        format!(
            "{}, line {}, {}: {}",
            self.file, self.line, self.column, self.detail
        )
    }
}

/// What is wrong with a line, before its file and number are known.
#[derive(Debug, Clone)]
pub struct LineProblem {
    column: String,
    detail: String,
}

impl LineProblem {
    fn at_char(line: &str, byte: usize, detail: impl Into<String>) -> Self {
        let chars = line.get(..byte).map_or(byte, |s| s.chars().count());
        LineProblem {
            column: format!("column {}", chars + 1),
            detail: detail.into(),
        }
    }

    /// The problem placed at line `line` of `file`.
    pub fn at(self, file: &str, line: u64) -> BadLine {
        BadLine {
            file: file.to_string(),
            line,
            column: self.column,
            detail: self.detail,
        }
    }
}

/// How the lines of one file become rows: which field or column holds each wanted column.
#[derive(Debug, Clone)]
pub struct RowLayout {
    format: TextFormat,
    /// The wanted columns, each once, as the batches' fields.
    schema: SchemaRef,
    /// TSV/CSV: the index of each wanted column among the line's fields, and their count.
    positions: Vec<usize>,
    names: Vec<String>,
}

impl RowLayout {
    /// The layout of a file with columns `names` (TSV/CSV; ignored for JSON lines) read for
    /// the columns `wanted`.
    pub fn new(
        file: &str,
        format: TextFormat,
        names: Vec<String>,
        wanted: &[String],
    ) -> Result<Self, TextError> {
        let mut unique: Vec<&String> = Vec::new();
        for w in wanted {
            if !unique.contains(&w) {
                unique.push(w);
            }
        }
        let mut positions = Vec::new();
        if format != TextFormat::Jsonl {
            for w in &unique {
                let at = names.iter().position(|n| n == *w).ok_or_else(|| {
                    TextError::Data(format!(
                        "{file}: no column `{w}` (columns: {}); pick the columns with \
                         --id-column / --text-column / --keep-columns, or name a file's columns \
                         with --columns (then it has no header line)",
                        names.join(", ")
                    ))
                })?;
                positions.push(at);
            }
        }
        let schema = Arc::new(Schema::new(
            unique
                .iter()
                .map(|n| Field::new(n.as_str(), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        Ok(RowLayout {
            format,
            schema,
            positions,
            names,
        })
    }

    /// The file's column names (TSV/CSV: its header or `--columns`; none for JSON lines).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The batches' schema: every wanted column, a nullable string.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The wanted columns' values of one line (without its terminator).
    fn parse<'l>(&self, line: &'l [u8]) -> Result<Vec<Option<Cow<'l, str>>>, LineProblem> {
        let line = std::str::from_utf8(line).map_err(|e| {
            let valid = std::str::from_utf8(&line[..e.valid_up_to()]).unwrap_or("");
            LineProblem {
                column: format!("column {}", valid.chars().count() + 1),
                detail: "invalid UTF-8".into(),
            }
        })?;
        match self.format {
            TextFormat::Jsonl => self.parse_json(line),
            TextFormat::Tsv => self.pick(line, line.split('\t').map(Cow::Borrowed).collect()),
            TextFormat::Csv => {
                let fields = csv_fields(line)?;
                self.pick(line, fields)
            }
        }
    }

    fn pick<'l>(
        &self,
        line: &'l str,
        fields: Vec<Cow<'l, str>>,
    ) -> Result<Vec<Option<Cow<'l, str>>>, LineProblem> {
        if fields.len() != self.names.len() {
            let sep = if self.format == TextFormat::Tsv {
                "tab-separated"
            } else {
                "comma-separated"
            };
            return Err(LineProblem::at_char(
                line,
                line.len(),
                format!(
                    "{} {sep} fields where the columns are {} ({})",
                    fields.len(),
                    self.names.len(),
                    self.names.join(", ")
                ),
            ));
        }
        let mut fields: Vec<Option<Cow<'l, str>>> = fields.into_iter().map(Some).collect();
        Ok(self.positions.iter().map(|&i| fields[i].take()).collect())
    }

    fn parse_json<'l>(&self, line: &'l str) -> Result<Vec<Option<Cow<'l, str>>>, LineProblem> {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .map_err(|e| LineProblem {
                column: format!("column {}", e.column()),
                detail: format!("not a JSON object ({e})"),
            })?;
        self.schema
            .fields()
            .iter()
            .map(|field| {
                let name = field.name();
                let problem = |detail: String| LineProblem {
                    column: format!("field `{name}`"),
                    detail,
                };
                match object.get(name.as_str()) {
                    None => Err(problem(format!(
                        "no field `{name}` (fields: {}); name the fields with --id-column / \
                         --text-column",
                        object.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))),
                    Some(serde_json::Value::Null) => Ok(None),
                    Some(serde_json::Value::String(s)) => Ok(Some(Cow::Owned(s.clone()))),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        Ok(Some(Cow::Owned(v.to_string())))
                    }
                    Some(v) => Err(problem(format!(
                        "is {}, not text",
                        if v.is_array() {
                            "an array"
                        } else {
                            "an object"
                        }
                    ))),
                }
            })
            .collect()
    }
}

/// The names in a TSV/CSV header line.
pub fn header_names(file: &str, format: TextFormat, line: &[u8]) -> Result<Vec<String>, TextError> {
    let names: Vec<String> = match std::str::from_utf8(line) {
        Ok(l) if format == TextFormat::Tsv => l.split('\t').map(str::to_string).collect(),
        Ok(l) => csv_fields(l)
            .map_err(|p| TextError::Data(format!("{file}, line 1 (the header): {}", p.detail)))?
            .into_iter()
            .map(Cow::into_owned)
            .collect(),
        Err(_) => Vec::new(),
    };
    if names.iter().all(|n| n.trim().is_empty()) {
        return Err(TextError::Data(format!(
            "{file}: the first line is not a header of column names: name the columns with \
             --columns (e.g. --columns id,text)"
        )));
    }
    Ok(names)
}

/// The fields of one CSV line (RFC 4180 quoting, within the line).
fn csv_fields(line: &str) -> Result<Vec<Cow<'_, str>>, LineProblem> {
    let b = line.as_bytes();
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            let open = i;
            let mut value = String::new();
            i += 1;
            loop {
                let Some(q) = line[i..].find('"').map(|q| i + q) else {
                    return Err(LineProblem::at_char(
                        line,
                        open,
                        "a quoted field is not closed on its line (fields spanning lines are \
                         not supported: replace their line breaks)",
                    ));
                };
                value.push_str(&line[i..q]);
                if b.get(q + 1) == Some(&b'"') {
                    value.push('"');
                    i = q + 2;
                } else {
                    i = q + 1;
                    break;
                }
            }
            fields.push(Cow::Owned(value));
            match b.get(i) {
                None => return Ok(fields),
                Some(b',') => i += 1,
                Some(_) => return Err(LineProblem::at_char(
                    line,
                    i,
                    "text after a closing quote (a quote inside a quoted field is written \"\")",
                )),
            }
        } else {
            let end = line[i..].find(',').map_or(line.len(), |c| i + c);
            fields.push(Cow::Borrowed(&line[i..end]));
            if end == line.len() {
                return Ok(fields);
            }
            i = end + 1;
        }
    }
}

/// Rows gathered into one batch of string columns.
pub struct RowBatcher<'a> {
    layout: &'a RowLayout,
    builders: Vec<StringBuilder>,
    rows: usize,
    capacity: usize,
}

impl<'a> RowBatcher<'a> {
    /// An empty batch of up to `capacity` rows.
    pub fn new(layout: &'a RowLayout, capacity: usize) -> Self {
        RowBatcher {
            layout,
            builders: layout
                .schema
                .fields()
                .iter()
                .map(|_| StringBuilder::new())
                .collect(),
            rows: 0,
            capacity: capacity.max(1),
        }
    }

    /// Adds the row of `line`, or says why it has none (nothing is added).
    pub fn push(&mut self, line: &[u8]) -> Result<(), LineProblem> {
        let values = self.layout.parse(line)?;
        for (builder, value) in self.builders.iter_mut().zip(values) {
            builder.append_option(value);
        }
        self.rows += 1;
        Ok(())
    }

    /// Whether the batch holds its capacity.
    pub fn full(&self) -> bool {
        self.rows >= self.capacity
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The batch, leaving this one empty.
    pub fn finish(&mut self) -> Result<RecordBatch, TextError> {
        let columns: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        self.rows = 0;
        RecordBatch::try_new(self.layout.schema.clone(), columns)
            .map_err(|e| TextError::Data(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(format: TextFormat, names: &[&str]) -> RowLayout {
        let names = names.iter().map(|s| s.to_string()).collect();
        RowLayout::new("f", format, names, &["id".into(), "text".into()]).unwrap()
    }

    fn row(layout: &RowLayout, line: &str) -> Result<Vec<Option<String>>, LineProblem> {
        layout
            .parse(line.as_bytes())
            .map(|v| v.into_iter().map(|c| c.map(Cow::into_owned)).collect())
    }

    #[test]
    fn csv_quoting_within_a_line() {
        let l = layout(TextFormat::Csv, &["text", "id"]);
        assert_eq!(
            row(&l, r#""say ""hi"", twice",7"#).unwrap(),
            vec![Some("7".into()), Some(r#"say "hi", twice"#.into())]
        );
        assert_eq!(
            row(&l, "a,").unwrap(),
            vec![Some("".into()), Some("a".into())]
        );
        let e = row(&l, r#""open,7"#).unwrap_err();
        assert_eq!(e.column, "column 1");
        let e = row(&l, r#""x"y,7"#).unwrap_err();
        assert_eq!(e.column, "column 4");
        assert!(row(&l, "a,b,c")
            .unwrap_err()
            .detail
            .contains("3 comma-separated"));
    }

    #[test]
    fn json_fields_by_name_and_problems_by_column() {
        let l = layout(TextFormat::Jsonl, &[]);
        assert_eq!(
            row(&l, r#"{"text": "é", "id": 3, "x": [1]}"#).unwrap(),
            vec![Some("3".into()), Some("é".into())]
        );
        assert_eq!(
            row(&l, r#"{"text": null, "id": "a"}"#).unwrap(),
            vec![Some("a".into()), None]
        );
        let e = row(&l, r#"{"_id": "a", "text": "t"}"#).unwrap_err();
        assert_eq!(e.column, "field `id`");
        assert!(e.detail.contains("fields: _id, text"), "{}", e.detail);
        let e = row(&l, r#"{"id": "a", "text": "t",}"#).unwrap_err();
        assert_eq!(e.column, "column 25");
        let e = l.parse(b"{\"id\": \"\xff\"}").unwrap_err();
        assert_eq!(e.column, "column 9");
    }

    #[test]
    fn tsv_fields_must_match_the_columns() {
        let l = layout(TextFormat::Tsv, &["id", "text"]);
        assert_eq!(
            row(&l, "1\ttext with, comma").unwrap(),
            vec![Some("1".into()), Some("text with, comma".into())]
        );
        assert!(row(&l, "1\ta\tb").is_err());
        assert!(RowLayout::new("f", TextFormat::Tsv, vec!["pid".into()], &["id".into()]).is_err());
    }
}
