//! Output ownership: one job at a time writes an output. Two jobs on one output (another model,
//! other settings, or `--overwrite` while a run writes) would mix their vectors or delete each
//! other's committed parts; the create-once commit of each part cannot see that.
//!
//! The lock is a chain of generations under `<output>/_sparq_lock/`: `0000000001.json`,
//! `0000000002.json`, ... each created once (local: a synced file hard-linked to its name,
//! `link(2)` failing if it exists; S3: `PutMode::Create`), the highest one in force. Taking the
//! lock, taking over a stale holder and releasing all create the next generation, so of two
//! processes acting on the same generation exactly one wins, with no compare-and-swap on a
//! mutable object: the same protocol on a disk and on S3. A holder names its job, kind, host,
//! pid and start time; processes of one job (the tasks of an array, a rerun) share it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::url::{Location, StoreUrl};
use super::{AllowedRoots, StoreError};

/// The folder (prefix) of the lock's generations, under the output.
pub const LOCK_DIR: &str = "_sparq_lock";

/// Generations kept below the one in force (older ones are pruned, best effort).
const KEEP: u64 = 2;

/// Who runs a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HolderKind {
    /// `sparq encode` / `sparq score` on this machine.
    Cli,
    /// A task of a scheduler's array (`--task-index`): the tasks share the lock.
    TaskArray,
    /// A `sparq serve` job.
    Service,
}

impl std::fmt::Display for HolderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HolderKind::Cli => "sparq encode",
            HolderKind::TaskArray => "array task",
            HolderKind::Service => "sparq serve job",
        })
    }
}

/// One generation of the lock: who holds it (or that it was released).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The job: processes with the same job share the lock.
    pub job: String,
    /// What kind of run took it.
    pub kind: HolderKind,
    /// Host name of the process.
    pub host: String,
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat`), so a reused pid is not
    /// taken for the holder.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// When it took the lock (seconds since the epoch).
    pub started: u64,
    /// Whether the job released the output (it is free).
    #[serde(default)]
    pub released: bool,
    /// Why this generation was written, when it took over another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LockHolder {
    /// This process, holding the lock for `job`.
    pub fn this_process(job: &str, kind: HolderKind) -> Self {
        let pid = std::process::id();
        Self {
            job: job.to_string(),
            kind,
            host: host_name(),
            pid,
            pid_start: process_start(pid),
            started: now(),
            released: false,
            reason: None,
        }
    }

    /// Whether the holder is known to be gone: why, or `None` when it runs or cannot be seen
    /// (another host).
    pub fn gone(&self) -> Option<String> {
        if self.host != host_name() {
            return None;
        }
        // SAFETY: kill with signal 0 only checks that the process exists.
        let exists = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !exists {
            return Some(format!("pid {} no longer runs on {}", self.pid, self.host));
        }
        match (self.pid_start, process_start(self.pid)) {
            (Some(then), Some(now)) if then != now => Some(format!(
                "pid {} on {} is another process now (the holder ended)",
                self.pid, self.host
            )),
            _ => None,
        }
    }

    fn is_this_process(&self) -> bool {
        self.host == host_name()
            && self.pid == std::process::id()
            && self.pid_start == process_start(self.pid)
    }
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job {} ({}, pid {} on host {}, started {}s ago)",
            self.job,
            self.kind,
            self.pid,
            self.host,
            now().saturating_sub(self.started)
        )
    }
}

/// Why the lock refused.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live job holds the output.
    #[error("{output} is being written by {holder}: {what}. Wait for it to end, or use another --output. If that process is gone (a lock on another host cannot be checked), delete {output}/{LOCK_DIR}/ and rerun")]
    Held {
        /// The output.
        output: String,
        /// Who holds it.
        holder: Box<LockHolder>,
        /// What was refused.
        what: String,
    },
    /// The lock no longer names this job: another job took the output over.
    #[error("{output} no longer belongs to job {job} ({now}): this run lost the output and commits nothing more; rerun it once the other job has ended")]
    Lost {
        /// The output.
        output: String,
        /// This job.
        job: String,
        /// What the lock says now.
        now: String,
    },
    /// A generation of the lock cannot be read.
    #[error("{key} is not a sparq lock ({detail}): delete {LOCK_DIR}/ under the output if no job is running there, then rerun")]
    Unreadable {
        /// The file or object.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// Others kept winning the next generation.
    #[error(
        "{output}: the lock changed hands {tries} times while this run tried to take it; rerun"
    )]
    Contended {
        /// The output.
        output: String,
        /// Attempts made.
        tries: u32,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`OutputLock::acquire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This process wrote the generation in force.
    Taken,
    /// Another live process of the same job holds it; this one shares it.
    Shared(LockHolder),
}

/// The lock of one output.
#[derive(Clone)]
pub struct OutputLock {
    output: String,
    target: Target,
}

