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
use crate::coord::runner::{run_leases, LeaseTransport, ShardRunner};
use crate::encode::pipeline::ShardProgress;
use crate::encode::settings::{EncodeSettings, WorkerSettings};
use crate::encode::shard::{ShardError, ShardReport, ShardSpec};
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
    let client = Client::new(&args.coordinator)?;
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
    let mut http = HttpTransport {
        client,
        args,
        name,
        threads,
        request,
        own_roots,
        idle_since: Instant::now(),
        error: None,
    };
    run_leases(&mut http, &mut runner, &runtime);
    http.error.map_or(Ok(()), Err)
}

/// Leases from the service over HTTP. Train leases are run here, as they come (a child
/// `sparq train`, not a shard); encode and score leases go to the shared loop.
struct HttpTransport<'a> {
    client: Client,
    args: &'a WorkerArgs,
    name: String,
    threads: usize,
    request: Value,
    own_roots: AllowedRoots,
    idle_since: Instant,
    /// Why the loop ended, when not for want of work.
    error: Option<ServeError>,
}

impl HttpTransport<'_> {
    /// The next grant; `Ok(None)` at `--idle-exit`.
    fn grant(&mut self) -> Result<Option<LeaseGrant>, ServeError> {
        let (client, args) = (&self.client, self.args);
        loop {
            let grant =
                client.call_retrying(Method::POST, "/v1/leases", Some(&self.request), PATIENCE)?;
            if let Some(grant) = grant {
                let grant: LeaseGrant = serde_json::from_value(grant)
                    .map_err(|e| ServeError::Protocol(e.to_string()))?;
                // The lease id goes into URLs and must never reach a path: a coordinator that
                // hands out anything else is broken or hostile, and this worker stops.
                check_lease_id(&grant.lease).map_err(|e| {
                    ServeError::Protocol(format!(
                        "{} handed out {e}; refusing it and stopping this worker",
                        client.url()
                    ))
                })?;
                return Ok(Some(grant));
            }
            if args
                .idle_exit
                .is_some_and(|s| self.idle_since.elapsed() >= Duration::from_secs(s))
            {
                // Idle only counts while every job has ended: a job being planned, or one whose
                // shards are all leased (a lease may yet be lost), may still need this worker.
                let health = client.call(Method::GET, "/healthz", None);
                if health.is_ok_and(|h| h.is_some_and(|h| h["unfinished_jobs"] != 0)) {
                    self.idle_since = Instant::now();
                    continue;
                }
                tracing::info!(
                    "worker {}: no work for {}s; exiting",
                    self.name,
                    args.idle_exit.unwrap_or(0)
                );
                return Ok(None);
            }
            std::thread::sleep(Duration::from_secs_f64(args.poll.max(0.05)));
        }
    }

    /// Reports a lease's outcome (a shard report or a train summary, or why it failed).
    fn post(&mut self, grant: &LeaseGrant, outcome: Result<Value, FailedReport>) {
        let (lease, name) = (&grant.lease, &self.name);
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
        if let Err(e) = self
            .client
            .call_retrying(Method::POST, &path, Some(&body), PATIENCE)
        {
            tracing::error!("worker {name}: could not report lease {lease}: {e}");
        }
        self.idle_since = Instant::now();
    }
}

impl LeaseTransport for HttpTransport<'_> {
    type Lease = LeaseGrant;
    type Watch = Heartbeats;

    fn next_lease(&mut self) -> Option<(LeaseGrant, Arc<EncodeSettings>, ShardSpec)> {
        loop {
            let grant = match self.grant() {
                Ok(Some(grant)) => grant,
                Ok(None) => return None,
                Err(e) => {
                    self.error = Some(e);
                    return None;
                }
            };
            let roots = grant.allowed_roots.clone().and(&self.own_roots);
            match grant.work.clone() {
                Work::Encode { settings, shard } => {
                    // Reports are kept beside the parts, as array tasks keep them, so the
                    // output holds its own record of what each shard wrote (`--finalize`).
                    let settings = EncodeSettings {
                        allowed_roots: settings.allowed_roots.clone().and(&roots),
                        shard_reports: true,
                        ..*settings
                    };
                    if let Err(e) = settings.allowed_roots.check_model(&settings.model) {
                        let error = format!("worker {}: {e}", self.name);
                        self.post(
                            &grant,
                            Err(FailedReport {
                                error,
                                retryable: false,
                            }),
                        );
                        continue;
                    }
                    return Some((grant, Arc::new(settings), shard));
                }
                Work::Train { spec } => {
                    let outcome =
                        train_lease(&self.client, &grant, &spec, self.args, self.threads, &roots);
                    self.post(&grant, outcome);
                }
            }
        }
    }

    fn watch(&mut self, grant: &LeaseGrant, progress: &Arc<ShardProgress>) -> Heartbeats {
        let (read, cancel) = (progress.clone(), progress.clone());
        Heartbeats::start(
            &self.client,
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
    }

    fn report(&mut self, grant: LeaseGrant, outcome: Result<ShardReport, ShardError>) {
        let outcome = outcome
            .map(|report| serde_json::to_value(report).expect("serializable"))
            .map_err(|e| FailedReport {
                error: format!("worker {} on {}: {e}", self.name, self.args.device),
                retryable: e.is_retryable(),
            });
        self.post(&grant, outcome);
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
