//! The commit protocol: a shard's part is written under a unique attempt name and
//! published under its final name exactly once.
//!
//! - Local disk: the attempt is `_attempts/<part>.<uuid>.tmp`, fsynced, then hard-linked to
//!   the final name (`link(2)` fails if the name exists, so a second attempt cannot replace
//!   a committed part), then the attempt is unlinked. A part is written straight into its
//!   attempt file as it is built ([`Committer::part_file`]), so memory stays flat.
//! - S3: one `PUT` is atomic (an object is visible whole or not at all), so the attempt is the
//!   worker's part, built in a file in the spill folder and sent from it (mapped, not read into
//!   memory); it is published with `PutMode::Create` (`If-None-Match: *`):
//!   the first attempt wins, later ones get `AlreadyExists`. A refusal counts as committed
//!   only when the object is then found (S3 also answers 409 while another conditional write
//!   is in flight, and that write may fail); otherwise the write is tried again.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::url::{Location, StoreUrl};
use super::{AllowedRoots, StoreError};

/// Pauses after a create-once write refused for a part that is not there (a conflicting
/// write in flight), before writing again; the last attempt gives up.
const CONFLICT_WAITS: [std::time::Duration; 4] = [
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(800),
    std::time::Duration::from_secs(2),
    std::time::Duration::ZERO,
];

/// The most one S3 `PUT` may carry (5 GiB): a larger part could only be a multipart upload,
/// which is not create-once.
pub const SINGLE_PUT_LIMIT: u64 = 5 << 30;

/// The variable naming the folder for temporary files: S3 parts as they are built, and the
/// sorted runs of the duplicate-id check.
pub const SPILL_DIR_ENV: &str = "SPARQ_SPILL_DIR";

