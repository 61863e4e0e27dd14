//! A model fingerprint: tells whether an existing output was made with the same model.
//!
//! Every file the loader may read (configs, tokenizer files, weights in any format) is hashed
//! whole: a retrained model differs anywhere, not only at the ends of its weights. Hashing
//! gigabytes on every resume would be slow, so each file's digest is cached, keyed by its
//! size and modification time, in the user's cache folder (`$XDG_CACHE_HOME/sparq`, else
//! `~/.cache/sparq`), never in the model folder (it may be read-only or shared). The trade-off
//! is make's and rsync's: a file rewritten in place with the same size and mtime keeps its
//! cached digest (touch it, or delete the cache, to rehash). A digest is trusted only when the
//! file was last modified well before it was hashed, so a write in the same clock tick as the
//! hash is never missed. A cache that cannot be read or written only costs time.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ModelError;

/// File names the loader reads, by ending: configs, tokenizers, weights.
const READ_BY_LOADER: [&str; 8] = [
    ".json",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".txt",
    ".model",
    ".msgpack",
];

/// How long before its hashing a file must have been last modified for its cached digest to
/// be trusted (coarse file-system clocks tick in milliseconds; this is generous).
const SETTLED: Duration = Duration::from_secs(2);

/// SHA-256 over the name and whole content of every file the loader reads in the folder and
/// its module sub-folders.
pub fn fingerprint(dir: &Path) -> Result<String, ModelError> {
    fingerprint_cached(dir, cache_dir().as_deref())
}

/// [`fingerprint`] with the digest cache in `cache` (none: every file is hashed).
pub fn fingerprint_cached(dir: &Path, cache: Option<&Path>) -> Result<String, ModelError> {
    let mut files = Vec::new();
    collect(dir, dir, 0, &mut files)?;
    files.sort();
    let cache_file = cache.map(|c| c.join(cache_name(dir)));
    let mut cached = cache_file
        .as_deref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| serde_json::from_slice::<BTreeMap<String, Cached>>(&b).ok())
        .unwrap_or_default();
    let mut changed = false;
    let mut hash = Sha256::new();
    for rel in files {
        let path = dir.join(&rel);
        let io = |e| ModelError::Io {
            path: path.clone(),
            source: e,
        };
        let meta = std::fs::metadata(&path).map_err(io)?;
        let (size, mtime_ns) = (meta.len(), nanos(meta.modified().map_err(io)?));
        let digest = match cached.get(&rel) {
            Some(c) if c.size == size && c.mtime_ns == mtime_ns && c.trusted() => c.sha256.clone(),
            _ => {
                let hashed_at_ns = nanos(SystemTime::now());
                let sha256 = hash_file(&path).map_err(io)?;
                cached.insert(
                    rel.clone(),
                    Cached {
                        size,
                        mtime_ns,
                        hashed_at_ns,
                        sha256: sha256.clone(),
                    },
                );
                changed = true;
                sha256
            }
        };
        hash.update(rel.as_bytes());
        hash.update(size.to_le_bytes());
        hash.update(digest.as_bytes());
    }
    if let (true, Some(file)) = (changed, cache_file) {
        if let Err(e) = store(&file, &cached) {
            tracing::debug!("model digest cache {}: {e}", file.display());
        }
    }
    Ok(hex::encode(hash.finalize()))
}

/// Whether `recorded`, a fingerprint an output records, names the model in `dir` whose
/// fingerprint is `current`: equal, or the fingerprint sparq recorded before it hashed whole
/// files ([`earlier_fingerprint`]), so outputs written then still resume, inspect and export.
pub fn recognizes(dir: &Path, current: &str, recorded: &str) -> bool {
    recorded == current || earlier_fingerprint(dir).is_ok_and(|f| f == recorded)
}

