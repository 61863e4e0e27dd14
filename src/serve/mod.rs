//! `sparq serve`: the batch-job service. Jobs (encode or train specs) queue in SQLite; a planner
//! cuts encode jobs into shards with the same planning as `sparq encode`; `sparq worker`
//! processes anywhere lease shards over HTTP, heartbeat, and commit their parts with the same
//! exactly-once protocol; a finisher writes each job's manifest and `_SUCCESS`.

pub mod api;
pub mod client;
pub(crate) mod db;
mod keys;
mod relock;
pub mod remote;
pub mod spec;
mod tls;
pub mod token;
mod train_lease;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use self::api::App;
use self::db::{Store, ToFinish};
use self::spec::{parse_spec, JobSpec, Roots};
use self::wire::{JobKind, JobState};
use crate::job::finish::finish_encode;
use crate::job::plan::{plan_encode, PlanOptions};
use crate::model::Dtype;

/// Environment variable holding the bearer token (service, workers and CLI).
pub const TOKEN_VAR: &str = "SPARQ_TOKEN";
/// Environment variable naming the coordinator for `submit`, `status`, `cancel`, `worker`.
pub const COORDINATOR_VAR: &str = "SPARQ_COORDINATOR";
/// The coordinator when none is named.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

/// How often the planner and finisher look for work.
const POLL: Duration = Duration::from_millis(50);

/// Options of `sparq serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address needs a token named by the operator
    /// (SPARQ_TOKEN or --token-file) and, for clients to accept it, --tls-cert/--tls-key.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// SQLite file holding the queue; a restarted service resumes from it.
    #[arg(long, default_value = "sparq.db")]
    pub state: PathBuf,
    /// Where job specs may point (repeatable): a local folder, or `s3://bucket/prefix` for S3
    /// URLs. Default: the working directory, and no S3 location.
    #[arg(long = "allow-root", value_name = "PATH|S3_URL")]
    pub allow_roots: Vec<PathBuf>,
    /// The bearer token's file when SPARQ_TOKEN is unset: read, or made with a random token
    /// (mode 0600) if missing. Default: the --state file's name plus `.token`.
    #[arg(long, env = token::TOKEN_FILE_VAR, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most jobs waiting to be planned; more submissions get 429.
    #[arg(long, default_value_t = 10_000)]
    pub max_queued: u64,
    /// How long an ended job (and its shards) is kept in the state database before it is
    /// deleted: a number with a unit, s, m, h or d (`7d`, `12h`, `90s`).
    #[arg(long, default_value = "7d", value_parser = parse_retention)]
    pub retention: Duration,
}

/// How often the expirer deletes jobs past their retention.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// `--retention`: `90s`, `30m`, `12h`, `7d` (a bare number is seconds).
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_s = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if unit_s > 0 => n
            .checked_mul(unit_s)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long")),
        _ => Err(format!(
            "`{text}`: give a whole number with a unit, s, m, h or d (`7d`, `12h`, `90s`)"
        )),
    }
}

