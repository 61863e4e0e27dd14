//! `sparq encode` without a service: plans the job, leases its shards to worker processes (one
//! per device) over pipes, retries what dies or stalls, and finishes it. Planning, the output's
//! identity and the finish are the job layer's, shared with `sparq serve`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::pool::{WorkerEvent, WorkerPool};
use super::progress::JobProgress;
use super::protocol::{FromWorker, ToWorker};
use crate::encode::settings::{EncodeSettings, WorkerSettings};
use crate::encode::shard::{ShardReport, ShardSpec};
use crate::io::lock::{HolderKind, LockHolder, OutputLock};
use crate::io::AllowedRoots;
use crate::io::{Committer, StoreUrl};
use crate::job::args::{job_dtype, EncodeConfig, Fleet};
use crate::job::finish::{finish_encode, summarize, EncodeSummary};
use crate::job::ownership::{Held, LockRequest};
use crate::job::plan::{plan_encode, validate, EncodePlan, PlanOptions};
use crate::job::tasks::{task_of, TaskShare};
use crate::job::JobError;
use crate::job::ShardFailure;
use crate::job::REPORTS;
use crate::model::{ModelError, ResolveDevice};
use crate::types::DeviceSpec;

/// Plans an encode job without writing anything (`sparq encode --plan`): the shards this fleet
/// would run, those already committed, and a token estimate.
pub fn plan_only(config: &EncodeConfig, fleet: &Fleet) -> Result<EncodePlan, JobError> {
    Ok(plan_quietly(config, fleet, 1, true)?.0)
}

/// Plans without writing: for `tasks` tasks of this fleet each (their number sizes the
/// default shards), with or without the token estimate; with the runtime it planned on.
fn plan_quietly(
    config: &EncodeConfig,
    fleet: &Fleet,
    tasks: usize,
    estimate: bool,
) -> Result<(EncodePlan, tokio::runtime::Runtime), JobError> {
    validate(config)?;
    validate_fleet(fleet)?;
    let devices = fleet.devices();
    let (runtime, mut options) = planning(&devices, tasks, false)?;
    options.estimate = estimate;
    let dtype = job_dtype(config, &devices);
    let plan = plan_encode(config, dtype, &AllowedRoots::anywhere(), &runtime, &options)?;
    Ok((plan, runtime))
}

/// `sparq encode --plan-only`: the number of shards the job is cut into, for `tasks` tasks.
pub fn shard_count(config: &EncodeConfig, fleet: &Fleet, tasks: usize) -> Result<usize, JobError> {
    Ok(plan_quietly(config, fleet, tasks, false)?.0.shards.len())
}

/// A part that `--finalize` found missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingPart {
    /// The part's name.
    pub part: String,
    /// Its shard.
    pub shard: usize,
    /// Input file and rows.
    pub file: String,
    /// First row and row count.
    pub rows: (u64, u64),
    /// The task that owns it, when the task count is known.
    pub task: Option<usize>,
}

/// What `--finalize` found.
pub enum Finalized {
    /// Every part exists: the manifest and `_SUCCESS` are written.
    Complete(EncodeSummary),
    /// These parts are missing; nothing was written.
    Incomplete {
        /// The missing parts, in shard order.
        missing: Vec<MissingPart>,
        /// Shards in all.
        shards: usize,
    },
}

