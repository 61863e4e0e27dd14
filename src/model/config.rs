//! Model configuration as Hugging Face writes it in `config.json`.

use serde::Deserialize;

pub use super::modernbert_config::ModernBertConfig;

/// A feed-forward activation, parsed once from `config.json`'s name for it. An unknown name
/// is kept as [`Activation::Unsupported`], which loading refuses naming the file and the key:
/// it never falls back to another function.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Activation {
    /// `gelu`: the exact erf form, as in Hugging Face.
    #[default]
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
    /// Any other name.
    Unsupported(String),
}

impl<'de> Deserialize<'de> for Activation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(match name.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            _ => Activation::Unsupported(name),
        })
    }
}

/// The fields of a BERT `config.json` that the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size (output dimension of the masked-LM head).
    pub vocab_size: i64,
    /// Hidden size of every layer.
    pub hidden_size: i64,
    /// Number of transformer layers.
    pub num_hidden_layers: i64,
    /// Number of attention heads per layer.
    pub num_attention_heads: i64,
    /// Width of the feed-forward block.
    pub intermediate_size: i64,
    /// Activation of the feed-forward block and the MLM transform.
    #[serde(default)]
    pub hidden_act: Activation,
    /// Number of learned absolute positions.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// Number of token type (segment) embeddings.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Only `absolute` is supported (as in every published SPLADE model).
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    /// Dropout after embeddings and on each sublayer's output (training only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
}

/// The fields of a DistilBERT `config.json` that the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct DistilBertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub dim: i64,
    /// Number of transformer layers.
    pub n_layers: i64,
    /// Number of attention heads.
    pub n_heads: i64,
    /// Width of the feed-forward block.
    pub hidden_dim: i64,
    /// Activation of the feed-forward block and the MLM transform.
    #[serde(default)]
    pub activation: Activation,
    /// Number of positions.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// Sinusoidal position embeddings are stored as weights too, so they load alike.
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    /// Dropout after embeddings and the feed-forward block (training only).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
}

/// The fields of a RoBERTa / XLM-RoBERTa `config.json`: BERT's, plus the padding id that
/// offsets position ids (they start at `pad_token_id + 1`).
#[derive(Debug, Clone, Deserialize)]
pub struct RobertaConfig {
    /// Everything a BERT encoder needs (identical blocks).
    #[serde(flatten)]
    pub bert: BertConfig,
    /// Padding token id (1 in every RoBERTa and XLM-R release).
    #[serde(default = "default_roberta_pad")]
    pub pad_token_id: i64,
}

impl RobertaConfig {
    /// Longest sequence the position table allows: positions `pad+1 ..= max-1`.
    pub fn max_positions(&self) -> i64 {
        self.bert.max_position_embeddings - self.pad_token_id - 1
    }
}

/// The architecture named by `config.json`, with its configuration.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    /// `BertForMaskedLM` (`model_type: bert`).
    Bert(BertConfig),
    /// `DistilBertForMaskedLM` (`model_type: distilbert`).
    DistilBert(DistilBertConfig),
    /// `RobertaForMaskedLM` / `XLMRobertaForMaskedLM` (`model_type: roberta`, `xlm-roberta`).
    Roberta(RobertaConfig),
    /// BGE-M3: `XLMRobertaModel` plus the `sparse_linear` token-weight head.
    BgeM3(RobertaConfig),
    /// `ModernBertForMaskedLM` (`model_type: modernbert`; also the Ettin encoders).
    ModernBert(ModernBertConfig),
}

impl ArchConfig {
    /// Vocabulary size, the dimension of the sparse vectors.
    pub fn vocab_size(&self) -> i64 {
        match self {
            ArchConfig::Bert(c) => c.vocab_size,
            ArchConfig::DistilBert(c) => c.vocab_size,
            ArchConfig::Roberta(c) | ArchConfig::BgeM3(c) => c.bert.vocab_size,
            ArchConfig::ModernBert(c) => c.vocab_size,
        }
    }

    /// Largest sequence length the position embeddings allow.
    pub fn max_position_embeddings(&self) -> i64 {
        match self {
            ArchConfig::Bert(c) => c.max_position_embeddings,
            ArchConfig::DistilBert(c) => c.max_position_embeddings,
            ArchConfig::Roberta(c) | ArchConfig::BgeM3(c) => c.max_positions(),
            ArchConfig::ModernBert(c) => c.max_position_embeddings,
        }
    }
}

fn default_positions() -> i64 {
    512
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

fn default_roberta_pad() -> i64 {
    1
}

fn default_dropout() -> f64 {
    0.1
}