/// Where temporary files go: `$SPARQ_SPILL_DIR`, else the system's temporary folder.
pub fn spill_dir() -> PathBuf {
    std::env::var_os(SPILL_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A part written to a file before its commit (memory stays flat however large it grows):
/// in a local output's `_attempts/` (the commit links this very file), for S3 in the spill
/// folder. Removed when dropped, so a failed shard leaves nothing behind.
pub struct PartFile {
    file: tempfile::NamedTempFile,
    /// What errors name: the part (local), or the temporary file (S3: the spill folder's disk).
    named: PathBuf,
}

impl PartFile {
    /// A second handle on the file, to write it.
    pub fn writer(&self) -> Result<std::fs::File, StoreError> {
        self.file.as_file().try_clone().map_err(|e| StoreError::Io {
            op: "opening",
            path: self.file.path().to_path_buf(),
            source: e,
        })
    }

    /// Its size in bytes.
    pub fn len(&self) -> Result<u64, StoreError> {
        self.file
            .as_file()
            .metadata()
            .map(|m| m.len())
            .map_err(|e| StoreError::Io {
                op: "reading the size of",
                path: self.file.path().to_path_buf(),
                source: e,
            })
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.len().map(|n| n == 0)
    }

    /// The path a failed write names: the part's own for a local output.
    pub fn path(&self) -> &std::path::Path {
        &self.named
    }
}

/// Result of committing a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// This attempt published the part.
    Committed,
    /// Another attempt had already published it; this one was discarded.
    AlreadyCommitted,
}

/// Publishes parts and markers under an output URL.
#[derive(Clone)]
pub struct Committer {
    url: StoreUrl,
    target: Target,
    roots: AllowedRoots,
}

#[derive(Clone)]
enum Target {
    Local(PathBuf),
    Object(Arc<dyn ObjectStore>, ObjectPath),
}

impl Committer {
    /// A committer for the output `url`.
    pub fn new(url: &StoreUrl) -> Result<Self, StoreError> {
        let target = match &url.location {
            Location::Local(dir) => Target::Local(dir.clone()),
            Location::S3 { .. } => {
                let (store, prefix) = url.store()?;
                Target::Object(store, prefix)
            }
        };
        Ok(Self {
            url: url.clone(),
            target,
            roots: AllowedRoots::anywhere(),
        })
    }

    /// The same committer, writing a local output only while it resolves under `roots`
    /// (checked at every write, so a folder swapped for a link later is refused too).
    pub fn confined(mut self, roots: &AllowedRoots) -> Self {
        self.roots = roots.clone();
        self
    }

    /// Checks that the local output folder (and `sub`, if given) resolve under the roots.
    fn check_local(&self, dir: &std::path::Path, sub: Option<&str>) -> Result<(), StoreError> {
        self.roots.check(dir)?;
        if let Some(sub) = sub {
            self.roots.check(&dir.join(sub))?;
        }
        Ok(())
    }

    /// The output URL.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// Publishes `bytes` as `name` unless a part of that name exists.
    pub async fn commit(&self, name: &str, bytes: Vec<u8>) -> Result<CommitOutcome, StoreError> {
        match &self.target {
            Target::Local(dir) => {
                self.check_local(dir, Some("_attempts"))?;
                if let Some((sub, _)) = name.rsplit_once('/') {
                    self.check_local(dir, Some(sub))?;
                }
                let dir = dir.clone();
                let name = name.to_string();
                tokio::task::spawn_blocking(move || commit_local(&dir, &name, &bytes))
                    .await
                    .map_err(commit_task_failed)?
            }
            Target::Object(..) => {
                self.commit_object(name, PutPayload::from(Bytes::from(bytes)))
                    .await
            }
        }
    }

    /// A fresh file to build the part `name` in, then [`Committer::commit_file`] it.
    pub fn part_file(&self, name: &str) -> Result<PartFile, StoreError> {
        let (folder, op, local) = match &self.target {
            Target::Local(dir) => {
                self.check_local(dir, Some("_attempts"))?;
                (attempts_dir(dir)?, "writing", Some(dir.join(name)))
            }
            Target::Object(..) => (
                spill_dir(),
                "creating the part's temporary file (set SPARQ_SPILL_DIR to a folder with room) in",
                None,
            ),
        };
        let file = tempfile::Builder::new()
            .prefix(&format!("{}.", name.replace('/', "_")))
            .suffix(".tmp")
            .tempfile_in(&folder)
            .map_err(|e| StoreError::Io {
                op,
                path: folder.clone(),
                source: e,
            })?;
        let named = local.unwrap_or_else(|| file.path().to_path_buf());
        Ok(PartFile { file, named })
    }

    /// Publishes the part built in `part` as `name` unless a part of that name exists.
    pub async fn commit_file(
        &self,
        name: &str,
        part: PartFile,
    ) -> Result<CommitOutcome, StoreError> {
        match &self.target {
            Target::Local(dir) => {
                self.check_local(dir, Some("_attempts"))?;
                let dir = dir.clone();
                let name = name.to_string();
                tokio::task::spawn_blocking(move || link_local(&dir, &name, part))
                    .await
                    .map_err(commit_task_failed)?
            }
            Target::Object(..) => {
                let size = part.len()?;
                if size > SINGLE_PUT_LIMIT {
                    return Err(StoreError::Object {
                        op: "committing",
                        location: self.url.join(name),
                        detail: format!(
                            "the part is {size} bytes, more than the {SINGLE_PUT_LIMIT} one S3 \
                             PUT can carry: lower --max-part-bytes (or --shard-rows)"
                        ),
                    });
                }
                let payload = if size == 0 {
                    PutPayload::new()
                } else {
                    // SAFETY: the file is this process's own temporary file, not yet published:
                    // nothing else writes or truncates it while it is mapped.
                    let map = unsafe { memmap2::Mmap::map(part.file.as_file()) }.map_err(|e| {
                        StoreError::Io {
                            op: "mapping",
                            path: part.file.path().to_path_buf(),
                            source: e,
                        }
                    })?;
                    PutPayload::from(Bytes::from_owner(map))
                };
                let outcome = self.commit_object(name, payload).await;
                drop(part);
                outcome
            }
        }
    }

    /// Publishes `payload` as the object `name` with a create-once write.
    async fn commit_object(
        &self,
        name: &str,
        payload: PutPayload,
    ) -> Result<CommitOutcome, StoreError> {
        let Target::Object(store, prefix) = &self.target else {
            unreachable!("called for object stores only")
        };
        let path = object_path(prefix, name);
        let mut refused = Vec::new();
        for wait in CONFLICT_WAITS {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            let error = match store.put_opts(&path, payload.clone(), opts).await {
                Ok(_) => return Ok(CommitOutcome::Committed),
                Err(
                    e @ (object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }),
                ) => e,
                Err(e) => return Err(StoreError::object("committing", self.url.join(name), e)),
            };
            // A 409 also means "another conditional write is in flight" (which may
            // yet fail): only an object that is there makes the part committed.
            match store.head(&path).await {
                Ok(_) => return Ok(CommitOutcome::AlreadyCommitted),
                Err(object_store::Error::NotFound { .. }) => refused.push(error),
                Err(e) => {
                    return Err(StoreError::object(
                        "looking up the refused part",
                        self.url.join(name),
                        e,
                    ))
                }
            }
            tokio::time::sleep(wait).await;
        }
        Err(StoreError::Object {
            op: "committing",
            location: self.url.join(name),
            detail: format!(
                "the store refused the create-once write {} times as if the part existed \
                 ({}), yet it is not there: the shard is not counted committed; it is \
                 retried, and a rerun encodes it again",
                refused.len(),
                refused.last().map_or(String::new(), |e| e.to_string())
            ),
        })
    }

    /// Writes a marker or manifest object (replacing any previous one).
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match &self.target {
            Target::Local(dir) => {
                // `name` may lie in a subfolder (`_reports/<part>.json`).
                let target = dir.join(name);
                let folder = target.parent().unwrap_or(dir).to_path_buf();
                self.check_local(dir, name.rsplit_once('/').map(|(sub, _)| sub))?;
                std::fs::create_dir_all(&folder).map_err(|e| StoreError::Io {
                    op: "creating",
                    path: folder.clone(),
                    source: e,
                })?;
                let file = name.rsplit('/').next().unwrap_or(name);
                let tmp = folder.join(format!(".{file}.{}.tmp", uuid::Uuid::new_v4()));
                write_synced(&tmp, &bytes)?;
                std::fs::rename(&tmp, target).map_err(|e| StoreError::Io {
                    op: "renaming",
                    path: tmp,
                    source: e,
                })?;
                // The new name is durable before this returns: the manifest before `_SUCCESS`
                // is written, a subfolder's entry with it.
                sync_dir(&folder)?;
                if folder != *dir {
                    sync_dir(dir)?;
                }
                Ok(())
            }
            Target::Object(store, prefix) => store
                .put(
                    &object_path(prefix, name),
                    PutPayload::from(Bytes::from(bytes)),
                )
                .await
                .map(|_| ())
                .map_err(|e| StoreError::object("writing", self.url.join(name), e)),
        }
    }

    /// Reads a small object, `None` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.target {
            Target::Local(dir) => {
                let path = dir.join(name);
                let read = self.roots.open(&path).and_then(|mut f| {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut bytes).map_err(|e| StoreError::Io {
                        op: "reading",
                        path: path.clone(),
                        source: e,
                    })?;
                    Ok(bytes)
                });
                match read {
                    Ok(b) => Ok(Some(b)),
                    Err(StoreError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Target::Object(store, prefix) => match store.get(&object_path(prefix, name)).await {
                Ok(r) => Ok(Some(
                    r.bytes()
                        .await
                        .map_err(|e| StoreError::object("reading", self.url.join(name), e))?
                        .to_vec(),
                )),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(StoreError::object("reading", self.url.join(name), e)),
            },
        }
    }

    /// Names (relative to the output) and sizes of every object under the output.
    pub async fn list(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match &self.target {
            Target::Local(dir) => {
                self.check_local(dir, None)?;
                let mut out = Vec::new();
                list_local(dir, "", &mut out)?;
                Ok(out)
            }
            Target::Object(store, prefix) => {
                let mut out = Vec::new();
                let mut stream = store.list(Some(prefix));
                while let Some(item) = stream.next().await {
                    let meta = item.map_err(|e| StoreError::object("listing", &self.url.raw, e))?;
                    let rel = meta
                        .location
                        .as_ref()
                        .strip_prefix(prefix.as_ref())
                        .unwrap_or(meta.location.as_ref());
                    out.push((rel.trim_start_matches('/').to_string(), meta.size));
                }
                Ok(out)
            }
        }
    }

    /// Deletes the named objects.
    pub async fn delete(&self, names: &[String]) -> Result<(), StoreError> {
        for name in names {
            match &self.target {
                Target::Local(dir) => match self
                    .check_local(dir, None)
                    .map(|()| std::fs::remove_file(dir.join(name)))?
                {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::Io {
                            op: "deleting",
                            path: dir.join(name),
                            source: e,
                        })
                    }
                },
                Target::Object(store, prefix) => match store
                    .delete(&object_path(prefix, name))
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(StoreError::object("deleting", self.url.join(name), e)),
                },
            }
        }
        Ok(())
    }

    /// Removes the local `_attempts` folder and any attempt left in it by a worker that died
    /// mid-write (S3 has none). Only when no attempt can still be running: at the end of a job.
    pub fn remove_attempts(&self) {
        if let Target::Local(dir) = &self.target {
            if self.check_local(dir, Some("_attempts")).is_err() {
                return;
            }
            let attempts = dir.join("_attempts");
            if let Ok(entries) = std::fs::read_dir(&attempts) {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().ends_with(".tmp") {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&attempts);
        }
    }

    /// Checks, writing nothing, that a local output is not a file (and lies where it may).
    pub fn check_not_file(&self) -> Result<(), StoreError> {
        if let Target::Local(dir) = &self.target {
            self.check_local(dir, None)?;
            if dir.exists() && !dir.is_dir() {
                return Err(StoreError::BadUrl {
                    url: self.url.raw.clone(),
                    detail: "is a file: the output must be a folder (or an s3:// prefix)".into(),
                });
            }
        }
        Ok(())
    }

    /// Checks that the output can be written (bucket exists, credentials work) before any work.
    pub async fn probe(&self) -> Result<(), StoreError> {
        match &self.target {
            Target::Local(dir) => {
                self.check_not_file()?;
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                    op: "creating",
                    path: dir.clone(),
                    source: e,
                })?;
                probe_hard_link(dir).map_err(|e| StoreError::BadUrl {
                    url: self.url.raw.clone(),
                    detail: format!(
                        "its filesystem refuses hard links ({e}), which the create-once commit \
                         of every part needs (FUSE and network mounts often do): write the \
                         output to a local disk, or to an s3:// prefix"
                    ),
                })
            }
            Target::Object(store, prefix) => {
                let mut stream = store.list(Some(prefix));
                match stream.next().await {
                    None | Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(StoreError::object("listing", &self.url.raw, e)),
                }
            }
        }
    }
}

