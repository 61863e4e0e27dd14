//! One shard through a worker: reader → tokenizer → token-budget batcher + model → writer,
//! joined by bounded channels (memory stays flat however large the shard), then the commit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use crossbeam_channel::bounded;

use super::batcher::{TokenBudgetBatcher, CPU_BATCH_TOKENS, CUDA_BATCH_TOKENS};
use super::columns::{check_columns, with_title};
use super::settings::EncodeSettings;
use super::shard::{part_error, RowFailure, ShardError, ShardReport, ShardSpec};
use super::source::{ShardSource, SourceStats};
use crate::io::id_hashes::push_hashes;
use crate::io::output::{output_schema, PartWriter};
use crate::io::{CommitOutcome, Committer};
use crate::model::encoder::InFlight;
use crate::model::windows;
use crate::model::{InputKind, LongDocs, SpladeEncoder};
use crate::types::SparseVector;

/// Rows per record batch read (also the unit the batcher sorts by length).
const READ_BATCH_ROWS: usize = 2048;
/// Row failures listed in a report (all are counted).
const LISTED_FAILURES: usize = 20;

/// Live counters of the shard in progress (read by the heartbeat).
#[derive(Debug, Default)]
pub struct ShardProgress {
    /// Rows encoded.
    pub rows: AtomicU64,
    /// Tokens encoded.
    pub tokens: AtomicU64,
    /// Work of any kind, monotonic: input bytes decoded, tokens encoded, rows finished, part
    /// bytes committed. A worker whose counter stands still for the lease timeout is stalled,
    /// however regularly it heartbeats (a hung kernel, a stuck read).
    pub work: AtomicU64,
    /// Set to abandon the shard (its lease was lost or its job cancelled): nothing is committed.
    pub cancel: AtomicBool,
}

impl ShardProgress {
    /// Records `n` units of work (bytes, tokens or rows).
    pub fn advance(&self, n: u64) {
        self.work.fetch_add(n.max(1), Ordering::Relaxed);
    }
}

/// A batch read from the input, with where it came from.
struct RawChunk {
    batch: RecordBatch,
    row_group: usize,
    first_row: u64,
}

/// Tokenized rows: `Ok(Some(windows))` (one window unless `--long-docs window`), `Ok(None)`
/// for a null text, `Err` for a row that failed.
struct TokenChunk {
    batch: RecordBatch,
    tokens: Vec<Result<Option<Vec<Vec<u32>>>, RowFailure>>,
}

struct EncodedChunk {
    batch: RecordBatch,
    vectors: Vec<Option<SparseVector>>,
}

/// A chunk whose batches are (partly) still on the device.
struct OpenChunk {
    batch: RecordBatch,
    vectors: Vec<Option<SparseVector>>,
    /// Per row: vectors of its windows encoded so far, and windows still to come.
    windows: Vec<(Vec<SparseVector>, usize)>,
    /// Batches of the chunk not yet waited for.
    outstanding: usize,
    /// Rows that need no forward pass (null or failed texts).
    without_pass: u64,
}

/// A launched batch: which rows of which chunk its sequences (windows) belong to.
struct Launched<'e> {
    chunk: u64,
    members: Vec<usize>,
    tokens: u64,
    inflight: InFlight<'e>,
}

/// A shard's part, built, and the hashes of its ids.
struct PartBuilt {
    file: crate::io::commit::PartFile,
    ids: Vec<u128>,
    counts: crate::io::output::EntryCounts,
}

