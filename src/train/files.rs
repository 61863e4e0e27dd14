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

/// Every file under `root/rel`, relative to `root`, sorted.
pub fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), TrainError> {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
        let entry = entry.map_err(|e| io_error(&dir, e))?;
        let rel = rel.join(entry.file_name());
        if entry.path().is_dir() {
            walk(root, &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    out.sort();
    Ok(())
}

/// Copies every file under `src` to the same place under `dst`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), TrainError> {
    let mut files = Vec::new();
    walk(src, Path::new(""), &mut files)?;
    for rel in files {
        let to = dst.join(&rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        std::fs::copy(src.join(&rel), &to).map_err(|e| io_error(&to, e))?;
    }
    Ok(())
}

/// Flushes every file under `dir` to disk.
pub fn sync_tree(dir: &Path) -> Result<(), TrainError> {
    let mut files = Vec::new();
    walk(dir, Path::new(""), &mut files)?;
    for rel in files {
        if let Ok(f) = std::fs::File::open(dir.join(&rel)) {
            f.sync_all().map_err(|e| io_error(&dir.join(&rel), e))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` and flushes it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| io_error(path, e))?;
    f.write_all(bytes).map_err(|e| io_error(path, e))?;
    f.sync_all().map_err(|e| io_error(path, e))
}