/// What stops the service or a worker.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback address without a token.
    #[error("refusing to listen on {0} without a token: set {TOKEN_VAR}, or name a token file with --token-file (made with a random token if missing; workers and `sparq submit` need the same token), or listen on 127.0.0.1")]
    NoToken(SocketAddr),
    /// The token or TLS settings cannot be used.
    #[error("{0}")]
    Security(String),
    /// An operating-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The state database failed.
    #[error("{what}: {source}")]
    State {
        /// What was attempted.
        what: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// An `--allow-root` cannot be used.
    #[error("{0}")]
    Roots(String),
    /// Talking to the coordinator failed.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// The device cannot be used.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The coordinator sent something this worker cannot read.
    #[error("unexpected answer from the coordinator: {0}")]
    Protocol(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Runs the service until SIGINT or SIGTERM.
pub fn run_serve(args: &ServeArgs) -> Result<(), ServeError> {
    let env_token = std::env::var(TOKEN_VAR)
        .ok()
        .filter(|t| !t.trim().is_empty());
    if env_token.is_none() && args.token_file.is_none() && !args.listen.ip().is_loopback() {
        return Err(ServeError::NoToken(args.listen));
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tls::server_config(cert, key).map_err(ServeError::Security)?)
        }
        _ => None,
    };
    let base = std::env::current_dir().map_err(io("the working directory"))?;
    // Local folders and S3 locations; `/tmp` is no default: every local user can write there.
    let (s3_roots, local_roots): (Vec<&PathBuf>, Vec<&PathBuf>) = args
        .allow_roots
        .iter()
        .partition(|r| r.to_str().is_some_and(|r| r.starts_with("s3://")));
    let wanted: Vec<PathBuf> = if local_roots.is_empty() {
        vec![base.clone()]
    } else {
        local_roots.into_iter().cloned().collect()
    };
    let s3_roots: Vec<String> = s3_roots
        .iter()
        .filter_map(|r| r.to_str().map(str::to_string))
        .collect();
    let mut job_paths: Vec<String> = wanted
        .iter()
        .map(|r| base.join(r).display().to_string())
        .collect();
    job_paths.extend(s3_roots.iter().cloned());
    let roots = Roots::new(&wanted, base, crate::model::default_model_dir())
        .and_then(|r| r.with_s3(&s3_roots))
        .map_err(ServeError::Roots)?;
    if let Some(parent) = args.state.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(format!(
            "creating the folder of --state {}",
            args.state.display()
        )))?;
    }
    // Always a token: SPARQ_TOKEN, or the one in the token file (made if missing), so that a
    // service on a shared machine is not open to every local user.
    let (token, token_note) = match env_token {
        Some(t) => (t, format!("bearer token required ({TOKEN_VAR})")),
        None => {
            let file = args
                .token_file
                .clone()
                .unwrap_or_else(|| token::beside_state(&args.state));
            let t = token::read_or_create(&file).map_err(ServeError::Security)?;
            (
                t,
                format!(
                    "bearer token required: in {} (mode 0600; clients read it with \
                     --token-file or {})",
                    file.display(),
                    token::TOKEN_FILE_VAR
                ),
            )
        }
    };
    let state_error = |what: String| move |source| ServeError::State { what, source };
    let new_state = !args.state.exists();
    let store = Store::open(&args.state).map_err(state_error(format!(
        "opening the state database {}",
        args.state.display()
    )))?;
    // [ownership] The running jobs' outputs are theirs again before anyone is answered.
    relock::retake_output_locks(&store, &runtime());
    let counts = store
        .read(|db| db.count_by_state())
        .map_err(state_error("reading the state database".into()))?;
    let (wake, woken) = crossbeam_channel::bounded(1);
    let app = Arc::new(App {
        store,
        token: Some(api::token_digest(&token)),
        roots,
        max_queued: args.max_queued,
        wake,
    });
    {
        let app = app.clone();
        std::thread::Builder::new()
            .name("planner".into())
            .spawn(move || planner(&app, &woken))
            .map_err(io("starting the planner"))?;
    }
    {
        let app = app.clone();
        std::thread::Builder::new()
            .name("finisher".into())
            .spawn(move || finisher(&app))
            .map_err(io("starting the finisher"))?;
    }
    {
        let (app, retention) = (app.clone(), args.retention);
        std::thread::Builder::new()
            .name("expirer".into())
            .spawn(move || expirer(&app, retention))
            .map_err(io("starting the lease expirer"))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("starting the I/O runtime"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(io(format!("listening on {}", args.listen)))?;
        let local = listener
            .local_addr()
            .map_err(io(format!("listening on {}", args.listen)))?;
        tracing::info!(
            "serving on {}://{local} (state {}; job paths under {}; {})",
            if tls.is_some() { "https" } else { "http" },
            describe_state(&args.state, new_state, &counts),
            job_paths.join(", "),
            token_note
        );
        if tls.is_none() && !local.ip().is_loopback() {
            tracing::warn!(
                "plain http on {local}: clients refuse http:// to an address other than \
                 loopback, so put a TLS proxy in front or start with --tls-cert/--tls-key"
            );
        }
        match tls {
            Some(config) => axum::serve(
                tls::TlsListener::new(listener, config).map_err(io("serving"))?,
                api::router(app),
            )
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(io("serving")),
            None => axum::serve(listener, api::router(app))
                .with_graceful_shutdown(shutdown_signal())
                .await
                .map_err(io("serving")),
        }
    })?;
    tracing::info!("service stopped; queued and running jobs continue when it restarts");
    Ok(())
}

