//! Where a shard's rows come from: row groups of a parquet file, or the lines of a text file's
//! byte range (or of a whole compressed file), both read as Arrow batches of the job's columns.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::columns::check_columns;
use super::settings::EncodeSettings;
use super::shard::{ShardError, ShardSpec};
use crate::io::input::{read_footer, read_row_group_range, InputFile, InputReader};
use crate::io::text_input::{TextError, TextReadStats, TextShardRead, TextSlice};
use crate::io::text_rows::RowLayout;
use crate::io::{StoreError, StoreUrl};

/// A shard's input file, opened and its footer read.
pub(crate) struct OpenShard {
    /// The file as listed when the shard was planned.
    pub file: InputFile,
    /// The reader of its row groups.
    pub input: InputReader,
    /// Its parquet metadata.
    pub metadata: parquet::arrow::arrow_reader::ArrowReaderMetadata,
    /// The first row of each row group.
    pub row_group_starts: Vec<u64>,
}

/// The file a shard reads, opened at the version planned (a rewritten file is refused).
fn open_file(
    shard: &ShardSpec,
    config: &EncodeSettings,
) -> Result<(InputFile, InputReader), ShardError> {
    let url = StoreUrl::parse(&shard.file)?;
    let (store, path) = url.store()?;
    let file = InputFile {
        url: shard.file.clone(),
        path,
        size: shard.file_size,
        version: shard.file_version.clone(),
    };
    let input = InputReader::open(store, &file, &config.allowed_roots)?;
    Ok((file, input))
}

/// Opens the input file of `shard` (the version planned: a rewritten file is refused) and
/// reads its footer.
pub(crate) fn open_shard(
    shard: &ShardSpec,
    config: &EncodeSettings,
    runtime: &tokio::runtime::Runtime,
) -> Result<OpenShard, ShardError> {
    let (file, mut input) = open_file(shard, config)?;
    let metadata = runtime.block_on(read_footer(&mut input))?.metadata;
    let row_group_starts = metadata
        .metadata()
        .row_groups()
        .iter()
        .scan(0u64, |start, rg| {
            let s = *start;
            *start += rg.num_rows() as u64;
            Some(s)
        })
        .collect();
    Ok(OpenShard {
        file,
        input,
        metadata,
        row_group_starts,
    })
}

/// A shard's rows, parquet or text.
pub(crate) enum ShardSource {
    /// Row groups of a parquet file.
    Parquet(OpenShard),
    /// Lines of a text file.
    Text {
        /// The file.
        file: InputFile,
        /// Its reader.
        input: InputReader,
        /// The range and how its lines are read.
        slice: TextSlice,
        /// Which fields are the job's columns.
        layout: RowLayout,
    },
}

/// What reading a shard found besides its rows.
#[derive(Debug, Default)]
pub(crate) struct SourceStats {
    /// Lines left out, and the first few.
    pub text: TextReadStats,
}

impl ShardSource {
    /// Opens the shard's file, to read the columns `wanted` (id, text, kept...).
    pub fn open(
        shard: &ShardSpec,
        config: &EncodeSettings,
        runtime: &tokio::runtime::Runtime,
        wanted: &[String],
    ) -> Result<Self, ShardError> {
        let Some(slice) = &shard.text else {
            return Ok(ShardSource::Parquet(open_shard(shard, config, runtime)?));
        };
        let (file, input) = open_file(shard, config)?;
        let read = TextShardRead {
            reader: input.clone(),
            slice,
            options: &slice.options,
            wanted,
            batch_rows: 1,
        };
        let layout = read.layout(runtime).map_err(text_error)?;
        Ok(ShardSource::Text {
            file,
            input,
            slice: (**slice).clone(),
            layout,
        })
    }

    /// The file.
    pub fn file(&self) -> &InputFile {
        match self {
            ShardSource::Parquet(open) => &open.file,
            ShardSource::Text { file, .. } => file,
        }
    }

    /// The schema its rows are read with (a text file's columns are strings).
    pub fn schema(&self) -> SchemaRef {
        match self {
            ShardSource::Parquet(open) => open.metadata.schema().clone(),
            ShardSource::Text { layout, .. } => layout.schema().clone(),
        }
    }

    /// The job's columns checked against the schema: the id and kept fields, and the
    /// indices to read.
    pub fn columns(
        &self,
        config: &EncodeSettings,
    ) -> Result<
        (
            arrow::datatypes::Field,
            Vec<arrow::datatypes::Field>,
            Vec<usize>,
        ),
        ShardError,
    > {
        Ok(check_columns(
            &self.file().url,
            &self.schema(),
            &config.id_column,
            &config.text_column,
            &config.keep_columns,
        )?)
    }

    /// Streams the shard's rows, projected onto `projection`, to `sink(batch, row group, first
    /// row)` (until it returns false). A text shard's row group is 0 and its rows count from
    /// 0 in the shard.
    pub fn read(
        &self,
        shard: &ShardSpec,
        runtime: &tokio::runtime::Runtime,
        projection: &[usize],
        batch_rows: usize,
        columns_read: &str,
        mut sink: impl FnMut(RecordBatch, usize, u64) -> bool,
    ) -> Result<SourceStats, ShardError> {
        match self {
            ShardSource::Parquet(open) => {
                for seg in &shard.segments {
                    let mut next_row = open.row_group_starts[seg.row_group] + seg.skip;
                    let mut keep_open = true;
                    runtime
                        .block_on(read_row_group_range(
                            open.input.clone(),
                            &open.metadata,
                            seg,
                            projection,
                            batch_rows,
                            |batch| {
                                let first_row = next_row;
                                next_row += batch.num_rows() as u64;
                                keep_open = sink(batch, seg.row_group, first_row);
                                keep_open
                            },
                        ))
                        .map_err(|e| match e {
                            StoreError::Parquet { .. } => {
                                ShardError::Data(format!("{e} ({columns_read})"))
                            }
                            e => ShardError::Store(e),
                        })?;
                    if !keep_open {
                        break;
                    }
                }
                Ok(SourceStats::default())
            }
            ShardSource::Text {
                input,
                slice,
                layout,
                ..
            } => {
                let wanted: Vec<String> = layout
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                let read = TextShardRead {
                    reader: input.clone(),
                    slice,
                    options: &slice.options,
                    wanted: &wanted,
                    batch_rows,
                };
                let mut next_row = 0;
                let text = read
                    .read(runtime, layout, |batch| {
                        let first_row = next_row;
                        next_row += batch.num_rows() as u64;
                        sink(batch, 0, first_row)
                    })
                    .map_err(text_error)?;
                Ok(SourceStats { text })
            }
        }
    }

    /// Fails when the file is no longer the version planned.
    pub fn check_unchanged(&self) -> Result<(), StoreError> {
        match self {
            ShardSource::Parquet(open) => open.input.check_unchanged(),
            ShardSource::Text { input, .. } => input.check_unchanged(),
        }
    }
}

/// A text input's failure as a shard's: reading is the store's; a bad line or a broken file is
/// the data's (no retry helps).
fn text_error(e: TextError) -> ShardError {
    match e {
        TextError::Store(e) => ShardError::Store(e),
        e => ShardError::Data(e.to_string()),
    }
}
