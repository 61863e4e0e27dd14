//! ModernBERT's `config.json`, as transformers 5 reads it (`configuration_modernbert.py`):
//! which layers attend globally and which through a sliding window, and the rotary base of each.
//!
//! Checkpoints on the hub name the pattern the old way (`global_attn_every_n_layers`,
//! `global_rope_theta`, `local_rope_theta`); transformers 5 writes `layer_types` and
//! `rope_parameters` as well. Both are read, the new keys first, as transformers does.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::config::Activation;

/// How a ModernBERT layer attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Every token of the sequence (`full_attention`).
    Global,
    /// Tokens within `local_attention / 2` positions, bounds included (`sliding_attention`).
    Local,
}

/// One entry of `rope_parameters`.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    /// Only `default` (plain RoPE) is implemented.
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
    /// The rotary base.
    pub rope_theta: Option<f64>,
}

/// The fields of a ModernBERT `config.json` that the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ModernBertConfig {
    /// Vocabulary size.
    #[serde(default = "default_vocab")]
    pub vocab_size: i64,
    /// Hidden size.
    #[serde(default = "default_hidden")]
    pub hidden_size: i64,
    /// Width of each half of the gated MLP (`Wi` projects to twice this).
    #[serde(default = "default_intermediate")]
    pub intermediate_size: i64,
    /// Number of layers.
    #[serde(default = "default_layers")]
    pub num_hidden_layers: i64,
    /// Number of attention heads.
    #[serde(default = "default_heads")]
    pub num_attention_heads: i64,
    /// Activation of the gated MLP (`gelu`: exact erf form, transformers' `GELUActivation`).
    #[serde(default)]
    pub hidden_activation: Activation,
    /// Activation of the MLM head's transform.
    #[serde(default)]
    pub classifier_activation: Activation,
    /// Longest sequence the model was configured for.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Whether the LayerNorms have a bias.
    #[serde(default)]
    pub norm_bias: bool,
    /// Whether `Wqkv` and the attention `Wo` have biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether the MLP's `Wi` and `Wo` have biases.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Whether the head's `dense` has a bias.
    #[serde(default)]
    pub classifier_bias: bool,
    /// Whether the vocabulary projection has a bias.
    #[serde(default = "default_true")]
    pub decoder_bias: bool,
    /// Whether the vocabulary projection is the token embedding matrix.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Total width of the sliding window: a local layer's token sees `local_attention / 2`
    /// positions on each side.
    #[serde(default = "default_local_attention")]
    pub local_attention: i64,
    /// Every n-th layer (from layer 0) attends globally (when `layer_types` is absent).
    #[serde(default = "default_every_n")]
    pub global_attn_every_n_layers: i64,
    /// `full_attention` / `sliding_attention` per layer (transformers 5).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Rotary settings per layer type (transformers 5).
    #[serde(default)]
    pub rope_parameters: Option<BTreeMap<String, RopeParameters>>,
    /// Rotary base of global layers (older configs).
    #[serde(default)]
    pub global_rope_theta: Option<f64>,
    /// Rotary base of local layers (older configs).
    #[serde(default)]
    pub local_rope_theta: Option<f64>,
    /// Older name of rotary scaling; only its absence is supported.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Dropout after the embedding LayerNorm (training only).
    #[serde(default)]
    pub embedding_dropout: f64,
    /// Dropout on attention probabilities and the attention output (training only).
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout inside the MLP, before `Wo` (training only).
    #[serde(default)]
    pub mlp_dropout: f64,
}

impl ModernBertConfig {
    /// The attention kind of each layer, or what is wrong with the config (a key and why).
    pub fn layer_kinds(&self) -> Result<Vec<LayerKind>, String> {
        let n = self.num_hidden_layers.max(0) as usize;
        match &self.layer_types {
            Some(types) => {
                if types.len() != n {
                    return Err(format!(
                        "`layer_types` names {} layers but `num_hidden_layers` is {n}",
                        types.len()
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "full_attention" => Ok(LayerKind::Global),
                        "sliding_attention" => Ok(LayerKind::Local),
                        other => Err(format!(
                            "`layer_types` entry `{other}` is not full_attention or \
                             sliding_attention"
                        )),
                    })
                    .collect()
            }
            None if self.global_attn_every_n_layers < 1 => Err(format!(
                "`global_attn_every_n_layers` is {}; it must be at least 1",
                self.global_attn_every_n_layers
            )),
            None => Ok((0..n as i64)
                .map(|i| {
                    if i % self.global_attn_every_n_layers == 0 {
                        LayerKind::Global
                    } else {
                        LayerKind::Local
                    }
                })
                .collect()),
        }
    }

    /// The rotary base of `kind` layers: `rope_parameters`, else the older
    /// `global_rope_theta`/`local_rope_theta`, else transformers' defaults (160,000 / 10,000).
    pub fn rope_theta(&self, kind: LayerKind) -> Result<f64, String> {
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(
                "`rope_scaling` is set; only plain rotary embeddings are implemented".into(),
            );
        }
        let (name, legacy, default) = match kind {
            LayerKind::Global => ("full_attention", self.global_rope_theta, 160_000.0),
            LayerKind::Local => ("sliding_attention", self.local_rope_theta, 10_000.0),
        };
        let params = self.rope_parameters.as_ref().and_then(|p| p.get(name));
        if let Some(p) = params {
            if p.rope_type != "default" {
                return Err(format!(
                    "`rope_parameters.{name}.rope_type` is `{}`; only `default` is implemented",
                    p.rope_type
                ));
            }
        }
        Ok(params
            .and_then(|p| p.rope_theta)
            .or(legacy)
            .unwrap_or(default))
    }

    /// How far a local layer's token sees on each side (transformers' `sliding_window`).
    pub fn half_window(&self) -> i64 {
        self.local_attention / 2
    }
}

fn default_vocab() -> i64 {
    50_368
}
fn default_hidden() -> i64 {
    768
}
fn default_intermediate() -> i64 {
    1152
}
fn default_layers() -> i64 {
    22
}
fn default_heads() -> i64 {
    12
}
fn default_positions() -> i64 {
    8192
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_local_attention() -> i64 {
    128
}
fn default_every_n() -> i64 {
    3
}
fn default_rope_type() -> String {
    "default".into()
}