#[derive(Clone)]
enum Target {
    Local(PathBuf, AllowedRoots),
    Object(Arc<dyn ObjectStore>, ObjectPath),
}

impl OutputLock {
    /// The lock of the output `url`; a local one only while it resolves under `roots`.
    pub fn new(url: &StoreUrl, roots: &AllowedRoots) -> Result<Self, StoreError> {
        let target = match &url.location {
            Location::Local(dir) => Target::Local(dir.join(LOCK_DIR), roots.clone()),
            Location::S3 { .. } => {
                let (store, prefix) = url.store()?;
                Target::Object(store, prefix.join(LOCK_DIR))
            }
        };
        Ok(Self {
            output: url.raw.clone(),
            target,
        })
    }

    /// The generation in force and its holder, `None` if the output was never locked.
    pub async fn current(&self) -> Result<Option<(u64, LockHolder)>, LockError> {
        let Some(generation) = self.generations().await?.into_iter().max() else {
            return Ok(None);
        };
        let bytes = self.read(generation).await?;
        let holder = serde_json::from_slice(&bytes).map_err(|e| LockError::Unreadable {
            key: self.key(generation),
            detail: e.to_string(),
        })?;
        Ok(Some((generation, holder)))
    }

    /// Takes the lock for `me`'s job, shares it with a live process of the same job (unless
    /// `exclusive`: `--overwrite` deletes what the job wrote), takes over a holder that is gone
    /// (saying why), or refuses a live holder by name.
    pub async fn acquire(&self, me: &LockHolder, exclusive: bool) -> Result<Acquired, LockError> {
        const TRIES: u32 = 8;
        for _ in 0..TRIES {
            let current = self.current().await?;
            let (next, reason) = match &current {
                None => (1, None),
                Some((g, held)) if held.released => (g + 1, None),
                // This process holds it already (a second plan in one run).
                Some((_, held)) if held.is_this_process() && held.job == me.job => {
                    return Ok(Acquired::Taken)
                }
                Some((g, held)) => match held.gone() {
                    Some(why) => (g + 1, Some(format!("took over from {held}: {why}"))),
                    None if held.job == me.job && !exclusive && !held.is_this_process() => {
                        return Ok(Acquired::Shared(held.clone()))
                    }
                    None => {
                        return Err(LockError::Held {
                            output: self.output.clone(),
                            holder: Box::new(held.clone()),
                            what: if held.job == me.job {
                                "--overwrite would delete the parts it commits".into()
                            } else {
                                format!("job {} was refused", me.job)
                            },
                        })
                    }
                },
            };
            let record = LockHolder {
                reason: reason.clone(),
                ..me.clone()
            };
            if self.create(next, &record).await? {
                if let Some(reason) = reason {
                    tracing::warn!("{}: {reason}", self.output);
                }
                self.prune(next).await;
                return Ok(Acquired::Taken);
            }
        }
        Err(LockError::Contended {
            output: self.output.clone(),
            tries: TRIES,
        })
    }

    /// Takes the lock back for `me`'s job from an earlier process of the same job that is gone
    /// (a restarted service, for the jobs it was running): the output stays the job's only
    /// while no other job took it meanwhile, which is refused as [`LockError::Lost`], naming
    /// that job. A live process of the same job keeps it (shared).
    pub async fn retake(&self, me: &LockHolder) -> Result<Acquired, LockError> {
        const TRIES: u32 = 8;
        for _ in 0..TRIES {
            let (next, reason) = match self.current().await? {
                None => (1, None),
                Some((_, held)) if held.job != me.job => {
                    return Err(LockError::Lost {
                        output: self.output.clone(),
                        job: me.job.clone(),
                        now: if held.released {
                            format!("{held} took it over, and has released it since")
                        } else {
                            format!("it is held by {held}")
                        },
                    })
                }
                Some((_, held)) if held.is_this_process() => return Ok(Acquired::Taken),
                Some((g, held)) if held.released => (g + 1, None),
                Some((g, held)) => match held.gone() {
                    Some(why) => (g + 1, Some(format!("took back from {held}: {why}"))),
                    None => return Ok(Acquired::Shared(held)),
                },
            };
            let record = LockHolder {
                reason: reason.clone(),
                ..me.clone()
            };
            if self.create(next, &record).await? {
                if let Some(reason) = reason {
                    tracing::info!("{}: {reason}", self.output);
                }
                self.prune(next).await;
                return Ok(Acquired::Taken);
            }
        }
        Err(LockError::Contended {
            output: self.output.clone(),
            tries: TRIES,
        })
    }

    /// Fails unless the lock names `job` (checked before every commit). Released by the same
    /// job still counts: a part of the same job is the same part, until another job takes it.
    pub async fn check(&self, job: &str) -> Result<(), LockError> {
        match self.current().await? {
            Some((_, held)) if held.job == job => Ok(()),
            now => Err(LockError::Lost {
                output: self.output.clone(),
                job: job.to_string(),
                now: match now {
                    None => "it has no lock".into(),
                    Some((_, held)) => format!("it is held by {held}"),
                },
            }),
        }
    }

