//! Parquet input: listing the files a URL names and reading row ranges of them.

use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use super::url::{Location, StoreUrl};
use super::StoreError;

/// One input parquet file.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Full URL (`s3://bucket/key` or an absolute local path), for messages and workers.
    pub url: String,
    /// Object path within its store.
    pub path: ObjectPath,
    /// Size in bytes.
    pub size: u64,
}

/// Lists the parquet files `url` names: one file, every `*.parquet` under a folder or
/// prefix (skipping names starting with `_` or `.`), or the matches of a glob in the last
/// path component. Sorted by path.
pub async fn list_inputs(
    url: &StoreUrl,
) -> Result<(Arc<dyn ObjectStore>, Vec<InputFile>), StoreError> {
    let (store, path) = url.store()?;
    let raw_key = match &url.location {
        Location::Local(p) => p.to_string_lossy().into_owned(),
        Location::S3 { key, .. } => key.clone(),
    };
    let is_glob = raw_key.contains(['*', '?', '[']);
    let (prefix, pattern) = if is_glob {
        let (dir, _) = raw_key.rsplit_once('/').unwrap_or(("", raw_key.as_str()));
        let pattern = glob::Pattern::new(&raw_key).map_err(|e| StoreError::BadUrl {
            url: url.raw.clone(),
            detail: format!("invalid glob: {e}"),
        })?;
        let prefix = match &url.location {
            Location::Local(_) => {
                ObjectPath::from_absolute_path(dir).map_err(|e| StoreError::BadUrl {
                    url: url.raw.clone(),
                    detail: e.to_string(),
                })?
            }
            Location::S3 { .. } => ObjectPath::from(dir),
        };
        (prefix, Some(pattern))
    } else {
        (path.clone(), None)
    };
    // A single object named exactly.
    if pattern.is_none() {
        if let Ok(meta) = store.head(&path).await {
            let url_of = file_url(url, &meta.location);
            return Ok((
                store,
                vec![InputFile {
                    url: url_of,
                    path: meta.location,
                    size: meta.size,
                }],
            ));
        }
    }
    let mut files = Vec::new();
    let mut listing = store.list(Some(&prefix));
    while let Some(item) = listing.next().await {
        let meta = match item {
            Ok(meta) => meta,
            // A missing local folder lists as an error; report it as no input.
            Err(object_store::Error::NotFound { .. }) => break,
            Err(e) => return Err(StoreError::object("listing", &url.raw, e)),
        };
        let relative: Vec<&str> = meta
            .location
            .as_ref()
            .strip_prefix(prefix.as_ref())
            .unwrap_or(meta.location.as_ref())
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let hidden = relative
            .iter()
            .any(|part| part.starts_with('_') || part.starts_with('.'));
        let name = meta.location.filename().unwrap_or("");
        let matched = match &pattern {
            Some(p) => {
                let full = match &url.location {
                    Location::Local(_) => format!("/{}", meta.location.as_ref()),
                    Location::S3 { .. } => meta.location.as_ref().to_string(),
                };
                p.matches(&full)
            }
            None => name.ends_with(".parquet"),
        };
        if matched && !hidden {
            files.push(InputFile {
                url: file_url(url, &meta.location),
                path: meta.location,
                size: meta.size,
            });
        }
    }
    if files.is_empty() {
        return Err(StoreError::NoInput {
            url: url.raw.clone(),
        });
    }
    files.sort_by(|a, b| a.path.as_ref().cmp(b.path.as_ref()));
    Ok((store, files))
}

fn file_url(url: &StoreUrl, path: &ObjectPath) -> String {
    match &url.location {
        Location::Local(_) => format!("/{}", path.as_ref()),
        Location::S3 { bucket, .. } => format!("s3://{bucket}/{}", path.as_ref()),
    }
}

/// Reads the footer of a parquet file.
pub async fn read_metadata(
    store: Arc<dyn ObjectStore>,
    file: &InputFile,
) -> Result<ArrowReaderMetadata, StoreError> {
    let mut reader = ObjectFileReader::new(store, file);
    ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await.map_err(|e| {
        StoreError::Parquet {
            location: file.url.clone(),
            detail: format!(
                "cannot read the parquet footer ({e}): the file is corrupt, truncated or not parquet; \
                 re-export it or move it out of the input"
            ),
        }
    })
}

/// A contiguous run of rows inside one row group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowGroupSlice {
    /// Row group index.
    pub row_group: usize,
    /// Rows of the row group skipped before the slice.
    pub skip: u64,
    /// Rows in the slice.
    pub rows: u64,
}

/// Streams the rows of `slice` to `sink` (until it returns false), projected onto the
/// columns at `columns` (indices of the file's top-level arrow fields).
pub async fn read_row_group_range(
    store: Arc<dyn ObjectStore>,
    file: &InputFile,
    metadata: &ArrowReaderMetadata,
    slice: &RowGroupSlice,
    columns: &[usize],
    batch_rows: usize,
    mut sink: impl FnMut(RecordBatch) -> bool,
) -> Result<(), StoreError> {
    let reader = ObjectFileReader::new(store, file);
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata.clone());
    let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
    let row_group = slice.row_group;
    let selection = RowSelection::from(vec![
        RowSelector::skip(slice.skip as usize),
        RowSelector::select(slice.rows as usize),
    ]);
    let location = || format!("{}, row group {row_group}", file.url);
    let mut stream = builder
        .with_row_groups(vec![row_group])
        .with_projection(mask)
        .with_row_selection(selection)
        .with_batch_size(batch_rows)
        .build()
        .map_err(|e| StoreError::Parquet {
            location: location(),
            detail: e.to_string(),
        })?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| StoreError::Parquet {
            location: location(),
            detail: format!(
                "{e}: the row group cannot be decoded (corrupt file?); re-export the file"
            ),
        })?;
        if !sink(batch) {
            break;
        }
    }
    Ok(())
}

/// Reads byte ranges of one object for the parquet decoder; the size is known from the
/// listing, so the footer costs one ranged read.
struct ObjectFileReader {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
}

impl ObjectFileReader {
    fn new(store: Arc<dyn ObjectStore>, file: &InputFile) -> Self {
        Self {
            store,
            path: file.path.clone(),
            size: file.size,
        }
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectFileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        Box::pin(async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        Box::pin(async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        Box::pin(async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        })
    }
}
