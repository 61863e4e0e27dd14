//! `sparq export`: streams every part of an output through a format into JSON-lines files,
//! local (written under a temporary name, renamed when complete) or S3 (multipart upload in
//! 8 MiB parts), or stdout (`--output -`), optionally gzipped. Memory stays bounded by one
//! input part.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use flate2::write::GzEncoder;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use serde_json::Value;

use super::format::{lines, Format, VectorFilter};
use super::qdrant::{check_ids, payload, point_id, refusal};
use super::read::{for_each_row, output_parts, runtime};
use super::recorded::{tokenizer_for, Recorded};
use super::{ExportArgs, ExportError, ExportSummary};
use crate::io::url::Location;
use crate::io::StoreUrl;

const S3_PART: usize = 8 << 20;

/// A file being written (not visible under its name until [`RawSink::finish`]).
enum RawSink {
    Local {
        file: BufWriter<std::fs::File>,
        tmp: PathBuf,
        path: PathBuf,
    },
    S3 {
        handle: tokio::runtime::Handle,
        upload: Option<Box<dyn MultipartUpload>>,
        buf: Vec<u8>,
        url: String,
    },
    /// `--output -`: lines as they come, for a pipe.
    Stdout(BufWriter<std::io::Stdout>),
}

impl Drop for RawSink {
    /// An export that stops half-way leaves nothing under the output name: the temporary file
    /// is removed, the multipart upload aborted.
    fn drop(&mut self) {
        match self {
            RawSink::Local { tmp, .. } => {
                let _ = std::fs::remove_file(tmp);
            }
            RawSink::S3 { handle, upload, .. } => {
                if let Some(mut u) = upload.take() {
                    let _ = handle.block_on(u.abort());
                }
            }
            RawSink::Stdout(_) => {}
        }
    }
}

/// The `--output` that means stdout.
pub const STDOUT: &str = "-";

impl RawSink {
    fn open(handle: &tokio::runtime::Handle, url: &str) -> Result<Self, ExportError> {
        if url == STDOUT {
            return Ok(RawSink::Stdout(BufWriter::with_capacity(
                1 << 16,
                std::io::stdout(),
            )));
        }
        let parsed = StoreUrl::parse(url)?;
        match &parsed.location {
            Location::Local(path) => {
                let dir = path.parent().unwrap_or(std::path::Path::new("."));
                std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
                    what: "creating",
                    path: dir.to_path_buf(),
                    source,
                })?;
                let name = path
                    .file_name()
                    .map_or("out".into(), |n| n.to_string_lossy().into_owned());
                let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4()));
                let file = std::fs::File::create(&tmp).map_err(|source| ExportError::Io {
                    what: "creating",
                    path: tmp.clone(),
                    source,
                })?;
                Ok(RawSink::Local {
                    file: BufWriter::with_capacity(1 << 20, file),
                    tmp,
                    path: path.clone(),
                })
            }
            Location::S3 { .. } => {
                let (store, path) = parsed.store()?;
                let upload = handle.block_on(store.put_multipart(&path)).map_err(|e| {
                    ExportError::Output(format!("{url}: starting the upload failed ({e})"))
                })?;
                Ok(RawSink::S3 {
                    handle: handle.clone(),
                    upload: Some(upload),
                    buf: Vec::with_capacity(S3_PART),
                    url: url.to_string(),
                })
            }
        }
    }

    fn finish(mut self) -> Result<String, ExportError> {
        match &mut self {
            RawSink::Local { file, tmp, path } => {
                file.flush()
                    .and_then(|_| file.get_ref().sync_all())
                    .map_err(|source| ExportError::Io {
                        what: "writing",
                        path: tmp.clone(),
                        source,
                    })?;
                std::fs::rename(&*tmp, &*path).map_err(|source| ExportError::Io {
                    what: "renaming",
                    path: tmp.clone(),
                    source,
                })?;
                Ok(path.display().to_string())
            }
            RawSink::S3 {
                handle,
                upload,
                buf,
                url,
            } => {
                let mut u = upload.take().expect("open until finished");
                let last = std::mem::take(buf);
                let result = handle.block_on(async {
                    if !last.is_empty() {
                        u.put_part(PutPayload::from(last)).await?;
                    }
                    u.complete().await
                });
                if result.is_err() {
                    let _ = handle.block_on(u.abort());
                }
                result.map_err(|e| {
                    ExportError::Output(format!("{url}: finishing the upload failed ({e})"))
                })?;
                Ok(url.clone())
            }
            RawSink::Stdout(out) => {
                if let Err(e) = out.flush() {
                    return Err(self.write_error(e));
                }
                Ok(STDOUT.into())
            }
        }
    }

    /// What it writes to, for messages.
    fn name(&self) -> String {
        match self {
            RawSink::Local { path, .. } => path.display().to_string(),
            RawSink::S3 { url, .. } => url.clone(),
            RawSink::Stdout(_) => "stdout".into(),
        }
    }

    /// A failed write as an export error: a closed stdout ends the export quietly.
    fn write_error(&self, e: std::io::Error) -> ExportError {
        if matches!(self, RawSink::Stdout(_)) && e.kind() == std::io::ErrorKind::BrokenPipe {
            ExportError::StdoutClosed
        } else {
            ExportError::Output(format!("{}: writing failed ({e})", self.name()))
        }
    }
}