/// The state database for the start-up line: new, or its jobs and which of them resume.
fn describe_state(path: &Path, new: bool, counts: &BTreeMap<String, u64>) -> String {
    let total: u64 = counts.values().sum();
    if new || total == 0 {
        return format!(
            "{}, {}",
            path.display(),
            if new { "new" } else { "no jobs" }
        );
    }
    let unfinished: Vec<String> = JobState::ALL
        .iter()
        .filter(|s| !s.is_final())
        .filter_map(|s| counts.get(s.as_str()).map(|n| format!("{n} {s}")))
        .collect();
    let resumed: u64 = JobState::ALL
        .iter()
        .filter(|s| !s.is_final())
        .filter_map(|s| counts.get(s.as_str()))
        .sum();
    format!(
        "{}: {} {}, {}, {} ended",
        path.display(),
        total,
        if total == 1 { "job" } else { "jobs" },
        if resumed == 0 {
            "none to resume".to_string()
        } else {
            format!("{resumed} resumed ({})", unfinished.join(", "))
        },
        total - resumed
    )
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Plans queued jobs one at a time.
fn planner(app: &App, woken: &crossbeam_channel::Receiver<()>) {
    let runtime = runtime();
    loop {
        let next = app.store.write(|db| db.next_to_plan());
        match next {
            Ok(Some(job)) => {
                let planned = job
                    .spec
                    .and_then(|spec| plan_job(app, &job.id, &spec, &runtime));
                if let Err(e) = planned {
                    tracing::error!("job {}: {e}", job.id);
                    if let Err(e) = app.store.write(|db| db.fail_job(&job.id, &e)) {
                        tracing::error!("job {}: state database: {e}", job.id);
                    }
                }
            }
            Ok(None) => {
                let _ = woken.recv_timeout(POLL);
            }
            Err(e) => {
                tracing::error!("state database: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn plan_job(
    app: &App,
    id: &str,
    doc: &Value,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), String> {
    match parse_spec(doc, &app.roots)? {
        JobSpec::Encode { args, .. } => {
            let dtype = args.dtype.unwrap_or(Dtype::F32);
            let plan = plan_encode(
                &args,
                dtype,
                &app.roots.access,
                runtime,
                // [ownership] The job takes its output's lock at planning.
                &PlanOptions {
                    lock: Some(crate::job::ownership::LockRequest::service(id)),
                    ..PlanOptions::SERVICE
                },
            )
            .map_err(|e| e.to_string())?;
            tracing::info!(
                "job {id}: {} shards ({} to encode, {} committed before) → {}",
                plan.shards.len(),
                plan.pending.len(),
                plan.shards.len() - plan.pending.len(),
                args.output
            );
            let stored = app
                .store
                .set_planned_encode(id, &plan)
                .map_err(|e| format!("state database: {e}"));
            // A plan of a million shards is hundreds of MiB of small strings: give them back
            // to the system, so that the service's memory stays that of its queue.
            drop(plan);
            // SAFETY: malloc_trim has no preconditions (see coord::worker).
            unsafe {
                libc::malloc_trim(0);
            }
            stored
        }
        JobSpec::Train { .. } => app
            .store
            .write(|db| db.set_planned_train(id))
            .map_err(|e| format!("state database: {e}")),
    }
}

/// Takes back lost leases, on a thread of its own (a finish may take hours), and deletes jobs
/// past their retention.
fn expirer(app: &App, retention: Duration) {
    let mut last_purge = std::time::Instant::now();
    loop {
        match app.store.write(|db| db.expire()) {
            Ok(expired) => {
                for e in expired {
                    tracing::info!(
                        "job {} shard {}: {}; {}",
                        e.job,
                        e.shard,
                        e.cause,
                        if e.failed {
                            "no attempts left, the shard failed"
                        } else {
                            "leasing it again"
                        }
                    );
                }
            }
            Err(e) => tracing::error!("state database: {e}"),
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = std::time::Instant::now();
            purge(app, retention);
        }
        std::thread::sleep(POLL);
    }
}

/// Deletes ended jobs older than `retention`, a batch of shards per transaction.
fn purge(app: &App, retention: Duration) {
    let before = db::now() - retention.as_secs_f64();
    let old = match app.store.read(|db| db.expired_jobs(before, 100)) {
        Ok(old) => old,
        Err(e) => return tracing::error!("state database: {e}"),
    };
    for id in old {
        loop {
            match app.store.write(|db| db.purge_step(&id)) {
                Ok(true) => break,
                Ok(false) => continue,
                Err(e) => return tracing::error!("job {id}: state database: {e}"),
            }
        }
        tracing::info!(
            "job {id}: deleted from the state database (ended more than {}s ago, --retention)",
            retention.as_secs()
        );
    }
}

/// Finishes jobs whose shards have all ended.
fn finisher(app: &App) {
    let runtime = runtime();
    loop {
        let next = app.store.write(|db| db.next_to_finish()).and_then(|found| {
            found
                .map(|(id, kind)| app.store.read(|db| db.finishing(&id, kind)))
                .transpose()
        });
        match next {
            Ok(Some(job)) => finish_job(app, job, &runtime),
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                tracing::error!("state database: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn finish_job(app: &App, job: ToFinish, runtime: &tokio::runtime::Runtime) {
    let failed_error = |failures: &[crate::job::ShardFailure]| {
        let first = failures
            .first()
            .map(|f| {
                let what = if f.part.is_empty() { &f.file } else { &f.part };
                format!(
                    "{}{}",
                    if what.is_empty() {
                        String::new()
                    } else {
                        format!("{what}: ")
                    },
                    f.causes.join("; then: ")
                )
            })
            .unwrap_or_default();
        format!("{} shard(s) failed; first: {first}", failures.len())
    };
    let (succeeded, summary, error) = match (&job.plan, job.kind) {
        (Err(e), _) => (
            false,
            Value::Null,
            Some(format!("{e}: submit the job again")),
        ),
        (Ok(Some(plan)), JobKind::Encode) => {
            let mut result = Err(String::new());
            for attempt in 1..=3 {
                // The service's S3 count spans its jobs: none is said per job.
                result = finish_encode(
                    plan,
                    &job.reports,
                    &job.failures,
                    job.seconds,
                    false,
                    runtime,
                )
                .map_err(|e| e.to_string());
                if result.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(attempt));
            }
            if let Some(finished) = result.as_ref().ok().filter(|f| !f.missing.is_empty()) {
                // Parts counted committed but gone from the output: encode them again.
                let missing: Vec<(usize, String)> = finished
                    .missing
                    .iter()
                    .map(|m| (m.shard, m.failure.part.clone()))
                    .collect();
                tracing::warn!(
                    "job {}: {} part(s) missing from the output, re-queued: {}",
                    job.id,
                    missing.len(),
                    missing
                        .iter()
                        .map(|(_, part)| part.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Err(e) = app.store.write(|db| db.requeue(&job.id, &missing)) {
                    tracing::error!("job {}: state database: {e}", job.id);
                }
                return;
            }
            match result.map(|f| f.summary) {
                Ok(summary) => {
                    let ok = job.failures.is_empty();
                    (
                        ok,
                        serde_json::to_value(&summary).unwrap_or(Value::Null),
                        (!ok).then(|| failed_error(&job.failures)),
                    )
                }
                Err(e) => (
                    false,
                    Value::Null,
                    Some(format!("writing the manifest: {e}")),
                ),
            }
        }
        (_, JobKind::Train) => {
            let ok = job.failures.is_empty() && job.train_summary.is_some();
            (
                ok,
                job.train_summary.clone().unwrap_or(Value::Null),
                (!ok).then(|| {
                    format!(
                        "training failed: {}",
                        job.failures
                            .first()
                            .map(|f| f.causes.join("; then: "))
                            .unwrap_or_else(|| "no summary".into())
                    )
                }),
            )
        }
        (Ok(None), JobKind::Encode) => (false, Value::Null, Some("the job has no plan".into())),
    };
    tracing::info!(
        "job {}: {}{}",
        job.id,
        if succeeded { "succeeded" } else { "failed" },
        error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    let ended = app
        .store
        .write(|db| db.set_finished(&job.id, succeeded, &summary, error.as_deref()));
    if let Err(e) = ended {
        tracing::error!("job {}: state database: {e}", job.id);
    }
    // [ownership] The job has ended: its output is free.
    if let Ok(Some(settings)) = job.plan.as_ref().map(|p| p.as_ref().map(|p| &p.settings)) {
        if let Some(owner) = &settings.lock_job {
            runtime.block_on(crate::job::ownership::release(
                &settings.output,
                &settings.allowed_roots,
                owner,
                true,
            ));
        }
    }
}
