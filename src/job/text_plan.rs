//! Planning text inputs: each file's first lines sampled (its columns checked, its lines
//! measured), a plain file cut into byte ranges of `--shard-rows` × the mean line length, a
//! compressed file one shard.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use object_store::ObjectStore;

use super::args::EncodeConfig;
use super::identity::{InputRecord, JobIdentity, TextIdentity};
use super::JobError;
use crate::encode::columns::check_columns;
use crate::encode::settings::RowTask;
use crate::encode::shard::ShardSpec;
use crate::io::input::{InputFile, InputReader};
use crate::io::text_input::{
    byte_ranges, sample_text_file, Compression, TextError, TextFormat, TextOptions, TextSlice,
};
use crate::io::{AllowedRoots, StoreError};

/// A text input file as planned.
#[derive(Debug, Clone)]
pub(crate) struct TextFile {
    index: usize,
    file: InputFile,
    format: TextFormat,
    compression: Compression,
    mean_line_bytes: f64,
}

impl TextFile {
    /// Rows expected, for progress and the default shard size (a compressed file's bytes are
    /// counted as they are: an underestimate).
    pub fn estimated_rows(&self) -> u64 {
        (self.file.size as f64 / self.mean_line_bytes.max(1.0)).ceil() as u64
    }
}

/// The column names and types a file gives the output (id, kept), compared across files.
pub(crate) type ColumnTypes = Vec<(String, String)>;

/// Samples one text file: `Ok(Err(cause))` when it cannot be read (an unreadable input, listed
/// with the others), an error when the job cannot read it as asked (its columns, its first
/// line).
pub(crate) fn plan_text_file(
    runtime: &tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    roots: &AllowedRoots,
    args: &EncodeConfig,
    options: &TextOptions,
    (index, file, format, compression): (usize, &InputFile, TextFormat, Compression),
) -> Result<Result<(TextFile, InputRecord, ColumnTypes), String>, JobError> {
    if format == TextFormat::Jsonl && !options.columns.is_empty() {
        return Err(JobError::Settings(format!(
            "--columns names the columns of TSV/CSV files, but {} is JSON lines: its fields are \
             named by --id-column / --text-column; leave --columns out",
            file.url
        )));
    }
    let reader = match InputReader::open(store, file, roots) {
        Ok(r) => r,
        Err(e @ StoreError::Escape { .. }) => return Err(e.into()),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let query_column = match &args.task {
        RowTask::Score { query_column, .. } => Some(query_column),
        RowTask::Encode => None,
    };
    let wanted: Vec<String> = [&args.id_column, &args.text_column]
        .into_iter()
        .chain(query_column)
        .chain(&args.title_column)
        .chain(&args.keep_columns)
        .cloned()
        .collect();
    let sample = match sample_text_file(&reader, runtime, format, compression, options, &wanted) {
        Ok(s) => s,
        Err(TextError::Store(e @ StoreError::Escape { .. })) => return Err(e.into()),
        Err(TextError::Store(e)) => return Ok(Err(e.to_string())),
        Err(e) => return Err(JobError::Settings(e.to_string())),
    };
    let schema = Arc::new(Schema::new(
        sample
            .columns
            .iter()
            .map(|c| Field::new(c.as_str(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let (id, keep, _) = check_columns(
        &file.url,
        &schema,
        &args.id_column,
        &args.text_column,
        &args.keep_columns,
    )?;
    let types = std::iter::once(&id)
        .chain(&keep)
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    let record = InputRecord {
        url: file.url.clone(),
        size: file.size,
        version: file.version.clone(),
        rows: None,
        footer: None,
    };
    let planned = TextFile {
        index,
        file: file.clone(),
        format,
        compression,
        mean_line_bytes: sample.mean_line_bytes,
    };
    Ok(Ok((planned, record, types)))
}

/// Checks that a file's id and kept columns have the types of the files before it.
pub(crate) fn check_types(
    types: &mut Option<ColumnTypes>,
    file: &InputFile,
    these: ColumnTypes,
) -> Result<(), JobError> {
    match types {
        None => *types = Some(these),
        Some(expected) => {
            if let Some(((name, want), (_, got))) =
                expected.iter().zip(&these).find(|(a, b)| a != b)
            {
                return Err(JobError::SchemaMismatch {
                    file: file.url.clone(),
                    column: name.clone(),
                    expected: want.clone(),
                    found: got.clone(),
                });
            }
        }
    }
    Ok(())
}

/// How the text files are read and cut: the recorded cut of a resumed output, else
/// `shard_rows` lines of the first plain file's mean length (`None` without text files).
pub(crate) fn text_identity(
    files: &[TextFile],
    options: &TextOptions,
    shard_rows: u64,
    previous: Option<&JobIdentity>,
) -> Option<TextIdentity> {
    if files.is_empty() {
        return None;
    }
    let measured = || {
        files
            .iter()
            .find(|f| f.compression == Compression::Plain)
            .map_or(0, |f| {
                (shard_rows as f64 * f.mean_line_bytes.max(1.0)).ceil() as u64
            })
    };
    let shard_bytes = previous
        .and_then(|p| p.text.as_ref())
        .map_or_else(measured, |t| t.shard_bytes);
    Some(TextIdentity {
        options: options.clone(),
        shard_bytes,
    })
}

/// The shards of the text files: byte ranges of a plain file, a compressed file whole. A part
/// is named by its file and first byte.
pub(crate) fn text_shards(
    files: &[TextFile],
    text: &TextIdentity,
    next_id: &mut usize,
) -> Vec<ShardSpec> {
    let mut out = Vec::new();
    for f in files {
        for (start, end) in byte_ranges(f.file.size, f.compression, text.shard_bytes) {
            out.push(ShardSpec {
                id: *next_id,
                file: f.file.url.clone(),
                file_size: f.file.size,
                file_version: f.file.version.clone(),
                first_row: 0,
                rows: ((end - start) as f64 / f.mean_line_bytes.max(1.0)).ceil() as u64,
                segments: Vec::new(),
                part: super::part_name(f.index, start),
                text: Some(Box::new(TextSlice {
                    format: f.format,
                    compression: f.compression,
                    start,
                    end,
                    options: text.options.clone(),
                })),
            });
            *next_id += 1;
        }
    }
    out
}
