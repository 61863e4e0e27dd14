//! A train lease on a remote worker: `sparq train` runs as a child, fenced by the lease. The
//! child dies with the worker (parent-death signal), is killed once the lease is lost (the
//! coordinator says so, or no heartbeat renewed it for the lease timeout, after which the
//! coordinator may have leased the job to another worker), and publishes checkpoints only while
//! no newer attempt of the job has claimed the output (`sparq train --attempt`). Two trainers can
//! therefore overlap only briefly, and never replace or delete each other's checkpoints.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::api::{FailedReport, Heartbeat, LeaseGrant};
use super::client::Client;
use super::remote::{Heartbeats, WorkerArgs};
use crate::io::AllowedRoots;
use crate::train::TrainEvent;

/// Runs a train job as a child `sparq train` (resuming from the newest checkpoint), relaying
/// its step in heartbeats and its summary in the report.
pub(super) fn train_lease(
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
    // A private scratch folder (mode 0700, a random name, removed when dropped): nothing the
    // coordinator sends becomes part of a local path.
    let dir = tempfile::Builder::new()
        .prefix("sparq-worker-")
        .tempdir()
        .map_err(|e| {
            fail(
                format!(
                    "creating a scratch folder in {}: {e}",
                    std::env::temp_dir().display()
                ),
                true,
            )
        })?;
    let path = dir.path().join("train.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap_or_default())
        .map_err(|e| fail(format!("{}: {e}", path.display()), true))?;
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string(), true))?;
    let mut command = Command::new(exe);
    command
        .arg("train")
        .arg("--config")
        .arg(&path)
        .args(["--device", &args.device.to_string()])
        .args(["--threads", &threads.to_string()])
        .arg("--resume")
        .args(["--attempt", &grant.attempt.to_string()])
        .arg("--events")
        .arg("--allowed-roots")
        .arg(serde_json::to_string(roots).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and _exit are async-signal-safe, and the closure touches only a
    // copied integer. PDEATHSIG kills the trainer when this worker dies (kill -9 included), so
    // no trainer outlives its lease's holder; a parent that died before prctl took effect is
    // caught by the getppid check. The signal follows the thread that spawned the child: this
    // one, the worker's main thread, which lives as long as the worker.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("starting `sparq train`: {e}"), true))?;
    // The step for the status, and every event line as work done (evaluations and checkpoints
    // take time without a step).
    let (step, events) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let pid = child.id();
    let (read, read_events) = (step.clone(), events.clone());
    let beats = Heartbeats::start(
        client,
        grant,
        true,
        move || Heartbeat {
            rows: read.load(Ordering::Relaxed),
            tokens: 0,
            progress: read_events.load(Ordering::Relaxed),
        },
        move |why| {
            tracing::info!("killing the training run: {why}");
            // SAFETY: plain kill(2) on our own child, not yet reaped (the main thread waits
            // for it only after the events end, i.e. after it exits). SIGKILL: the lease is
            // gone and a checkpoint is published atomically or not at all.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
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
        events.fetch_add(1, Ordering::Relaxed);
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
    // The heartbeats (and their kill) stop before the child is reaped, so its pid is never
    // signalled after it could be reused.
    drop(beats);
    let status = child.wait().map_err(|e| fail(e.to_string(), true))?;
    drop(dir);
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