/// `sparq encode --finalize`: after the tasks of an array, writes the manifest (from the
/// reports the tasks left) and `_SUCCESS` when every part exists, or lists the missing ones.
pub fn finalize(
    config: &EncodeConfig,
    fleet: &Fleet,
    tasks: Option<usize>,
) -> Result<Finalized, JobError> {
    let started = Instant::now();
    let (plan, runtime) = plan_quietly(config, fleet, tasks.unwrap_or(1), false)?;
    if !plan.pending.is_empty() {
        let by_id: BTreeMap<usize, &ShardSpec> = plan.shards.iter().map(|s| (s.id, s)).collect();
        let missing = plan
            .pending
            .iter()
            .map(|id| {
                let s = by_id[id];
                MissingPart {
                    part: s.part.clone(),
                    shard: s.id,
                    file: s.file.clone(),
                    rows: (s.first_row, s.rows),
                    task: tasks.map(|n| task_of(s.id, n)),
                }
            })
            .collect();
        return Ok(Finalized::Incomplete {
            missing,
            shards: plan.shards.len(),
        });
    }
    let output = StoreUrl::parse(&plan.settings.output)?;
    let committer = Committer::new(&output)?.confined(&AllowedRoots::anywhere());
    // The tasks' job may finish its output; another live job on it may not.
    let job = plan.identity.key();
    let lock = OutputLock::new(&output, &AllowedRoots::anywhere())?;
    runtime.block_on(lock.acquire(
        &LockHolder::this_process(&job, HolderKind::TaskArray),
        false,
    ))?;
    // The tasks' reports: rows, tokens and row failures for the manifest. A task killed
    // between its commit and its report leaves none; its part is complete all the same.
    let reports: BTreeMap<usize, ShardReport> = runtime.block_on(async {
        let mut reports = BTreeMap::new();
        for shard in &plan.shards {
            let name = format!("{REPORTS}/{}.json", shard.part);
            if let Some(bytes) = committer.get(&name).await? {
                match serde_json::from_slice::<ShardReport>(&bytes) {
                    Ok(report) => {
                        reports.insert(
                            shard.id,
                            ShardReport {
                                shard: shard.id,
                                ..report
                            },
                        );
                    }
                    Err(e) => tracing::warn!(
                        "{}: not a shard report ({e}); its rows are left out of the summary",
                        committer.url().join(&name)
                    ),
                }
            }
        }
        Ok::<_, JobError>(reports)
    })?;
    let unreported = plan.shards.len() - reports.len();
    if unreported > 0 {
        tracing::warn!(
            "{unreported} of {} parts have no report under {REPORTS}/ (written by `--task-index` \
             runs): their rows are in the output but not in the manifest's summary",
            plan.shards.len()
        );
    }
    let finished = finish_encode(
        &plan,
        &reports,
        &[],
        started.elapsed().as_secs_f64(),
        true,
        &runtime,
    )?;
    if !finished.missing.is_empty() {
        // Listed at planning, gone at the finish: no `_SUCCESS`, the tasks must run again.
        let missing = finished
            .missing
            .iter()
            .map(|m| MissingPart {
                part: m.failure.part.clone(),
                shard: m.shard,
                file: m.failure.file.clone(),
                rows: m.failure.rows,
                task: tasks.map(|n| task_of(m.shard, n)),
            })
            .collect();
        return Ok(Finalized::Incomplete {
            missing,
            shards: plan.shards.len(),
        });
    }
    let mut summary = finished.summary;
    summary.skipped_shards = plan.shards.len();
    runtime.block_on(crate::job::ownership::release(
        &plan.settings.output,
        &AllowedRoots::anywhere(),
        &job,
        true,
    ));
    Ok(Finalized::Complete(summary))
}

/// The runtime planning runs on, and what it plans for: this fleet, in each of `tasks` tasks.
fn planning(
    devices: &[DeviceSpec],
    tasks: usize,
    claim: bool,
) -> Result<(tokio::runtime::Runtime, PlanOptions), JobError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let options = PlanOptions {
        workers: devices.len() * tasks.max(1),
        cpu_only: devices.iter().all(|d| *d == DeviceSpec::Cpu),
        claim,
        estimate: false,
        lock: None,
    };
    Ok((runtime, options))
}

