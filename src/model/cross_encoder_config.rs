//! What a cross-encoder folder configures, read as sentence-transformers 6.2's `CrossEncoder`
//! reads it (`cross_encoder/model.py`, `base/modules/transformer.py`): the architecture, the
//! number of labels, the activation `predict` applies, and the longest pair it tokenizes.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::Tensor;

use super::architecture::{check_arch, refuse_remote_code};
use super::config::{ArchConfig, BertConfig};
use super::layout::parse_json;
use super::ModelError;

/// The function `CrossEncoder.predict` applies to the logits (its `activation_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreActivation {
    /// `torch.nn.Sigmoid`: the default for one label.
    Sigmoid,
    /// `torch.nn.Identity`: raw logits.
    Identity,
    /// `torch.nn.Tanh`.
    Tanh,
}

impl ScoreActivation {
    /// Applies the activation to `logits`.
    pub fn apply(self, logits: &Tensor) -> Result<Tensor, tch::TchError> {
        match self {
            ScoreActivation::Sigmoid => logits.f_sigmoid(),
            ScoreActivation::Identity => Ok(logits.shallow_clone()),
            ScoreActivation::Tanh => logits.f_tanh(),
        }
    }
}

/// The settings of a cross-encoder folder.
#[derive(Debug, Clone)]
pub struct CrossEncoderConfig {
    /// The folder holding `config.json`, the weights and the tokenizer.
    pub transformer_dir: PathBuf,
    /// The BERT backbone.
    pub bert: BertConfig,
    /// What `predict` applies to the logit.
    pub activation: ScoreActivation,
    /// Longest tokenized pair, special tokens included.
    pub max_length: usize,
    /// Lowercase before tokenizing (`do_lower_case` of `sentence_bert_config.json`).
    pub do_lower_case: bool,
}

impl CrossEncoderConfig {
    /// Reads the folder `dir` a `CrossEncoder` was saved to (or a bare
    /// `BertForSequenceClassification` folder), refusing what sparq cannot score.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFolder {
                path: dir.to_path_buf(),
                hint: "give the folder a cross-encoder was saved to (`CrossEncoder.save` or \
                       `save_pretrained` in Python)"
                    .into(),
            });
        }
        let saved_path = dir.join("config_sentence_transformers.json");
        let saved = read_optional(&saved_path)?;
        if let Some(kind) = saved.get("model_type").and_then(Value::as_str) {
            if kind != "CrossEncoder" {
                return Err(ModelError::Unsupported {
                    path: saved_path,
                    what: format!("a {kind}, which is not a cross-encoder"),
                    hint: "give a folder saved by sentence-transformers' CrossEncoder (or a \
                           BertForSequenceClassification folder)"
                        .into(),
                });
            }
        }
        let transformer_dir = transformer_dir(dir)?;
        let config_path = transformer_dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::MissingFile {
                path: config_path,
                hint: "a cross-encoder folder needs the Hugging Face config.json of its model"
                    .into(),
            });
        }
        let config: Value = parse_json(&config_path)?;
        let bert = bert_config(&config_path, &config)?;
        let num_labels = num_labels(&config);
        if num_labels != 1 {
            return Err(ModelError::Unsupported {
                path: config_path,
                what: format!("a cross-encoder with {num_labels} labels"),
                hint: "sparq scores with one-label cross-encoders (rerankers such as \
                       cross-encoder/ms-marco-MiniLM-L6-v2), one score per pair"
                    .into(),
            });
        }
        let st_settings = read_optional(&transformer_dir.join("sentence_bert_config.json"))?;
        if let Some(task) = st_settings.get("transformer_task").and_then(Value::as_str) {
            if task != "sequence-classification" {
                return Err(ModelError::Unsupported {
                    path: transformer_dir.join("sentence_bert_config.json"),
                    what: format!("transformer_task `{task}`"),
                    hint: "a cross-encoder scores pairs with a sequence-classification head".into(),
                });
            }
        }
        refuse_default_prompt(&saved_path, &saved)?;
        let activation = activation(dir, &saved, &config_path, &config)?;
        let max_length = max_length(&transformer_dir, &st_settings, &bert)?;
        let do_lower_case = st_settings
            .get("do_lower_case")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            transformer_dir,
            bert,
            activation,
            max_length,
            do_lower_case,
        })
    }
}

/// The folder of the transformer module: the root, or the path `modules.json` gives its one
/// `Transformer` module. Modules after it (a `Dense` score head, `LogitScore`) are refused.
fn transformer_dir(dir: &Path) -> Result<PathBuf, ModelError> {
    let path = dir.join("modules.json");
    if !path.is_file() {
        return Ok(dir.to_path_buf());
    }
    let modules: Vec<Value> = parse_json(&path)?;
    let types: Vec<&str> = modules
        .iter()
        .map(|m| m.get("type").and_then(Value::as_str).unwrap_or("?"))
        .collect();
    match modules.as_slice() {
        [only] if types[0].ends_with(".Transformer") => {
            let sub = only.get("path").and_then(Value::as_str).unwrap_or("");
            Ok(dir.join(sub))
        }
        _ => Err(ModelError::Unsupported {
            path,
            what: format!("a cross-encoder of the modules {types:?}"),
            hint: "sparq scores with cross-encoders made of one Transformer module with a \
                   sequence-classification head (as `CrossEncoder(\"bert-model\")` saves them)"
                .into(),
        }),
    }
}

