//! Parquet input: listing the files a URL names and reading row ranges of them.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use sha2::{Digest, Sha256};

use super::url::{Location, StoreUrl};
use super::{AllowedRoots, StoreError};

/// One input parquet file.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Full URL (`s3://bucket/key` or an absolute local path), for messages and workers.
    pub url: String,
    /// Object path within its store.
    pub path: ObjectPath,
    /// Size in bytes.
    pub size: u64,
    /// The version the store vouches for: the S3 ETag, or `<size>-<mtime ns>` of a local
    /// file. Reads check it, so a file changed after planning is noticed.
    pub version: Option<String>,
}

impl InputFile {
    /// The local path, for a local file.
    pub fn local_path(&self) -> Option<&Path> {
        (!self.url.starts_with("s3://")).then(|| Path::new(&self.url))
    }
}

/// The version of a local file: size and modification time (ns).
pub fn local_version(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}-{mtime}", meta.len())
}

/// How input globs match: `*`, `?` and `[...]` stay within one path component (so
/// `data/*.parquet` never reaches `data/vectors/part-…`); `**` spans folders.
pub const GLOB_OPTIONS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// The glob pattern in an input URL's path or key, if it has one.
pub fn input_glob(url: &StoreUrl) -> Result<Option<glob::Pattern>, StoreError> {
    let raw_key = match &url.location {
        Location::Local(p) => p.to_string_lossy().into_owned(),
        Location::S3 { key, .. } => key.clone(),
    };
    if !raw_key.contains(['*', '?', '[']) {
        return Ok(None);
    }
    glob::Pattern::new(&raw_key)
        .map(Some)
        .map_err(|e| StoreError::BadUrl {
            url: url.raw.clone(),
            detail: format!("invalid glob: {e}"),
        })
}

/// The folders of a glob before its first component with a wildcard: where its matches lie.
pub fn glob_base(pattern: &str) -> &str {
    let mut end = 0;
    for (at, _) in pattern.match_indices('/') {
        if pattern[..at].contains(['*', '?', '[']) {
            break;
        }
        end = at;
    }
    &pattern[..end]
}

/// Lists the parquet files `url` names: one file, every `*.parquet` under a folder or
/// prefix (skipping names starting with `_` or `.`), or the matches of a glob (`*`, `?` and
/// `[...]` within one folder, `**` across folders). Sorted by path. Local files and folders met on the way (links followed)
/// must resolve under `roots`.
pub async fn list_inputs(
    url: &StoreUrl,
    roots: &AllowedRoots,
) -> Result<(Arc<dyn ObjectStore>, Vec<InputFile>), StoreError> {
    list_matching(url, roots, |name| name.ends_with(".parquet")).await
}

/// Lists the files `url` names as [`list_inputs`] does, a folder or prefix giving those of its
/// files whose name `listed` accepts.
pub(crate) async fn list_matching(
    url: &StoreUrl,
    roots: &AllowedRoots,
    listed: fn(&str) -> bool,
) -> Result<(Arc<dyn ObjectStore>, Vec<InputFile>), StoreError> {
    let (store, path) = url.store()?;
    let raw_key = match &url.location {
        Location::Local(p) => p.to_string_lossy().into_owned(),
        Location::S3 { key, .. } => key.clone(),
    };
    let pattern = input_glob(url)?;
    let mut files = match &url.location {
        Location::Local(local) => list_local(url, local, pattern.as_ref(), roots, listed)?,
        Location::S3 { .. } => {
            list_s3(url, &store, &path, &raw_key, pattern.as_ref(), listed).await?
        }
    };
    if files.is_empty() {
        return Err(StoreError::NoInput {
            url: url.raw.clone(),
        });
    }
    files.sort_by(|a, b| a.path.as_ref().cmp(b.path.as_ref()));
    Ok((store, files))
}

async fn list_s3(
    url: &StoreUrl,
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    raw_key: &str,
    pattern: Option<&glob::Pattern>,
    listed: fn(&str) -> bool,
) -> Result<Vec<InputFile>, StoreError> {
    let prefix = match pattern {
        Some(_) => ObjectPath::from(glob_base(raw_key)),
        None => path.clone(),
    };
    let file_of = |meta: object_store::ObjectMeta| InputFile {
        url: file_url(url, &meta.location),
        path: meta.location,
        size: meta.size,
        version: meta.e_tag,
    };
    // A single object named exactly.
    if pattern.is_none() {
        if let Ok(meta) = store.head(path).await {
            return Ok(vec![file_of(meta)]);
        }
    }
    let mut files = Vec::new();
    let mut listing = store.list(Some(&prefix));
    while let Some(item) = listing.next().await {
        let meta = item.map_err(|e| StoreError::object("listing", &url.raw, e))?;
        let relative = meta
            .location
            .as_ref()
            .strip_prefix(prefix.as_ref())
            .unwrap_or(meta.location.as_ref());
        let name = meta.location.filename().unwrap_or("");
        let matched = match pattern {
            Some(p) => p.matches_with(meta.location.as_ref(), GLOB_OPTIONS),
            None => listed(name),
        };
        if matched && !hidden(relative) {
            files.push(file_of(meta));
        }
    }
    Ok(files)
}