impl Write for RawSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            RawSink::Local { file, .. } => file.write(data),
            RawSink::S3 {
                handle,
                upload,
                buf,
                ..
            } => {
                buf.extend_from_slice(data);
                if buf.len() >= S3_PART {
                    let part = std::mem::replace(buf, Vec::with_capacity(S3_PART));
                    let upload = upload.as_mut().expect("open until finished");
                    handle
                        .block_on(upload.put_part(PutPayload::from(part)))
                        .map_err(std::io::Error::other)?;
                }
                Ok(data.len())
            }
            RawSink::Stdout(out) => out.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            RawSink::Local { file, .. } => file.flush(),
            RawSink::S3 { .. } => Ok(()),
            RawSink::Stdout(out) => out.flush(),
        }
    }
}

/// An output file of JSON lines, plain or gzipped.
enum Sink {
    Plain(RawSink),
    Gzip(GzEncoder<RawSink>),
}

impl Sink {
    fn open(handle: &tokio::runtime::Handle, url: &str, gzip: bool) -> Result<Self, ExportError> {
        let raw = RawSink::open(handle, url)?;
        Ok(if gzip {
            Sink::Gzip(GzEncoder::new(raw, flate2::Compression::fast()))
        } else {
            Sink::Plain(raw)
        })
    }

    fn line(&mut self, value: &Value) -> Result<(), ExportError> {
        let w: &mut dyn Write = match self {
            Sink::Plain(s) => s,
            Sink::Gzip(s) => s,
        };
        // `io::Error::from` keeps the kind of a write error (EPIPE) that serde_json wraps.
        serde_json::to_writer(&mut *w, value)
            .map_err(std::io::Error::from)
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| self.raw().write_error(e))
    }

    fn raw(&self) -> &RawSink {
        match self {
            Sink::Plain(s) => s,
            Sink::Gzip(s) => s.get_ref(),
        }
    }

    fn finish(self) -> Result<String, ExportError> {
        match self {
            Sink::Plain(s) => s.finish(),
            Sink::Gzip(mut s) => {
                if let Err(e) = s.try_finish() {
                    return Err(s.get_ref().write_error(e));
                }
                s.finish()
                    .map_err(|e| ExportError::Output(format!("compressing: {e}")))?
                    .finish()
            }
        }
    }
}