/// Encodes one shard and commits its part.
pub fn encode_shard(
    encoder: &SpladeEncoder,
    config: &EncodeSettings,
    runtime: &tokio::runtime::Runtime,
    committer: &Committer,
    shard: &ShardSpec,
    progress: &ShardProgress,
) -> Result<ShardReport, ShardError> {
    let wanted: Vec<String> = [&config.id_column, &config.text_column]
        .into_iter()
        .chain(&config.title_column)
        .chain(&config.keep_columns)
        .cloned()
        .collect();
    let source = ShardSource::open(shard, config, runtime, &wanted)?;
    let file = source.file().clone();
    let (id_field, keep_fields, mut projection) = source.columns(config)?;
    if let Some(title) = &config.title_column {
        let (_, _, title_projection) =
            check_columns(&file.url, &source.schema(), &config.id_column, title, &[])?;
        if !projection.contains(&title_projection[1]) {
            projection.push(title_projection[1]);
        }
    }
    let out_schema = output_schema(&id_field, &keep_fields, &config.vectors);
    let route = encoder.route(if config.query {
        InputKind::Query
    } else {
        InputKind::Document
    });
    let prompt = route.prompt().unwrap_or("").to_string();
    let tokenizer = route.tokenizer();
    let batcher = TokenBudgetBatcher {
        budget: config
            .batch_tokens
            .unwrap_or(if encoder.is_cuda() {
                CUDA_BATCH_TOKENS
            } else {
                CPU_BATCH_TOKENS
            })
            .max(1),
    };
    let mut report = ShardReport {
        shard: shard.id,
        ..Default::default()
    };

    let (raw_tx, raw_rx) = bounded::<RawChunk>(2);
    let (tok_tx, tok_rx) = bounded::<TokenChunk>(2);
    let (enc_tx, enc_rx) = bounded::<EncodedChunk>(2);
    let text_column = config.text_column.clone();
    let id_column = config.id_column.clone();

    let (read_result, tok_result, model_result, write_result) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| -> Result<SourceStats, ShardError> {
            let columns_read = format!("column `{text_column}` or `{id_column}`");
            let stats = source.read(
                shard,
                runtime,
                &projection,
                READ_BATCH_ROWS,
                &columns_read,
                |batch, row_group, first_row| {
                    progress.advance(batch.get_array_memory_size() as u64);
                    raw_tx
                        .send(RawChunk {
                            batch,
                            row_group,
                            first_row,
                        })
                        .is_ok()
                },
            )?;
            drop(raw_tx);
            Ok(stats)
        });
        let tokenizing = scope.spawn(|| -> Result<(u64, u64, Vec<String>), ShardError> {
            let (mut null_ids, mut nulls, mut examples) = (0u64, 0u64, Vec::new());
            for raw in raw_rx {
                let ids = raw
                    .batch
                    .column_by_name(&config.id_column)
                    .cloned()
                    .ok_or_else(|| {
                        ShardError::Data(format!(
                            "{}: column `{}` missing from a row group",
                            file.url, config.id_column
                        ))
                    })?;
                let texts = raw
                    .batch
                    .column_by_name(&config.text_column)
                    .cloned()
                    .ok_or_else(|| {
                        ShardError::Data(format!(
                            "{}: column `{}` missing from a row group",
                            file.url, config.text_column
                        ))
                    })?;
                for i in (0..ids.len()).filter(|&i| ids.is_null(i)) {
                    null_ids += 1;
                    if examples.len() < LISTED_FAILURES {
                        examples.push(format!("{}, row {}", file.url, raw.first_row + i as u64));
                    }
                }
                // Dictionary-encoded texts (pandas categoricals, say) are decoded to plain text.
                let texts = match texts.data_type() {
                    DataType::Dictionary(_, values) => arrow::compute::cast(&texts, values)
                        .map_err(|e| {
                            ShardError::Data(format!(
                                "{}: column `{}`: {e}",
                                file.url, config.text_column
                            ))
                        })?,
                    _ => texts,
                };
                let titles = match &config.title_column {
                    Some(title) => Some(string_column(&raw.batch, title, &file.url)?),
                    None => None,
                };
                let titles = titles.as_ref().map(text_cells);
                let cells = text_cells(&texts);
                let mut strings = Vec::new();
                let mut tokens: Vec<Result<Option<Vec<Vec<u32>>>, RowFailure>> =
                    Vec::with_capacity(cells.len());
                for (i, cell) in cells.into_iter().enumerate() {
                    match cell {
                        TextCell::Text(t) => {
                            let title = match titles.as_ref().map(|titles| &titles[i]) {
                                Some(TextCell::Text(title)) => Some(*title),
                                Some(TextCell::Invalid(reason)) => {
                                    tokens.push(Err(RowFailure {
                                        file: file.url.clone(),
                                        row_group: raw.row_group,
                                        row: raw.first_row + i as u64,
                                        column: config.title_column.clone().unwrap_or_default(),
                                        reason: reason.clone(),
                                    }));
                                    continue;
                                }
                                Some(TextCell::Null) | None => None,
                            };
                            strings.push(format!("{prompt}{}", with_title(title, t)));
                            tokens.push(Ok(Some(Vec::new())));
                        }
                        TextCell::Null => {
                            nulls += 1;
                            tokens.push(Ok(None));
                        }
                        TextCell::Invalid(reason) => tokens.push(Err(RowFailure {
                            file: file.url.clone(),
                            row_group: raw.row_group,
                            row: raw.first_row + i as u64,
                            column: config.text_column.clone(),
                            reason,
                        })),
                    }
                }
                let mut encoded = tokenizer
                    .encode_sequences(strings, config.long_docs().stride())?
                    .into_iter();
                for slot in tokens.iter_mut() {
                    if let Ok(Some(ids)) = slot {
                        *ids = encoded.next().unwrap_or_default();
                    }
                }
                if tok_tx
                    .send(TokenChunk {
                        batch: raw.batch,
                        tokens,
                    })
                    .is_err()
                {
                    break;
                }
            }
            drop(tok_tx);
            Ok((null_ids, nulls, examples))
        });
        let writer = scope.spawn(|| -> Result<Option<PartBuilt>, ShardError> {
            let file = committer.part_file(&shard.part)?;
            let mut writer = PartWriter::new(
                out_schema.clone(),
                file,
                config.max_part_bytes(),
                config.vectors,
            )
            .map_err(|e| part_error(shard, e))?;
            let mut ids = Vec::new();
            let mut rows = 0;
            for chunk in enc_rx {
                let id = chunk
                    .batch
                    .column_by_name(&config.id_column)
                    .cloned()
                    .expect("checked by the tokenizer stage");
                let keep: Vec<ArrayRef> = config
                    .keep_columns
                    .iter()
                    .map(|c| chunk.batch.column_by_name(c).cloned().expect("projected"))
                    .collect();
                rows += chunk.vectors.len();
                push_hashes(id.as_ref(), &mut ids);
                writer
                    .write(id, &chunk.vectors, keep)
                    .map_err(|e| part_error(shard, e))?;
                progress.advance(chunk.vectors.len() as u64);
            }
            // A text range may hold no line start (inside a long line): its part is empty.
            if rows == 0 && shard.rows > 0 && shard.text.is_none() {
                return Ok(None); // Upstream failed; its error is reported.
            }
            let counts = writer.counts();
            let file = writer.finish().map_err(|e| part_error(shard, e))?;
            Ok(Some(PartBuilt { file, ids, counts }))
        });
        // The model stage runs here: the model is owned by this thread. Each batch is launched
        // before the previous one is waited for, so on a GPU the host packs and uploads the
        // next batch (and decodes the last) while the device computes.
        let model_result = (|| -> Result<(), ShardError> {
            let model_error = ShardError::Model;
            // Truncating, the device keeps each vector's top-k. Windowing, windows keep every
            // weight until their row's are pooled, and the pooled vector keeps its top-k.
            let (launch_k, pooled_k) = match config.long_docs() {
                LongDocs::Truncate => (config.max_active_dims, None),
                LongDocs::Window { .. } => (
                    windows::KEEP_ALL,
                    config.max_active_dims.or(route.default_max_active_dims()),
                ),
            };
            let mut open: VecDeque<OpenChunk> = VecDeque::new();
            let mut launched: VecDeque<Launched> = VecDeque::new();
            let mut first_seq = 0u64;
            // Waits for the oldest launched batch, then sends every finished chunk, in order.
            let finish_oldest = |open: &mut VecDeque<OpenChunk>,
                                 launched: &mut VecDeque<Launched>,
                                 first_seq: &mut u64,
                                 report: &mut ShardReport|
             -> Result<bool, ShardError> {
                if let Some(l) = launched.pop_front() {
                    let out = l.inflight.wait().map_err(model_error)?;
                    let chunk = &mut open[(l.chunk - *first_seq) as usize];
                    let mut rows = 0;
                    for (&i, v) in l.members.iter().zip(out) {
                        let (parts, left) = &mut chunk.windows[i];
                        parts.push(v);
                        *left -= 1;
                        if *left == 0 {
                            // The row's last window: its vector is the maximum over them all.
                            let pooled = windows::max_pool_owned(std::mem::take(parts));
                            let v = match pooled_k {
                                Some(k) => windows::top_k(pooled, k),
                                None => pooled,
                            };
                            report.active_dims += v.len() as u64;
                            chunk.vectors[i] = Some(v);
                            rows += 1;
                        }
                    }
                    chunk.outstanding -= 1;
                    report.tokens += l.tokens;
                    progress.tokens.fetch_add(l.tokens, Ordering::Relaxed);
                    progress.rows.fetch_add(rows, Ordering::Relaxed);
                    progress.advance(l.tokens + rows);
                }
                while open.front().is_some_and(|c| c.outstanding == 0) {
                    let chunk = open.pop_front().expect("checked");
                    *first_seq += 1;
                    // Rows without a forward pass (null text, failed) count when their chunk
                    // is done.
                    progress
                        .rows
                        .fetch_add(chunk.without_pass, Ordering::Relaxed);
                    progress.advance(chunk.without_pass);
                    if enc_tx
                        .send(EncodedChunk {
                            batch: chunk.batch,
                            vectors: chunk.vectors,
                        })
                        .is_err()
                    {
                        return Ok(false);
                    }
                }
                Ok(true)
            };
            // On a GPU one batch stays queued while the host waits for the one before it; on
            // the CPU the work is done at launch, and holding results would only cost memory.
            let depth = pipeline_depth(encoder.is_cuda());
            for chunk in tok_rx {
                let TokenChunk { batch, tokens } = chunk;
                let seq = first_seq + open.len() as u64;
                let mut vectors: Vec<Option<SparseVector>> = vec![None; tokens.len()];
                let present: Vec<usize> = (0..tokens.len())
                    .filter(|&i| matches!(tokens[i], Ok(Some(_))))
                    .collect();
                for (i, t) in tokens.iter().enumerate() {
                    match t {
                        Ok(None) => vectors[i] = Some(SparseVector::default()),
                        Err(failure) => {
                            report.failed_rows += 1;
                            if report.failures.len() < LISTED_FAILURES {
                                report.failures.push(failure.clone());
                            }
                        }
                        Ok(Some(_)) => {}
                    }
                }
                report.rows += vectors.len() as u64;
                // Every window of every present row is a sequence; `owner` maps it to its row.
                let mut windows_of = vec![(Vec::new(), 0usize); tokens.len()];
                let (mut seqs, mut owner): (Vec<&[u32]>, Vec<usize>) = (Vec::new(), Vec::new());
                for &i in &present {
                    if let Ok(Some(windows)) = &tokens[i] {
                        windows_of[i].1 = windows.len();
                        seqs.extend(windows.iter().map(Vec::as_slice));
                        owner.extend(std::iter::repeat_n(i, windows.len()));
                    }
                }
                let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
                let batches = batcher.batches(&lengths);
                open.push_back(OpenChunk {
                    without_pass: (vectors.len() - present.len()) as u64,
                    batch,
                    vectors,
                    windows: windows_of,
                    outstanding: batches.len(),
                });
                for members in &batches {
                    if progress.cancel.load(Ordering::Relaxed) {
                        return Err(ShardError::Abandoned);
                    }
                    let input: Vec<&[u32]> = members.iter().map(|&b| seqs[b]).collect();
                    let inflight = route.launch(&input, launch_k).map_err(model_error)?;
                    launched.push_back(Launched {
                        chunk: seq,
                        members: members.iter().map(|&b| owner[b]).collect(),
                        tokens: input.iter().map(|s| s.len() as u64).sum(),
                        inflight,
                    });
                    while launched.len() > depth {
                        if !finish_oldest(&mut open, &mut launched, &mut first_seq, &mut report)? {
                            return Ok(());
                        }
                    }
                }
                // A chunk with nothing to encode (or already done) goes out now.
                if !finish_oldest(&mut open, &mut VecDeque::new(), &mut first_seq, &mut report)? {
                    return Ok(());
                }
            }
            while !launched.is_empty() || !open.is_empty() {
                if !finish_oldest(&mut open, &mut launched, &mut first_seq, &mut report)? {
                    break;
                }
            }
            Ok(())
        })();
        drop(enc_tx);
        (
            joined(reader.join()),
            joined(tokenizing.join()),
            model_result,
            joined(writer.join()),
        )
    });
    let read_stats = read_result?;
    let (null_ids, nulls, examples) = tok_result?;
    model_result?;
    let built = write_result?.ok_or_else(|| ShardError::Data("no rows were written".into()))?;
    // A text shard's rows are known once read; a parquet shard's must be the footer's.
    if shard.text.is_none() && report.rows != shard.rows {
        return Err(ShardError::Data(format!(
            "{}: read {} rows where the footer promises {} (truncated file?)",
            file.url, report.rows, shard.rows
        )));
    }
    // A file rewritten while it was read may still decode: its version says it changed.
    source.check_unchanged()?;
    report.skipped_lines = read_stats.text.skipped;
    report.skipped_line_examples = read_stats.text.skipped_examples;
    report.null_ids = null_ids;
    report.null_id_examples = examples;
    report.null_texts = nulls;
    report.entries = built.counts.entries;
    report.clamped_weights = built.counts.clamped;
    let outcome = super::shard::commit_part(
        config,
        runtime,
        committer,
        shard,
        built.file,
        built.ids,
        |n| progress.advance(n),
    )?;
    report.already_committed = outcome == CommitOutcome::AlreadyCommitted;
    Ok(report)
}

