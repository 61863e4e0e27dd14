//! Recovery with real processes: a worker that hangs mid-shard while its heartbeats go on loses
//! its lease to another worker (`sparq serve` + two `sparq worker`s, and `sparq encode
//! --workers 2`), and a `sparq serve` killed with SIGKILL and restarted takes its running jobs'
//! output locks back, or fails a job whose output another run took over meanwhile.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::corpus::*;
use common::process::*;
use common::service::*;
use serde_json::json;
use sparq::io::lock::LockHolder;

/// `sparq worker` hangs on this shard (test fault hook of `coord::runner`).
const HANG_SHARD: &str = "SPARQ_TEST_HANG_SHARD";
/// Only the process that creates this file hangs.
const HANG_ONCE: &str = "SPARQ_TEST_HANG_ONCE";

/// Waits for `cond` up to `secs`; false if it never held.
fn wait_up_to(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Kills a process and every child it started (a killed coordinator leaves its workers).
fn kill_tree(child: &mut Child) {
    for pid in children_of(child.id()) {
        kill9(pid);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The generation of `output`'s lock in force.
fn lock_holder(output: &Path) -> Option<LockHolder> {
    let dir = output.join("_sparq_lock");
    let newest = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .max()?;
    serde_json::from_slice(&std::fs::read(dir.join(newest)).ok()?).ok()
}

/// Asserts `output` holds ids `0..rows` once each, with the reference vectors, and `_SUCCESS`.
fn assert_complete(output: &Path, rows: i64) {
    assert!(output.join("_SUCCESS").is_file(), "no _SUCCESS");
    let (got, _) = read_output(output);
    let ids: Vec<i64> = (0..rows).collect();
    assert_exactly_once(&got, &reference_vectors(&ids));
}

fn encode_spec(input: &Path, output: &Path, lease_timeout: u64) -> serde_json::Value {
    json!({
        "kind": "encode",
        "input": input.display().to_string(),
        "output": output.display().to_string(),
        "shard_rows": 10,
        "lease_timeout": lease_timeout,
    })
}

#[test]
fn a_worker_hung_mid_shard_loses_it_to_another_and_the_job_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..30, 10);
    write_corpus(&input.join("b.parquet"), 30..60, 10);
    let output = dir.path().join("out");
    let service = Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &[]);
    // The first worker alone when the job starts: it leases shard 0 (leases go in shard
    // order), reads a little of it, and hangs there, heartbeating.
    let hung = Worker::start(&service.url, "hung", &[(HANG_SHARD, "0")]);
    let id = service.submit(&encode_spec(&input, &output, 4));
    wait_for("the hung worker to lease shard 0", || {
        service
            .job(&id)
            .shards
            .iter()
            .any(|s| s.shard == 0 && s.state == "leased" && s.worker.as_deref() == Some("hung"))
    });
    let _healthy = Worker::start(&service.url, "healthy", &[]);
    let ended = wait_up_to(180, || sparq::serve::api::is_final(&service.job(&id).state));
    let job = service.job(&id);
    assert!(
        ended,
        "the job never ended: the hung worker kept shard 0 ({job:?})"
    );
    assert_eq!(job.state, "succeeded", "{job:?}");
    let shard0 = job.shards.iter().find(|s| s.shard == 0).unwrap();
    assert_eq!(shard0.attempts, 2, "{shard0:?}");
    assert!(
        shard0.causes[0].contains("worker hung lost its lease (heartbeats but no progress for 4s)"),
        "{shard0:?}"
    );
    assert_eq!(shard0.worker.as_deref(), Some("healthy"), "{shard0:?}");
    // Still heartbeating when the lease was taken, and still there: hung, not dead.
    let mut hung = hung;
    assert!(
        hung.0.try_wait().unwrap().is_none(),
        "the hung worker exited"
    );
    assert_complete(&output, 60);
}