/// Runs a whole encode job, or with `share` one task's share of it (no manifest: see
/// [`finalize`]). Returns the summary and the failed shards (the job, or the share, is complete
/// only when there are none).
pub fn run_encode(
    config: &EncodeConfig,
    fleet: &Fleet,
    share: Option<TaskShare>,
) -> Result<(EncodeSummary, Vec<ShardFailure>), JobError> {
    let started = Instant::now();
    validate(config)?;
    validate_fleet(fleet)?;
    if share.is_some() && config.overwrite {
        return Err(JobError::Settings(
            "--overwrite cannot be used with --task-index: one task would delete what the \
             others commit. Clear the output once before submitting the tasks, or use another \
             --output"
                .into(),
        ));
    }
    let mut devices = fleet.devices();
    for d in devices.iter().collect::<HashSet<_>>() {
        d.resolve().map_err(encode_flag)?;
    }
    let dtype = job_dtype(config, &devices);
    let tasks = share.map_or(1, |s| s.count);
    let (runtime, mut options) = planning(&devices, tasks, true)?;
    // The tasks of an array share the output through the job's identity; `--finalize` lets go.
    options.lock = Some(match share {
        Some(_) => LockRequest::TASK,
        None => LockRequest::CLI,
    });
    let mut plan = plan_encode(config, dtype, &AllowedRoots::anywhere(), &runtime, &options)?;
    let _held = Held::new(
        &runtime,
        &plan.settings.output,
        &AllowedRoots::anywhere(),
        plan.settings.lock_job.clone().filter(|_| share.is_none()),
        false,
    );
    if let Some(share) = share {
        let owned = plan.shards.iter().filter(|s| share.owns(s.id)).count();
        plan.pending.retain(|&id| share.owns(id));
        plan.settings.shard_reports = true;
        tracing::info!(
            "{share}: {owned} of the {} shards are this task's; {} committed before, {} to encode",
            plan.shards.len(),
            owned - plan.pending.len(),
            plan.pending.len()
        );
    }
    let skipped = plan.shards.len() - plan.pending.len();
    if share.is_some() {
        // Said above, for this task's share.
    } else if skipped > 0 && plan.pending.is_empty() {
        tracing::info!(
            "{} is already complete: all {skipped} shards were committed before; nothing to encode",
            config.output
        );
    } else if skipped > 0 {
        let rows = |ids: &mut dyn Iterator<Item = u64>| ids.sum::<u64>();
        let pending: HashSet<usize> = plan.pending.iter().copied().collect();
        tracing::info!(
            "resuming {}: {skipped} of {} shards ({} rows) committed before, {} to encode ({} rows)",
            config.output,
            plan.shards.len(),
            rows(&mut plan.shards.iter().filter(|s| !pending.contains(&s.id)).map(|s| s.rows)),
            plan.pending.len(),
            rows(&mut plan.shards.iter().filter(|s| pending.contains(&s.id)).map(|s| s.rows)),
        );
    }
    let mut failures = plan.failures.clone();
    if !plan.pending.is_empty() && plan.pending.len() < devices.len() {
        // More workers than shards would load the model to sit idle.
        tracing::info!(
            "note: {} shard(s) to encode: starting {} of the {} workers asked for \
             (lower --shard-rows for more shards)",
            plan.pending.len(),
            plan.pending.len(),
            devices.len()
        );
        devices.truncate(plan.pending.len());
    }

    let threads = fleet.threads.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / devices.len()).max(1)
    });
    let workers: Vec<WorkerSettings> = devices
        .iter()
        .map(|&device| WorkerSettings { device, threads })
        .collect();
    let by_id: BTreeMap<usize, &ShardSpec> = plan.shards.iter().map(|s| (s.id, s)).collect();
    let pending: Vec<&ShardSpec> = plan.pending.iter().map(|id| by_id[id]).collect();
    let reports = lease_loop(config, &plan.settings, &workers, &pending, &mut failures)?;
    // Each failed shard's causes, before the manifest is written: if that fails too (a full
    // disk), the causes are still said.
    for f in &failures {
        tracing::error!(
            "shard {} ({} rows {}..{}) failed: {}",
            if f.part.is_empty() { "-" } else { &f.part },
            f.file,
            f.rows.0,
            f.rows.0 + f.rows.1,
            f.causes.join("; then: ")
        );
    }

    for r in reports.values() {
        for f in &r.failures {
            tracing::warn!(
                "{}, row group {}, row {}, column `{}`: {}; its vector is null",
                f.file,
                f.row_group,
                f.row,
                f.column,
                f.reason
            );
        }
    }
    if let Some(share) = share {
        // The manifest and duplicate ids are `--finalize`'s, once every task has ended.
        let mut summary = summarize(&plan, &reports, &failures, started.elapsed().as_secs_f64());
        summary.s3_requests = Some(crate::io::retry::s3_requests()).filter(|r| r.requests > 0);
        summary.skipped_shards =
            plan.shards.iter().filter(|s| share.owns(s.id)).count() - plan.pending.len();
        return Ok((summary, failures));
    }
    let finished = finish_encode(
        &plan,
        &reports,
        &failures,
        started.elapsed().as_secs_f64(),
        true,
        &runtime,
    )?;
    // A part gone since it was counted committed fails its shard: the rerun encodes it.
    failures.extend(finished.missing.into_iter().map(|m| m.failure));
    let summary = finished.summary;
    if summary.null_ids > 0 {
        tracing::warn!(
            "{} rows have a null id `{}` (their vectors are written), e.g. {}",
            summary.null_ids,
            plan.identity.id_column,
            summary.null_id_examples.join("; ")
        );
    }
    if summary.duplicate_ids > 0 {
        let examples: Vec<String> = summary
            .duplicate_examples
            .iter()
            .map(|e| format!("{:?} in {}", e.id, e.parts.join(", ")))
            .collect();
        tracing::warn!(
            "{} duplicate ids in the output (rows whose id occurred before), e.g. {}",
            summary.duplicate_ids,
            examples.join("; ")
        );
    }
    Ok((summary, failures))
}