/// Whether a relative name has a part starting with `_` or `.` (markers, temporary files).
fn hidden(relative: &str) -> bool {
    relative
        .split('/')
        .any(|part| part.starts_with('_') || part.starts_with('.'))
}

/// Walks a local file, folder or glob. Every folder is checked against `roots` before it is
/// read and every file before it is listed, by where it really is.
fn list_local(
    url: &StoreUrl,
    local: &Path,
    pattern: Option<&glob::Pattern>,
    roots: &AllowedRoots,
    listed: fn(&str) -> bool,
) -> Result<Vec<InputFile>, StoreError> {
    let io = |op, path: &Path, e| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source: e,
    };
    let start = match pattern {
        Some(_) => PathBuf::from(match glob_base(&local.to_string_lossy()) {
            "" => "/",
            base => base,
        }),
        None => local.to_path_buf(),
    };
    let mut files = Vec::new();
    let mut visited = std::collections::HashSet::new();
    // A glob's matches lie as many folders down as it has components after its base (any
    // depth with `**`); a folder is walked whole.
    let depth = match pattern {
        Some(p) if !p.as_str().contains("**") => p
            .as_str()
            .get(start.as_os_str().len()..)
            .unwrap_or("")
            .trim_start_matches('/')
            .split('/')
            .count(),
        _ => usize::MAX,
    };
    let mut stack = vec![(start.clone(), String::new())];
    let add = |path: PathBuf, files: &mut Vec<InputFile>| -> Result<(), StoreError> {
        roots.check(&path)?;
        let meta = std::fs::metadata(&path).map_err(|e| io("reading the metadata of", &path, e))?;
        let object = ObjectPath::from_absolute_path(&path).map_err(|e| StoreError::BadUrl {
            url: url.raw.clone(),
            detail: e.to_string(),
        })?;
        files.push(InputFile {
            url: path.to_string_lossy().into_owned(),
            path: object,
            size: meta.len(),
            version: Some(local_version(&meta)),
        });
        Ok(())
    };
    if pattern.is_none() && start.is_file() {
        add(start, &mut files)?;
        return Ok(files);
    }
    while let Some((dir, rel)) = stack.pop() {
        let real = roots.check(&dir)?;
        if !visited.insert(real) {
            continue; // A link back to a folder already walked.
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A missing folder is no input (reported as such by the caller).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("listing", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io("listing", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let rel_name = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if hidden(&name) {
                continue;
            }
            // `is_dir` / `is_file` follow links; broken links are neither and are skipped.
            if path.is_dir() {
                if rel_name.split('/').count() < depth {
                    stack.push((path, rel_name));
                }
            } else if path.is_file() {
                let matched = match pattern {
                    Some(p) => p.matches_with(&path.to_string_lossy(), GLOB_OPTIONS),
                    None => listed(&name),
                };
                if matched {
                    add(path, &mut files)?;
                }
            }
        }
    }
    Ok(files)
}

fn file_url(url: &StoreUrl, path: &ObjectPath) -> String {
    match &url.location {
        Location::Local(_) => format!("/{}", path.as_ref()),
        Location::S3 { bucket, .. } => format!("s3://{bucket}/{}", path.as_ref()),
    }
}

/// A parquet footer and what identifies the file's content.
#[derive(Debug, Clone)]
pub struct Footer {
    /// The decoded metadata.
    pub metadata: ArrowReaderMetadata,
    /// SHA-256 of the footer bytes (schema, row groups, column chunk offsets, sizes and
    /// statistics): a rewritten file has another one.
    pub digest: String,
    /// Rows in the file.
    pub rows: u64,
}

/// Bytes read from the end of a file in one request: most footers fit.
const FOOTER_PREFETCH: u64 = 64 << 10;

/// Reads and decodes the footer of a parquet file, and digests it.
pub async fn read_footer(reader: &mut InputReader) -> Result<Footer, StoreError> {
    let url = reader.url.clone();
    let corrupt = |detail: String| StoreError::Parquet {
        location: url.clone(),
        detail: format!(
            "cannot read the parquet footer ({detail}): the file is corrupt, truncated or not \
             parquet; re-export it or move it out of the input"
        ),
    };
    let size = reader.size;
    if size < 12 {
        return Err(corrupt(format!("{size} bytes is too short")));
    }
    let tail_len = FOOTER_PREFETCH.min(size);
    let tail = reader.read_range(size - tail_len..size).await?;
    if &tail[tail.len() - 4..] != b"PAR1" {
        return Err(corrupt("no PAR1 magic at the end".into()));
    }
    let n = tail.len();
    let footer_len = u32::from_le_bytes(tail[n - 8..n - 4].try_into().expect("4 bytes")) as u64;
    if footer_len + 12 > size {
        return Err(corrupt(format!(
            "the footer claims {footer_len} bytes of a {size}-byte file"
        )));
    }
    let footer = if footer_len + 8 <= tail_len {
        tail.slice((n - 8 - footer_len as usize)..(n - 8))
    } else {
        reader.read_range(size - 8 - footer_len..size - 8).await?
    };
    let digest = hex::encode(Sha256::digest(&footer));
    let metadata =
        ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| corrupt(e.to_string()))?;
    // Row counts come from the file: a negative one, or row groups that do not add up to
    // the file's rows, would have the planner cut shards for rows that are not there.
    let mut sum: i64 = 0;
    for (i, group) in metadata.row_groups().iter().enumerate() {
        let n = group.num_rows();
        sum = match sum.checked_add(n) {
            Some(total) if n >= 0 => total,
            _ => return Err(corrupt(format!("row group {i} claims {n} rows"))),
        };
    }
    let claimed = metadata.file_metadata().num_rows();
    if claimed != sum {
        return Err(corrupt(format!(
            "the footer says {claimed} rows but its row groups hold {sum}"
        )));
    }
    let rows = sum as u64;
    let metadata = ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new())
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Footer {
        metadata,
        digest,
        rows,
    })
}

