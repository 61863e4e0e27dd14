//! Output ownership with real processes: a second job on an output a live run writes (other
//! settings, `--overwrite`, or a service job) is refused naming the holder, and the first run's
//! parts stay whole; a holder that is gone (kill -9, a dead pid in the lock) is taken over with
//! the reason said, and the rerun completes with every id once; two processes taking over the
//! same stale lock: one wins.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::corpus::*;
use common::process::*;
use common::*;
use sparq::io::lock::{Acquired, HolderKind, LockHolder, OutputLock};

fn sparq() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL");
    for k in [
        "SLURM_ARRAY_TASK_ID",
        "JOB_COMPLETION_INDEX",
        "RANK",
        "WORLD_SIZE",
        "SPARQ_TASK_INDEX",
        "SPARQ_TASK_COUNT",
    ] {
        c.env_remove(k);
    }
    c
}

fn encode_args<'a>(input: &'a Path, output: &'a Path) -> Vec<&'a str> {
    vec![
        "encode",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--shard-rows",
        "200",
        "--threads",
        "1",
    ]
}

fn encode(input: &Path, output: &Path, extra: &[&str]) -> Output {
    sparq()
        .args(encode_args(input, output))
        .args(extra)
        .output()
        .unwrap()
}

fn start_encode(input: &Path, output: &Path) -> Child {
    sparq()
        .args(encode_args(input, output))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn parts(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap()))
        .collect();
    files.sort();
    files
}

/// Stops (or continues) a run and its workers, so it stays live and writes nothing meanwhile.
fn signal_tree(pid: u32, signal: i32) {
    for p in std::iter::once(pid).chain(children_of(pid)) {
        // SAFETY: signals a process this test started.
        unsafe { libc::kill(p as i32, signal) };
    }
}

fn host() -> String {
    sparq::io::lock::host_name()
}

/// Writes generation 1 of a lock naming `pid` as the holder of job `job`.
fn write_lock(output: &Path, job: &str, pid: u32) {
    let dir = output.join("_sparq_lock");
    std::fs::create_dir_all(&dir).unwrap();
    let holder = serde_json::json!({
        "job": job, "kind": "cli", "host": host(), "pid": pid, "started": 1,
    });
    std::fs::write(dir.join("0000000001.json"), holder.to_string()).unwrap();
}

/// The pid of a process that has ended.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn a_second_job_on_a_live_output_is_refused_by_name_and_the_first_completes_whole() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..2000, 100);
    let out_dir = dir.path().join("out");
    let first = start_encode(&input, &out_dir);
    let pid = first.id();
    wait_for("a committed part", || !parts(&out_dir).is_empty());
    signal_tree(pid, libc::SIGSTOP);
    let before = parts(&out_dir);

    // Other settings: another job, refused by name before it writes anything.
    let other = encode(&input, &out_dir, &["--max-active-dims", "8"]);
    // `--overwrite` would delete what the live run committed: refused too, for any job.
    let overwrite_other = encode(&input, &out_dir, &["--max-active-dims", "8", "--overwrite"]);
    let overwrite_same = encode(&input, &out_dir, &["--overwrite"]);
    let after = parts(&out_dir);
    signal_tree(pid, libc::SIGCONT);

    for (what, out) in [
        ("other settings", &other),
        ("--overwrite with other settings", &overwrite_other),
        ("--overwrite of the same job", &overwrite_same),
    ] {
        let err = stderr(out);
        assert!(!out.status.success(), "{what}: accepted: {err}");
        assert!(
            err.contains("is being written by job encode-")
                && err.contains(&format!("pid {pid} on host {}", host())),
            "{what}: the holder is not named: {err}"
        );
    }
    assert!(stderr(&overwrite_same).contains("--overwrite would delete"));
    assert_eq!(before, after, "the live run's parts changed");

    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (rows, _) = read_output(&out_dir);
    assert_exactly_once(&rows, &reference_vectors(&(0..2000).collect::<Vec<_>>()));
    assert!(out_dir.join("_SUCCESS").is_file());
    // The run let go: the other job may now replace it.
    let out = encode(&input, &out_dir, &["--max-active-dims", "8", "--overwrite"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn kill_9_then_rerun_takes_over_saying_why_and_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..2000, 100);
    let out_dir = dir.path().join("out");
    let mut first = start_encode(&input, &out_dir);
    let pid = first.id();
    wait_for("a committed part", || !parts(&out_dir).is_empty());
    let workers = children_of(pid);
    kill9(pid);
    let _ = first.wait();
    wait_for("workers to exit", || {
        workers.iter().all(|w| {
            std::fs::read_to_string(format!("/proc/{w}/stat")).map_or(true, |s| s.contains(") Z "))
        })
    });
    assert!(!out_dir.join("_SUCCESS").exists());

    let out = encode(&input, &out_dir, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("took over from job encode-")
            && err.contains(&format!("pid {pid} no longer runs on {}", host())),
        "the takeover and its reason are said: {err}"
    );
    let (rows, _) = read_output(&out_dir);
    assert_exactly_once(&rows, &reference_vectors(&(0..2000).collect::<Vec<_>>()));
    assert!(out_dir.join("_SUCCESS").is_file());
}

