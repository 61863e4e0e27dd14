//! `sparq worker`: joins a coordinator from any machine, leases shards (or whole train jobs)
//! over HTTP, heartbeats while it works, and reports done or failed with the cause. The model
//! stays loaded between shards of jobs that share it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::api::{FailedReport, Heartbeat, LeaseGrant, LeaseReply, LeaseRequest, Work};
use super::client::{Client, CoordinatorArg};
use super::ServeError;
use crate::encode::pipeline::{encode_shard, ShardProgress};
use crate::encode::settings::{EncodeSettings, WorkerSettings};
use crate::encode::shard::ShardSpec;
use crate::io::{AllowedRoots, Committer, StoreUrl};
use crate::model::{Dtype, ResolveDevice, SpladeEncoder};
use crate::train::TrainEvent;
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

struct Loaded {
    model: PathBuf,
    dtype: Dtype,
    encoder: SpladeEncoder,
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
    let mut loaded: Option<Loaded> = None;
    let mut committers: HashMap<String, Committer> = HashMap::new();
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
        let lease = grant.lease.clone();
        let roots = grant.allowed_roots.clone().and(&own_roots);
        let outcome = match grant.work.clone() {
            Work::Encode { settings, shard } => {
                let settings = EncodeSettings {
                    allowed_roots: settings.allowed_roots.clone().and(&roots),
                    ..*settings
                };
                let worker = WorkerSettings {
                    device: args.device,
                    threads,
                };
                encode_lease(
                    &client,
                    &grant,
                    (&settings, &worker),
                    &shard,
                    &name,
                    &runtime,
                    &mut loaded,
                    &mut committers,
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

/// Sends heartbeats for a lease until dropped; sets `cancel` when the coordinator says stop.
struct Heartbeats {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeats {
    fn start(
        client: &Client,
        grant: &LeaseGrant,
        read: impl Fn() -> Heartbeat + Send + 'static,
        on_stop: impl Fn(&str) + Send + 'static,
    ) -> Self {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let client = client.clone();
        let path = format!("/v1/leases/{}/heartbeat", grant.lease);
        let every = Duration::from_secs(grant.heartbeat_s.max(1));
        let thread = std::thread::spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(every)
            {
                let body = serde_json::to_value(read()).expect("serializable");
                // An unreachable coordinator (restarting) is not a reason to stop: the lease is
                // renewed when it is back.
                if let Ok(Some(reply)) = client.call(Method::POST, &path, Some(&body)) {
                    if let Ok(reply) = serde_json::from_value::<LeaseReply>(reply) {
                        if !reply.keep {
                            on_stop(reply.reason.as_deref().unwrap_or("lease lost"));
                            return;
                        }
                    }
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

#[allow(clippy::too_many_arguments)]
fn encode_lease(
    client: &Client,
    grant: &LeaseGrant,
    (config, worker): (&EncodeSettings, &WorkerSettings),
    shard: &ShardSpec,
    name: &str,
    runtime: &tokio::runtime::Runtime,
    loaded: &mut Option<Loaded>,
    committers: &mut HashMap<String, Committer>,
) -> Result<Value, FailedReport> {
    let retry = |error: String| FailedReport {
        error: format!("worker {name} on {}: {error}", worker.device),
        retryable: true,
    };
    let progress = Arc::new(ShardProgress::default());
    let beats = {
        let (read, cancel) = (progress.clone(), progress.clone());
        Heartbeats::start(
            client,
            grant,
            move || Heartbeat {
                rows: read.rows.load(Ordering::Relaxed),
                tokens: read.tokens.load(Ordering::Relaxed),
                // 0: no progress counter yet, judged by heartbeats alone.
                progress: 0,
            },
            move |why| {
                tracing::info!("stopping the shard: {why}");
                cancel.cancel.store(true, Ordering::Relaxed);
            },
        )
    };
    let needs_load = !loaded
        .as_ref()
        .is_some_and(|l| l.model == config.model && l.dtype == config.dtype);
    if let Err(e) = config.allowed_roots.check_model(&config.model) {
        return Err(FailedReport {
            error: format!("worker {name}: {e}"),
            retryable: false,
        });
    }
    if needs_load {
        *loaded = None; // Free the old model first.
        match SpladeEncoder::load(&config.model, worker.device, Some(config.dtype)) {
            Ok(encoder) => {
                *loaded = Some(Loaded {
                    model: config.model.clone(),
                    dtype: config.dtype,
                    encoder,
                })
            }
            Err(e) => return Err(retry(format!("cannot load the model: {e}"))),
        }
    }
    let committer = match committers.get(&config.output) {
        Some(c) => c,
        None => {
            let c = match StoreUrl::parse(&config.output).and_then(|u| Committer::new(&u)) {
                Ok(c) => c.confined(&config.allowed_roots),
                Err(e) => return Err(retry(e.to_string())),
            };
            committers.entry(config.output.clone()).or_insert(c)
        }
    };
    let encoder = &loaded.as_ref().expect("loaded above").encoder;
    let result = encode_shard(encoder, config, runtime, committer, shard, &progress);
    drop(beats);
    // SAFETY: malloc_trim has no preconditions (see coord::worker).
    unsafe {
        libc::malloc_trim(0);
    }
    match result {
        Ok(report) => Ok(serde_json::to_value(report).expect("serializable")),
        Err(e) => Err(FailedReport {
            error: format!("worker {name}: {e}"),
            retryable: e.is_retryable(),
        }),
    }
}

/// Runs a train job as a child `sparq train` (resuming from the newest checkpoint), relaying
/// its step in heartbeats and its summary in the report.
fn train_lease(
    client: &Client,
    grant: &LeaseGrant,
    spec: &Value,
    args: &WorkerArgs,
    threads: usize,
    roots: &AllowedRoots,
) -> Result<Value, FailedReport> {
    let fail = |error: String, retryable: bool| FailedReport { error, retryable };
    let mut table = spec.clone();
    if let Some(map) = table.as_object_mut() {
        map.remove("kind");
        map.retain(|_, v| !v.is_null());
    }
    let config: toml::Table =
        serde_json::from_value(table).map_err(|e| fail(format!("the train spec: {e}"), false))?;
    let dir = std::env::temp_dir().join(format!("sparq-worker-{}", grant.lease));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display()), true))?;
    let path = dir.join("train.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap_or_default())
        .map_err(|e| fail(format!("{}: {e}", path.display()), true))?;
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string(), true))?;
    let mut child = Command::new(exe)
        .arg("train")
        .arg("--config")
        .arg(&path)
        .args(["--device", &args.device.to_string()])
        .args(["--threads", &threads.to_string()])
        .arg("--resume")
        .arg("--events")
        .arg("--allowed-roots")
        .arg(serde_json::to_string(roots).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(format!("starting `sparq train`: {e}"), true))?;
    let step = Arc::new(AtomicU64::new(0));
    let pid = child.id();
    let read = step.clone();
    let beats = Heartbeats::start(
        client,
        grant,
        move || Heartbeat {
            rows: read.load(Ordering::Relaxed),
            tokens: 0,
            progress: 0,
        },
        move |why| {
            tracing::info!("stopping the training run: {why}");
            // SAFETY: plain kill(2) on our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        },
    );
    // The child's events (typed JSON lines on its stdout): steps for the heartbeats, the
    // summary for the report, or why it failed. Its log lines go to this worker's stderr.
    let (mut summary, mut error) = (None, None);
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        match serde_json::from_str::<TrainEvent>(&line) {
            Ok(TrainEvent::Summary { train_summary }) => summary = Some(train_summary),
            Ok(TrainEvent::Failed { train_error }) => error = Some(train_error),
            Ok(event) => {
                if let Some(s) = event.step() {
                    step.store(s, Ordering::Relaxed);
                }
                tracing::info!("job {}: {line}", grant.job);
            }
            Err(_) => tracing::info!("job {}: {line}", grant.job),
        }
    }
    let status = child.wait().map_err(|e| fail(e.to_string(), true))?;
    drop(beats);
    let _ = std::fs::remove_dir_all(&dir);
    match (status.success(), summary) {
        (true, Some(summary)) => Ok(serde_json::to_value(summary).expect("serializable")),
        _ => Err(fail(
            format!(
                "`sparq train` ended with {status}: {}",
                error.unwrap_or_else(|| "no error reported (killed?)".into())
            ),
            true,
        )),
    }
}
