//! SPLADE models: configuration, weights, BERT-family masked-LM encoders, SPLADE pooling,
//! tokenizer, and the [`SpladeEncoder`] that ties them together.

pub(crate) mod architecture;
pub mod args;
pub mod attention;
pub mod bert;
pub mod bge_m3;
pub mod config;
pub(crate) mod cuda_event;
pub mod default_model;
pub(crate) mod device;
pub mod distilbert;
pub mod encoder;
pub mod error;
pub(crate) mod extract;
pub mod fingerprint;
pub mod layers;
pub mod layout;
pub mod local_attention;
pub mod mlm;
pub mod modernbert;
pub mod modernbert_config;
pub mod packed;
pub(crate) mod pickle;
pub mod pooling;
pub(crate) mod profile;
pub mod roberta;
pub mod route;
pub mod router;
pub mod static_embedding;
pub mod tokenizer;
pub(crate) mod tokenizer_roberta;
pub mod weights;
pub mod windows;
pub(crate) mod word_cache;

pub use crate::types::{DeviceSpec, Dtype, InputKind};
pub use args::ModelArgs;
pub use default_model::default_model_dir;
pub use device::ResolveDevice;
pub use encoder::{EncodeOptions, SparseEncode};
pub use error::{clean_tch_error, ModelError};
pub use fingerprint::fingerprint;
pub use layout::ModelLayout;
pub use pooling::{PoolingStrategy, SpladeActivation, SpladePooling};
pub use route::{Route, SpladeEncoder};
pub use windows::{LongDocs, LongDocsMode};