    /// Refuses when a live holder has the output (a service checks at submission).
    pub async fn refuse_if_held(&self, what: &str) -> Result<(), LockError> {
        match self.current().await? {
            Some((_, held)) if !held.released && held.gone().is_none() => Err(LockError::Held {
                output: self.output.clone(),
                holder: Box::new(held),
                what: what.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Releases the output if the lock names `job` (a job that lost it leaves it alone): held
    /// by this process or by one that is gone, or with `whole_job` by any process of the job
    /// (`--finalize` ends an array; a service ends its job whatever its pid was).
    pub async fn release(&self, job: &str, whole_job: bool) -> Result<(), LockError> {
        if let Some((g, held)) = self.current().await? {
            let ours = whole_job || held.is_this_process() || held.gone().is_some();
            if held.job == job && !held.released && ours {
                let record = LockHolder {
                    released: true,
                    reason: None,
                    ..LockHolder::this_process(job, held.kind)
                };
                if self.create(g + 1, &record).await? {
                    self.prune(g + 1).await;
                }
            }
        }
        Ok(())
    }

    fn key(&self, generation: u64) -> String {
        format!(
            "{}/{LOCK_DIR}/{}",
            self.output.trim_end_matches('/'),
            file_name(generation)
        )
    }

    /// The generations that exist.
    async fn generations(&self) -> Result<Vec<u64>, StoreError> {
        let names = match &self.target {
            Target::Local(dir, roots) => {
                roots.check(dir)?;
                match std::fs::read_dir(dir) {
                    Ok(entries) => entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(io_error("listing", dir, e)),
                }
            }
            Target::Object(store, prefix) => {
                let mut names = Vec::new();
                let mut stream = store.list(Some(prefix));
                while let Some(item) = stream.next().await {
                    let meta = item.map_err(|e| StoreError::object("listing", self.key(0), e))?;
                    names.extend(meta.location.filename().map(str::to_string));
                }
                names
            }
        };
        Ok(names.iter().filter_map(|n| parse_name(n)).collect())
    }

    async fn read(&self, generation: u64) -> Result<Vec<u8>, StoreError> {
        let name = file_name(generation);
        match &self.target {
            Target::Local(dir, _) => {
                let path = dir.join(&name);
                std::fs::read(&path).map_err(|e| io_error("reading", &path, e))
            }
            Target::Object(store, prefix) => {
                let location = self.key(generation);
                let got = store
                    .get(&prefix.clone().join(name))
                    .await
                    .map_err(|e| StoreError::object("reading", &location, e))?;
                Ok(got
                    .bytes()
                    .await
                    .map_err(|e| StoreError::object("reading", &location, e))?
                    .to_vec())
            }
        }
    }

    /// Creates generation `generation` unless it exists: whether this call created it.
    async fn create(&self, generation: u64, holder: &LockHolder) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec_pretty(holder).expect("a lock record serializes");
        let name = file_name(generation);
        match &self.target {
            Target::Local(dir, roots) => {
                roots.check(dir)?;
                create_local(dir, &name, &bytes)
            }
            Target::Object(store, prefix) => {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                let path = prefix.clone().join(name.as_str());
                match store
                    .put_opts(&path, PutPayload::from(Bytes::from(bytes)), opts)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => Ok(false),
                    Err(e) => Err(StoreError::object("writing", self.key(generation), e)),
                }
            }
        }
    }

    /// Deletes generations older than the ones kept below `newest` (best effort: a process that
    /// recreates one of them finds it below the one in force and loses).
    async fn prune(&self, newest: u64) {
        let Ok(all) = self.generations().await else {
            return;
        };
        for g in all.into_iter().filter(|&g| g + KEEP < newest) {
            match &self.target {
                Target::Local(dir, _) => {
                    let _ = std::fs::remove_file(dir.join(file_name(g)));
                }
                Target::Object(store, prefix) => {
                    let _ = store.delete(&prefix.clone().join(file_name(g))).await;
                }
            }
        }
    }
}

/// Whether `name` (relative to the output) belongs to the lock.
pub fn is_lock_file(name: &str) -> bool {
    name.strip_prefix(LOCK_DIR)
        .is_some_and(|rest| rest.starts_with('/'))
}

fn file_name(generation: u64) -> String {
    format!("{generation:010}.json")
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Writes `bytes` as `dir/name` only if it does not exist: a synced temporary file linked to
/// the name (`link(2)` refuses an existing one), then the folder synced.
fn create_local(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<bool, StoreError> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error("writing", &tmp, e));
    }
    let target = dir.join(name);
    let linked = std::fs::hard_link(&tmp, &target);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("syncing", dir, e))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_error("creating", &target, e)),
    }
}

fn io_error(op: &'static str, path: &std::path::Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This machine's name (the kernel's, as `hostname` prints it).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}
