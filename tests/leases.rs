//! Leases as a hostile or failing coordinator hands them out, with the real `sparq worker` and
//! `sparq train`: lease ids that try to name a path, a worker killed while its trainer runs, a
//! lease that expires while training, and two trainers on one checkpoint folder.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{children_of, kill9};
use common::service::sparq_cmd;
use serde_json::{json, Value};
use sparq::encode::settings::{EncodeSettings, RowTask};

/// Answers one request: (status, JSON body or none).
type Handler = dyn Fn(&str, &str, &Value) -> (u16, Option<Value>) + Send + Sync;

/// A coordinator played by the test: a loopback HTTP server that records every request and
/// answers through `handler`.
struct FakeCoordinator {
    url: String,
    requests: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl FakeCoordinator {
    fn start(
        handler: impl Fn(&str, &str, &Value) -> (u16, Option<Value>) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, seen) = (handler.clone(), seen.clone());
                std::thread::spawn(move || serve_one(stream, &*handler, &seen));
            }
        });
        Self { url, requests }
    }

    fn requests(&self) -> Vec<(String, String, Value)> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_one(mut stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<(String, String, Value)>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock()
        .unwrap()
        .push((method.clone(), path.clone(), body.clone()));
    let (status, answer) = handler(&method, &path, &body);
    let text = answer.map(|a| a.to_string()).unwrap_or_default();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
}

/// A train lease `lease` for a run of `steps` steps into `output`.
fn train_grant(lease: &str, output: &Path, steps: u64, timeout_s: u64) -> Value {
    json!({
        "lease": lease,
        "job": "job-1",
        "attempt": 1,
        "lease_timeout_s": timeout_s,
        "heartbeat_s": 1,
        "work": {"kind": "train", "spec": {
            "kind": "train",
            "train_data": common::root().join("examples/pairs/pairs.parquet"),
            "output": output.display().to_string(),
            "max_steps": steps,
            "batch_size": 4,
            "logging_steps": 1,
            "save_steps": 1000000,
        }},
    })
}

/// Grants `grant` once, then has no work; answers reports with keep.
fn grant_once(grant: Value) -> impl Fn(&str, &str, &Value) -> (u16, Option<Value>) {
    let granted = Mutex::new(false);
    move |_, path, _| {
        if path == "/healthz" {
            return (200, Some(json!({"unfinished_jobs": 0})));
        }
        if path == "/v1/leases" {
            let mut g = granted.lock().unwrap();
            if *g {
                return (204, None);
            }
            *g = true;
            return (200, Some(grant.clone()));
        }
        (200, Some(json!({"keep": true})))
    }
}

fn worker(url: &str, tmp: &Path) -> Command {
    let mut cmd = sparq_cmd(&[
        "worker",
        "--coordinator",
        url,
        "--threads",
        "1",
        "--poll",
        "0.1",
        "--name",
        "w",
    ]);
    cmd.env("TMPDIR", tmp).env("RAYON_NUM_THREADS", "1");
    cmd
}

/// Whether process `pid` is gone (or a zombie, dead and unreaped).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
    }
}

fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The trainer child of `worker` once it has made `steps` steps (seen in heartbeats).
fn trainer_of(worker: u32, coordinator: &FakeCoordinator, steps: u64) -> u32 {
    wait_until("the trainer's steps in a heartbeat", 180, || {
        coordinator.requests().iter().any(|(_, p, b)| {
            p.ends_with("/heartbeat") && b["rows"].as_u64().is_some_and(|r| r >= steps)
        })
    });
    let children = children_of(worker);
    assert_eq!(children.len(), 1, "one trainer child: {children:?}");
    children[0]
}

