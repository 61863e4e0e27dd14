//! One shard of `sparq score`: its (query, text) pairs through a cross-encoder, written as the
//! id column and a `score` float32 column, then the commit. The shard contract, the plan, the
//! workers and the exactly-once commit are `sparq encode`'s; only the work per row differs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array, RecordBatch};
use arrow::datatypes::DataType;

use super::columns::check_columns;
use super::pipeline::{text_cells, ShardProgress, TextCell};
use super::settings::{EncodeSettings, RowTask};
use super::shard::{part_error, ShardError, ShardReport, ShardSpec};
use super::source::ShardSource;
use crate::io::id_hashes::push_hashes;
use crate::io::output::{score_schema, PartWriter};
use crate::io::{CommitOutcome, Committer};
use crate::model::cross_encoder::CrossEncoder;

/// Rows per record batch read (and scored together, `batch_size` pairs per forward pass).
const READ_BATCH_ROWS: usize = 1024;
/// Null ids listed in a report (all are counted).
const LISTED_NULL_IDS: usize = 20;

/// Scores one shard and commits its part.
pub fn score_shard(
    model: &CrossEncoder,
    config: &EncodeSettings,
    runtime: &tokio::runtime::Runtime,
    committer: &Committer,
    shard: &ShardSpec,
    progress: &ShardProgress,
) -> Result<ShardReport, ShardError> {
    let RowTask::Score {
        query_column,
        batch_size,
    } = &config.task
    else {
        return Err(ShardError::Data(
            "a score worker was given an encode job".into(),
        ));
    };
    let wanted = [&config.id_column, &config.text_column, query_column].map(String::clone);
    let source = ShardSource::open(shard, config, runtime, &wanted)?;
    let file = source.file().clone();
    let schema = source.schema();
    let (id_field, _, mut projection) = check_columns(
        &file.url,
        &schema,
        &config.id_column,
        &config.text_column,
        &[],
    )?;
    let (_, _, query_projection) =
        check_columns(&file.url, &schema, &config.id_column, query_column, &[])?;
    projection.push(query_projection[1]);
    let part = committer.part_file(&shard.part)?;
    let mut writer = PartWriter::new(
        score_schema(&id_field),
        part,
        config.max_part_bytes(),
        Default::default(),
    )
    .map_err(|e| part_error(shard, e))?;
    let mut ids = Vec::new();
    let mut report = ShardReport {
        shard: shard.id,
        ..Default::default()
    };
    let columns = PairColumns {
        file: &file.url,
        text_input: shard.text.is_some(),
        id: &config.id_column,
        query: query_column,
        text: &config.text_column,
    };
    let mut failure: Option<ShardError> = None;
    let columns_read = format!(
        "column `{}`, `{query_column}` or `{}`",
        config.text_column, config.id_column
    );
    let read = source.read(
        shard,
        runtime,
        &projection,
        READ_BATCH_ROWS,
        &columns_read,
        |batch, _, first_row| {
            let rows = batch.num_rows() as u64;
            let scored = if progress.cancel.load(Ordering::Relaxed) {
                Err(ShardError::Abandoned)
            } else {
                columns.score_batch(model, *batch_size, &batch, first_row, &mut report)
            };
            match scored.and_then(|columns| {
                push_hashes(columns[0].as_ref(), &mut ids);
                writer
                    .write_columns(columns)
                    .map_err(|e| part_error(shard, e))
            }) {
                Ok(()) => {
                    progress.rows.fetch_add(rows, Ordering::Relaxed);
                    progress.tokens.store(report.tokens, Ordering::Relaxed);
                    progress.advance(rows);
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    let read = read?;
    // A text shard's rows are known once read; a parquet shard's must be the footer's.
    if shard.text.is_none() && report.rows != shard.rows {
        return Err(ShardError::Data(format!(
            "{}: read {} rows where the footer promises {} (truncated file?)",
            file.url, report.rows, shard.rows
        )));
    }
    report.skipped_lines = read.text.skipped;
    report.skipped_line_examples = read.text.skipped_examples;
    let part = writer.finish().map_err(|e| part_error(shard, e))?;
    // A file rewritten while it was read may still decode: its version says it changed.
    source.check_unchanged()?;
    let outcome = super::shard::commit_part(config, runtime, committer, shard, part, ids, |n| {
        progress.advance(n)
    })?;
    report.already_committed = outcome == CommitOutcome::AlreadyCommitted;
    Ok(report)
}

/// The columns a score job reads from one file.
struct PairColumns<'a> {
    file: &'a str,
    /// Rows of a text shard count from its range's start: a row is named by its id there.
    text_input: bool,
    id: &'a str,
    query: &'a str,
    text: &'a str,
}

impl PairColumns<'_> {
    /// The output columns (id, score) of one batch read at `first_row` of the file.
    fn score_batch(
        &self,
        model: &CrossEncoder,
        batch_size: usize,
        batch: &RecordBatch,
        first_row: u64,
        report: &mut ShardReport,
    ) -> Result<Vec<ArrayRef>, ShardError> {
        let ids = self.column(batch, self.id)?;
        for i in (0..ids.len()).filter(|&i| ids.is_null(i)) {
            report.null_ids += 1;
            if report.null_id_examples.len() < LISTED_NULL_IDS {
                report
                    .null_id_examples
                    .push(self.row_name(&ids, first_row, i));
            }
        }
        let (queries, texts) = (
            self.column(batch, self.query)?,
            self.column(batch, self.text)?,
        );
        let queries = self.strings(&queries, &ids, self.query, first_row)?;
        let texts = self.strings(&texts, &ids, self.text, first_row)?;
        let pairs: Vec<(&str, &str)> = queries.into_iter().zip(texts).collect();
        let (scores, tokens) = model.predict_counting_tokens(&pairs, batch_size)?;
        report.rows += scores.len() as u64;
        report.tokens += tokens;
        Ok(vec![ids, Arc::new(Float32Array::from(scores))])
    }

    fn column(&self, batch: &RecordBatch, name: &str) -> Result<ArrayRef, ShardError> {
        let column = batch.column_by_name(name).cloned().ok_or_else(|| {
            ShardError::Data(format!(
                "{}: column `{name}` missing from a row group",
                self.file
            ))
        })?;
        // Dictionary-encoded texts (pandas categoricals, say) are decoded to plain text.
        match column.data_type() {
            DataType::Dictionary(_, values) if name != self.id => {
                arrow::compute::cast(&column, values)
                    .map_err(|e| ShardError::Data(format!("{}: column `{name}`: {e}", self.file)))
            }
            _ => Ok(column),
        }
    }

    /// `file, row N` (a parquet file's row), or `file, the row with id X` (a text file's rows
    /// are counted from its shard's range, which a user cannot place).
    fn row_name(&self, ids: &ArrayRef, first_row: u64, i: usize) -> String {
        if !self.text_input {
            return format!("{}, row {}", self.file, first_row + i as u64);
        }
        match text_cells(ids).get(i) {
            Some(TextCell::Text(id)) => format!("{}, the row with id `{id}`", self.file),
            _ => format!("{}, a row with no id", self.file),
        }
    }

    /// Every cell of the string column `name`; a null or invalid one fails the shard, naming
    /// the file, the row and the column.
    fn strings<'b>(
        &self,
        column: &'b ArrayRef,
        ids: &ArrayRef,
        name: &str,
        first_row: u64,
    ) -> Result<Vec<&'b str>, ShardError> {
        text_cells(column)
            .into_iter()
            .enumerate()
            .map(|(i, cell)| match cell {
                TextCell::Text(t) => Ok(t),
                TextCell::Null => Err(ShardError::Data(format!(
                    "{}, column `{name}`: null; every row needs a query and a text to score: \
                     fill it or drop the row",
                    self.row_name(ids, first_row, i)
                ))),
                TextCell::Invalid(reason) => Err(ShardError::Data(format!(
                    "{}, column `{name}`: {reason}",
                    self.row_name(ids, first_row, i)
                ))),
            })
            .collect()
    }
}
