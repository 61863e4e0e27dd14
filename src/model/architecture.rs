//! Which architecture a transformer folder's `config.json` names, and the settings its forward
//! pass implements: anything else is refused, naming the file and the key, never run wrongly.

use std::path::Path;

use serde_json::Value;

use super::config::{Activation, ArchConfig, RobertaConfig};
use super::ModelError;

/// The architecture and configuration of `value`, the parsed `config.json` at `path`.
pub(crate) fn arch_from_config(path: &Path, value: &Value) -> Result<ArchConfig, ModelError> {
    let path = path.to_path_buf();
    refuse_remote_code(&path, value)?;
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
    let arch = match model_type {
        "bert" if masked_lm => {
            ArchConfig::Bert(serde_json::from_value(value.clone()).map_err(config_err)?)
        }
        "distilbert" if masked_lm => {
            ArchConfig::DistilBert(serde_json::from_value(value.clone()).map_err(config_err)?)
        }
        "roberta" | "xlm-roberta" if masked_lm => {
            ArchConfig::Roberta(serde_json::from_value(value.clone()).map_err(config_err)?)
        }
        "modernbert" if masked_lm => {
            ArchConfig::ModernBert(serde_json::from_value(value.clone()).map_err(config_err)?)
        }
        _ => {
            return Err(ModelError::Unsupported {
                path,
                what: format!("model_type `{model_type}` with architectures {architectures:?}"),
                hint: "sparq runs BertForMaskedLM, DistilBertForMaskedLM, RobertaForMaskedLM, \
                       XLMRobertaForMaskedLM and ModernBertForMaskedLM backbones (SPLADE models), \
                       and BGE-M3 (XLMRobertaModel beside sparse_linear.pt)"
                    .into(),
            })
        }
    };
    check_arch(&path, &arch)?;
    Ok(arch)
}

/// Refuses settings the forward pass does not implement, naming `path` and the key.
pub(crate) fn check_arch(path: &Path, arch: &ArchConfig) -> Result<(), ModelError> {
    let path = path.to_path_buf();
    if let ArchConfig::Bert(c)
    | ArchConfig::Roberta(RobertaConfig { bert: c, .. })
    | ArchConfig::BgeM3(RobertaConfig { bert: c, .. }) = arch
    {
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
    } else if let ArchConfig::DistilBert(c) = arch {
        check_activation(&path, "activation", &c.activation)?;
    } else if let ArchConfig::ModernBert(c) = arch {
        check_modernbert(&path, c)?;
    }
    Ok(())
}

/// A config with `auto_map` names Python classes shipped beside the weights
/// (`trust_remote_code=True`): code sparq cannot run, whatever `model_type` says.
pub(crate) fn refuse_remote_code(path: &Path, config: &Value) -> Result<(), ModelError> {
    let Some(map) = config.get("auto_map").and_then(Value::as_object) else {
        return Ok(());
    };
    let classes: Vec<String> = map
        .values()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    Err(ModelError::Unsupported {
        path: path.to_path_buf(),
        what: format!(
            "a model that needs remote code (`auto_map`: {})",
            classes.join(", ")
        ),
        hint: "its architecture is defined by Python files in the model folder \
               (trust_remote_code), which sparq does not run; use a model of a built-in \
               architecture (see the README's table of supported families)"
            .into(),
    })
}

/// Refuses what the ModernBERT forward pass does not implement, naming the key.
fn check_modernbert(path: &Path, c: &super::config::ModernBertConfig) -> Result<(), ModelError> {
    check_activation(path, "hidden_activation", &c.hidden_activation)?;
    check_activation(path, "classifier_activation", &c.classifier_activation)?;
    let config_error = |detail: String| ModelError::Config {
        path: path.to_path_buf(),
        detail,
    };
    if c.num_attention_heads < 1 || c.hidden_size % c.num_attention_heads != 0 {
        return Err(config_error(
            "hidden_size is not a multiple of num_attention_heads".into(),
        ));
    }
    if (c.hidden_size / c.num_attention_heads) % 2 != 0 {
        return Err(config_error(
            "the head size (hidden_size / num_attention_heads) is odd: rotary embeddings need \
             an even one"
                .into(),
        ));
    }
    if c.local_attention < 0 {
        return Err(config_error(format!(
            "local_attention is {}; it must be a window size of 0 or more tokens",
            c.local_attention
        )));
    }
    c.layer_kinds().map_err(config_error)?;
    for kind in [
        super::modernbert_config::LayerKind::Global,
        super::modernbert_config::LayerKind::Local,
    ] {
        c.rope_theta(kind).map_err(config_error)?;
    }
    Ok(())
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
