//! Checkpoints: `checkpoint-<step>/` holding the model (sentence-transformers layout), the
//! optimizer state, and `trainer_state.json` (step, data cursor, λ, settings), local or on S3.
//!
//! A checkpoint is complete when its own folder holds the marker, written last: locally the
//! folder is built under a temporary name, the marker written and synced, then the folder is
//! renamed into place; on S3 the marker is the last object uploaded. Nothing outside the
//! folder is needed to resume, and a half-written checkpoint is never taken.
//!
//! Checkpoints are create-once: a published `checkpoint-<step>` is never replaced (a second
//! writer of the same step stops with an error instead), and a run fenced by a lease's attempt
//! (see [`super::fence`]) neither publishes nor deletes once a newer attempt claimed the output.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::data::Cursor;
use super::fence;
use super::files::{copy_tree, io_error, read_named, sync_tree, walk, write_synced};
use super::model::TrainModel;
use super::optim::Param;
use super::{TrainConfig, TrainError};
use crate::io::{AllowedRoots, Committer, StoreUrl};

pub use super::CHECKPOINT_MARKER as MARKER;

/// Training progress saved with each checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Steps the run will take.
    pub total_steps: u64,
    /// Where the data order is.
    pub cursor: Cursor,
    /// λ of queries at the last step.
    pub lambda_query: f64,
    /// λ of documents at the last step.
    pub lambda_document: f64,
    /// Learning rate of the last step.
    pub learning_rate: f64,
    /// Processes of the run.
    pub world_size: usize,
    /// Best evaluation so far: (nDCG@10, step).
    pub best: Option<(f64, u64)>,
    /// The settings of the run.
    pub config: TrainConfig,
}

/// The output folder or prefix of a run.
pub struct Output {
    url: StoreUrl,
    pub(super) root: Committer,
    roots: AllowedRoots,
    pub(super) attempt: Option<u32>,
}

impl Output {
    /// Opens `url` (a folder or s3:// prefix); a local folder must resolve under `roots`
    /// whenever it is written.
    pub fn new(url: &str, roots: &AllowedRoots) -> Result<Self, TrainError> {
        let url = StoreUrl::parse(url)?;
        let root = Committer::new(&url)?.confined(roots);
        let output = Self {
            url,
            root,
            roots: roots.clone(),
            attempt: None,
        };
        output.local()?;
        Ok(output)
    }

    /// The local folder, checked against the roots (`None` for S3).
    pub(super) fn local(&self) -> Result<Option<PathBuf>, TrainError> {
        match &self.url.location {
            crate::io::url::Location::Local(p) => {
                self.roots
                    .check(p)
                    .map_err(|e| TrainError::Option(e.to_string()))?;
                Ok(Some(p.clone()))
            }
            _ => Ok(None),
        }
    }

    /// Fences this output's writes by a service lease's `attempt` (see [`fence`]).
    pub fn fenced(mut self, attempt: Option<u32>) -> Self {
        self.attempt = attempt;
        self
    }

    /// The output's URL as given.
    pub fn url(&self) -> &str {
        &self.url.raw
    }

    /// Steps of the complete checkpoints, ascending.
    pub fn complete_steps(&self, rt: &tokio::runtime::Runtime) -> Result<Vec<u64>, TrainError> {
        let mut steps: Vec<u64> = rt
            .block_on(self.root.list())?
            .into_iter()
            .filter_map(|(name, _)| {
                let (dir, file) = name.split_once('/')?;
                (file == MARKER).then_some(())?;
                dir.strip_prefix("checkpoint-")?.parse().ok()
            })
            .collect();
        steps.sort_unstable();
        Ok(steps)
    }