/// Links a fresh file to a second name in `dir` (as a commit does), then removes both:
/// the names are hidden temporary ones, left over only if the process dies in between.
fn probe_hard_link(dir: &std::path::Path) -> std::io::Result<()> {
    let id = uuid::Uuid::new_v4();
    let file = dir.join(format!(".probe-{id}.tmp"));
    let link = dir.join(format!(".probe-{id}.link.tmp"));
    std::fs::File::create(&file)?;
    let linked = std::fs::hard_link(&file, &link);
    let _ = std::fs::remove_file(&link);
    std::fs::remove_file(&file)?;
    linked
}

/// The object `name` (relative to the output, `/` between folders) under `prefix`.
fn object_path(prefix: &ObjectPath, name: &str) -> ObjectPath {
    name.split('/')
        .fold(prefix.clone(), |path, part| path.join(part))
}

/// The output's `_attempts/` folder, created when missing: parts are built and linked from it.
fn attempts_dir(dir: &std::path::Path) -> Result<PathBuf, StoreError> {
    let attempts = dir.join("_attempts");
    std::fs::create_dir_all(&attempts).map_err(|e| StoreError::Io {
        op: "creating",
        path: attempts.clone(),
        source: e,
    })?;
    Ok(attempts)
}

fn commit_local(
    dir: &std::path::Path,
    name: &str,
    bytes: &[u8],
) -> Result<CommitOutcome, StoreError> {
    let attempts = attempts_dir(dir)?;
    // A name in a subfolder (`_reports/ids-<part>.bin`) has a flat attempt name.
    let attempt = attempts.join(format!(
        "{}.{}.tmp",
        name.replace('/', "_"),
        uuid::Uuid::new_v4()
    ));
    let final_path = dir.join(name);
    // Name the part, not its attempt file (removed again on failure).
    write_synced(&attempt, bytes).map_err(|e| match e {
        StoreError::Io { source, .. } => StoreError::Io {
            op: "writing",
            path: final_path.clone(),
            source,
        },
        e => e,
    })?;
    let outcome = link_once(&attempt, &final_path);
    let _ = std::fs::remove_file(&attempt);
    finish_link(&final_path, outcome)
}