/// Batches left queued on the device while the host waits for an older one: 1 on CUDA, 0 on
/// the CPU; `SPARQ_PIPELINE_DEPTH` overrides it (tests run the GPU's bookkeeping on a CPU).
fn pipeline_depth(cuda: bool) -> usize {
    std::env::var("SPARQ_PIPELINE_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::from(cuda))
}

pub(crate) fn joined<T>(
    result: std::thread::Result<Result<T, ShardError>>,
) -> Result<T, ShardError> {
    result.unwrap_or_else(|_| Err(ShardError::Panicked))
}

/// One cell of a text column.
pub(crate) enum TextCell<'a> {
    Text(&'a str),
    Null,
    Invalid(String),
}

/// The string column `name` of a batch read from `file`, a dictionary decoded to its values.
fn string_column(batch: &RecordBatch, name: &str, file: &str) -> Result<ArrayRef, ShardError> {
    let column = batch.column_by_name(name).cloned().ok_or_else(|| {
        ShardError::Data(format!("{file}: column `{name}` missing from a row group"))
    })?;
    match column.data_type() {
        DataType::Dictionary(_, values) => arrow::compute::cast(&column, values)
            .map_err(|e| ShardError::Data(format!("{file}: column `{name}`: {e}"))),
        _ => Ok(column),
    }
}

/// The cells of a string or binary column (binary must hold UTF-8).
pub(crate) fn text_cells(array: &ArrayRef) -> Vec<TextCell<'_>> {
    fn text(value: Option<&str>) -> TextCell<'_> {
        value.map_or(TextCell::Null, TextCell::Text)
    }
    fn bytes(value: Option<&[u8]>) -> TextCell<'_> {
        match value.map(std::str::from_utf8) {
            None => TextCell::Null,
            Some(Ok(s)) => TextCell::Text(s),
            Some(Err(e)) => TextCell::Invalid(format!("invalid UTF-8 ({e})")),
        }
    }
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(text).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(text).collect(),
        DataType::Utf8View => array.as_string_view().iter().map(text).collect(),
        DataType::Binary => array.as_binary::<i32>().iter().map(bytes).collect(),
        DataType::LargeBinary => array.as_binary::<i64>().iter().map(bytes).collect(),
        DataType::BinaryView => array.as_binary_view().iter().map(bytes).collect(),
        // A column of the Null type: every text is null.
        _ => (0..array.len()).map(|_| TextCell::Null).collect(),
    }
}