    /// Writes checkpoint `state.step` and returns its name.
    pub fn write_checkpoint(
        &self,
        rt: &tokio::runtime::Runtime,
        model: &TrainModel,
        params: &[Param],
        state: &TrainerState,
    ) -> Result<String, TrainError> {
        let name = format!("checkpoint-{}", state.step);
        let staging = match self.local()? {
            Some(dir) => dir.join(fence::staging_name(&name)),
            None => std::env::temp_dir().join(format!("sparq-{name}-{}", uuid::Uuid::new_v4())),
        };
        model.save(&staging)?;
        let optimizer: Vec<(String, Tensor)> = params
            .iter()
            .flat_map(|p| {
                [
                    (format!("exp_avg.{}", p.name), host(&p.exp_avg)),
                    (format!("exp_avg_sq.{}", p.name), host(&p.exp_avg_sq)),
                ]
            })
            .collect();
        let opt_path = staging.join("optimizer.safetensors");
        Tensor::write_safetensors(&optimizer, &opt_path).map_err(|e| TrainError::Io {
            path: opt_path.clone(),
            detail: e.to_string(),
        })?;
        let state_path = staging.join("trainer_state.json");
        let json = serde_json::to_vec_pretty(state).expect("serializable");
        std::fs::write(&state_path, json).map_err(|e| io_error(&state_path, e))?;
        let published = match self.local()? {
            Some(dir) => {
                sync_tree(&staging)?;
                let marker = staging.join(MARKER);
                write_synced(&marker, state.step.to_string().as_bytes())?;
                self.publish_local(rt, &dir, &staging, &name)
            }
            None => self
                .check_fence(rt)
                .and_then(|()| self.upload(rt, &staging, &name)),
        };
        if published.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        } else if self.local()?.is_none() {
            std::fs::remove_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
        }
        published.map(|()| name)
    }

    /// Renames a complete staging folder to `name`, create-once: a directory rename never
    /// replaces a non-empty folder, so a checkpoint already there (another writer's) stays.
    fn publish_local(
        &self,
        rt: &tokio::runtime::Runtime,
        dir: &Path,
        staging: &Path,
        name: &str,
    ) -> Result<(), TrainError> {
        self.check_fence(rt)?;
        let target = dir.join(name);
        match std::fs::rename(staging, &target) {
            Ok(()) => fence::sync_dir(dir),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTEMPTY) | Some(libc::EEXIST) | Some(libc::ENOTDIR)
                ) =>
            {
                Err(self.taken(name))
            }
            Err(e) => Err(io_error(staging, e)),
        }
    }

    /// Uploads every file of `local` under `prefix/`, the marker last.
    fn upload(
        &self,
        rt: &tokio::runtime::Runtime,
        local: &Path,
        prefix: &str,
    ) -> Result<(), TrainError> {
        let marker = format!("{prefix}/{MARKER}");
        if self.exists(rt, &marker)? {
            return Err(self.taken(prefix));
        }
        let mut files = Vec::new();
        walk(local, Path::new(""), &mut files)?;
        for rel in &files {
            let bytes =
                std::fs::read(local.join(rel)).map_err(|e| io_error(&local.join(rel), e))?;
            self.put(rt, &format!("{prefix}/{}", rel.to_string_lossy()), bytes)?;
        }
        // The marker is created once: of two writers of one step, one completes it. It names
        // its writer, so a create whose answer was lost (its retry is told the marker exists)
        // is recognised as this run's own.
        let (target, file) = self.at(&marker)?;
        let ours = format!("complete {}", uuid::Uuid::new_v4()).into_bytes();
        match rt.block_on(target.commit(file, ours.clone()))? {
            crate::io::CommitOutcome::Committed => Ok(()),
            _ if rt.block_on(target.get(file))?.as_deref() == Some(ours.as_slice()) => Ok(()),
            _ => Err(self.taken(prefix)),
        }
    }

    fn exists(&self, rt: &tokio::runtime::Runtime, name: &str) -> Result<bool, TrainError> {
        let (target, file) = self.at(name)?;
        Ok(rt.block_on(target.get(file))?.is_some())
    }

    /// The committer of the folder holding `name` (a `/`-separated path under the output),
    /// and the file name within it.
    pub(super) fn at<'a>(&self, name: &'a str) -> Result<(Committer, &'a str), TrainError> {
        let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
        let url = if dir.is_empty() {
            self.url.raw.clone()
        } else {
            self.url.join(dir)
        };
        let parsed = StoreUrl::parse(&url)?;
        let target = Committer::new(&parsed)?.confined(&self.roots);
        Ok((target, file))
    }

    fn put(
        &self,
        rt: &tokio::runtime::Runtime,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), TrainError> {
        let (target, file) = self.at(name)?;
        Ok(rt.block_on(target.put(file, bytes))?)
    }

    fn get(&self, rt: &tokio::runtime::Runtime, name: &str) -> Result<Vec<u8>, TrainError> {
        let (target, file) = self.at(name)?;
        rt.block_on(target.get(file))?.ok_or_else(|| {
            TrainError::Data(format!("{} vanished while reading it", self.url.join(name)))
        })
    }

    fn delete(&self, rt: &tokio::runtime::Runtime, name: &str) -> Result<(), TrainError> {
        let (target, file) = self.at(name)?;
        Ok(rt.block_on(target.delete(&[file.to_string()]))?)
    }

    /// A local folder holding checkpoint `step` (downloaded from S3 into `scratch`).
    pub fn fetch(
        &self,
        rt: &tokio::runtime::Runtime,
        step: u64,
        scratch: &Path,
    ) -> Result<PathBuf, TrainError> {
        let name = format!("checkpoint-{step}");
        if let Some(dir) = self.local()? {
            self.roots
                .check_tree(&dir.join(&name), 2)
                .map_err(|e| TrainError::Option(e.to_string()))?;
            return Ok(dir.join(name));
        }
        let prefix = format!("{name}/");
        for (object, _) in rt.block_on(self.root.list())? {
            let Some(rel) = object.strip_prefix(&prefix) else {
                continue;
            };
            let bytes = self.get(rt, &object)?;
            let path = scratch.join(&name).join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
            }
            std::fs::write(&path, bytes).map_err(|e| io_error(&path, e))?;
        }
        Ok(scratch.join(name))
    }

    /// Deletes complete checkpoints beyond the newest `keep` (never `protect`), and local
    /// leftovers of interrupted writes.
    pub fn prune(
        &self,
        rt: &tokio::runtime::Runtime,
        keep: Option<usize>,
        protect: Option<u64>,
    ) -> Result<(), TrainError> {
        // A superseded run deletes nothing: the output is its successor's.
        self.check_fence(rt)?;
        if let Some(dir) = self.local()? {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if fence::removable_leftover(&e.file_name().to_string_lossy()) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let Some(keep) = keep else { return Ok(()) };
        let steps = self.complete_steps(rt)?;
        let excess = steps.len().saturating_sub(keep.max(1));
        for &step in steps.iter().take(excess) {
            if Some(step) == protect {
                continue;
            }
            let name = format!("checkpoint-{step}");
            match self.local()? {
                Some(dir) => {
                    // Out of sight first, atomically: never a half-deleted checkpoint under its
                    // own name (which would block that step's create-once publish).
                    let doomed = dir.join(fence::deleting_name(&name));
                    if std::fs::rename(dir.join(&name), &doomed).is_ok() {
                        fence::sync_dir(&dir)?;
                        let _ = std::fs::remove_dir_all(&doomed);
                    }
                }
                None => {
                    // The marker first: a partly deleted checkpoint is never taken for complete.
                    let prefix = format!("{name}/");
                    let mut names: Vec<String> = rt
                        .block_on(self.root.list())?
                        .into_iter()
                        .map(|(n, _)| n)
                        .filter(|n| n.starts_with(&prefix))
                        .collect();
                    names.sort_by_key(|n| !n.ends_with(MARKER));
                    for n in &names {
                        self.delete(rt, n)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the final model into the output root (from a local model folder).
    pub fn write_final(
        &self,
        rt: &tokio::runtime::Runtime,
        model_dir: &Path,
    ) -> Result<(), TrainError> {
        self.check_fence(rt)?;
        match self.local()? {
            Some(dir) => copy_tree(model_dir, &dir),
            None => {
                let mut files = Vec::new();
                walk(model_dir, Path::new(""), &mut files)?;
                for rel in files {
                    let bytes = std::fs::read(model_dir.join(&rel))
                        .map_err(|e| io_error(&model_dir.join(&rel), e))?;
                    self.put(rt, &rel.to_string_lossy(), bytes)?;
                }
                Ok(())
            }
        }
    }
}

/// Reads a checkpoint folder: restores the model's parameters and the optimizer state, and
/// returns the trainer state.
pub fn restore(
    dir: &Path,
    model: &TrainModel,
    params: &mut [Param],
) -> Result<TrainerState, TrainError> {
    let state_path = dir.join("trainer_state.json");
    let state: TrainerState =
        serde_json::from_slice(&std::fs::read(&state_path).map_err(|e| io_error(&state_path, e))?)
            .map_err(|e| TrainError::Checkpoint {
                path: state_path.clone(),
                detail: e.to_string(),
            })?;
    model.load_saved(dir)?;
    let opt_path = dir.join("optimizer.safetensors");
    let opt = read_named(&opt_path)?;
    tch::no_grad(|| -> Result<(), TrainError> {
        for p in params.iter_mut() {
            for (key, target) in [
                ("exp_avg", &mut p.exp_avg),
                ("exp_avg_sq", &mut p.exp_avg_sq),
            ] {
                let name = format!("{key}.{}", p.name);
                let v = opt.get(&name).ok_or_else(|| TrainError::Checkpoint {
                    path: opt_path.clone(),
                    detail: format!("has no tensor `{name}`"),
                })?;
                target.f_copy_(v)?;
            }
        }
        Ok(())
    })?;
    Ok(state)
}

fn host(t: &Tensor) -> Tensor {
    t.detach().to_device(tch::Device::Cpu).contiguous()
}
