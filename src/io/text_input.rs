//! Text corpora as input: JSON lines, TSV and CSV, plain or gzip/zstd compressed, local or S3.
//!
//! A plain file is cut into byte ranges without being read at planning: a range owns every
//! line whose first byte lies in it (the rule of Hadoop's and datatrove's line readers), so
//! the ranges of a file cover each of its lines exactly once. A compressed stream cannot be
//! entered in the middle: a compressed file is one range, the whole file. The rows of a line
//! are parsed in [`super::text_rows`].

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use object_store::ObjectStore;

use super::input::{input_glob, InputFile, InputReader};
use super::text_rows::{RowBatcher, RowLayout};
pub use super::text_rows::{TextError, TextFormat};
use super::url::StoreUrl;
use super::AllowedRoots;
use super::StoreError;

/// How a text input's bytes are compressed (from the name's last extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Not compressed: cut into byte ranges.
    Plain,
    /// `.gz` (concatenated members included): one shard per file.
    Gzip,
    /// `.zst`: one shard per file.
    Zstd,
}

/// What to do with a line that cannot be parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BadLines {
    /// Fail the shard, naming the file, line and column.
    #[default]
    Fail,
    /// Leave the line out and count it (the manifest's summary says how many, and where).
    Skip,
}

impl std::fmt::Display for BadLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadLines::Fail => "fail",
            BadLines::Skip => "skip",
        })
    }
}

/// How text inputs are read: the settings of a job that reads text files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextOptions {
    /// The format of every text file (`None`: from each file's name).
    #[serde(default)]
    pub format: Option<TextFormat>,
    /// Names of the TSV/CSV columns, for files without a header line (empty: the first line
    /// is the header).
    #[serde(default)]
    pub columns: Vec<String>,
    /// What a line that cannot be parsed does.
    #[serde(default)]
    pub bad_lines: BadLines,
}

/// The part of a text file a shard reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextSlice {
    /// The file's format.
    pub format: TextFormat,
    /// Its compression.
    pub compression: Compression,
    /// First byte of the range (a line starting here or later belongs to it).
    pub start: u64,
    /// End of the range: a line starting here belongs to the next range.
    pub end: u64,
    /// How the job reads text lines.
    #[serde(default)]
    pub options: TextOptions,
}

/// The format and compression of a file named `name`, if it is a text input: by extension
/// (`.jsonl`/`.ndjson`/`.json`, `.tsv`, `.csv`, each optionally `.gz` or `.zst`), or any
/// non-parquet file when `format` is given.
pub fn text_kind(name: &str, format: Option<TextFormat>) -> Option<(TextFormat, Compression)> {
    let lower = name.to_ascii_lowercase();
    let (stem, compression) = if let Some(stem) = lower.strip_suffix(".gz") {
        (stem, Compression::Gzip)
    } else if let Some(stem) = lower.strip_suffix(".zst") {
        (stem, Compression::Zstd)
    } else {
        (lower.as_str(), Compression::Plain)
    };
    if stem.ends_with(".parquet") {
        return None;
    }
    let by_name = if [".jsonl", ".ndjson", ".json"]
        .iter()
        .any(|e| stem.ends_with(e))
    {
        Some(TextFormat::Jsonl)
    } else if stem.ends_with(".tsv") {
        Some(TextFormat::Tsv)
    } else if stem.ends_with(".csv") {
        Some(TextFormat::Csv)
    } else {
        None
    };
    Some((format.or(by_name)?, compression))
}

/// Lists the corpus files `url` names, as [`super::input::list_inputs`] does, except that a folder or
/// prefix without parquet files gives its text files (`*.jsonl`, `*.tsv`, `*.csv`, plain,
/// `.gz` or `.zst`).
pub async fn list_corpus_inputs(
    url: &StoreUrl,
    roots: &AllowedRoots,
) -> Result<(Arc<dyn ObjectStore>, Vec<InputFile>), StoreError> {
    let corpus = |name: &str| name.ends_with(".parquet") || text_kind(name, None).is_some();
    let (store, mut files) = super::input::list_matching(url, roots, corpus).await?;
    let parquet = |f: &InputFile| f.url.ends_with(".parquet");
    if input_glob(url)?.is_none() && files.len() > 1 && files.iter().any(parquet) {
        files.retain(parquet);
    }
    Ok((store, files))
}

