//! Reading a model folder as sentence-transformers lays it out: `modules.json`, module
//! configs and prompts (v4/v5 `MLMTransformer` and v6 `Transformer` layouts), or a plain
//! Hugging Face `*ForMaskedLM` folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::config::{Activation, ArchConfig};
use super::pooling::{PoolingStrategy, SpladeActivation, SpladePooling};
use super::ModelError;

/// Everything about a model folder except the weights and the tokenizer contents.
#[derive(Debug, Clone)]
pub struct ModelLayout {
    /// The folder given by the user.
    pub root: PathBuf,
    /// Folder of the transformer module (config.json, weights, tokenizer).
    pub transformer_dir: PathBuf,
    /// Architecture and its configuration.
    pub arch: ArchConfig,
    /// SPLADE pooling settings.
    pub pooling: SpladePooling,
    /// `max_seq_length` from `sentence_bert_config.json`, if set there.
    pub max_seq_length: Option<usize>,
    /// Lowercase inputs before tokenizing (`do_lower_case`).
    pub do_lower_case: bool,
    /// Prompt prepended to queries (`prompts.query`, else the default prompt).
    pub query_prompt: Option<String>,
    /// Prompt prepended to documents (`document`, `passage`, `corpus`, else the default).
    pub document_prompt: Option<String>,
    /// `max_active_dims` saved with the model, the default for encoding.
    pub max_active_dims: Option<usize>,
}

/// One entry of `modules.json`.
#[derive(Deserialize)]
pub(crate) struct ModuleEntry {
    /// Folder of the module, relative to the model folder.
    #[serde(default)]
    pub(crate) path: String,
    /// Its Python class.
    #[serde(rename = "type")]
    pub(crate) kind: String,
}

impl ModelLayout {
    /// Reads the layout of a model folder that is not a Router (see `ModelLayout::read` in
    /// [`super::router`], which tells them apart).
    pub(crate) fn read_pipeline(root: &Path) -> Result<Self, ModelError> {
        if !root.is_dir() {
            return Err(ModelError::MissingFolder {
                path: root.to_path_buf(),
                hint: missing_folder_hint(root),
            });
        }
        let modules_path = root.join("modules.json");
        if modules_path.is_file() {
            Self::read_sentence_transformers(root, &modules_path)
        } else {
            Self::read_hf_masked_lm(root)
        }
    }

    fn read_sentence_transformers(root: &Path, modules_path: &Path) -> Result<Self, ModelError> {
        let modules: Vec<ModuleEntry> = parse_json(modules_path)?;
        let modules: Vec<(String, PathBuf)> = modules
            .into_iter()
            .map(|m| (m.kind, root.join(&m.path)))
            .collect();
        Self::from_modules(root, modules_path, &modules)
    }

    /// The layout of a pipeline of `(module type, folder)` pairs listed in `modules_path`
    /// (`modules.json`, or a Router's config for one of its routes).
    pub(crate) fn from_modules(
        root: &Path,
        modules_path: &Path,
        modules: &[(String, PathBuf)],
    ) -> Result<Self, ModelError> {
        let mut transformer: Option<PathBuf> = None;
        let mut pooling: Option<PathBuf> = None;
        for (kind, dir) in modules {
            let short = kind.rsplit('.').next().unwrap_or(kind);
            let dir = dir.clone();
            match short {
                "MLMTransformer" | "Transformer" if transformer.is_none() => {
                    transformer = Some(dir)
                }
                "SpladePooling" if pooling.is_none() => pooling = Some(dir),
                _ => {
                    return Err(ModelError::Unsupported {
                        path: modules_path.to_path_buf(),
                        what: format!("module `{kind}`"),
                        hint:
                            "sparq runs SPLADE models: a (MLM)Transformer followed by SpladePooling"
                                .into(),
                    })
                }
            }
        }
        let (Some(transformer_dir), Some(pooling_dir)) = (transformer, pooling) else {
            return Err(ModelError::Unsupported {
                path: modules_path.to_path_buf(),
                what: "a pipeline without both a transformer and SpladePooling".into(),
                hint: "sparq runs SPLADE models: a (MLM)Transformer followed by SpladePooling"
                    .into(),
            });
        };

        let st_path = transformer_dir.join("sentence_bert_config.json");
        let st: Value = if st_path.is_file() {
            parse_json(&st_path)?
        } else {
            Value::Null
        };
        if let Some(task) = st.get("transformer_task").and_then(Value::as_str) {
            if task != "fill-mask" {
                return Err(ModelError::Unsupported {
                    path: st_path,
                    what: format!("transformer_task `{task}`"),
                    hint: "SPLADE needs a masked-LM head (`transformer_task: fill-mask`)".into(),
                });
            }
        }
        let max_seq_length = st
            .get("max_seq_length")
            .and_then(Value::as_u64)
            .map(|v| v as usize);
        let do_lower_case = st
            .get("do_lower_case")
            .and_then(Value::as_bool)
            .unwrap_or(false);

        let pooling_path = pooling_dir.join("config.json");
        let pooling = if pooling_path.is_file() {
            read_pooling(&pooling_path)?
        } else {
            SpladePooling::default()
        };

        let arch = read_arch(&transformer_dir)?;
        let saved = read_saved_settings(&root.join("config_sentence_transformers.json"))?;
        Ok(Self {
            root: root.to_path_buf(),
            transformer_dir,
            arch,
            pooling,
            max_seq_length,
            do_lower_case,
            query_prompt: saved.query_prompt,
            document_prompt: saved.document_prompt,
            max_active_dims: saved.max_active_dims,
        })
    }