/// The fingerprint of sparq before whole-file hashing (kept only to recognise the outputs it
/// wrote): SHA-256 over the name and content of every `.json` file of the folder and its module
/// sub-folders, and the size plus the first and last 4 MiB of each `.safetensors` file.
pub fn earlier_fingerprint(dir: &Path) -> Result<String, ModelError> {
    use std::io::{Seek, SeekFrom};
    const EDGE: u64 = 4 << 20;
    let mut files = Vec::new();
    collect(dir, dir, 0, &mut files)?;
    files.retain(|rel| rel.ends_with(".json") || rel.ends_with(".safetensors"));
    files.sort();
    let mut hash = Sha256::new();
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

/// One file's cached digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    size: u64,
    mtime_ns: u128,
    hashed_at_ns: u128,
    sha256: String,
}

impl Cached {
    /// Whether the file had settled when it was hashed (a later write in the same clock tick
    /// would leave size and mtime as they were).
    fn trusted(&self) -> bool {
        self.mtime_ns + SETTLED.as_nanos() <= self.hashed_at_ns
    }
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex::encode(hash.finalize()))
}

/// The user's cache folder for sparq, if there is a home for one.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sparq").join("model-digests"))
}

/// The cache file of a model folder: named by a digest of its canonical path.
fn cache_name(dir: &Path) -> String {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let digest = Sha256::digest(canonical.to_string_lossy().as_bytes());
    format!("{}.json", &hex::encode(digest)[..32])
}

/// Writes the cache whole under a temporary name, then renames it: concurrent runs each
/// leave a complete file.
fn store(file: &Path, cached: &BTreeMap<String, Cached>) -> std::io::Result<()> {
    let folder = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let tmp = folder.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    std::fs::write(
        &tmp,
        serde_json::to_vec(cached).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn collect(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) -> Result<(), ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() && depth == 0 {
            collect(root, &path, depth + 1, out)?;
        } else if path.is_file() && READ_BY_LOADER.iter().any(|end| name.ends_with(end)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A model-like folder with a 9 MiB weights file last modified long ago.
    fn model(dir: &Path) -> PathBuf {
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        let weights = dir.join("pytorch_model.bin");
        let bytes: Vec<u8> = (0..9u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&weights, bytes).unwrap();
        set_old_mtime(&weights);
        weights
    }

    /// Sets the mtime to a fixed time long ago (the same every call).
    fn set_old_mtime(path: &Path) {
        let old = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    fn flip_middle_byte(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_byte_in_the_middle_of_the_weights_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let weights = model(dir.path());
        let before = fingerprint_cached(dir.path(), None).unwrap();
        flip_middle_byte(&weights);
        assert_ne!(fingerprint_cached(dir.path(), None).unwrap(), before);
    }

    #[test]
    fn an_unchanged_size_and_mtime_reuse_the_cached_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let weights = model(dir.path());
        let first = fingerprint_cached(dir.path(), Some(cache.path())).unwrap();
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
        // Rewritten in place with its size and mtime kept: the cache answers (the trade-off
        // make and rsync make), so the change goes unseen...
        flip_middle_byte(&weights);
        set_old_mtime(&weights);
        let cached = fingerprint_cached(dir.path(), Some(cache.path())).unwrap();
        assert_eq!(cached, first, "the cached digest is used");
        // Touched: hashed again, the change is seen; without a cache it is seen at once.
        std::fs::File::options()
            .write(true)
            .open(&weights)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        let touched = fingerprint_cached(dir.path(), Some(cache.path())).unwrap();
        assert_ne!(touched, first);
        assert_eq!(touched, fingerprint_cached(dir.path(), None).unwrap());
    }

    #[test]
    fn a_cache_that_cannot_be_written_only_costs_time() {
        let dir = tempfile::tempdir().unwrap();
        model(dir.path());
        let not_a_folder = dir.path().join("config.json");
        assert_eq!(
            fingerprint_cached(dir.path(), Some(&not_a_folder)).unwrap(),
            fingerprint_cached(dir.path(), None).unwrap()
        );
    }

    #[test]
    fn a_file_hashed_as_it_was_written_is_hashed_again() {
        let c = Cached {
            size: 1,
            mtime_ns: 10_000_000_000,
            hashed_at_ns: 10_500_000_000,
            sha256: String::new(),
        };
        assert!(!c.trusted());
        assert!(Cached {
            hashed_at_ns: 13_000_000_000,
            ..c
        }
        .trusted());
    }
}