/// The byte ranges a file of `size` bytes is cut into: `shard_bytes` each (the last shorter);
/// a compressed file is one range.
pub fn byte_ranges(size: u64, compression: Compression, shard_bytes: u64) -> Vec<(u64, u64)> {
    if size == 0 {
        return Vec::new();
    }
    if compression != Compression::Plain {
        return vec![(0, size)];
    }
    let step = shard_bytes.max(1);
    (0..size.div_ceil(step))
        .map(|k| (k * step, ((k + 1) * step).min(size)))
        .collect()
}

/// Bytes read per request from the file, while streaming a shard.
const STREAM_CHUNK: u64 = 4 << 20;
/// Bytes read per request for a header or a sample.
const SMALL_CHUNK: u64 = 64 << 10;

/// A file's bytes from `pos` on, read in ranged requests (each checked against the planned
/// version) from a synchronous thread.
struct ByteStream<'r> {
    reader: InputReader,
    runtime: &'r tokio::runtime::Runtime,
    pos: u64,
    size: u64,
    chunk: u64,
    buf: Bytes,
    at: usize,
}

impl Read for ByteStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let end = (self.pos + self.chunk).min(self.size);
            self.buf = self
                .runtime
                .block_on(self.reader.read_range(self.pos..end))
                .map_err(std::io::Error::other)?;
            self.pos = end;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A store error carried through a decoder as an I/O error comes back out as itself.
fn read_error(url: &str, e: std::io::Error) -> TextError {
    if e.get_ref().is_some_and(|inner| inner.is::<StoreError>()) {
        let inner = e.into_inner().expect("checked");
        return TextError::Store(*inner.downcast::<StoreError>().expect("checked"));
    }
    TextError::Data(format!(
        "{url}: cannot be read ({e}): a compressed file that is truncated or corrupt, or not \
         compressed as its name says; re-export it or move it out of the input"
    ))
}

/// The lines of a file's stream from a given offset (in the decompressed stream for a
/// compressed file).
struct Lines<'r> {
    inner: Box<dyn BufRead + 'r>,
    /// Offset of the next line.
    offset: u64,
}

impl<'r> Lines<'r> {
    /// Opens `reader`'s stream at `start` (plain files only; 0 for a compressed one),
    /// skipped to the first line that starts at or after `start`.
    fn open(
        reader: &InputReader,
        runtime: &'r tokio::runtime::Runtime,
        compression: Compression,
        start: u64,
        chunk: u64,
    ) -> Result<Self, TextError> {
        // A range that does not start the file starts at its first line: one byte earlier is
        // read so that a line starting exactly at `start` is recognised as such.
        let from = start.saturating_sub(1);
        let bytes = ByteStream {
            reader: reader.clone(),
            runtime,
            pos: from,
            size: reader.size(),
            chunk,
            buf: Bytes::new(),
            at: 0,
        };
        let inner: Box<dyn BufRead + 'r> = match compression {
            Compression::Plain => Box::new(BufReader::with_capacity(1 << 16, bytes)),
            Compression::Gzip => Box::new(BufReader::with_capacity(
                1 << 16,
                flate2::read::MultiGzDecoder::new(bytes),
            )),
            Compression::Zstd => Box::new(BufReader::with_capacity(
                1 << 16,
                zstd::stream::read::Decoder::new(bytes).map_err(|e| read_error(reader.url(), e))?,
            )),
        };
        let mut lines = Lines {
            inner,
            offset: from,
        };
        if start > 0 {
            let mut partial = Vec::new();
            lines.next(&mut partial, reader.url())?;
        }
        Ok(lines)
    }

    /// Reads the next line (with its terminator) into `buf`; `None` at the end of the stream.
    /// Returns the line's offset.
    fn next(&mut self, buf: &mut Vec<u8>, url: &str) -> Result<Option<u64>, TextError> {
        buf.clear();
        let n = self
            .inner
            .read_until(b'\n', buf)
            .map_err(|e| read_error(url, e))?;
        if n == 0 {
            return Ok(None);
        }
        let at = self.offset;
        self.offset += n as u64;
        Ok(Some(at))
    }
}

