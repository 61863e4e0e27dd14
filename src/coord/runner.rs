//! The part of a shard lease every worker does the same way, whoever leased it: load the
//! model the job's task needs (kept loaded across shards of jobs that share it), encode or
//! score the shard, commit its part, and keep its report under `_reports/` when the job asks.
//! `coord::worker` (leases over pipes from `sparq encode`) and `serve::remote` (leases over
//! HTTP from `sparq serve`) differ only in how leases arrive and reports leave: each is a
//! [`LeaseTransport`], and [`run_leases`] is the one loop both run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::encode::pipeline::{encode_shard, ShardProgress};
use crate::encode::score::score_shard;
use crate::encode::settings::{EncodeSettings, RowTask, WorkerSettings};
use crate::encode::shard::{ShardError, ShardReport, ShardSpec};
use crate::io::{Committer, StoreUrl};
use crate::model::cross_encoder::CrossEncoder;
use crate::model::{Dtype, ModelError, ResolveDevice, SpladeEncoder};

/// How shard leases arrive and their outcomes leave: the coordinator's pipes, or the
/// service's HTTP API.
pub trait LeaseTransport {
    /// What the transport keeps of a lease to heartbeat and report it.
    type Lease;
    /// Sends a lease's progress while it lives; dropped when the shard has ended.
    type Watch;
    /// The next shard, with the settings of its job; `None` ends the loop.
    fn next_lease(&mut self) -> Option<(Self::Lease, Arc<EncodeSettings>, ShardSpec)>;
    /// Starts sending `progress` (the work counter included) for the lease; sets
    /// `progress.cancel` when the lease is lost.
    fn watch(&mut self, lease: &Self::Lease, progress: &Arc<ShardProgress>) -> Self::Watch;
    /// Reports how the shard ended.
    fn report(&mut self, lease: Self::Lease, outcome: Result<ShardReport, ShardError>);
}

/// The worker loop: lease, run with progress, report; until the transport has no more work.
pub fn run_leases<T: LeaseTransport>(
    transport: &mut T,
    runner: &mut ShardRunner,
    runtime: &tokio::runtime::Runtime,
) {
    while let Some((lease, settings, shard)) = transport.next_lease() {
        let progress = Arc::new(ShardProgress::default());
        let watch = transport.watch(&lease, &progress);
        let outcome = runner.run(&settings, runtime, &shard, &progress);
        drop(watch);
        transport.report(lease, outcome);
    }
}

/// The model a worker runs its shards through: what the job's task needs.
enum ShardModel {
    /// `sparq encode`.
    Encoder(Box<SpladeEncoder>),
    /// `sparq score`.
    Scorer(Box<CrossEncoder>),
}

/// What a loaded model was loaded for.
#[derive(PartialEq)]
struct ModelKey {
    model: PathBuf,
    dtype: Dtype,
    scorer: bool,
}

/// Runs shards of any job on one device: the loaded model and the open outputs persist
/// between shards.
pub struct ShardRunner {
    worker: WorkerSettings,
    loaded: Option<(ModelKey, ShardModel)>,
    committers: HashMap<String, Committer>,
}

impl ShardRunner {
    /// A runner on `worker`'s device; nothing is loaded yet.
    pub fn new(worker: WorkerSettings) -> Self {
        Self {
            worker,
            loaded: None,
            committers: HashMap::new(),
        }
    }

    /// The device shards run on.
    pub fn device(&self) -> crate::types::DeviceSpec {
        self.worker.device
    }

    /// Loads the model `settings` need, unless it is loaded already.
    pub fn prepare(&mut self, settings: &EncodeSettings) -> Result<(), ShardError> {
        let key = ModelKey {
            model: settings.model.clone(),
            dtype: settings.dtype,
            scorer: matches!(settings.task, RowTask::Score { .. }),
        };
        if self.loaded.as_ref().is_some_and(|(k, _)| *k == key) {
            return Ok(());
        }
        self.loaded = None; // Free the old model first.
        let device = self.worker.device;
        let load = || -> Result<ShardModel, ModelError> {
            Ok(if key.scorer {
                ShardModel::Scorer(Box::new(CrossEncoder::load(
                    &settings.model,
                    device.resolve()?,
                )?))
            } else {
                ShardModel::Encoder(Box::new(SpladeEncoder::load(
                    &settings.model,
                    device,
                    Some(settings.dtype),
                )?))
            })
        };
        let model = load()?;
        self.loaded = Some((key, model));
        Ok(())
    }

