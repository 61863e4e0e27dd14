//! Where a process may read and write local files: the service's allowed roots.
//!
//! A path is judged by its real location (symlinks and `..` resolved), at the moment it is
//! used, not as a spec spelled it: a link inside an allowed folder that points elsewhere, met
//! by listing a folder or matching a glob, is refused like a path typed outside. Files are
//! opened first and judged by what the open file descriptor really is (`/proc/self/fd`), so a
//! link swapped in between a check and the open cannot redirect the read. S3 URLs are not
//! local paths and are not confined here (the bucket's credentials decide).

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;

/// One party's allowed folders: a path must lie under one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSet {
    /// Who set them, for messages ("this service", "this worker").
    pub owner: String,
    /// Canonical folders.
    pub roots: Vec<PathBuf>,
    /// A model folder this party allows wherever it is (a service's default model).
    #[serde(default)]
    pub model: Option<PathBuf>,
}

/// The folders local paths must lie under: every set must hold a path (the service's and a
/// worker's own, say). No set means no restriction, as for a user's own `sparq encode`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedRoots {
    sets: Vec<RootSet>,
}

impl AllowedRoots {
    /// No restriction.
    pub fn anywhere() -> Self {
        Self::default()
    }

    /// Paths must lie under one of `roots` (made canonical; each must exist).
    pub fn under(owner: &str, roots: &[PathBuf]) -> Result<Self, StoreError> {
        let mut canonical = Vec::new();
        for root in roots {
            canonical.push(root.canonicalize().map_err(|e| StoreError::Io {
                op: "resolving the allowed root",
                path: root.clone(),
                source: e,
            })?);
        }
        Ok(Self {
            sets: vec![RootSet {
                owner: owner.to_string(),
                roots: canonical,
                model: None,
            }],
        })
    }

    /// Also allows the model folder `dir` (and only as a model), wherever it is.
    pub fn with_model(mut self, dir: &Path) -> Self {
        for set in &mut self.sets {
            set.model = dir.canonicalize().ok();
        }
        self
    }

    /// Checks a model folder: for each set, the model it allows, or a folder whose every file
    /// resolves under its roots.
    pub fn check_model(&self, dir: &Path) -> Result<(), StoreError> {
        let real = dir.canonicalize().ok();
        for set in &self.sets {
            if set.model.is_none() || set.model != real {
                let one = AllowedRoots {
                    sets: vec![set.clone()],
                };
                one.check_tree(dir, 2)?;
            }
        }
        Ok(())
    }

    /// Paths must satisfy both `self` and `other`.
    pub fn and(mut self, other: &AllowedRoots) -> Self {
        for set in &other.sets {
            if !self.sets.contains(set) {
                self.sets.push(set.clone());
            }
        }
        self
    }

    /// Whether any path is allowed.
    pub fn is_anywhere(&self) -> bool {
        self.sets.is_empty()
    }

    /// The allowed folders of every set, for messages.
    pub fn describe(&self) -> String {
        self.sets
            .iter()
            .map(|s| {
                let roots: Vec<String> = s.roots.iter().map(|r| r.display().to_string()).collect();
                format!("{}: {}", s.owner, roots.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Checks where `path` really is (symlinks and `..` resolved in its longest existing
    /// prefix; a missing rest is appended as written); returns that real path.
    pub fn check(&self, path: &Path) -> Result<PathBuf, StoreError> {
        let absolute = normalise(&std::path::absolute(path).unwrap_or(path.to_path_buf()));
        let real = resolve_existing(&absolute);
        self.check_real(path, &real)?;
        Ok(real)
    }

    fn check_real(&self, path: &Path, real: &Path) -> Result<(), StoreError> {
        for set in &self.sets {
            if !set.roots.iter().any(|root| real.starts_with(root)) {
                return Err(StoreError::Escape {
                    path: path.to_path_buf(),
                    real: real.to_path_buf(),
                    owner: set.owner.clone(),
                    roots: set
                        .roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }

    /// Opens a regular file for reading, then checks the file it really opened. Nothing is
    /// read from a file outside the roots; FIFOs and devices are refused without blocking.
    pub fn open(&self, path: &Path) -> Result<File, StoreError> {
        let io = |op, e| StoreError::Io {
            op,
            path: path.to_path_buf(),
            source: e,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| io("opening", e))?;
        if !self.is_anywhere() {
            let real = fd_path(&file).map_err(|e| io("resolving", e))?;
            self.check_real(path, &real)?;
        }
        let meta = file
            .metadata()
            .map_err(|e| io("reading the metadata of", e))?;
        if !meta.is_file() {
            return Err(StoreError::Io {
                op: "reading",
                path: path.to_path_buf(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        Ok(file)
    }

    /// Checks a folder and everything in it down to `depth` levels (a model folder): the
    /// folder itself and every entry must resolve under the roots.
    pub fn check_tree(&self, dir: &Path, depth: usize) -> Result<(), StoreError> {
        if self.is_anywhere() {
            return Ok(());
        }
        self.check(dir)?;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(()); // A missing folder is reported by whoever reads it.
        };
        for entry in entries.flatten() {
            let path = entry.path();
            self.check(&path)?;
            if depth > 0 && path.is_dir() {
                self.check_tree(&path, depth - 1)?;
            }
        }
        Ok(())
    }
}

/// The path the kernel has for an open file.
fn fd_path(file: &File) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Lexically removes `.` and `..` (no file system access).
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Resolves symlinks in the longest existing prefix of `path` and appends the rest.
pub fn resolve_existing(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_judged_by_where_they_point() {
        let inside = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::fs::write(inside.path().join("plain"), b"p").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), inside.path().join("link"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), inside.path().join("dir")).unwrap();
        let roots = AllowedRoots::under("this service", &[inside.path().to_path_buf()]).unwrap();
        assert!(roots.open(&inside.path().join("plain")).is_ok());
        let e = roots
            .open(&inside.path().join("link"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outside the folders this service may touch"),
            "{e}"
        );
        assert!(roots.check(&inside.path().join("dir/new")).is_err());
        assert!(roots.check(&inside.path().join("x/../plain")).is_ok());
        assert!(roots.check(&inside.path().join("../elsewhere")).is_err());
        assert!(roots.check_tree(inside.path(), 1).is_err());
        assert!(AllowedRoots::anywhere()
            .open(&inside.path().join("link"))
            .is_ok());
        let both =
            roots.and(&AllowedRoots::under("this worker", &[outside.path().into()]).unwrap());
        let e = both
            .check(&inside.path().join("plain"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("this worker"), "{e}");
    }

    #[test]
    fn fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = AllowedRoots::anywhere()
            .open(&fifo)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