/// A line without its terminator (`\n` or `\r\n`) and, on the file's first line, a UTF-8 BOM.
fn trim_line(line: &[u8], first: bool) -> &[u8] {
    let mut line = line.strip_suffix(b"\n").unwrap_or(line);
    line = line.strip_suffix(b"\r").unwrap_or(line);
    if first {
        line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
    }
    line
}

/// Whether a line holds nothing but white space (skipped: not a row, not a bad line).
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The column names of a TSV/CSV file: `--columns` when given, else its header line.
fn column_names(
    reader: &InputReader,
    runtime: &tokio::runtime::Runtime,
    format: TextFormat,
    compression: Compression,
    options: &TextOptions,
) -> Result<Vec<String>, TextError> {
    if format == TextFormat::Jsonl || !options.columns.is_empty() {
        return Ok(options.columns.clone());
    }
    let mut lines = Lines::open(reader, runtime, compression, 0, SMALL_CHUNK)?;
    let mut buf = Vec::new();
    lines.next(&mut buf, reader.url())?;
    super::text_rows::header_names(reader.url(), format, trim_line(&buf, true))
}

/// What one shard of a text file read.
#[derive(Debug, Clone, Default)]
pub struct TextReadStats {
    /// Rows read.
    pub rows: u64,
    /// Lines left out (`--bad-lines skip`).
    pub skipped: u64,
    /// The first few, as `file, line N, column C: why`.
    pub skipped_examples: Vec<String>,
}

/// Skipped lines listed by example (all are counted).
const LISTED_SKIPS: usize = 20;

/// What a shard of a text file is read as.
pub struct TextShardRead<'a> {
    /// The file.
    pub reader: InputReader,
    /// The shard's range and the file's format.
    pub slice: &'a TextSlice,
    /// The job's text settings.
    pub options: &'a TextOptions,
    /// The columns to read, in the order of the batches' fields.
    pub wanted: &'a [String],
    /// Rows per batch.
    pub batch_rows: usize,
}

impl TextShardRead<'_> {
    /// The schema of the batches [`TextShardRead::read`] yields: every wanted column as a
    /// nullable string, after checking the file has them (TSV/CSV: in its header or
    /// `--columns`).
    pub fn layout(&self, runtime: &tokio::runtime::Runtime) -> Result<RowLayout, TextError> {
        let names = column_names(
            &self.reader,
            runtime,
            self.slice.format,
            self.slice.compression,
            self.options,
        )?;
        RowLayout::new(self.reader.url(), self.slice.format, names, self.wanted)
    }

    /// Streams the shard's rows to `sink` in batches (until it returns false).
    pub fn read(
        &self,
        runtime: &tokio::runtime::Runtime,
        layout: &RowLayout,
        mut sink: impl FnMut(arrow::array::RecordBatch) -> bool,
    ) -> Result<TextReadStats, TextError> {
        let url = self.reader.url().to_string();
        let slice = self.slice;
        let plain = slice.compression == Compression::Plain;
        let start = if plain { slice.start } else { 0 };
        let mut lines = Lines::open(
            &self.reader,
            runtime,
            slice.compression,
            start,
            STREAM_CHUNK,
        )?;
        let header = slice.format != TextFormat::Jsonl && self.options.columns.is_empty();
        // Line numbers: known from the start of the file; for a range further in, the lines
        // before it are counted only when a bad line needs its number.
        let mut lines_before: Option<u64> = (start == 0).then_some(0);
        let mut first_offset = None;
        let mut stats = TextReadStats::default();
        let mut batch = RowBatcher::new(layout, self.batch_rows);
        let (mut buf, mut read_lines) = (Vec::new(), 0u64);
        let mut open = true;
        while let Some(offset) = lines.next(&mut buf, &url)? {
            if plain && offset >= slice.end {
                break;
            }
            first_offset.get_or_insert(offset);
            read_lines += 1;
            let first_of_file = offset == 0;
            if first_of_file && header {
                continue;
            }
            let line = trim_line(&buf, first_of_file);
            if is_blank(line) {
                continue;
            }
            if let Err(problem) = batch.push(line) {
                let before = match lines_before {
                    Some(n) => n,
                    None => {
                        let upto = first_offset.unwrap_or(offset);
                        let n = count_lines(&self.reader, runtime, upto)?;
                        *lines_before.insert(n)
                    }
                };
                let bad = problem.at(&url, before + read_lines);
                match self.options.bad_lines {
                    BadLines::Fail => return Err(bad.into()),
                    BadLines::Skip => {
                        stats.skipped += 1;
                        if stats.skipped_examples.len() < LISTED_SKIPS {
                            stats.skipped_examples.push(bad.short());
                        }
                        continue;
                    }
                }
            }
            stats.rows += 1;
            if batch.full() {
                open = sink(batch.finish()?);
                if !open {
                    break;
                }
            }
        }
        if open && !batch.is_empty() {
            sink(batch.finish()?);
        }
        Ok(stats)
    }
}

