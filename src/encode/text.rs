//! `sparq encode-text`: texts on stdin (JSON lines, or one plain text per line), JSON lines of
//! sparse vectors on stdout, output line i for input line i.

use std::io::{BufRead, ErrorKind, Write};

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
    /// How stdin's lines are read: `jsonl`, one JSON string per line (or an object with a
    /// `text` field; `null` gives an empty vector), or `text`, each line one text as is (a blank
    /// line gives an empty vector). Either way output line i belongs to input line i.
    #[arg(long, value_enum, default_value_t = InputFormat::Jsonl)]
    pub input_format: InputFormat,
}

/// How `encode-text` reads its input lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// One JSON value per line: a string, an object with a `text` field, or `null`.
    Jsonl,
    /// One text per line, as is; a blank line has no text.
    Text,
}

impl InputFormat {
    /// The text of one line (`None`: no text, an empty vector), or what is wrong with it.
    fn parse(self, line: &str) -> Result<Option<String>, String> {
        match self {
            InputFormat::Jsonl => parse_json_line(line),
            // A blank line is "no text", as `null` is in JSON lines: it keeps its output line.
            InputFormat::Text if line.trim().is_empty() => Ok(None),
            InputFormat::Text => Ok(Some(line.to_string())),
        }
    }
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

/// A block of input lines, tokenized into their windows (one unless `--long-docs window`;
/// `None`: a null text).
type Block = Vec<Option<Vec<Vec<u32>>>>;

/// Runs `encode-text` over `input`, writing one JSON line per input line to `output`.
///
/// Three stages joined by bounded channels, so reading and tokenizing the next block and
/// writing the last one overlap the model's work on this one: lines → tokens (this thread's
/// helper), tokens → vectors (the model, on this thread), vectors → JSON (a writer thread).
/// Blocks keep input order (the model sorts by length only inside a block) and the writer
/// flushes after each, so when a line is bad the lines before it are encoded, written and
/// flushed before the error returns. A closed stdout (`| head`) ends the run quietly, `Ok`.
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
    let route = encoder.route(kind);
    let prompt = route.prompt().unwrap_or("").to_string();
    let tokenizer = route.tokenizer();
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
                let mut ids = tokenizer
                    .encode_sequences(present, opts.long_docs.stride())?
                    .into_iter();
                let block = texts
                    .drain(..)
                    .map(|t| t.and_then(|_| ids.next()))
                    .collect();
                Ok(block_tx.send(block).is_ok())
            };
            for (n, line) in input.lines().enumerate() {
                let text = match line {
                    Ok(line) => args.input_format.parse(&line),
                    Err(e) if e.kind() == ErrorKind::InvalidData => Err(format!(
                        "not valid UTF-8 ({e}): convert the input to UTF-8 (e.g. `iconv -t UTF-8`)"
                    )),
                    Err(e) => Err(format!("cannot read stdin: {e}")),
                };
                match text {
                    Ok(text) => texts.push(text),
                    Err(detail) => {
                        // The lines before this one are encoded and written first.
                        if !texts.is_empty() {
                            send(&mut texts)?;
                        }
                        return Err(EncodeTextError::Input {
                            line: n + 1,
                            detail,
                        });
                    }
                }
                if texts.len() == BLOCK_LINES && !send(&mut texts)? {
                    return Ok(()); // A later stage stopped; its error (if any) is reported.
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
            let written = vec_rx.iter().try_for_each(|vectors| {
                for vector in vectors {
                    line.clear();
                    write_vector(&mut line, &vector, args.tokens.then_some(tokenizer))?;
                    output.write_all(&line)?;
                }
                // Once per block: what is encoded is out before a later line's error.
                output.flush()
            });
            match written {
                // The reader of stdout is gone (`| head -1`): nothing more is wanted. Returning
                // closes the channel, which stops the model and the reader.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
                other => other.map_err(Into::into),
            }
        });
        let model_result = (|| -> Result<(), EncodeTextError> {
            for block in block_rx {
                if vec_tx.send(route.encode_windows(&block, opts)?).is_err() {
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
) -> std::io::Result<()> {
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
fn parse_json_line(line: &str) -> Result<Option<String>, String> {
    if line.trim().is_empty() {
        return Err(
            "a blank line: in JSON lines each line is a JSON string (`null` for no \
                    text); for plain text, one text per line, use --input-format text"
                .into(),
        );
    }
    let value: Value = serde_json::from_str(line).map_err(|e| {
        // serde's own position says "line 1": the line is the input's, only the column is news.
        let what = e.to_string();
        let what = what.split(" at line ").next().unwrap_or(&what);
        format!("not valid JSON ({what} at column {}); each line must be a JSON string such as \"some text\" or an object {{\"text\": ...}}; for plain text, one text per line, use --input-format text", e.column())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_reads_a_line_as_documented() {
        let text = |l| InputFormat::Text.parse(l);
        assert_eq!(
            text("a \"quoted\" text"),
            Ok(Some("a \"quoted\" text".into()))
        );
        assert_eq!(text(""), Ok(None));
        assert_eq!(text("  \t"), Ok(None));
        let json = |l| InputFormat::Jsonl.parse(l);
        assert_eq!(json("\"x\""), Ok(Some("x".into())));
        assert_eq!(json("{\"text\": null}"), Ok(None));
        assert!(json("").unwrap_err().contains("--input-format text"));
        assert!(json("plain words")
            .unwrap_err()
            .contains("--input-format text"));
    }
}