#[test]
fn a_lease_id_naming_a_path_is_refused_and_nothing_outside_the_scratch_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep.txt"), "precious").unwrap();
    // `$TMPDIR/sparq-worker-<lease>` is the victim for this lease id.
    let lease = "/../../victim";
    let mut grant = train_grant(lease, &dir.path().join("out"), 2, 60);
    grant["work"]["spec"]["train_data"] = json!("does-not-exist.parquet");
    let coordinator = FakeCoordinator::start(grant_once(grant));
    let out: Output = worker(&coordinator.url, &tmp)
        .args(["--idle-exit", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        std::fs::read_to_string(victim.join("keep.txt"))
            .ok()
            .as_deref(),
        Some("precious"),
        "a folder outside the worker's scratch was touched; stderr: {stderr}"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1, "{stderr}");
    assert!(!out.status.success(), "the worker went on: {stderr}");
    assert!(
        stderr.contains("lease id \"/../../victim\"")
            && stderr.contains("letters, digits")
            && stderr.contains(&coordinator.url),
        "{stderr}"
    );
    // The id was never used in a report either.
    let paths: Vec<String> = coordinator.requests().into_iter().map(|r| r.1).collect();
    assert_eq!(paths, vec!["/v1/leases"], "{stderr}");
}

#[test]
fn a_worker_killed_while_training_takes_its_trainer_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let grant = train_grant("lease1", &dir.path().join("out"), 100_000, 60);
    let coordinator = FakeCoordinator::start(grant_once(grant));
    let mut w = worker(&coordinator.url, dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let trainer = trainer_of(w.id(), &coordinator, 2);
    kill9(w.id());
    let _ = w.wait();
    let gone = Instant::now() + Duration::from_secs(30);
    while !dead(trainer) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    let survived = !dead(trainer);
    if survived {
        kill9(trainer);
    }
    assert!(!survived, "the trainer outlived its worker by 30 s");
}

#[test]
fn a_lease_that_expires_while_training_kills_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let grant = train_grant("lease2", &dir.path().join("out"), 100_000, 3);
    let granted = grant_once(grant);
    // The coordinator renews the lease until the run has made two steps, then cannot be
    // reached (503): after the lease timeout the lease is another worker's.
    let coordinator = FakeCoordinator::start(move |method, path, body| {
        if path.ends_with("/heartbeat") && body["rows"].as_u64().is_some_and(|r| r >= 2) {
            return (503, Some(json!({"error": "unavailable"})));
        }
        granted(method, path, body)
    });
    let mut w = worker(&coordinator.url, dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let trainer = trainer_of(w.id(), &coordinator, 2);
    let gone = Instant::now() + Duration::from_secs(30);
    while !dead(trainer) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    let survived = !dead(trainer);
    if survived {
        kill9(trainer);
        kill9(w.id());
        let _ = w.wait();
        panic!("the trainer ran on 30 s after its 3 s lease could not be renewed");
    }
    wait_until("the failed report", 30, || {
        coordinator
            .requests()
            .iter()
            .any(|(_, p, _)| p.ends_with("/failed"))
    });
    let worker_alive = !dead(w.id());
    kill9(w.id());
    let _ = w.wait();
    assert!(worker_alive, "the worker itself stays to take other work");
    let failed: Vec<Value> = coordinator
        .requests()
        .into_iter()
        .filter(|(_, p, _)| p == "/v1/leases/lease2/failed")
        .map(|r| r.2)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("sparq train"),
        "{failed:?}"
    );
    assert!(failed[0]["retryable"] == true, "{failed:?}");
}

