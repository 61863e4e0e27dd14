//! `sparq encode-text`: JSON lines of texts on stdin, JSON lines of sparse vectors on stdout.

use std::io::{BufRead, Write};

use serde_json::Value;

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

/// Runs `encode-text` over `input`, writing one JSON line per input line to `output`.
pub fn run(
    args: &EncodeTextArgs,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<(), EncodeTextError> {
    let (encoder, opts) = args.model.load()?;
    let kind = if args.query {
        InputKind::Query
    } else {
        InputKind::Document
    };
    let mut block: Vec<Option<String>> = Vec::with_capacity(BLOCK_LINES);
    let flush =
        |block: &mut Vec<Option<String>>, output: &mut dyn Write| -> Result<(), EncodeTextError> {
            let texts: Vec<Option<&str>> = block.iter().map(|t| t.as_deref()).collect();
            for vector in encoder.encode(&texts, kind, opts)? {
                let mut line =
                    serde_json::json!({ "indices": vector.indices, "values": vector.values });
                if args.tokens {
                    let tokens: Vec<String> = vector
                        .indices
                        .iter()
                        .map(|&i| encoder.tokenizer().token(i))
                        .collect();
                    line["tokens"] = tokens.into();
                }
                serde_json::to_writer(&mut *output, &line).map_err(std::io::Error::other)?;
                output.write_all(b"\n")?;
            }
            output.flush()?;
            block.clear();
            Ok(())
        };
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| EncodeTextError::Input {
            line: n + 1,
            detail: e.to_string(),
        })?;
        block.push(parse_line(&line).map_err(|detail| EncodeTextError::Input {
            line: n + 1,
            detail,
        })?);
        if block.len() == BLOCK_LINES {
            flush(&mut block, &mut output)?;
        }
    }
    flush(&mut block, &mut output)
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
