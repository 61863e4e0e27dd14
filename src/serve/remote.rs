//! `sparq worker`: joins a coordinator from any machine, leases shards (or whole train jobs)
//! over HTTP, heartbeats while it works, and reports done or failed with the cause. The model
//! stays loaded between shards of jobs that share it. Encode and score shards run through the
//! same [`ShardRunner`] as `sparq encode`'s local workers.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::api::{FailedReport, Heartbeat, LeaseGrant, LeaseReply, LeaseRequest, Work};
use super::client::{Client, CoordinatorArg};
use super::train_lease::train_lease;
use super::ServeError;
use crate::coord::runner::ShardRunner;
use crate::encode::pipeline::ShardProgress;
use crate::encode::settings::{EncodeSettings, WorkerSettings};
use crate::encode::shard::ShardSpec;
use crate::io::AllowedRoots;
use crate::model::ResolveDevice;
use crate::types::DeviceSpec;

/// How long a worker keeps trying to reach a coordinator that went away (a restart).
const PATIENCE: Duration = Duration::from_secs(3600);

/// Options of `sparq worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The coordinator to talk to.
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Intra-op threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Name shown in the coordinator's status (default: host-pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Exit after this many seconds without work (for batch allocations). Default: never.
    #[arg(long, value_name = "SECS")]
    pub idle_exit: Option<u64>,
    /// Seconds between requests for work while idle.
    #[arg(long, default_value_t = 1.0)]
    pub poll: f64,
    /// Folder this worker lets jobs touch (repeatable), on top of the coordinator's own allowed
    /// roots: a path must lie under both. Default: whatever the coordinator allows.
    #[arg(long = "allow-root", value_name = "PATH")]
    pub allow_roots: Vec<PathBuf>,
}

/// Runs the worker until `--idle-exit` or a signal.
pub fn run_remote_worker(args: &WorkerArgs) -> Result<(), ServeError> {
    args.device.resolve()?;
    let client = Client::new(&args.coordinator.coordinator)?;
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    tch::set_num_threads(threads.max(1) as i32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServeError::Io {
            what: "starting the I/O runtime".into(),
            source,
        })?;
    let request = serde_json::to_value(LeaseRequest {
        worker: name.clone(),
        device: args.device.to_string(),
    })
    .expect("serializable");
    tracing::info!(
        "worker {name} on {} ({threads} {}) asking {} for work",
        args.device,
        if threads == 1 { "thread" } else { "threads" },
        client.url()
    );
    let own_roots = if args.allow_roots.is_empty() {
        AllowedRoots::anywhere()
    } else {
        AllowedRoots::under("this worker", &args.allow_roots)
            .map_err(|e| ServeError::Roots(format!("--allow-root: {e}")))?
    };
    let mut runner = ShardRunner::new(WorkerSettings {
        device: args.device,
        threads,
    });
    let mut idle_since = Instant::now();
    loop {
        let grant = client.call_retrying(Method::POST, "/v1/leases", Some(&request), PATIENCE)?;
        let Some(grant) = grant else {
            if args
                .idle_exit
                .is_some_and(|s| idle_since.elapsed() >= Duration::from_secs(s))
            {
                // Idle only counts while every job has ended: a job being planned, or one whose
                // shards are all leased (a lease may yet be lost), may still need this worker.
                let health = client.call(Method::GET, "/healthz", None);
                if health.is_ok_and(|h| h.is_some_and(|h| h["unfinished_jobs"] != 0)) {
                    idle_since = Instant::now();
                    continue;
                }
                tracing::info!(
                    "worker {name}: no work for {}s; exiting",
                    args.idle_exit.unwrap_or(0)
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs_f64(args.poll.max(0.05)));
            continue;
        };
        let grant: LeaseGrant =
            serde_json::from_value(grant).map_err(|e| ServeError::Protocol(e.to_string()))?;
        // The lease id goes into URLs and must never reach a path: a coordinator that hands out
        // anything else is broken or hostile, and this worker stops rather than serve it.
        check_lease_id(&grant.lease).map_err(|e| {
            ServeError::Protocol(format!(
                "{} handed out {e}; refusing it and stopping this worker",
                client.url()
            ))
        })?;
        let lease = grant.lease.clone();
        let roots = grant.allowed_roots.clone().and(&own_roots);
        let outcome = match grant.work.clone() {
            Work::Encode { settings, shard } => {
                // Reports are kept beside the parts, as array tasks keep them, so the output
                // holds its own record of what each shard wrote (`--finalize` reads it).
                let settings = EncodeSettings {
                    allowed_roots: settings.allowed_roots.clone().and(&roots),
                    shard_reports: true,
                    ..*settings
                };
                encode_lease(
                    &client,
                    &grant,
                    &settings,
                    &shard,
                    &name,
                    &runtime,
                    &mut runner,
                )
            }
            Work::Train { spec } => train_lease(&client, &grant, &spec, args, threads, &roots),
        };
        let (path, body) = match outcome {
            Ok(report) => (
                format!("/v1/leases/{lease}/done"),
                json!({ "worker": name, "report": report }),
            ),
            Err(failure) => {
                tracing::info!(
                    "worker {name}: job {} lease {lease}: {}",
                    grant.job,
                    failure.error
                );
                (
                    format!("/v1/leases/{lease}/failed"),
                    serde_json::to_value(&failure).expect("serializable"),
                )
            }
        };
        // The part is committed (or not) already; if the report cannot be delivered the lease
        // times out and the shard's next attempt finds the part committed.
        if let Err(e) = client.call_retrying(Method::POST, &path, Some(&body), PATIENCE) {
            tracing::error!("worker {name}: could not report lease {lease}: {e}");
        }
        idle_since = Instant::now();
    }
}

/// Whether `id` may be used as a lease id: 1 to 64 ASCII letters, digits, `-` or `_` (the
/// service's are 32 hex digits), so it can never name a path or break a URL.
pub(super) fn check_lease_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "lease id {id:?}: a lease id is 1 to 64 ASCII letters, digits, `-` or `_`"
        ))
    }
}