/// Runs `sparq export`.
pub fn run_export(args: &ExportArgs) -> Result<ExportSummary, ExportError> {
    let runtime = runtime()?;
    let handle = runtime.handle().clone();
    let quantize = args
        .quantize
        .or((args.format == Format::Anserini).then_some(100.0));
    if let Some(q) = quantize {
        if !(q.is_finite() && q > 0.0) {
            return Err(ExportError::Option(format!(
                "--quantize {q} must be a positive factor"
            )));
        }
    }
    if args.format == Format::Anserini && args.quantize.is_some_and(|q| q.fract() != 0.0) {
        // Allowed (any factor works), but say what Anserini expects.
        tracing::info!("note: Anserini's SPLADE convention is an integer factor (100)");
    }
    if args.top_k == Some(0) {
        return Err(ExportError::Option("--top-k must be at least 1".into()));
    }
    if args.tokens && args.format != Format::Jsonl {
        return Err(ExportError::Option(
            "--tokens applies to --format jsonl (anserini and elasticsearch always name tokens)"
                .into(),
        ));
    }
    let filter = VectorFilter {
        top_k: args.top_k,
        min_weight: args.min_weight,
        prune: args.prune,
        quantize,
    };
    let (store, files) = output_parts(&runtime, &args.input, args.allow_incomplete)?;
    let recorded = Recorded::read(&runtime, &args.input)?;
    let id_column = recorded.id_column(args.id_column.as_deref());
    let tokenizer = if args.format.needs_tokens() || args.tokens {
        Some(tokenizer_for(
            &args.input,
            &recorded,
            args.model.as_deref(),
        )?)
    } else {
        None
    };
    let qdrant = (args.format == Format::Qdrant).then_some(args.qdrant_ids);
    if let Some(mode) = qdrant {
        // Qdrant rejects a whole batch over one bad id: refuse before anything is written.
        check_ids(&runtime, &store, &files, &id_column, mode)?;
    }
    let token = |i: u32| {
        tokenizer
            .as_ref()
            .map_or_else(|| i.to_string(), |t| t.token(i))
    };
    let lower = args.output.to_ascii_lowercase();
    let single = args.to_stdout() || lower.ends_with(".jsonl") || lower.ends_with(".jsonl.gz");
    let gzip = args.gzip || lower.ends_with(".gz");
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(files.iter().map(|f| f.size).sum());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        bar
    });
    let mut summary = ExportSummary::default();
    let out_url = (!single)
        .then(|| StoreUrl::parse(&args.output))
        .transpose()?;
    let mut shared = if single {
        Some(Sink::open(&handle, &args.output, gzip)?)
    } else {
        None
    };
    for file in &files {
        let name = file.url.rsplit('/').next().unwrap_or("part.parquet");
        let stem = name.strip_suffix(".parquet").unwrap_or(name);
        let mut own = match &out_url {
            None => None,
            Some(out_url) => {
                let ext = if gzip { "jsonl.gz" } else { "jsonl" };
                Some(Sink::open(
                    &handle,
                    &out_url.join(&format!("{stem}.{ext}")),
                    gzip,
                )?)
            }
        };
        let sink = match (&mut own, &mut shared) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => unreachable!("one sink is open"),
        };
        let mut row = 0u64;
        for_each_row(&runtime, &store, file, &id_column, |id, v| {
            row += 1;
            let Some(v) = v else {
                summary.skipped_null += 1;
                return Ok(());
            };
            let (id, payload) = match qdrant {
                None => (id, None),
                Some(mode) => (
                    point_id(&id, mode)
                        .map_err(|why| refusal(&file.url, row - 1, &id_column, &why))?,
                    payload(&id, &id_column, mode),
                ),
            };
            let pairs = filter.apply(&v);
            summary.weights += pairs.len() as u64;
            summary.rows += 1;
            let mut out = lines(
                args.format,
                &id,
                &pairs,
                &token,
                args.tokens,
                (&args.field, args.index.as_deref()),
            );
            if let (Some(payload), Some(point)) = (payload, out.first_mut()) {
                point["payload"] = payload;
            }
            for line in &out {
                sink.line(line)?;
            }
            Ok(())
        })?;
        if let Some(s) = own {
            summary.files.push(s.finish()?);
        }
        if let Some(bar) = &bar {
            bar.inc(file.size);
        }
    }
    if let Some(s) = shared {
        summary.files.push(s.finish()?);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if summary.skipped_null > 0 {
        tracing::warn!(
            "{} row(s) without a vector (their text failed to encode) were not exported",
            summary.skipped_null
        );
    }
    Ok(summary)
}