/// Reads the footer of a parquet file.
pub async fn read_metadata(
    store: Arc<dyn ObjectStore>,
    file: &InputFile,
    roots: &AllowedRoots,
) -> Result<ArrowReaderMetadata, StoreError> {
    let mut reader = InputReader::open(store, file, roots)?;
    Ok(read_footer(&mut reader).await?.metadata)
}

/// Reads a whole input file (small files: training data, output parts).
pub async fn read_whole(
    store: Arc<dyn ObjectStore>,
    file: &InputFile,
    roots: &AllowedRoots,
) -> Result<bytes::Bytes, StoreError> {
    let mut reader = InputReader::open(store, file, roots)?;
    let size = reader.size;
    reader.read_range(0..size).await
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

/// Streams one column of every row group of a file to `sink` (until it returns false), in
/// batches of `batch_rows`: the id column of an output part, for checks over the whole file.
pub async fn read_column(
    reader: InputReader,
    metadata: &ArrowReaderMetadata,
    column: usize,
    batch_rows: usize,
    mut sink: impl FnMut(RecordBatch) -> bool,
) -> Result<(), StoreError> {
    let mut open = true;
    for (row_group, meta) in metadata.metadata().row_groups().iter().enumerate() {
        let slice = RowGroupSlice {
            row_group,
            skip: 0,
            rows: meta.num_rows() as u64,
        };
        read_row_group_range(
            reader.clone(),
            metadata,
            &slice,
            &[column],
            batch_rows,
            |b| {
                open = sink(b);
                open
            },
        )
        .await?;
        if !open {
            break;
        }
    }
    Ok(())
}

/// Streams the rows of `slice` to `sink` (until it returns false), projected onto the
/// columns at `columns` (indices of the file's top-level arrow fields).
pub async fn read_row_group_range(
    reader: InputReader,
    metadata: &ArrowReaderMetadata,
    slice: &RowGroupSlice,
    columns: &[usize],
    batch_rows: usize,
    mut sink: impl FnMut(RecordBatch) -> bool,
) -> Result<(), StoreError> {
    let url = reader.url.clone();
    let probe = reader.clone();
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata.clone());
    let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
    let row_group = slice.row_group;
    let selection = RowSelection::from(vec![
        RowSelector::skip(slice.skip as usize),
        RowSelector::select(slice.rows as usize),
    ]);
    let location = || format!("{url}, row group {row_group}");
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
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                // A file changed under the reader decodes as garbage: say so, not "corrupt".
                probe.check_unchanged()?;
                if let Some(StoreError::Changed { url, detail }) = store_error_of(&e) {
                    return Err(StoreError::Changed {
                        url: url.clone(),
                        detail: detail.clone(),
                    });
                }
                return Err(StoreError::Parquet {
                    location: location(),
                    detail: format!(
                        "{e}: the row group cannot be decoded (corrupt file?); re-export the file"
                    ),
                });
            }
        };
        if !sink(batch) {
            break;
        }
    }
    Ok(())
}

