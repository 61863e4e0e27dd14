//! What can go wrong loading or running a model, each case naming the file and what to do.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model folder does not exist.
    #[error("model folder {path} does not exist: {hint}")]
    MissingFolder {
        /// The folder given.
        path: PathBuf,
        /// What to do (a hub id is named as one).
        hint: String,
    },
    /// A Hugging Face hub id that cannot be resolved to a cached or downloaded snapshot.
    #[error("Hugging Face hub model `{id}`: {detail}; {hint}")]
    Hub {
        /// The id as given (`owner/name[@revision]`).
        id: String,
        /// What went wrong.
        detail: String,
        /// What to do.
        hint: String,
    },
    /// A file the layout requires is absent.
    #[error("{path} is missing: {hint}")]
    MissingFile {
        /// The file expected.
        path: PathBuf,
        /// What to do.
        hint: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file exists but cannot be parsed.
    #[error("{path} is corrupt or not in the expected format ({detail}): restore it from the original model release")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// The folder holds something sparq cannot run.
    #[error("{path}: {what} is not supported: {hint}")]
    Unsupported {
        /// The file naming it.
        path: PathBuf,
        /// What was found.
        what: String,
        /// What to do instead.
        hint: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{path} has no tensor `{key}`: the weights do not belong to the architecture in config.json (or the file is truncated)")]
    MissingWeight {
        /// The weights file.
        path: PathBuf,
        /// The state-dict key.
        key: String,
    },
    /// A tensor has another shape than config.json implies.
    #[error("{path}: tensor `{key}` has shape {found:?} but config.json implies {expected:?}: config.json and the weights come from different models")]
    WeightShape {
        /// The weights file.
        path: PathBuf,
        /// The state-dict key.
        key: String,
        /// Shape implied by the config.
        expected: Vec<i64>,
        /// Shape in the file.
        found: Vec<i64>,
    },
    /// The tokenizer can emit ids the model has no embedding for.
    #[error("{path} has a vocabulary of {tokenizer} tokens but the model's weights have {model}: the tokenizer belongs to another model; copy the tokenizer files of the model release")]
    VocabMismatch {
        /// The tokenizer file.
        path: PathBuf,
        /// Tokenizer vocabulary size.
        tokenizer: usize,
        /// Model vocabulary size.
        model: i64,
    },
    /// A configuration value is invalid.
    #[error("{path}: {detail}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The requested device cannot be used.
    #[error("device {device}: {detail}")]
    Device {
        /// The device as given.
        device: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// An invalid option value.
    #[error("{0}")]
    Option(String),
    /// libtorch failed at run time (first line of its message only).
    #[error("libtorch: {0}")]
    Torch(String),
    /// The tokenizer failed on an input.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// Weights or outputs that are NaN or infinite.
    #[error("model {path}: {detail}: its vectors would be meaningless; use a model whose training did not diverge")]
    NonFinite {
        /// The model folder.
        path: PathBuf,
        /// Which tensor, or which output.
        detail: String,
    },
}

impl From<tch::TchError> for ModelError {
    fn from(e: tch::TchError) -> Self {
        ModelError::Torch(clean_tch_error(&e.to_string()))
    }
}

/// Keeps the first line of a libtorch error: the rest is a C++ backtrace users can't act on.
pub fn clean_tch_error(message: &str) -> String {
    message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim()
        .to_string()
}