/// Leases `pending` shards to one worker process per entry of `workers` until each is
/// committed or failed.
fn lease_loop(
    args: &EncodeConfig,
    settings: &EncodeSettings,
    workers: &[WorkerSettings],
    pending: &[&ShardSpec],
    failures: &mut Vec<ShardFailure>,
) -> Result<BTreeMap<usize, ShardReport>, JobError> {
    let mut reports = BTreeMap::new();
    if pending.is_empty() {
        return Ok(reports);
    }
    let total_rows = pending.iter().map(|s| s.rows).sum();
    let mut progress = JobProgress::new(pending.len(), total_rows);
    let by_id: BTreeMap<usize, &ShardSpec> = pending.iter().map(|s| (s.id, *s)).collect();
    let mut queue: VecDeque<usize> = pending.iter().map(|s| s.id).collect();
    let mut remaining = pending.len();
    let mut pool = WorkerPool::new(workers.len());
    let mut slots: Vec<Slot> = workers.iter().map(|_| Slot::default()).collect();
    // A slot whose workers keep dying is given up after this many starts.
    let max_starts = args.max_attempts as usize + pending.len().min(8);
    for (i, worker) in workers.iter().enumerate() {
        pool.spawn(i, settings, worker)?;
        slots[i].starts = 1;
    }
    let lease_timeout = Duration::from_secs(args.lease_timeout.max(1));
    let (mut done_rows, mut done_tokens) = (0u64, 0u64);

    let mut retries = Retries {
        causes: BTreeMap::new(),
        max_attempts: args.max_attempts,
    };
    let fail = |s: &ShardSpec, causes: Vec<String>| ShardFailure {
        part: s.part.clone(),
        file: s.file.clone(),
        rows: (s.first_row, s.rows),
        causes,
    };

    let interrupt = Interrupt::install();
    while remaining > 0 {
        if let Some(signal) = interrupt.received() {
            pool.kill_all();
            progress.finish();
            let committed = reports.len();
            return Err(JobError::Interrupted {
                signal,
                committed,
                rows: reports.values().map(|r| r.rows).sum(),
                left: remaining,
            });
        }
        // Lease queued shards to idle workers.
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.ready && slot.busy.is_none() {
                if let Some(shard) = queue.pop_front() {
                    let attempt = retries.attempts(shard) + 1;
                    if pool.send(
                        i,
                        &ToWorker::Shard {
                            shard: by_id[&shard].clone(),
                            attempt,
                        },
                    ) {
                        slot.busy = Some(Lease {
                            shard,
                            since: Instant::now(),
                            rows: 0,
                            tokens: 0,
                            work: 0,
                        });
                    } else {
                        queue.push_front(shard);
                    }
                }
            }
        }
        let event = pool.events.recv_timeout(Duration::from_millis(200));
        match event {
            Ok(WorkerEvent::Message {
                slot,
                generation,
                message,
            }) if pool.is_current(slot, generation) => match message {
                FromWorker::Ready => slots[slot].ready = true,
                FromWorker::Progress {
                    shard,
                    rows,
                    tokens,
                    work,
                } => {
                    // Only work moves the lease on: a worker heartbeating with nothing done
                    // (a hung kernel) stalls; one committing (no rows) does not.
                    if let (Some(lease), Some(shard)) = (slots[slot].busy.as_mut(), shard) {
                        let moved = (rows, tokens, work) != (lease.rows, lease.tokens, lease.work);
                        if lease.shard == shard && moved {
                            lease.rows = rows;
                            lease.tokens = tokens;
                            lease.work = work;
                            lease.since = Instant::now();
                        }
                    }
                }
                FromWorker::S3Requests(requests) => crate::io::retry::add_s3_requests(&requests),
                FromWorker::Done(report) => {
                    slots[slot].busy = None;
                    done_rows += report.rows;
                    done_tokens += report.tokens;
                    reports.insert(report.shard, report);
                    remaining -= 1;
                }
                FromWorker::Failed {
                    disk_full: true,
                    error,
                    ..
                } => {
                    pool.kill_all();
                    progress.finish();
                    return Err(JobError::DiskFull {
                        output: settings.output.clone(),
                        error,
                        committed: reports.len(),
                        rows: reports.values().map(|r| r.rows).sum(),
                        left: remaining,
                    });
                }
                FromWorker::Failed {
                    shard,
                    error,
                    retryable,
                    ..
                } => {
                    slots[slot].busy = None;
                    if let Some(causes) = retries.record(shard, error, retryable, &mut queue) {
                        failures.push(fail(by_id[&shard], causes));
                        remaining -= 1;
                    }
                }
                FromWorker::Fatal { error } => {
                    progress.finish();
                    return Err(JobError::Worker {
                        device: workers[slot].device.to_string(),
                        error,
                    });
                }
            },
            Ok(WorkerEvent::Exited { slot, generation }) if pool.is_current(slot, generation) => {
                let how = pool.reap(slot);
                let s = &mut slots[slot];
                let cause = s.stall_cause.take().unwrap_or(how);
                if let Some(lease) = s.busy.take() {
                    if let Some(causes) =
                        retries.record(lease.shard, cause.clone(), true, &mut queue)
                    {
                        failures.push(fail(by_id[&lease.shard], causes));
                        remaining -= 1;
                    }
                }
                s.ready = false;
                if remaining > 0 && s.starts < max_starts {
                    tracing::info!("{cause}; starting a new worker on {}", workers[slot].device);
                    s.starts += 1;
                    pool.spawn(slot, settings, &workers[slot])?;
                } else if remaining > 0 && slots.iter().all(|s| s.starts >= max_starts && !s.ready)
                {
                    // No worker left: every remaining shard fails with the last cause.
                    for shard in queue.drain(..).collect::<Vec<_>>() {
                        let mut causes = retries.causes.remove(&shard).unwrap_or_default();
                        causes.push(format!("no worker left ({cause})"));
                        failures.push(fail(by_id[&shard], causes));
                        remaining -= 1;
                    }
                }
            }
            Ok(_) => {} // A stale event from a replaced worker.
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        // Stalled workers lose their lease: kill them; the exit event requeues the shard.
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(lease) = &slot.busy {
                if lease.since.elapsed() > lease_timeout && slot.stall_cause.is_none() {
                    slot.stall_cause = Some(format!(
                        "worker stalled (no progress for {}s)",
                        lease_timeout.as_secs()
                    ));
                    pool.signal_kill(i);
                }
            }
        }
        let live_rows: u64 = slots
            .iter()
            .filter_map(|s| s.busy.as_ref())
            .map(|l| l.rows)
            .sum();
        let live_tokens: u64 = slots
            .iter()
            .filter_map(|s| s.busy.as_ref())
            .map(|l| l.tokens)
            .sum();
        progress.update(
            reports.len(),
            done_rows + live_rows,
            done_tokens + live_tokens,
        );
    }
    pool.shutdown();
    progress.finish();
    Ok(reports)
}