/// The BERT configuration, when `config.json` names `BertForSequenceClassification`.
fn bert_config(path: &Path, value: &Value) -> Result<BertConfig, ModelError> {
    refuse_remote_code(path, value)?;
    let model_type = value
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let architectures: Vec<&str> = value
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let classifier = architectures
        .iter()
        .any(|a| a.ends_with("ForSequenceClassification"));
    if model_type != "bert" || !architectures.contains(&"BertForSequenceClassification") {
        let hint = "sparq scores with BERT cross-encoders (BertForSequenceClassification, e.g. \
                    cross-encoder/ms-marco-MiniLM-L6-v2 or BAAI/bge-reranker-base's BERT \
                    siblings); score this model with sentence-transformers' CrossEncoder";
        let what = if classifier {
            format!("a {model_type} cross-encoder ({architectures:?})")
        } else {
            format!(
                "a model that is not a cross-encoder (model_type `{model_type}`, \
                 architectures {architectures:?})"
            )
        };
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            what,
            hint: hint.into(),
        });
    }
    let bert: BertConfig =
        serde_json::from_value(value.clone()).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            detail: format!("invalid bert configuration: {e}"),
        })?;
    check_arch(path, &ArchConfig::Bert(bert.clone()))?;
    if bert.type_vocab_size < 2 {
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            what: format!("type_vocab_size {}", bert.type_vocab_size),
            hint: "a BERT cross-encoder marks the passage with token type 1, which needs \
                   type_vocab_size 2"
                .into(),
        });
    }
    Ok(bert)
}

/// `num_labels` as transformers derives it: the key, else the size of `id2label`, else 2.
fn num_labels(config: &Value) -> u64 {
    config
        .get("num_labels")
        .and_then(Value::as_u64)
        .or_else(|| {
            config
                .get("id2label")
                .and_then(Value::as_object)
                .map(|m| m.len() as u64)
        })
        .unwrap_or(2)
}

/// The activation `CrossEncoder` resolves: the one saved in `config_sentence_transformers.json`,
/// else `sentence_transformers.activation_fn` of `config.json` (or the pre-v4
/// `sbert_ce_default_activation_function`), else Sigmoid for one label. As in Python, a path
/// outside `torch.` is not trusted and skipped (with a warning).
fn activation(
    dir: &Path,
    saved: &Value,
    config_path: &Path,
    config: &Value,
) -> Result<ScoreActivation, ModelError> {
    let saved_path = dir.join("config_sentence_transformers.json");
    let from_config = config
        .get("sentence_transformers")
        .and_then(|s| s.get("activation_fn"))
        .or_else(|| config.get("sbert_ce_default_activation_function"));
    let candidates = [
        (saved_path.as_path(), saved.get("activation_fn")),
        (config_path, from_config),
    ];
    for (path, name) in candidates {
        let Some(name) = name.and_then(Value::as_str) else {
            continue;
        };
        if !name.starts_with("torch.") {
            tracing::warn!(
                "{}: activation_fn `{name}` is not a torch function; sentence-transformers \
                 ignores it without trust_remote_code, and so does sparq",
                path.display()
            );
            continue;
        }
        return match name.rsplit('.').next() {
            Some("Sigmoid") => Ok(ScoreActivation::Sigmoid),
            Some("Identity") => Ok(ScoreActivation::Identity),
            Some("Tanh") => Ok(ScoreActivation::Tanh),
            _ => Err(ModelError::Unsupported {
                path: path.to_path_buf(),
                what: format!("activation_fn `{name}`"),
                hint: "sparq applies torch.nn.Sigmoid, torch.nn.Identity or torch.nn.Tanh".into(),
            }),
        };
    }
    Ok(ScoreActivation::Sigmoid)
}

/// `predict` prepends the default prompt to every pair; sparq does not.
fn refuse_default_prompt(path: &Path, saved: &Value) -> Result<(), ModelError> {
    match saved.get("default_prompt_name").and_then(Value::as_str) {
        Some(name) => Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            what: format!("a cross-encoder with a default prompt (`{name}`)"),
            hint: "set default_prompt_name to null to score pairs without it".into(),
        }),
        None => Ok(()),
    }
}

/// `max_seq_length` of `sentence_bert_config.json` if set, else the tokenizer's
/// `model_max_length` capped at `max_position_embeddings` (as sentence-transformers caps it).
fn max_length(dir: &Path, st_settings: &Value, bert: &BertConfig) -> Result<usize, ModelError> {
    let positions = bert.max_position_embeddings.max(1) as usize;
    if let Some(len) = st_settings.get("max_seq_length").and_then(Value::as_u64) {
        let len = len as usize;
        if len > positions {
            return Err(ModelError::Config {
                path: dir.join("sentence_bert_config.json"),
                detail: format!(
                    "max_seq_length {len} exceeds the model's max_position_embeddings \
                     {positions}: set it to at most {positions}"
                ),
            });
        }
        return Ok(len);
    }
    let tokenizer_config = read_optional(&dir.join("tokenizer_config.json"))?;
    let from_tokenizer = tokenizer_config
        .get("model_max_length")
        .and_then(Value::as_f64)
        .map(|v| v as usize);
    Ok(from_tokenizer.map_or(positions, |len| len.min(positions)))
}

/// The JSON object in `path`, or `null` when the file does not exist.
fn read_optional(path: &Path) -> Result<Value, ModelError> {
    if path.is_file() {
        parse_json(path)
    } else {
        Ok(Value::Null)
    }
}
