//! One shard of `sparq score`: its (query, text) pairs through a cross-encoder, written as the
//! id column and a `score` float32 column, then the commit. The shard contract, the plan, the
//! workers and the exactly-once commit are `sparq encode`'s; only the work per row differs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array, RecordBatch};
use arrow::datatypes::DataType;

use super::columns::check_columns;
use super::pipeline::{open_shard, text_cells, OpenShard, ShardProgress, TextCell};
use super::settings::{EncodeSettings, RowTask};
use super::shard::{part_error, ShardError, ShardReport, ShardSpec};
use crate::io::id_hashes::push_hashes;
use crate::io::input::read_row_group_range;
use crate::io::output::{score_schema, PartWriter};
use crate::io::{CommitOutcome, Committer, StoreError};
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
    let OpenShard {
        file,
        input,
        metadata,
        row_group_starts,
    } = open_shard(shard, config, runtime)?;
    let schema = metadata.schema().clone();
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
        id: &config.id_column,
        query: query_column,
        text: &config.text_column,
    };
    for seg in &shard.segments {
        let mut next_row = row_group_starts[seg.row_group] + seg.skip;
        let mut failure: Option<ShardError> = None;
        let read = runtime.block_on(read_row_group_range(
            input.clone(),
            &metadata,
            seg,
            &projection,
            READ_BATCH_ROWS,
            |batch| {
                let first_row = next_row;
                next_row += batch.num_rows() as u64;
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
                        progress
                            .rows
                            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                        progress.tokens.store(report.tokens, Ordering::Relaxed);
                        progress.advance(batch.num_rows() as u64);
                        true
                    }
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            },
        ));
        if let Some(e) = failure {
            return Err(e);
        }
        read.map_err(|e| match e {
            StoreError::Parquet { .. } => ShardError::Data(format!(
                "{e} (column `{}`, `{query_column}` or `{}`)",
                config.text_column, config.id_column
            )),
            e => ShardError::Store(e),
        })?;
    }
    if report.rows != shard.rows {
        return Err(ShardError::Data(format!(
            "{}: read {} rows where the footer promises {} (truncated file?)",
            file.url, report.rows, shard.rows
        )));
    }
    let part = writer.finish().map_err(|e| part_error(shard, e))?;
    // A file rewritten while it was read may still decode: its version says it changed.
    input.check_unchanged()?;
    let outcome = super::shard::commit_part(config, runtime, committer, shard, part, ids, |n| {
        progress.advance(n)
    })?;
    report.already_committed = outcome == CommitOutcome::AlreadyCommitted;
    Ok(report)
}

/// The columns a score job reads from one file.
struct PairColumns<'a> {
    file: &'a str,
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
                report.null_id_examples.push(format!(
                    "{}, row {}",
                    self.file,
                    first_row + i as u64
                ));
            }
        }
        let (queries, texts) = (
            self.column(batch, self.query)?,
            self.column(batch, self.text)?,
        );
        let queries = self.strings(&queries, self.query, first_row)?;
        let texts = self.strings(&texts, self.text, first_row)?;
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

    /// Every cell of the string column `name`; a null or invalid one fails the shard, naming
    /// the file, the row and the column.
    fn strings<'b>(
        &self,
        column: &'b ArrayRef,
        name: &str,
        first_row: u64,
    ) -> Result<Vec<&'b str>, ShardError> {
        text_cells(column)
            .into_iter()
            .enumerate()
            .map(|(i, cell)| {
                let row = first_row + i as u64;
                match cell {
                    TextCell::Text(t) => Ok(t),
                    TextCell::Null => Err(ShardError::Data(format!(
                        "{}, row {row}, column `{name}`: null; every row needs a query and a \
                         text to score: fill it or drop the row",
                        self.file
                    ))),
                    TextCell::Invalid(reason) => Err(ShardError::Data(format!(
                        "{}, row {row}, column `{name}`: {reason}",
                        self.file
                    ))),
                }
            })
            .collect()
    }
}