#[test]
fn a_lock_held_by_a_dead_pid_is_taken_over_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..300, 100);

    // A live holder of another job (this test process): refused, nothing written.
    let held = dir.path().join("held");
    write_lock(&held, "encode-feedfacefeedface", std::process::id());
    let out = encode(&input, &held, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is being written by job encode-feedfacefeedface (sparq encode, pid")
            && err.contains(&format!("pid {} on host {}", std::process::id(), host())),
        "{err}"
    );
    assert!(err.contains("_sparq_lock/"), "says what to do: {err}");
    assert!(parts(&held).is_empty() && !held.join("_sparq_job.json").exists());

    // A dead holder: taken over, the reason said, the output completed.
    let stale = dir.path().join("stale");
    let gone = dead_pid();
    write_lock(&stale, "encode-deadbeefdeadbeef", gone);
    let out = encode(&input, &stale, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("took over from job encode-deadbeefdeadbeef")
            && err.contains(&format!("pid {gone} no longer runs")),
        "{err}"
    );
    let (rows, _) = read_output(&stale);
    assert_exactly_once(&rows, &reference_vectors(&(0..300).collect::<Vec<_>>()));
}

#[test]
fn of_two_processes_taking_over_one_stale_lock_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..20 {
        let output = out_dir.join(round.to_string());
        write_lock(&output, "encode-deadbeefdeadbeef", dead_pid());
        let url = sparq::io::StoreUrl::parse(output.to_str().unwrap()).unwrap();
        let lock = OutputLock::new(&url, &sparq::io::AllowedRoots::anywhere()).unwrap();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let contenders = ["encode-aaaaaaaaaaaaaaaa", "encode-bbbbbbbbbbbbbbbb"].map(|job| {
            let (lock, barrier) = (lock.clone(), barrier.clone());
            runtime.spawn(async move {
                barrier.wait().await;
                lock.acquire(&LockHolder::this_process(job, HolderKind::Cli), false)
                    .await
                    .map(|a| (job, a))
            })
        });
        let results: Vec<_> = contenders
            .into_iter()
            .map(|c| runtime.block_on(c).unwrap())
            .collect();
        let winners: Vec<&str> = results
            .iter()
            .filter_map(|r| match r {
                Ok((job, Acquired::Taken)) => Some(*job),
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let (_, now) = runtime.block_on(lock.current()).unwrap().unwrap();
        assert_eq!(now.job, winners[0]);
        let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(
            loser.to_string().contains(winners[0]),
            "the loser names the winner: {loser}"
        );
    }
}

#[test]
fn a_service_job_on_an_output_a_live_cli_run_writes_is_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..2000, 100);
    let out_dir = dir.path().join("out");
    let service = common::service::Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &[]);
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "kind = \"encode\"\ninput = \"{}\"\noutput = \"{}\"\nshard_rows = 200\n",
            input.display(),
            out_dir.display()
        ),
    )
    .unwrap();
    let submit = || {
        common::service::sparq_cmd(&["submit", spec.to_str().unwrap(), "--coordinator"])
            .arg(&service.url)
            .output()
            .unwrap()
    };

    let first = start_encode(&input, &out_dir);
    let pid = first.id();
    wait_for("a committed part", || !parts(&out_dir).is_empty());
    signal_tree(pid, libc::SIGSTOP);
    let refused = submit();
    signal_tree(pid, libc::SIGCONT);
    let err = stderr(&refused);
    assert!(!refused.status.success(), "accepted: {err}");
    assert!(
        err.contains("is being written by job encode-")
            && err.contains(&format!("pid {pid} on host {}", host())),
        "the holder is named: {err}"
    );
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Once the run has ended, the output is free.
    let accepted = submit();
    assert!(accepted.status.success(), "{}", stderr(&accepted));
}

#[test]
fn on_s3_a_second_job_is_refused_by_name_and_the_first_completes_whole() {
    let Some(endpoint) = common::s3::endpoint() else {
        return;
    };
    let s3: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(common::s3::store(&endpoint));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let prefix = format!("ownership-{}/out", uuid::Uuid::new_v4());
    let output = format!("s3://{}/{prefix}", common::s3::BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..2000, 100);
    let run = |extra: &[&str]| {
        let mut c = sparq();
        c.args([
            "encode",
            "--input",
            input.to_str().unwrap(),
            "--output",
            &output,
        ])
        .args(["--shard-rows", "200", "--threads", "1"])
        .args(extra);
        common::s3::env(&mut c, &endpoint);
        c
    };
    let parts = || {
        let (_, names) = runtime.block_on(common::s3::read_parts(&s3, &prefix));
        names.iter().filter(|n| n.starts_with("part-")).count()
    };
    let first = run(&[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first.id();
    wait_for("a committed part", || parts() >= 1);
    signal_tree(pid, libc::SIGSTOP);
    let before = parts();
    let other = run(&["--max-active-dims", "8"]).output().unwrap();
    let overwrite = run(&["--max-active-dims", "8", "--overwrite"])
        .output()
        .unwrap();
    let after = parts();
    signal_tree(pid, libc::SIGCONT);
    for out in [&other, &overwrite] {
        let err = stderr(out);
        assert!(!out.status.success(), "accepted: {err}");
        assert!(
            err.contains(&format!("{output} is being written by job encode-"))
                && err.contains(&format!("pid {pid} on host {}", host())),
            "the holder is not named: {err}"
        );
    }
    assert_eq!(before, after, "the live run's parts changed");
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (rows, names) = runtime.block_on(common::s3::read_parts(&s3, &prefix));
    assert!(names.contains(&"_SUCCESS".to_string()), "{names:?}");
    assert_exactly_once(&rows, &reference_vectors(&(0..2000).collect::<Vec<_>>()));
}