    fn read_hf_masked_lm(root: &Path) -> Result<Self, ModelError> {
        let arch = read_arch(root)?;
        Ok(Self {
            root: root.to_path_buf(),
            transformer_dir: root.to_path_buf(),
            arch,
            pooling: SpladePooling::default(),
            max_seq_length: None,
            do_lower_case: false,
            query_prompt: None,
            document_prompt: None,
            max_active_dims: None,
        })
    }
}

fn read_arch(dir: &Path) -> Result<ArchConfig, ModelError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            path,
            hint: "a model folder needs the Hugging Face config.json of its transformer".into(),
        });
    }
    let value: Value = parse_json(&path)?;
    let model_type = value
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let architectures: Vec<&str> = value
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let masked_lm =
        architectures.is_empty() || architectures.iter().any(|a| a.ends_with("ForMaskedLM"));
    let config_err = |e: serde_json::Error| ModelError::Config {
        path: path.clone(),
        detail: format!("invalid {model_type} configuration: {e}"),
    };
    let arch =
        match model_type {
            "bert" if masked_lm => {
                ArchConfig::Bert(serde_json::from_value(value.clone()).map_err(config_err)?)
            }
            "distilbert" if masked_lm => {
                ArchConfig::DistilBert(serde_json::from_value(value.clone()).map_err(config_err)?)
            }
            _ => return Err(ModelError::Unsupported {
                path,
                what: format!("model_type `{model_type}` with architectures {architectures:?}"),
                hint:
                    "sparq runs BertForMaskedLM and DistilBertForMaskedLM backbones (all published \
                       SPLADE v2/v3 and sentence-transformers SPLADE models)"
                        .into(),
            }),
        };
    if let ArchConfig::Bert(c) = &arch {
        if c.position_embedding_type != "absolute" {
            return Err(ModelError::Unsupported {
                path,
                what: format!("position_embedding_type `{}`", c.position_embedding_type),
                hint: "only absolute position embeddings are implemented".into(),
            });
        }
        check_activation(&path, "hidden_act", &c.hidden_act)?;
        if c.hidden_size % c.num_attention_heads != 0 {
            return Err(ModelError::Config {
                path,
                detail: "hidden_size is not a multiple of num_attention_heads".into(),
            });
        }
    } else if let ArchConfig::DistilBert(c) = &arch {
        check_activation(&path, "activation", &c.activation)?;
    }
    Ok(arch)
}

fn check_activation(path: &Path, key: &str, act: &Activation) -> Result<(), ModelError> {
    match act {
        Activation::Unsupported(name) => Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            what: format!("activation `{name}` (key `{key}`)"),
            hint: "supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu".into(),
        }),
        _ => Ok(()),
    }
}

