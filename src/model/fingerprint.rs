//! A model fingerprint: tells whether an existing output was made with the same model.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ModelError;

/// Bytes hashed at each end of a weights file (hashing gigabytes on every run would be slow;
/// the header, the first tensors and the last tensors change with any retraining).
const EDGE: u64 = 4 << 20;

/// SHA-256 over every configuration file of the folder (and its module sub-folders), and the
/// size plus both ends of each weights file.
pub fn fingerprint(dir: &Path) -> Result<String, ModelError> {
    let mut hash = Sha256::new();
    let mut files = Vec::new();
    collect(dir, dir, 0, &mut files)?;
    files.sort();
    for rel in files {
        let path = dir.join(&rel);
        hash.update(rel.as_bytes());
        let io = |e| ModelError::Io {
            path: path.clone(),
            source: e,
        };
        if rel.ends_with(".safetensors") {
            let mut f = std::fs::File::open(&path).map_err(io)?;
            let size = f.metadata().map_err(io)?.len();
            hash.update(size.to_le_bytes());
            let mut buf = vec![0u8; EDGE.min(size) as usize];
            f.read_exact(&mut buf).map_err(io)?;
            hash.update(&buf);
            f.seek(SeekFrom::Start(size - EDGE.min(size))).map_err(io)?;
            f.read_exact(&mut buf).map_err(io)?;
            hash.update(&buf);
        } else {
            hash.update(std::fs::read(&path).map_err(io)?);
        }
    }
    Ok(hex::encode(hash.finalize()))
}

fn collect(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) -> Result<(), ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && depth == 0 && !name.starts_with('.') {
            collect(root, &path, depth + 1, out)?;
        } else if path.is_file()
            && (name.ends_with(".json") || name.ends_with(".safetensors"))
            && name != "README.md"
        {
            out.push(
                path.strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    Ok(())
}