/// `sparq train` on the example pairs into `out`, `steps` steps, a checkpoint every 2.
fn train(out: &Path, steps: u64, extra: &[&str]) -> Output {
    sparq_cmd(&[
        "train",
        "--train-data",
        "examples/pairs/pairs.parquet",
        "--output",
    ])
    .arg(out)
    .args(["--max-steps", &steps.to_string()])
    .args(["--batch-size", "4", "--threads", "1", "--save-steps", "2"])
    .args(extra)
    .env("RAYON_NUM_THREADS", "1")
    .output()
    .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Inode and trainer state of a checkpoint folder: what a replacement would change.
fn identity(dir: &Path) -> (u64, Vec<u8>) {
    use std::os::unix::fs::MetadataExt;
    (
        std::fs::metadata(dir).unwrap().ino(),
        std::fs::read(dir.join("trainer_state.json")).unwrap(),
    )
}

#[test]
fn a_superseded_attempt_neither_publishes_nor_prunes_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = train(&out, 4, &["--attempt", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let before = identity(&out.join("checkpoint-2"));
    // Attempt 1's lease was lost long ago; its trainer resumes late, beside attempt 2's output.
    let stale = train(
        &out,
        8,
        &["--attempt", "1", "--resume", "--save-total-limit", "1"],
    );
    let err = stderr(&stale);
    assert!(!stale.status.success(), "the stale attempt trained: {err}");
    assert!(
        err.contains("attempt 1 of this training job was superseded")
            && err.contains("attempt 2 claimed")
            && err.contains(&out.display().to_string()),
        "{err}"
    );
    assert_eq!(identity(&out.join("checkpoint-2")), before);
    assert!(!out.join("checkpoint-4").exists() && !out.join("checkpoint-6").exists());
    // A newer attempt goes on from attempt 2's checkpoint.
    let next = train(&out, 8, &["--attempt", "3", "--resume"]);
    assert!(next.status.success(), "{}", stderr(&next));
    assert!(out.join("checkpoint-6/_COMPLETE").is_file());
}

#[test]
fn a_checkpoint_folder_another_writer_holds_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = train(&out, 4, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    // Another writer is publishing checkpoint-4 (its marker not yet written).
    std::fs::create_dir_all(out.join("checkpoint-4")).unwrap();
    std::fs::write(out.join("checkpoint-4/model.safetensors"), "theirs").unwrap();
    let second = train(&out, 8, &["--resume"]);
    let err = stderr(&second);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("already holds checkpoint-4")
            && err.contains("never replaced")
            && err.contains("--output"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("checkpoint-4/model.safetensors")).unwrap(),
        "theirs"
    );
    // Its own staging folder went with the error.
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn prune_removes_only_staging_folders_of_dead_writers_on_this_host() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let mut exited = Command::new("true").spawn().unwrap();
    let dead_pid = exited.id();
    exited.wait().unwrap();
    let live = format!(".checkpoint-9.partial-{}@{host}@aa", std::process::id());
    let foreign = ".checkpoint-9.partial-1@another-host@bb".to_string();
    let dead_one = format!(".checkpoint-9.partial-{dead_pid}@{host}@cc");
    for name in [&live, &foreign, &dead_one] {
        std::fs::create_dir_all(out.join(name)).unwrap();
        std::fs::write(out.join(name).join("optimizer.safetensors"), "half").unwrap();
    }
    let run = train(&out, 4, &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        out.join(&live).is_dir(),
        "a live writer's staging was pruned"
    );
    assert!(
        out.join(&foreign).is_dir(),
        "another host's staging was pruned"
    );
    assert!(
        !out.join(&dead_one).exists(),
        "a dead writer's staging stayed"
    );
}

/// (id, query, text) rows in one row group.
fn write_score_pairs(path: &Path, rows: i64) {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("query", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let queries: Vec<String> = (0..rows).map(|i| format!("what is {i}")).collect();
    let texts: Vec<Option<String>> = (0..rows).map(common::corpus::text_for).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from((0..rows).collect::<Vec<_>>())) as ArrayRef,
            Arc::new(StringArray::from(queries)),
            Arc::new(StringArray::from(texts)),
        ],
    )
    .unwrap();
    common::corpus::write_batch(path, batch, rows as usize);
}