/// The lines of a plain file before byte `upto` (a line start).
fn count_lines(
    reader: &InputReader,
    runtime: &tokio::runtime::Runtime,
    upto: u64,
) -> Result<u64, TextError> {
    let mut bytes = ByteStream {
        reader: reader.clone(),
        runtime,
        pos: 0,
        size: upto,
        chunk: STREAM_CHUNK,
        buf: Bytes::new(),
        at: 0,
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut count = 0u64;
    loop {
        let n = bytes
            .read(&mut buf)
            .map_err(|e| read_error(reader.url(), e))?;
        if n == 0 {
            return Ok(count);
        }
        count += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// What planning learns from the first bytes of a text file.
#[derive(Debug, Clone)]
pub struct TextSample {
    /// Its columns (TSV/CSV: header or `--columns`; JSON lines: those asked for, which its
    /// first row has).
    pub columns: Vec<String>,
    /// Mean bytes per line (of the stream: decompressed for a compressed file).
    pub mean_line_bytes: f64,
}

/// Bytes of a file's stream sampled at planning.
const SAMPLE_BYTES: usize = 1 << 20;

/// Reads the first lines of a text file: checks its first row has the wanted columns (a
/// first line that does not parse fails, unless bad lines are skipped) and measures its lines.
pub fn sample_text_file(
    reader: &InputReader,
    runtime: &tokio::runtime::Runtime,
    format: TextFormat,
    compression: Compression,
    options: &TextOptions,
    wanted: &[String],
) -> Result<TextSample, TextError> {
    let url = reader.url().to_string();
    let names = column_names(reader, runtime, format, compression, options)?;
    let layout = RowLayout::new(&url, format, names.clone(), wanted)?;
    let mut lines = Lines::open(reader, runtime, compression, 0, SMALL_CHUNK)?;
    let header = format != TextFormat::Jsonl && options.columns.is_empty();
    let (mut buf, mut count, mut checked) = (Vec::new(), 0u64, false);
    let mut last_problem = None;
    while lines.offset < SAMPLE_BYTES as u64 {
        let Some(offset) = lines.next(&mut buf, &url)? else {
            break;
        };
        count += 1;
        let line = trim_line(&buf, offset == 0);
        if (offset == 0 && header) || checked || is_blank(line) {
            continue;
        }
        let mut batch = RowBatcher::new(&layout, 1);
        match batch.push(line) {
            Ok(()) => checked = true,
            Err(problem) if options.bad_lines == BadLines::Fail => {
                return Err(problem.at(&url, count).into())
            }
            Err(problem) => last_problem = Some(problem.at(&url, count)),
        }
    }
    // Skipping bad lines is for a few: a file none of whose sampled lines parse is read wrong.
    if let (false, Some(problem)) = (checked, last_problem) {
        return Err(problem.into());
    }
    Ok(TextSample {
        columns: if format == TextFormat::Jsonl {
            wanted.to_vec()
        } else {
            names
        },
        mean_line_bytes: lines.offset as f64 / count.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_name_and_compression_from_the_last_extension() {
        use Compression::*;
        use TextFormat::*;
        assert_eq!(text_kind("corpus.jsonl", None), Some((Jsonl, Plain)));
        assert_eq!(text_kind("a/corpus.JSONL.GZ", None), Some((Jsonl, Gzip)));
        assert_eq!(text_kind("collection.tsv.zst", None), Some((Tsv, Zstd)));
        assert_eq!(text_kind("x.csv", None), Some((Csv, Plain)));
        assert_eq!(text_kind("x.parquet", None), None);
        assert_eq!(text_kind("x.parquet", Some(Tsv)), None);
        assert_eq!(text_kind("x.txt", None), None);
        assert_eq!(text_kind("x.txt.gz", Some(Tsv)), Some((Tsv, Gzip)));
    }

    #[test]
    fn ranges_tile_the_file_and_a_compressed_file_is_one() {
        assert_eq!(
            byte_ranges(10, Compression::Plain, 4),
            vec![(0, 4), (4, 8), (8, 10)]
        );
        assert_eq!(byte_ranges(10, Compression::Gzip, 4), vec![(0, 10)]);
        assert!(byte_ranges(0, Compression::Plain, 4).is_empty());
    }

    /// Reads every range of `bytes` cut every `step` bytes: the rows' ids, in order.
    fn ids_by_ranges(bytes: &[u8], step: u64, compression: Compression) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, bytes).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let file = InputFile {
            url: path.to_string_lossy().into_owned(),
            path: object_store::path::Path::from_absolute_path(&path).unwrap(),
            size: meta.len(),
            version: Some(super::super::input::local_version(&meta)),
        };
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        let reader = InputReader::open(store, &file, &AllowedRoots::anywhere()).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let options = TextOptions::default();
        let wanted = ["id".to_string(), "text".to_string()];
        let mut ids = Vec::new();
        for (start, end) in byte_ranges(file.size, compression, step) {
            let slice = TextSlice {
                format: TextFormat::Jsonl,
                compression,
                start,
                end,
                options: options.clone(),
            };
            let read = TextShardRead {
                reader: reader.clone(),
                slice: &slice,
                options: &options,
                wanted: &wanted,
                batch_rows: 2,
            };
            let layout = read.layout(&runtime).unwrap();
            read.read(&runtime, &layout, |batch| {
                let column = batch.column(0);
                let strings = column
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .unwrap();
                ids.extend(strings.iter().map(|s| s.unwrap().to_string()));
                true
            })
            .unwrap();
        }
        ids
    }

    #[test]
    fn every_cut_of_a_file_reads_each_line_once() {
        let mut text = String::new();
        for i in 0..12 {
            let body = "é日".repeat(i % 4);
            text.push_str(&format!("{{\"id\": \"{i}\", \"text\": \"{body}\"}}"));
            text.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
            if i == 5 {
                text.push_str("\n  \n");
            }
        }
        let bytes = text.as_bytes();
        let want: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        // Every cut: at line starts, mid-line, inside multibyte characters, one byte per range.
        for step in 1..=bytes.len() as u64 + 1 {
            assert_eq!(
                ids_by_ranges(bytes, step, Compression::Plain),
                want,
                "step {step}"
            );
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, bytes).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(ids_by_ranges(&gz, 3, Compression::Gzip), want);
        let zst = zstd::encode_all(bytes, 1).unwrap();
        assert_eq!(ids_by_ranges(&zst, 3, Compression::Zstd), want);
    }

    #[test]
    fn terminators_and_a_bom_are_not_part_of_the_line() {
        assert_eq!(trim_line(b"a\tb\r\n", false), b"a\tb");
        assert_eq!(trim_line(b"\xef\xbb\xbf{}\n", true), b"{}");
        assert_eq!(trim_line(b"last", false), b"last");
        assert!(is_blank(b" \t"));
    }
}
