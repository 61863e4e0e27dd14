//! The output rows in the layouts of `mine_hard_negatives`, column names included:
//!
//! | format        | columns (`output_scores` off)              | with `--output-scores`            |
//! |---------------|--------------------------------------------|-----------------------------------|
//! | triplet       | anchor, positive, negative                 | + scores `[pos, neg]`             |
//! | n-tuple       | anchor, positive, negative_1..negative_n   | + scores `[pos, neg_1..neg_n]`    |
//! | labeled-pair  | anchor, positive (a document), label 1/0   | score instead of label            |
//! | labeled-list  | anchor, positive `[pos, negs..]`, labels   | scores instead of labels          |
//!
//! anchor/positive keep the dataset's column names. Rows go query by query (first appearance),
//! then positive by positive, as ST lays them out.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, Int64Builder, ListBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

/// An output layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// (anchor, positive, negative): one row per negative found.
    Triplet,
    /// (anchor, positive, negative_1, ..., negative_n): queries short of n negatives dropped.
    #[value(name = "n-tuple")]
    NTuple,
    /// n-tuple with scores (ST's deprecated spelling of `n-tuple --output-scores`).
    #[value(name = "n-tuple-scores")]
    NTupleScores,
    /// (anchor, document, label): positives labelled 1, negatives 0.
    LabeledPair,
    /// (anchor, [documents], [labels]): queries with no negative dropped.
    LabeledList,
}

/// What one output row set holds before it becomes a parquet part.
pub struct OutputRows {
    format: OutputFormat,
    scores: bool,
    negatives: usize,
    names: (String, String),
    anchor: Vec<String>,
    /// Text fields after the anchor (positive then negatives; the list for labeled-list).
    docs: Vec<Vec<String>>,
    /// The score or label values of each row.
    values: Vec<Vec<f64>>,
}