fn read_pooling(path: &Path) -> Result<SpladePooling, ModelError> {
    let value: Value = parse_json(path)?;
    let strategy = match value
        .get("pooling_strategy")
        .and_then(Value::as_str)
        .unwrap_or("max")
    {
        "max" => PoolingStrategy::Max,
        "sum" => PoolingStrategy::Sum,
        other => {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                detail: format!("pooling_strategy `{other}` is not `max` or `sum`"),
            })
        }
    };
    let activation = match value
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("relu")
    {
        "relu" => SpladeActivation::Relu,
        "log1p_relu" => SpladeActivation::Log1pRelu,
        other => {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                detail: format!("activation_function `{other}` is not `relu` or `log1p_relu`"),
            })
        }
    };
    Ok(SpladePooling {
        strategy,
        activation,
    })
}

/// Settings saved in `config_sentence_transformers.json`.
#[derive(Default)]
pub(crate) struct SavedSettings {
    pub(crate) query_prompt: Option<String>,
    pub(crate) document_prompt: Option<String>,
    pub(crate) max_active_dims: Option<usize>,
}

/// Resolves prompts as `SparseEncoder.encode_query`/`encode_document` do: the named prompt
/// if the model has it, else the default prompt.
pub(crate) fn read_saved_settings(path: &Path) -> Result<SavedSettings, ModelError> {
    if !path.is_file() {
        return Ok(SavedSettings::default());
    }
    let value: Value = parse_json(path)?;
    let prompts = value.get("prompts").and_then(Value::as_object);
    let get = |name: &str| {
        prompts
            .and_then(|p| p.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let default = value
        .get("default_prompt_name")
        .and_then(Value::as_str)
        .and_then(&get);
    let has = |name: &str| prompts.is_some_and(|p| p.contains_key(name));
    let query = if has("query") {
        get("query")
    } else {
        default.clone()
    };
    let document = ["document", "passage", "corpus"]
        .into_iter()
        .find(|n| has(n))
        .map_or(default, get);
    let max_active_dims = value
        .get("max_active_dims")
        .and_then(Value::as_u64)
        .map(|v| v as usize);
    Ok(SavedSettings {
        query_prompt: query,
        document_prompt: document,
        max_active_dims,
    })
}

/// Parses a JSON file, naming it in any error.
pub fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Where the bundled model is looked for: `models/splade-bert-tiny-nq` next to the running
/// binary or in one of the three folders above it (a deployed `bin/sparq` beside `models/`, or
/// `target/release/sparq` in a checkout), then under the working directory. `SPARQ_MODEL` and
/// `--model` come first (clap); never a path of the machine that built the binary.
pub fn default_model_candidates() -> Vec<PathBuf> {
    const BUNDLED: &str = "models/splade-bert-tiny-nq";
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let exe = exe.canonicalize().unwrap_or(exe);
        out.extend(exe.ancestors().skip(1).take(4).map(|d| d.join(BUNDLED)));
    }
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join(BUNDLED));
    }
    out
}

/// The default model: `SPARQ_MODEL`, else the bundled model's folder (see
/// [`default_model_candidates`]; the first candidate when none exists, so that the error names
/// where it was looked for).
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPARQ_MODEL").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let candidates = default_model_candidates();
    candidates
        .iter()
        .find(|d| d.is_dir())
        .or(candidates.first())
        .cloned()
        .unwrap_or_else(|| PathBuf::from(BUNDLED_FALLBACK))
}

/// What to do about a model folder that does not exist: a Hugging Face hub id (`owner/name`)
/// is named as one, since sparq never downloads; the bundled default says where it was sought.
fn missing_folder_hint(root: &Path) -> String {
    let text = root.to_string_lossy();
    let parts: Vec<&str> = text.split('/').collect();
    let hub_like = parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    if hub_like {
        let name = parts[1];
        return format!(
            "`{text}` looks like a Hugging Face hub id, and sparq reads local folders only (it \
             never downloads); download it first with `huggingface-cli download {text} \
             --local-dir models/{name}` (or `hf download`), then pass --model models/{name}"
        );
    }
    if default_model_candidates().iter().any(|c| c == root) {
        let looked: Vec<String> = default_model_candidates()
            .iter()
            .map(|c| c.display().to_string())
            .collect();
        return format!(
            "the bundled model was looked for in {}; pass --model DIR or set SPARQ_MODEL",
            looked.join(", ")
        );
    }
    "pass --model with a sentence-transformers SparseEncoder folder or a Hugging Face \
     *ForMaskedLM folder"
        .into()
}

const BUNDLED_FALLBACK: &str = "models/splade-bert-tiny-nq";