#[test]
fn a_local_worker_hung_mid_shard_is_replaced_and_the_run_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..40, 10);
    let output = dir.path().join("out");
    let marker = dir.path().join("hung-once");
    let mut run = sparq_cmd(&["encode", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--workers", "2", "--threads", "1", "--shard-rows", "10"])
        .args(["--lease-timeout", "3"])
        .env(HANG_SHARD, "0")
        .env(HANG_ONCE, &marker)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = run.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let ended = wait_up_to(180, || run.try_wait().unwrap().is_some());
    if !ended {
        kill_tree(&mut run);
    }
    let err = reader.join().unwrap();
    assert!(
        ended,
        "the run never ended: the hung worker kept shard 0\n{err}"
    );
    assert!(run.wait().unwrap().success(), "{err}");
    assert!(marker.is_file(), "no worker hung: {err}");
    assert!(
        err.contains("worker stalled (no progress for 3s)"),
        "the stall is said: {err}"
    );
    assert_complete(&output, 40);
}

/// Starts a job (no worker yet: it stays running with its shards pending) and kills the service
/// with SIGKILL, leaving its output's lock naming a pid that is gone.
fn job_then_kill9(dir: &Path, input: &Path, output: &Path) -> String {
    write_corpus(&input.join("a.parquet"), 0..40, 10);
    let mut service = Service::start(&dir.join("state.db"), "127.0.0.1:0", &[]);
    let id = service.submit(&encode_spec(input, output, 60));
    wait_for("the job to be planned", || {
        service.job(&id).state == "running"
    });
    let holder = lock_holder(output).expect("the job locked its output");
    assert_eq!(
        (holder.job.as_str(), holder.pid),
        (format!("serve-{id}").as_str(), service.child.id())
    );
    kill9(service.child.id());
    let _ = service.child.wait();
    id
}

fn cli_encode(input: &Path, output: &Path) -> Command {
    let mut cmd = sparq_cmd(&["encode", "--input"]);
    cmd.arg(input)
        .arg("--output")
        .arg(output)
        .args(["--threads", "1", "--shard-rows", "10"]);
    cmd
}

#[test]
fn a_restarted_service_takes_its_jobs_output_back_and_a_cli_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    let id = job_then_kill9(dir.path(), &input, &output);
    let service = Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &[]);
    let holder = lock_holder(&output).unwrap();
    assert_eq!(
        (holder.job.as_str(), holder.pid, holder.released),
        (format!("serve-{id}").as_str(), service.child.id(), false),
        "the restarted service holds its job's output: {holder:?}"
    );
    assert!(
        holder
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("no longer runs"),
        "{holder:?}"
    );
    // A run on the same output is refused, naming the service's job, and writes nothing.
    let out = cli_encode(&input, &output).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run took the output: {err}");
    assert!(
        err.contains(&format!(
            "is being written by job serve-{id} (sparq serve job, pid {}",
            service.child.id()
        )),
        "{err}"
    );
    assert!(read_output(&output).1.is_empty(), "{err}");
    // The job goes on, with a worker, to the end; then the output is free.
    let _worker = Worker::start(&service.url, "w", &[]);
    let job = service.wait_final(&id);
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_complete(&output, 40);
    assert!(lock_holder(&output).unwrap().released);
}

#[test]
fn a_restarted_service_fails_a_job_whose_output_a_cli_run_took_over() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    let id = job_then_kill9(dir.path(), &input, &output);
    // While the service is down its lock names a dead pid: a CLI run takes the output over,
    // and stays (its worker hangs on shard 0), live.
    let mut cli = cli_encode(&input, &output)
        .env(HANG_SHARD, "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cli_pid = cli.id();
    let took = wait_up_to(120, || {
        lock_holder(&output).is_some_and(|h| h.pid == cli_pid)
    });
    if !took {
        kill_tree(&mut cli);
        panic!("the CLI run never took the output over");
    }
    let live = cli.try_wait().unwrap().is_none();
    let service = Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &[]);
    let job = service.job(&id);
    let holder = lock_holder(&output).unwrap();
    kill_tree(&mut cli);
    assert!(
        live && !holder.released,
        "the CLI run had ended: {holder:?}"
    );
    assert_eq!(
        job.state, "failed",
        "the job went on beside the CLI run: {job:?}"
    );
    let error = job.error.clone().unwrap_or_default();
    assert!(
        error.contains("another job took over the output")
            && error.contains(&format!("(sparq encode, pid {cli_pid} on host")),
        "{error}"
    );
    assert_eq!(
        holder.pid, cli_pid,
        "the service left the CLI run's lock alone"
    );
    // No worker of the failed job gets a shard of it.
    let _worker = Worker::start(&service.url, "w", &[]);
    std::thread::sleep(Duration::from_secs(2));
    let job = service.job(&id);
    assert_eq!((job.state.as_str(), job.attempts), ("failed", 0), "{job:?}");
}