fn read_batches(path: &Path) -> Vec<arrow::array::RecordBatch> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_remote_worker_runs_a_score_lease_and_keeps_its_shard_report() {
    use sparq::encode::shard::{Segment, ShardSpec};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in/pairs.parquet");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    write_score_pairs(&input, 6);
    let model = common::root().join("tests/fixtures/models/cross-encoder-tiny");
    // What `sparq score` writes for this input, to compare with.
    let reference = dir.path().join("reference");
    let local = sparq_cmd(&["score", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(input.parent().unwrap())
        .arg("--output")
        .arg(&reference)
        .args(["--threads", "1"])
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", stderr(&local));
    let part = "part-00000-000000000000.parquet";
    let output = dir.path().join("remote");
    let settings = shard_settings(
        model.clone(),
        &output,
        RowTask::Score {
            query_column: "query".into(),
            batch_size: 32,
        },
    );
    let shard = ShardSpec {
        id: 0,
        file: input.display().to_string(),
        file_size: std::fs::metadata(&input).unwrap().len(),
        file_version: None,
        first_row: 0,
        rows: 6,
        segments: vec![Segment {
            row_group: 0,
            skip: 0,
            rows: 6,
        }],
        part: part.into(),
        text: None,
    };
    let grant = json!({
        "lease": "score-lease",
        "job": "job-2",
        "attempt": 1,
        "lease_timeout_s": 60,
        "heartbeat_s": 1,
        "work": {"kind": "encode", "settings": settings, "shard": shard},
    });
    let coordinator = FakeCoordinator::start(grant_once(grant));
    let out = worker(&coordinator.url, dir.path())
        .args(["--idle-exit", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Vec<Value> = coordinator
        .requests()
        .into_iter()
        .filter(|(_, p, _)| p.starts_with("/v1/leases/score-lease/"))
        .map(|(_, p, b)| json!({"path": p, "body": b}))
        .collect();
    let done = reports
        .iter()
        .find(|r| r["path"] == "/v1/leases/score-lease/done")
        .unwrap_or_else(|| panic!("no done report: {reports:?}\n{}", stderr(&out)));
    assert_eq!(done["body"]["report"]["rows"], 6, "{done}");
    assert_eq!(
        read_batches(&output.join(part)),
        read_batches(&reference.join(part)),
        "the remote worker's scores differ from `sparq score`'s"
    );
    let kept: Value = serde_json::from_slice(
        &std::fs::read(output.join("_reports").join(format!("{part}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["rows"], 6, "{kept}");
    assert_eq!(kept["shard"], 0, "{kept}");
}

#[test]
fn heartbeats_of_an_encode_lease_carry_a_progress_counter_that_moves() {
    use sparq::encode::shard::{Segment, ShardSpec};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in/a.parquet");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    let (rows, group) = (3000u64, 250u64);
    common::corpus::write_corpus(&input, 0..rows as i64, group as usize);
    let output = dir.path().join("out");
    let settings = shard_settings(common::tiny_model(), &output, Default::default());
    let shard = ShardSpec {
        id: 0,
        file: input.display().to_string(),
        file_size: std::fs::metadata(&input).unwrap().len(),
        file_version: None,
        first_row: 0,
        rows,
        segments: (0..(rows / group) as usize)
            .map(|row_group| Segment {
                row_group,
                skip: 0,
                rows: group,
            })
            .collect(),
        part: "part-00000-000000000000.parquet".into(),
        text: None,
    };
    let grant = json!({
        "lease": "encode-lease",
        "job": "job-3",
        "attempt": 1,
        "lease_timeout_s": 60,
        "heartbeat_s": 1,
        "work": {"kind": "encode", "settings": settings, "shard": shard},
    });
    let coordinator = FakeCoordinator::start(grant_once(grant));
    let out = worker(&coordinator.url, dir.path())
        .args(["--idle-exit", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let beats: Vec<Value> = coordinator
        .requests()
        .into_iter()
        .filter(|(_, p, _)| p == "/v1/leases/encode-lease/heartbeat")
        .map(|r| r.2)
        .collect();
    assert!(!beats.is_empty(), "no heartbeat: {}", stderr(&out));
    let progress: Vec<u64> = beats
        .iter()
        .map(|b| {
            b["progress"]
                .as_u64()
                .unwrap_or_else(|| panic!("a heartbeat without `progress`: {b}"))
        })
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {progress:?}"
    );
    assert!(progress.last().is_some_and(|&p| p > 0), "{progress:?}");
    assert!(output.join("part-00000-000000000000.parquet").is_file());
}

/// The settings of a one-shard lease writing `output` (f32, `id`/`text` columns).
fn shard_settings(model: PathBuf, output: &Path, task: RowTask) -> EncodeSettings {
    EncodeSettings {
        model,
        dtype: sparq::model::Dtype::F32,
        batch_tokens: None,
        max_active_dims: None,
        id_column: "id".into(),
        text_column: "text".into(),
        keep_columns: Vec::new(),
        title_column: None,
        query: false,
        long_docs: Default::default(),
        window_stride: 0,
        output: output.display().to_string(),
        allowed_roots: Default::default(),
        task,
        shard_reports: false,
        lock_job: None,
        max_part_bytes: None,
        vectors: Default::default(),
    }
}
