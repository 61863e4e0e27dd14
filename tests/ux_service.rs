//! What a new user meets in the service commands, run as the user runs them: the messages of
//! `sparq submit` for unknown job keys, the start-up line of `sparq serve`, what `sparq cancel`
//! says and what `sparq status` shows afterwards, and device errors that name each command's
//! own flag.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::corpus::*;
use common::process::*;
use common::service::*;
use common::*;
use serde_json::Value;

/// Starts `sparq serve` on a free port; returns it and its start-up line.
fn serve(state: &Path) -> (Service, String) {
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--state"]);
    cmd.arg(state);
    allow_test_roots(&mut cmd);
    Service::spawn_with_line(cmd)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(args: &[&str]) -> Output {
    sparq_cmd(args).output().unwrap()
}

#[test]
fn unknown_job_keys_are_named_once_with_the_nearest_known_key() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = serve(&dir.path().join("state.db"));
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "kind = \"encode\"\ninput = \"{0}/in\"\noutput = \"{0}/out\"\nshard_rowz = 10\n\
             batch-tokens = 100\ncolour = \"red\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = run(&[
        "submit",
        spec.to_str().unwrap(),
        "--coordinator",
        &service.url,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "unknown keys `batch-tokens` (did you mean `batch_tokens`?), `colour` and \
             `shard_rowz` (did you mean `shard_rows`?)"
        ),
        "{err}"
    );
    for key in ["`shard_rowz`", "`batch-tokens`", "`colour`"] {
        assert_eq!(err.matches(key).count(), 1, "{key} named once: {err}");
    }
    assert!(
        err.contains(spec.to_str().unwrap()),
        "names the file: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A train spec: the same, for `sparq train`'s flags.
    std::fs::write(
        &spec,
        "kind = \"train\"\ntrain_data = \"in\"\noutput = \"out\"\nlearning-rate = 1e-5\n",
    )
    .unwrap();
    let out = run(&[
        "submit",
        spec.to_str().unwrap(),
        "--coordinator",
        &service.url,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("unknown key `learning-rate` (did you mean `learning_rate`?) in a train job"),
        "{err}"
    );
    assert_eq!(err.matches("`learning-rate`").count(), 1, "{err}");
}

#[test]
fn serve_and_worker_say_what_they_start_with() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let (service, line) = serve(&state);
    let tmp = std::env::temp_dir();
    assert!(
        line.contains(&format!("(state {}, new;", state.display()))
            && line.contains(&format!(
                "job paths under {}, {}",
                root().display(),
                tmp.display()
            ))
            && line.contains("bearer token required (SPARQ_TOKEN)")
            && !line.contains("{}"),
        "{line}"
    );

    // A worker with one thread says so, in the singular; with nothing to do it leaves.
    let out = run(&[
        "worker",
        "--coordinator",
        &service.url,
        "--threads",
        "1",
        "--idle-exit",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("(1 thread)") && !err.contains("1 threads"),
        "{err}"
    );

    // One job running (no worker takes it) and one cancelled: a restart resumes the first.
    write_corpus(&dir.path().join("in/a.parquet"), 0..20, 10);
    // Each job its own output: a second job on the running one's output is refused at submit.
    let submit = |output: &str| {
        let spec = dir.path().join(format!("{output}.toml"));
        std::fs::write(
            &spec,
            format!(
                "kind = \"encode\"\ninput = \"{0}/in\"\noutput = \"{0}/{output}\"\n\
                 shard_rows = 10\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let out = run(&[
            "submit",
            spec.to_str().unwrap(),
            "--coordinator",
            &service.url,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let running = submit("out");
    wait_for("the job to be planned", || {
        service.job(&running).state == "running"
    });
    let cancelled = submit("out2");
    let out = run(&["cancel", &cancelled, "--coordinator", &service.url]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop(service);
    let (_service, line) = serve(&state);
    assert!(
        line.contains(&format!(
            "(state {}: 2 jobs, 1 resumed (1 running), 1 ended;",
            state.display()
        )),
        "{line}"
    );
}

/// Rows per shard of the cancel test, and shards.
const SHARD_ROWS: u64 = 500;
const SHARDS: u64 = 8;

#[test]
fn cancel_says_what_it_did_and_status_keeps_the_committed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = serve(&dir.path().join("state.db"));
    write_corpus(
        &dir.path().join("in/a.parquet"),
        0..(SHARD_ROWS * SHARDS) as i64,
        SHARD_ROWS as usize,
    );
    let output = dir.path().join("out");
    let spec = dir.path().join("job.toml");
    // A short lease timeout: heartbeats every second, so the worker hears of the cancel soon.
    std::fs::write(
        &spec,
        format!(
            "kind = \"encode\"\ninput = \"{}/in\"\noutput = \"{}\"\nshard_rows = {SHARD_ROWS}\n\
             lease_timeout = 4\n",
            dir.path().display(),
            output.display()
        ),
    )
    .unwrap();
    let out = run(&[
        "submit",
        spec.to_str().unwrap(),
        "--coordinator",
        &service.url,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let _worker = Worker::start(&service.url, "w1", &[]);
    wait_for("a committed shard", || service.job(&id).shards_done >= 1);

    let out = run(&["cancel", &id, "--coordinator", &service.url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    let prefix = format!("{id}: running → cancelled; kept ");
    let kept = said
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{said}"));
    // "K/8 shards (R/4000 rows) committed".
    let numbers: Vec<u64> = kept
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(4)
        .map(|w| w.parse().unwrap())
        .collect();
    let [shards_kept, total, rows_kept, rows_total] = numbers[..] else {
        panic!("{said}")
    };
    assert!(
        shards_kept >= 1 && total == SHARDS && rows_kept == shards_kept * SHARD_ROWS,
        "{said}"
    );
    assert_eq!(rows_total, SHARD_ROWS * SHARDS, "{said}");

    // The worker stops its shard at its next heartbeat; what was committed stays counted.
    wait_for("the worker to stop", || {
        service.job(&id).shards_running == 0
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = run(&["status", &id, "--json", "--coordinator", &service.url]);
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    let done = job["shards_done"].as_u64().unwrap();
    assert!(done >= shards_kept, "{job}");
    assert_eq!(job["rows_done"], done * SHARD_ROWS, "{job}");
    assert_eq!(job["state"], "cancelled");
    for shard in job["shards"].as_array().unwrap() {
        assert!(
            shard["state"] == "done" || shard["state"] == "cancelled",
            "no shard of a cancelled job waits or runs: {shard}"
        );
    }
    for key in ["shards_failed", "retries", "rows_total", "shards_total"] {
        assert!(job.get(key).is_some(), "--json keeps `{key}`: {job}");
    }
    // The rows status counts are the rows in the output.
    let (rows, _) = read_output(&output);
    assert_eq!(rows.len() as u64, done * SHARD_ROWS);

    // The table names its columns: done/total shards and rows, failed shards, retries.
    let out = run(&["status", &id, "--coordinator", &service.url]);
    let table = stdout(&out);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "JOB",
            "KIND",
            "STATE",
            "SHARDS",
            "ROWS",
            "DOCS/S",
            "ETA",
            "FAILED-SHARDS",
            "RETRIES"
        ]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[2], row[3], row[4], row[7], row[8]),
        (
            id.as_str(),
            "cancelled",
            format!("{done}/{SHARDS}").as_str(),
            format!("{}/{}", done * SHARD_ROWS, SHARD_ROWS * SHARDS).as_str(),
            "0",
            "0"
        ),
        "{table}"
    );

    // Cancelling again says it had ended.
    let out = run(&["cancel", &id, "--coordinator", &service.url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already ended (cancelled)"));
}

#[test]
fn device_errors_suggest_each_commands_own_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    // cuda:99 exists nowhere: without a GPU the hint is `cpu`, with some it is `cuda:0`.
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "encode",
                "--input",
                "examples/corpus",
                "--output",
                out_dir.to_str().unwrap(),
                "--devices",
                "cuda:99",
            ],
            "--devices",
        ),
        (&["encode-text", "--device", "cuda:99"], "--device"),
        (
            &[
                "eval",
                "--beir",
                "tests/fixtures/beir-small",
                "--device",
                "cuda:99",
            ],
            "--device",
        ),
        (
            &[
                "worker",
                "--coordinator",
                "http://127.0.0.1:9",
                "--device",
                "cuda:99",
            ],
            "--device",
        ),
    ];
    for (args, flag) in cases {
        let out = sparq_cmd(args).stdin(Stdio::null()).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("device cuda:99")
                && (err.contains(&format!("use {flag} cpu"))
                    || err.contains(&format!("use {flag} cuda:0"))),
            "{args:?}: {err}"
        );
        if flag == "--device" {
            assert!(!err.contains("--devices"), "{args:?}: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn status_to_a_reader_that_went_away_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let (service, _) = serve(&tmp.path().join("state.db"));
    for args in [&["status"][..], &["status", "--json"][..]] {
        let mut child = sparq_cmd(args)
            .args(["--coordinator", &service.url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}
