//! `sparq encode-text`: JSON lines of texts on stdin, JSON lines of sparse vectors on stdout.

use std::io::{BufRead, Write};

use serde_json::Value;

use crossbeam_channel::bounded;

use crate::encode::SparseVector;
use crate::model::tokenizer::SpladeTokenizer;
use crate::model::{InputKind, ModelArgs, ModelError};

/// Options of `sparq encode-text`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeTextArgs {
    #[command(flatten)]
    /// Model, device and batching.
    pub model: ModelArgs,
    /// Encode the inputs as queries (the model's query prompt) instead of documents.
    #[arg(long)]
    pub query: bool,
    /// Also print the vocabulary string of each dimension (`"tokens": [...]`).
    #[arg(long)]
    pub tokens: bool,
}

/// What can stop `encode-text`.
#[derive(Debug, thiserror::Error)]
pub enum EncodeTextError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An input line is unusable.
    #[error("stdin line {line}: {detail}")]
    Input {
        /// 1-based line number.
        line: usize,
        /// What is wrong and what to do.
        detail: String,
    },
    /// Reading stdin or writing stdout failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Lines read and encoded together (long enough to sort into similar-length batches).
const BLOCK_LINES: usize = 2048;

/// A block of input lines, tokenized (`None`: a null text).
type Block = Vec<Option<Vec<u32>>>;

/// Runs `encode-text` over `input`, writing one JSON line per input line to `output`.
///
/// Three stages joined by bounded channels, so reading and tokenizing the next block and
/// writing the last one overlap the model's work on this one: lines → tokens (this thread's
/// helper), tokens → vectors (the model, on this thread), vectors → JSON (a writer thread).
pub fn run(
    args: &EncodeTextArgs,
    input: impl BufRead + Send,
    output: impl Write + Send,
) -> Result<(), EncodeTextError> {
    let (encoder, opts) = args.model.load()?;
    let kind = if args.query {
        InputKind::Query
    } else {
        InputKind::Document
    };
    let prompt = encoder.prompt(kind).unwrap_or("").to_string();
    let tokenizer = encoder.tokenizer();
    let (block_tx, block_rx) = bounded::<Block>(2);
    let (vec_tx, vec_rx) = bounded::<Vec<SparseVector>>(2);
    let (read_result, model_result, write_result) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<(), EncodeTextError> {
            let mut texts: Vec<Option<String>> = Vec::with_capacity(BLOCK_LINES);
            let send = |texts: &mut Vec<Option<String>>| -> Result<bool, EncodeTextError> {
                let present: Vec<String> = texts
                    .iter()
                    .flatten()
                    .map(|t| format!("{prompt}{t}"))
                    .collect();
                let mut ids = tokenizer.encode_batch(present)?.into_iter();
                let block = texts
                    .drain(..)
                    .map(|t| t.and_then(|_| ids.next()))
                    .collect();
                Ok(block_tx.send(block).is_ok())
            };
            for (n, line) in input.lines().enumerate() {
                let line = line.map_err(|e| EncodeTextError::Input {
                    line: n + 1,
                    detail: e.to_string(),
                })?;
                texts.push(parse_line(&line).map_err(|detail| EncodeTextError::Input {
                    line: n + 1,
                    detail,
                })?);
                if texts.len() == BLOCK_LINES && !send(&mut texts)? {
                    return Ok(()); // The model stage stopped; its error is reported.
                }
            }
            if !texts.is_empty() {
                send(&mut texts)?;
            }
            Ok(())
        });
        let writer = scope.spawn(move || -> Result<(), EncodeTextError> {
            let mut output = output;
            let mut line = Vec::new();
            for vectors in vec_rx {
                for vector in vectors {
                    line.clear();
                    write_vector(&mut line, &vector, args.tokens.then_some(tokenizer))?;
                    output.write_all(&line)?;
                }
                output.flush()?;
            }
            Ok(())
        });
        let model_result = (|| -> Result<(), EncodeTextError> {
            for block in block_rx {
                if vec_tx
                    .send(encoder.encode_tokenized(&block, opts)?)
                    .is_err()
                {
                    break; // The writer stopped; its error is reported.
                }
            }
            Ok(())
        })();
        drop(vec_tx);
        let joined = |r: std::thread::Result<Result<(), EncodeTextError>>| {
            r.unwrap_or_else(|_| Err(std::io::Error::other("a pipeline thread panicked").into()))
        };
        (joined(reader.join()), model_result, joined(writer.join()))
    });
    if let Some(line) = crate::model::profile::report() {
        tracing::info!("{line}");
    }
    // The earliest stage's error is the cause; later ones only saw a closed channel.
    read_result?;
    model_result?;
    write_result
}

/// One output line: `{"indices": [...], "values": [...]}` (plus `"tokens"` when asked).
fn write_vector(
    out: &mut Vec<u8>,
    vector: &SparseVector,
    tokenizer: Option<&SpladeTokenizer>,
) -> Result<(), EncodeTextError> {
    let mut line = serde_json::json!({ "indices": vector.indices, "values": vector.values });
    if let Some(tokenizer) = tokenizer {
        let tokens: Vec<String> = vector.indices.iter().map(|&i| tokenizer.token(i)).collect();
        line["tokens"] = tokens.into();
    }
    serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::other)?;
    out.push(b'\n');
    Ok(())
}

/// A JSON string, an object with a `text` field, or `null` (an empty vector).
fn parse_line(line: &str) -> Result<Option<String>, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        format!("not valid JSON ({e}); each line must be a JSON string such as \"some text\" or an object {{\"text\": ...}}")
    })?;
    match value {
        Value::String(s) => Ok(Some(s)),
        Value::Null => Ok(None),
        Value::Object(mut map) => match map.remove("text") {
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Null) => Ok(None),
            Some(other) => Err(format!("\"text\" must be a string or null, found {other}")),
            None => Err("the object has no \"text\" field".into()),
        },
        other => Err(format!(
            "expected a JSON string, an object with \"text\", or null; found {other}"
        )),
    }
}
