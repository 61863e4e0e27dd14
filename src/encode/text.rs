//! `sparq encode-text`: JSON lines of texts on stdin, JSON lines of sparse vectors on stdout.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde_json::Value;

use crate::model::{DeviceSpec, Dtype, EncodeOptions, InputKind, ModelError, SpladeEncoder};

/// Options of `sparq encode-text`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeTextArgs {
    /// Model folder: a sentence-transformers SparseEncoder (v4/v5 or v6 layout) or a Hugging
    /// Face BertForMaskedLM / DistilBertForMaskedLM folder.
    #[arg(long, env = "SPARQ_MODEL", default_value_os_t = crate::default_model_dir())]
    pub model: PathBuf,
    /// Encode the inputs as queries (the model's query prompt) instead of documents.
    #[arg(long)]
    pub query: bool,
    /// Keep only the K largest weights of each vector (default: the model's saved setting, else all).
    #[arg(long, value_name = "K")]
    pub max_active_dims: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Precision: f32 (exact to the reference) or bf16. Default: f32 on CPU, bf16 on CUDA.
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Also print the vocabulary string of each dimension (`"tokens": [...]`).
    #[arg(long)]
    pub tokens: bool,
    /// Intra-op threads for libtorch (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
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
    if args.max_active_dims == Some(0) {
        return Err(
            ModelError::Option("--max-active-dims must be a positive integer".into()).into(),
        );
    }
    if let Some(n) = args.threads {
        tch::set_num_threads(n.max(1) as i32);
    }
    let encoder = SpladeEncoder::load(&args.model, args.device, args.dtype)?;
    let kind = if args.query {
        InputKind::Query
    } else {
        InputKind::Document
    };
    let opts = EncodeOptions {
        batch_size: args.batch_size.max(1),
        max_active_dims: args.max_active_dims,
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