/// Commits the part built in `part` (a file in `dir/_attempts`) by linking it as `name`.
fn link_local(
    dir: &std::path::Path,
    name: &str,
    part: PartFile,
) -> Result<CommitOutcome, StoreError> {
    let final_path = dir.join(name);
    part.file.as_file().sync_all().map_err(|e| StoreError::Io {
        op: "writing",
        path: final_path.clone(),
        source: e,
    })?;
    let outcome = link_once(part.file.path(), &final_path);
    drop(part);
    finish_link(&final_path, outcome)
}

/// Links `attempt` as `final_path` unless that exists (its folder created first).
fn link_once(
    attempt: &std::path::Path,
    final_path: &std::path::Path,
) -> Result<CommitOutcome, StoreError> {
    if let Some(folder) = final_path.parent() {
        std::fs::create_dir_all(folder).map_err(|e| StoreError::Io {
            op: "creating",
            path: folder.to_path_buf(),
            source: e,
        })?;
    }
    match std::fs::hard_link(attempt, final_path) {
        Ok(()) => Ok(CommitOutcome::Committed),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(CommitOutcome::AlreadyCommitted)
        }
        Err(e) => Err(StoreError::Io {
            op: "committing",
            path: final_path.to_path_buf(),
            source: e,
        }),
    }
}

