//! Reading a model folder as sentence-transformers lays it out: `modules.json`, module
//! configs and prompts (v4/v5 `MLMTransformer` and v6 `Transformer` layouts), or a plain
//! Hugging Face `*ForMaskedLM` folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::architecture::{arch_from_config, check_arch};
use super::config::{ArchConfig, RobertaConfig};
use super::default_model::missing_folder_hint;
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
        // BGE-M3 ships a sentence-transformers dense pipeline too: its sparse head wins.
        if let Some(layout) = read_bge_m3(root)? {
            return Ok(layout);
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

/// FlagEmbedding's default `max_length` for queries and passages (`BGEM3FlagModel.encode`),
/// whatever the model's 8,192 positions allow.
pub const FLAG_MAX_LENGTH: usize = 512;

/// The layout of a BGE-M3 folder (`architectures: ["XLMRobertaModel"]` and a `sparse_linear`
/// file beside it), or `None` for any other folder.
fn read_bge_m3(root: &Path) -> Result<Option<ModelLayout>, ModelError> {
    let path = root.join("config.json");
    if !path.is_file() || sparse_linear_file(root).is_none() {
        return Ok(None);
    }
    let value: Value = parse_json(&path)?;
    let bare = value
        .get("architectures")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("XLMRobertaModel")));
    if !bare {
        return Ok(None);
    }
    let cfg: RobertaConfig = serde_json::from_value(value).map_err(|e| ModelError::Config {
        path: path.clone(),
        detail: format!("invalid xlm-roberta configuration: {e}"),
    })?;
    let positions = cfg.max_positions().max(1) as usize;
    let arch = ArchConfig::BgeM3(cfg);
    check_arch(&path, &arch)?;
    Ok(Some(ModelLayout {
        root: root.to_path_buf(),
        transformer_dir: root.to_path_buf(),
        arch,
        pooling: SpladePooling::default(),
        max_seq_length: Some(FLAG_MAX_LENGTH.min(positions)),
        do_lower_case: false,
        // BGE-M3 encodes queries and documents alike, without instructions.
        query_prompt: None,
        document_prompt: None,
        max_active_dims: None,
    }))
}

/// `sparse_linear.safetensors` if present, else `sparse_linear.pt`.
pub(crate) fn sparse_linear_file(dir: &Path) -> Option<std::path::PathBuf> {
    ["sparse_linear.safetensors", "sparse_linear.pt"]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
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

/// The architecture and configuration in `dir/config.json`.
fn read_arch(dir: &Path) -> Result<ArchConfig, ModelError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            path,
            hint: "a model folder needs the Hugging Face config.json of its transformer".into(),
        });
    }
    let value: Value = parse_json(&path)?;
    arch_from_config(&path, &value)
}
