//! Small file helpers of training: errors that name the path, and safetensors read by name.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::TrainError;

/// The tensors of a safetensors file by name.
pub fn read_named(file: &Path) -> Result<std::collections::HashMap<String, Tensor>, TrainError> {
    Ok(Tensor::read_safetensors(file)
        .map_err(|e| TrainError::Checkpoint {
            path: file.to_path_buf(),
            detail: crate::model::clean_tch_error(&e.to_string()),
        })?
        .into_iter()
        .map(|(k, v)| (crate::model::weights::normalize_key(&k), v))
        .collect())
}

/// An I/O error on `path`.
pub fn io_error(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::Io {
        path: PathBuf::from(path),
        detail: e.to_string(),
    }
}