/// The part's name is durable before the shard is reported committed (also when another
/// attempt linked it: that one may have died before its own sync).
fn finish_link(
    final_path: &std::path::Path,
    outcome: Result<CommitOutcome, StoreError>,
) -> Result<CommitOutcome, StoreError> {
    let outcome = outcome?;
    if let Some(folder) = final_path.parent() {
        sync_dir(folder)?;
    }
    Ok(outcome)
}

/// Makes a folder's entries (names created, renamed or linked in it) durable.
fn sync_dir(dir: &std::path::Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io {
            op: "making durable (fsync of) the folder",
            path: dir.to_path_buf(),
            source: e,
        })
}

fn write_synced(path: &std::path::Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |e| StoreError::Io {
        op: "writing",
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        // A full disk leaves no half-written file behind.
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(io(e));
    }
    Ok(())
}

fn list_local(
    dir: &std::path::Path,
    rel: &str,
    out: &mut Vec<(String, u64)>,
) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Io {
                op: "listing",
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::Io {
            op: "listing",
            path: dir.to_path_buf(),
            source: e,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel_name = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let meta = entry.metadata().map_err(|e| StoreError::Io {
            op: "listing",
            path: entry.path(),
            source: e,
        })?;
        if meta.is_dir() {
            list_local(&entry.path(), &rel_name, out)?;
        } else {
            out.push((rel_name, meta.len()));
        }
    }
    Ok(())
}

/// A local commit's blocking task that panicked or was cancelled.
fn commit_task_failed(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        op: "committing",
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_sync_that_fails_is_an_error_naming_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        sync_dir(&gone).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        let e = sync_dir(&gone).unwrap_err().to_string();
        assert!(e.contains("fsync") && e.contains("gone"), "{e}");
    }
}