impl OutputRows {
    /// Empty rows for `format` (`n-tuple-scores` already folded into n-tuple + scores).
    pub fn new(
        format: OutputFormat,
        scores: bool,
        negatives: usize,
        names: (String, String),
    ) -> Self {
        Self {
            format,
            scores,
            negatives,
            names,
            anchor: Vec::new(),
            docs: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.anchor.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.anchor.is_empty()
    }

    /// Adds one query's rows: its positives and negatives (text, score); a negative with a
    /// `-inf` score was not found.
    pub fn add(&mut self, query: &str, positives: &[(&str, f32)], negatives: &[(&str, f32)]) {
        let found: Vec<(&str, f32)> = negatives
            .iter()
            .copied()
            .filter(|n| n.1 != f32::NEG_INFINITY)
            .collect();
        let mut row = |docs: Vec<String>, values: Vec<f64>| {
            self.anchor.push(query.to_string());
            self.docs.push(docs);
            self.values.push(values);
        };
        match self.format {
            OutputFormat::Triplet => {
                for &(p, ps) in positives {
                    for &(n, ns) in &found {
                        row(vec![p.into(), n.into()], vec![ps as f64, ns as f64]);
                    }
                }
            }
            OutputFormat::NTuple | OutputFormat::NTupleScores => {
                if found.len() < negatives.len() {
                    return;
                }
                for &(p, ps) in positives {
                    let mut docs = vec![p.to_string()];
                    docs.extend(found.iter().map(|n| n.0.to_string()));
                    let mut values = vec![ps as f64];
                    values.extend(found.iter().map(|n| n.1 as f64));
                    row(docs, values);
                }
            }
            OutputFormat::LabeledPair => {
                for &(p, ps) in positives {
                    row(
                        vec![p.into()],
                        vec![if self.scores { ps as f64 } else { 1.0 }],
                    );
                }
                for &(n, ns) in &found {
                    row(
                        vec![n.into()],
                        vec![if self.scores { ns as f64 } else { 0.0 }],
                    );
                }
            }
            OutputFormat::LabeledList => {
                if found.is_empty() {
                    return;
                }
                for &(p, ps) in positives {
                    let mut docs = vec![p.to_string()];
                    docs.extend(found.iter().map(|n| n.0.to_string()));
                    let values = if self.scores {
                        std::iter::once(ps as f64)
                            .chain(found.iter().map(|n| n.1 as f64))
                            .collect()
                    } else {
                        std::iter::once(1.0)
                            .chain(found.iter().map(|_| 0.0))
                            .collect()
                    };
                    row(docs, values);
                }
            }
        }
    }

    /// The output schema.
    pub fn schema(&self) -> SchemaRef {
        let text = |name: &str| Field::new(name, DataType::Utf8, false);
        let list = |name: &str, item: DataType| {
            Field::new(
                name,
                DataType::List(Arc::new(Field::new("item", item, true))),
                false,
            )
        };
        let mut fields = vec![text(&self.names.0)];
        match self.format {
            OutputFormat::Triplet => {
                fields.extend([text(&self.names.1), text("negative")]);
                if self.scores {
                    fields.push(list("scores", DataType::Float64));
                }
            }
            OutputFormat::NTuple | OutputFormat::NTupleScores => {
                fields.push(text(&self.names.1));
                fields.extend((1..=self.negatives).map(|i| text(&format!("negative_{i}"))));
                if self.scores {
                    fields.push(list("scores", DataType::Float64));
                }
            }
            OutputFormat::LabeledPair => {
                fields.push(text(&self.names.1));
                fields.push(if self.scores {
                    Field::new("score", DataType::Float64, false)
                } else {
                    Field::new("label", DataType::Int64, false)
                });
            }
            OutputFormat::LabeledList => {
                fields.push(list(&self.names.1, DataType::Utf8));
                fields.push(if self.scores {
                    list("scores", DataType::Float64)
                } else {
                    list("labels", DataType::Int64)
                });
            }
        }
        Arc::new(Schema::new(fields))
    }

    /// The rows as one record batch of [`Self::schema`].
    pub fn batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let strings = |values: &mut dyn Iterator<Item = &str>| -> ArrayRef {
            let mut b = StringBuilder::new();
            values.for_each(|v| b.append_value(v));
            Arc::new(b.finish())
        };
        let mut columns: Vec<ArrayRef> = vec![strings(&mut self.anchor.iter().map(String::as_str))];
        let float_lists = || -> ArrayRef {
            let mut b = ListBuilder::new(Float64Builder::new());
            for v in &self.values {
                b.values().append_slice(v);
                b.append(true);
            }
            Arc::new(b.finish())
        };
        match self.format {
            OutputFormat::LabeledList => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for docs in &self.docs {
                    docs.iter().for_each(|d| b.values().append_value(d));
                    b.append(true);
                }
                columns.push(Arc::new(b.finish()));
                if self.scores {
                    columns.push(float_lists());
                } else {
                    let mut b = ListBuilder::new(Int64Builder::new());
                    for v in &self.values {
                        v.iter().for_each(|&x| b.values().append_value(x as i64));
                        b.append(true);
                    }
                    columns.push(Arc::new(b.finish()));
                }
            }
            OutputFormat::LabeledPair => {
                columns.push(strings(&mut self.docs.iter().map(|d| d[0].as_str())));
                if self.scores {
                    let mut b = Float64Builder::new();
                    self.values.iter().for_each(|v| b.append_value(v[0]));
                    columns.push(Arc::new(b.finish()));
                } else {
                    let mut b = Int64Builder::new();
                    self.values.iter().for_each(|v| b.append_value(v[0] as i64));
                    columns.push(Arc::new(b.finish()));
                }
            }
            OutputFormat::Triplet | OutputFormat::NTuple | OutputFormat::NTupleScores => {
                let width = self.schema().fields().len() - 1 - usize::from(self.scores);
                for c in 0..width {
                    columns.push(strings(&mut self.docs.iter().map(|d| d[c].as_str())));
                }
                if self.scores {
                    columns.push(float_lists());
                }
            }
        }
        RecordBatch::try_new(self.schema(), columns)
    }
}