/// Reads byte ranges of one input file for the parquet decoder. A local file is opened once,
/// through the allowed roots, and read by offset; an S3 object is read with `If-Match` on the
/// planned ETag. Either way a file that is not the planned version fails as changed.
#[derive(Clone)]
pub struct InputReader {
    source: Source,
    url: String,
    size: u64,
    version: Option<String>,
}

#[derive(Clone)]
enum Source {
    Local(Arc<std::fs::File>),
    Object(Arc<dyn ObjectStore>, ObjectPath),
}

impl InputReader {
    /// Opens `file` (a local one through `roots`) and checks it is the listed version.
    pub fn open(
        store: Arc<dyn ObjectStore>,
        file: &InputFile,
        roots: &AllowedRoots,
    ) -> Result<Self, StoreError> {
        let source = match file.local_path() {
            Some(path) => Source::Local(Arc::new(roots.open(path)?)),
            None => Source::Object(store, file.path.clone()),
        };
        let reader = Self {
            source,
            url: file.url.clone(),
            size: file.size,
            version: file.version.clone(),
        };
        reader.check_unchanged()?;
        Ok(reader)
    }

    /// The file's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fails with [`StoreError::Changed`] when an open local file is no longer the listed
    /// version (S3 reads check their ETag on every request).
    pub fn check_unchanged(&self) -> Result<(), StoreError> {
        let Source::Local(file) = &self.source else {
            return Ok(());
        };
        let meta = file.metadata().map_err(|e| StoreError::Io {
            op: "reading the metadata of",
            path: PathBuf::from(&self.url),
            source: e,
        })?;
        let now = local_version(&meta);
        match &self.version {
            Some(planned) if *planned != now => Err(StoreError::Changed {
                url: self.url.clone(),
                detail: describe_change(planned, &now),
            }),
            _ if meta.len() != self.size => Err(StoreError::Changed {
                url: self.url.clone(),
                detail: format!("{} bytes, planned {}", meta.len(), self.size),
            }),
            _ => Ok(()),
        }
    }

    /// The file's size as listed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads `range` of the file (checked against the listed version).
    pub(crate) async fn read_range(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        match &self.source {
            Source::Local(file) => {
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                let read = file.read_exact_at(&mut buf, range.start);
                if let Err(e) = read {
                    self.check_unchanged()?;
                    return Err(StoreError::Io {
                        op: "reading",
                        path: PathBuf::from(&self.url),
                        source: e,
                    });
                }
                Ok(Bytes::from(buf))
            }
            Source::Object(store, path) => {
                let options = GetOptions {
                    if_match: self.version.clone(),
                    range: Some(GetRange::Bounded(range)),
                    ..Default::default()
                };
                let result = match store.get_opts(path, options).await {
                    Ok(r) => r.bytes().await,
                    Err(e) => Err(e),
                };
                result.map_err(|e| match e {
                    object_store::Error::Precondition { .. } => StoreError::Changed {
                        url: self.url.clone(),
                        detail: format!(
                            "its ETag is no longer {}",
                            self.version.as_deref().unwrap_or("?")
                        ),
                    },
                    e => StoreError::object("reading", &self.url, e),
                })
            }
        }
    }
}

/// Says how two local versions (`<size>-<mtime ns>`) differ.
fn describe_change(planned: &str, now: &str) -> String {
    let parse = |v: &str| -> Option<(u64, u128)> {
        let (size, mtime) = v.split_once('-')?;
        Some((size.parse().ok()?, mtime.parse().ok()?))
    };
    match (parse(planned), parse(now)) {
        (Some((s0, _)), Some((s1, _))) if s0 != s1 => format!("{s1} bytes, planned {s0}"),
        (Some(_), Some(_)) => "modified since it was planned".into(),
        _ => format!("version {now}, planned {planned}"),
    }
}

fn external(e: StoreError) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for InputReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        Box::pin(async move { self.read_range(range).await.map_err(external) })
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

/// The store error inside a decoder error, if the decoder failed reading (a changed file).
pub fn store_error_of(e: &ParquetError) -> Option<&StoreError> {
    match e {
        ParquetError::External(inner) => inner.downcast_ref::<StoreError>(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glob_base_is_its_folders_before_the_first_wildcard() {
        assert_eq!(glob_base("/data/x/*.parquet"), "/data/x");
        assert_eq!(glob_base("data/*/x.parquet"), "data");
        assert_eq!(glob_base("/data/**/*.parquet"), "/data");
        assert_eq!(glob_base("*.parquet"), "");
    }
}
