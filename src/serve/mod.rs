//! `sparq serve`: the batch-job service. Jobs (encode or train specs) queue in SQLite; a planner
//! cuts encode jobs into shards with the same planning as `sparq encode`; `sparq worker`
//! processes anywhere lease shards over HTTP, heartbeat, and commit their parts with the same
//! exactly-once protocol; a finisher writes each job's manifest and `_SUCCESS`.

pub mod api;
pub mod client;
pub(crate) mod db;
mod keys;
pub mod remote;
pub mod spec;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use self::api::App;
use self::db::{Db, ToFinish};
use self::spec::{parse_spec, JobSpec, Roots};
use self::wire::JobState;
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
    /// Address to listen on. A non-loopback address needs SPARQ_TOKEN set.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// SQLite file holding the queue; a restarted service resumes from it.
    #[arg(long, default_value = "sparq.db")]
    pub state: PathBuf,
    /// Folder that job specs' local paths may use (repeatable). Default: the working directory
    /// and the system temp directory.
    #[arg(long = "allow-root", value_name = "PATH")]
    pub allow_roots: Vec<PathBuf>,
    /// Most jobs waiting to be planned; more submissions get 429.
    #[arg(long, default_value_t = 10_000)]
    pub max_queued: u64,
}

/// What stops the service or a worker.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback address without a token.
    #[error("refusing to listen on {0} without a token: set {TOKEN_VAR} (workers and `sparq submit` need the same value), or listen on 127.0.0.1")]
    NoToken(SocketAddr),
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
    let token = std::env::var(TOKEN_VAR)
        .ok()
        .filter(|t| !t.trim().is_empty());
    if token.is_none() && !args.listen.ip().is_loopback() {
        return Err(ServeError::NoToken(args.listen));
    }
    let base = std::env::current_dir().map_err(io("the working directory"))?;
    let wanted = if args.allow_roots.is_empty() {
        vec![base.clone(), std::env::temp_dir()]
    } else {
        args.allow_roots.clone()
    };
    let job_paths: Vec<String> = wanted
        .iter()
        .map(|r| base.join(r).display().to_string())
        .collect();
    let roots =
        Roots::new(&wanted, base, crate::model::default_model_dir()).map_err(ServeError::Roots)?;
    if let Some(parent) = args.state.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(format!(
            "creating the folder of --state {}",
            args.state.display()
        )))?;
    }
    let state_error = |what: String| move |source| ServeError::State { what, source };
    let new_state = !args.state.exists();
    let db = Db::open(&args.state).map_err(state_error(format!(
        "opening the state database {}",
        args.state.display()
    )))?;
    let counts = db
        .count_by_state()
        .map_err(state_error("reading the state database".into()))?;
    let (wake, woken) = crossbeam_channel::bounded(1);
    let app = Arc::new(App {
        db: Mutex::new(db),
        token: token.as_deref().map(api::token_digest),
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
            "serving on http://{local} (state {}; job paths under {}; {})",
            describe_state(&args.state, new_state, &counts),
            job_paths.join(", "),
            if token.is_some() {
                "bearer token required"
            } else {
                "no token: loopback only"
            }
        );
        axum::serve(listener, api::router(app))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(io("serving"))
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
        let next = lock(app).next_to_plan();
        match next {
            Ok(Some(job)) => {
                if let Err(e) = plan_job(app, &job.id, &job.spec, &runtime) {
                    tracing::error!("job {}: {e}", job.id);
                    if let Err(e) = lock(app).fail_job(&job.id, &e) {
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

fn lock(app: &App) -> std::sync::MutexGuard<'_, Db> {
    app.db.lock().unwrap_or_else(|p| p.into_inner())
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
                &PlanOptions::SERVICE,
            )
            .map_err(|e| e.to_string())?;
            tracing::info!(
                "job {id}: {} shards ({} to encode, {} committed before) → {}",
                plan.shards.len(),
                plan.pending.len(),
                plan.shards.len() - plan.pending.len(),
                args.output
            );
            lock(app)
                .set_planned_encode(id, &plan)
                .map_err(|e| format!("state database: {e}"))
        }
        JobSpec::Train { .. } => lock(app)
            .set_planned_train(id)
            .map_err(|e| format!("state database: {e}")),
    }
}

/// Takes back lost leases and finishes jobs whose shards have all ended.
fn finisher(app: &App) {
    let runtime = runtime();
    loop {
        match lock(app).expire() {
            Ok(expired) => {
                for e in expired {
                    tracing::info!(
                        "job {} shard {}: worker {} lost its lease; {}",
                        e.job,
                        e.shard,
                        e.worker,
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
        let next = lock(app).next_to_finish();
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
    let (succeeded, summary, error) = match (&job.plan, job.kind.as_str()) {
        (Some(plan), "encode") => {
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
                let shards: Vec<usize> = finished.missing.iter().map(|m| m.shard).collect();
                let cause = "the part was missing from the output at the finish";
                tracing::warn!(
                    "job {}: {} part(s) missing from the output, re-queued: {}",
                    job.id,
                    shards.len(),
                    finished
                        .missing
                        .iter()
                        .map(|m| m.failure.part.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Err(e) = lock(app).requeue(&job.id, &shards, cause) {
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
        (_, "train") => {
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
        _ => (false, json!(null), Some("the job has no plan".into())),
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
    if let Err(e) = lock(app).set_finished(&job.id, succeeded, &summary, error.as_deref()) {
        tracing::error!("job {}: state database: {e}", job.id);
    }
}