/// SIGINT and SIGTERM while a job runs: recorded, so the lease loop can stop the workers and
/// say what is committed (a second one ends the process at once).
struct Interrupt {
    previous: [libc::sighandler_t; 2],
}

static SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe. A second signal exits at once.
    if SIGNAL.swap(signal, std::sync::atomic::Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
}

impl Interrupt {
    fn install() -> Self {
        SIGNAL.store(0, std::sync::atomic::Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installs a handler that only touches an atomic (and _exit).
        let previous = unsafe {
            [
                libc::signal(libc::SIGINT, handler),
                libc::signal(libc::SIGTERM, handler),
            ]
        };
        Self { previous }
    }

    /// The signal received, if any.
    fn received(&self) -> Option<i32> {
        match SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        // SAFETY: restores the handlers found at install.
        unsafe {
            libc::signal(libc::SIGINT, self.previous[0]);
            libc::signal(libc::SIGTERM, self.previous[1]);
        }
    }
}

/// Causes of failed attempts per shard.
struct Retries {
    causes: BTreeMap<usize, Vec<String>>,
    max_attempts: u32,
}

impl Retries {
    fn attempts(&self, shard: usize) -> u32 {
        self.causes.get(&shard).map_or(0, |c| c.len() as u32)
    }

    /// Records a failed attempt: requeues the shard (front) if another attempt is allowed,
    /// else returns every cause (the shard has failed).
    fn record(
        &mut self,
        shard: usize,
        cause: String,
        retryable: bool,
        queue: &mut VecDeque<usize>,
    ) -> Option<Vec<String>> {
        let causes = self.causes.entry(shard).or_default();
        causes.push(cause);
        if retryable && (causes.len() as u32) < self.max_attempts {
            queue.push_front(shard);
            None
        } else {
            Some(causes.clone())
        }
    }
}

#[derive(Default)]
struct Slot {
    ready: bool,
    busy: Option<Lease>,
    starts: usize,
    stall_cause: Option<String>,
}

struct Lease {
    shard: usize,
    since: Instant,
    rows: u64,
    tokens: u64,
    work: u64,
}

/// A device error as `sparq encode` says it: its flag is `--devices`.
fn encode_flag(e: ModelError) -> ModelError {
    match e {
        ModelError::Device { device, detail } => ModelError::Device {
            device,
            detail: detail.replace(
                &format!("{} ", crate::model::device::DEVICE_FLAG),
                "--devices ",
            ),
        },
        e => e,
    }
}

/// Checks the worker fleet's numbers.
fn validate_fleet(fleet: &Fleet) -> Result<(), JobError> {
    for (flag, value, high) in [
        ("--workers", fleet.workers, 1024),
        ("--threads", fleet.threads, 4096),
    ] {
        if let Some(v) = value.filter(|v| !(1..=high).contains(v)) {
            return Err(JobError::Settings(format!(
                "{flag} {v} is outside its range [1, {high}]"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_retried_until_its_attempts_run_out_or_the_cause_is_final() {
        let mut retries = Retries {
            causes: BTreeMap::new(),
            max_attempts: 3,
        };
        let mut queue = VecDeque::from([7, 8]);
        assert_eq!(retries.record(5, "reset".into(), true, &mut queue), None);
        assert_eq!(queue.front(), Some(&5), "retried first");
        assert_eq!(retries.attempts(5), 1);
        assert_eq!(retries.record(5, "reset".into(), true, &mut queue), None);
        let failed = retries.record(5, "reset again".into(), true, &mut queue);
        assert_eq!(failed.unwrap(), ["reset", "reset", "reset again"]);
        // Bad data is not retried.
        let failed = retries.record(9, "corrupt".into(), false, &mut queue);
        assert_eq!(failed.unwrap(), ["corrupt"]);
        assert_eq!(queue, [5, 5, 7, 8]);
    }

    #[test]
    fn fleets_outside_their_ranges_are_refused() {
        assert!(validate_fleet(&Fleet::default()).is_ok());
        let many = Fleet {
            workers: Some(5000),
            ..Default::default()
        };
        let e = validate_fleet(&many).unwrap_err().to_string();
        assert!(e.contains("--workers 5000"), "{e}");
    }
}