/// Sends heartbeats for a lease until dropped; calls `on_stop` (once) when the coordinator says
/// stop or, when `fence` is set, when no heartbeat has renewed the lease for the lease timeout
/// (the coordinator has given the lease away by then, whether or not it can say so).
pub(super) struct Heartbeats {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeats {
    pub(super) fn start(
        client: &Client,
        grant: &LeaseGrant,
        fence: bool,
        read: impl Fn() -> Heartbeat + Send + 'static,
        on_stop: impl Fn(&str) + Send + 'static,
    ) -> Self {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let client = client.clone();
        let path = format!("/v1/leases/{}/heartbeat", grant.lease);
        let timeout = Duration::from_secs(grant.lease_timeout_s.max(1));
        // Beat often enough that a late answer or two never outlives the lease.
        let every = Duration::from_secs(grant.heartbeat_s.max(1)).min(timeout / 2);
        let thread = std::thread::spawn(move || {
            let mut renewed = Instant::now();
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(every)
            {
                let body = serde_json::to_value(read()).expect("serializable");
                // An unreachable coordinator (restarting) is not a reason to stop an encode
                // lease: its commit is create-once, and the lease is renewed when the
                // coordinator is back. A fenced lease (training) stops once it has expired.
                let sent = Instant::now();
                if let Ok(Some(reply)) = client.call(Method::POST, &path, Some(&body)) {
                    if let Ok(reply) = serde_json::from_value::<LeaseReply>(reply) {
                        if !reply.keep {
                            on_stop(reply.reason.as_deref().unwrap_or("lease lost"));
                            return;
                        }
                        renewed = sent;
                    }
                }
                if fence && renewed.elapsed() >= timeout {
                    on_stop(&format!(
                        "no heartbeat reached the coordinator for {}s (the lease timeout): the \
                         lease is lost",
                        timeout.as_secs()
                    ));
                    return;
                }
            }
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs one encode (or score) lease: the shared shard cycle of [`ShardRunner`], heartbeating
/// with its progress, stopping when the coordinator says the lease is lost.
fn encode_lease(
    client: &Client,
    grant: &LeaseGrant,
    config: &EncodeSettings,
    shard: &ShardSpec,
    name: &str,
    runtime: &tokio::runtime::Runtime,
    runner: &mut ShardRunner,
) -> Result<Value, FailedReport> {
    let retry = |error: String| FailedReport {
        error: format!("worker {name} on {}: {error}", runner.device()),
        retryable: true,
    };
    let progress = Arc::new(ShardProgress::default());
    let beats = {
        let (read, cancel) = (progress.clone(), progress.clone());
        Heartbeats::start(
            client,
            grant,
            false,
            move || Heartbeat {
                rows: read.rows.load(Ordering::Relaxed),
                tokens: read.tokens.load(Ordering::Relaxed),
                progress: read.work.load(Ordering::Relaxed),
            },
            move |why| {
                tracing::info!("stopping the shard: {why}");
                cancel.cancel.store(true, Ordering::Relaxed);
            },
        )
    };
    if let Err(e) = config.allowed_roots.check_model(&config.model) {
        return Err(FailedReport {
            error: format!("worker {name}: {e}"),
            retryable: false,
        });
    }
    runner.prepare(config).map_err(|e| retry(e.to_string()))?;
    runner.committer(config).map_err(|e| retry(e.to_string()))?;
    let result = runner.run(config, runtime, shard, &progress);
    drop(beats);
    match result {
        Ok(report) => Ok(serde_json::to_value(report).expect("serializable")),
        Err(e) => Err(FailedReport {
            error: format!("worker {name}: {e}"),
            retryable: e.is_retryable(),
        }),
    }
}