    /// The committer of `settings`' output, opened once and confined to its roots.
    pub fn committer(&mut self, settings: &EncodeSettings) -> Result<&Committer, ShardError> {
        if !self.committers.contains_key(&settings.output) {
            let url = StoreUrl::parse(&settings.output).map_err(ShardError::Store)?;
            let c = Committer::new(&url)
                .map_err(ShardError::Store)?
                .confined(&settings.allowed_roots);
            self.committers.insert(settings.output.clone(), c);
        }
        Ok(&self.committers[&settings.output])
    }

    /// Encodes (or scores) `shard` (loading the model first if `settings` need another),
    /// commits its part and keeps its report when the job asks.
    pub fn run(
        &mut self,
        settings: &EncodeSettings,
        runtime: &tokio::runtime::Runtime,
        shard: &ShardSpec,
        progress: &ShardProgress,
    ) -> Result<ShardReport, ShardError> {
        self.prepare(settings)?;
        self.committer(settings)?;
        let committer = &self.committers[&settings.output];
        let (_, model) = self.loaded.as_ref().expect("prepare() loaded the model");
        hang_if_asked(shard, progress);
        let report = match model {
            ShardModel::Encoder(e) => {
                encode_shard(e, settings, runtime, committer, shard, progress)
            }
            ShardModel::Scorer(m) => score_shard(m, settings, runtime, committer, shard, progress),
        };
        // Hand freed heap pages back to the OS between shards: batches of ever-changing shapes
        // otherwise fragment glibc's arenas and the worker's RSS creeps upwards.
        // SAFETY: malloc_trim has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
        keep_report(settings, runtime, committer, shard, report?)
    }
}

/// Test fault: the shard whose id this names hangs its worker (see [`hang_if_asked`]).
pub const HANG_SHARD_VAR: &str = "SPARQ_TEST_HANG_SHARD";
/// Test fault: with [`HANG_SHARD_VAR`], only the process that creates this file hangs (a
/// respawned worker, or another one given the same environment, runs the shard).
pub const HANG_ONCE_VAR: &str = "SPARQ_TEST_HANG_ONCE";

/// A worker that hangs mid-shard while its heartbeats go on (a stuck kernel, a read that never
/// returns) is only caught by its progress counter standing still; the tests that prove the
/// coordinators take such a shard back need one on demand. With `SPARQ_TEST_HANG_SHARD=<id>`
/// the worker records one unit of work on that shard (it started) and then never returns,
/// whatever its lease says.
fn hang_if_asked(shard: &ShardSpec, progress: &ShardProgress) {
    let asked = std::env::var(HANG_SHARD_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    if asked != Some(shard.id) {
        return;
    }
    if let Some(marker) = std::env::var_os(HANG_ONCE_VAR) {
        let first = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker);
        if first.is_err() {
            return;
        }
    }
    tracing::warn!(
        "shard {}: hanging on purpose ({HANG_SHARD_VAR}); heartbeats go on",
        shard.id
    );
    progress.advance(1);
    loop {
        std::thread::park();
    }
}

/// With `shard_reports` (array tasks, service jobs), stores the shard's report beside the
/// output for `--finalize`. Every attempt that encoded the rows writes the same report, so a
/// rewrite is harmless.
fn keep_report(
    config: &EncodeSettings,
    runtime: &tokio::runtime::Runtime,
    committer: &Committer,
    shard: &ShardSpec,
    report: ShardReport,
) -> Result<ShardReport, ShardError> {
    if config.shard_reports {
        let stored = ShardReport {
            already_committed: false,
            ..report.clone()
        };
        let name = format!("{}/{}.json", crate::job::REPORTS, shard.part);
        let bytes = serde_json::to_vec(&stored).expect("serializable");
        runtime.block_on(committer.put(&name, bytes))?;
    }
    Ok(report)
}
