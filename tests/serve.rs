//! The batch-job service with real processes: `sparq serve`, `sparq worker`s and `sparq submit`
//! on loopback, with the S3 test server. A worker killed with SIGKILL and a coordinator killed
//! and restarted mid-job leave complete, exactly-once outputs; bad requests get the right
//! status and message; 200 jobs submitted at once all run, each exactly once.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::corpus::*;
use common::process::*;
use common::s3::{endpoint, read_parts, upload, BUCKET};
use common::service::*;
use common::*;
use object_store::ObjectStore;
use reqwest::blocking::Client;
use serde_json::{json, Value};
use sparq::serve::api::JobView;

fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testkey".into()),
        ("AWS_SECRET_ACCESS_KEY", "testsecret".into()),
        ("AWS_ENDPOINT_URL", endpoint.into()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Uploads a corpus of ids `0..rows` (two files) under a fresh prefix; returns the prefix.
fn s3_corpus(endpoint: &str, rows: i64) -> (Arc<dyn ObjectStore>, String) {
    let s3: Arc<dyn ObjectStore> = Arc::new(common::s3::store(endpoint));
    let job = format!("serve-{}", uuid::Uuid::new_v4());
    let dir = tempfile::tempdir().unwrap();
    let half = rows / 2;
    write_corpus(&dir.path().join("a.parquet"), 0..half, 50);
    write_corpus(&dir.path().join("b.parquet"), half..rows, 50);
    let rt = runtime();
    for f in ["a.parquet", "b.parquet"] {
        rt.block_on(upload(&s3, &dir.path().join(f), &format!("{job}/in/{f}")));
    }
    (s3, job)
}

fn encode_spec(input: &str, output: &str, shard_rows: u64) -> Value {
    json!({
        "kind": "encode",
        "input": input,
        "output": output,
        "shard_rows": shard_rows,
        "lease_timeout": 5,
    })
}

/// Checks an S3 output: `_SUCCESS`, every id once, vectors equal to the reference.
fn check_s3_output(s3: &Arc<dyn ObjectStore>, prefix: &str, rows: i64) {
    let (got, names) = runtime().block_on(read_parts(s3, prefix));
    assert!(names.contains(&"_SUCCESS".to_string()), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.contains(".tmp") || n.starts_with('.')),
        "leftovers: {names:?}"
    );
    let ids: Vec<i64> = (0..rows).collect();
    assert_exactly_once(&got, &reference_vectors(&ids));
}

/// Waits until `n` shards of the job are done.
fn wait_done_shards(service: &Service, id: &str, n: u64) {
    wait_for("shards to be committed", || {
        service.job(id).shards_done >= n
    });
}

#[test]
fn two_workers_on_s3_survive_a_worker_killed_mid_job() {
    let Some(endpoint) = endpoint() else { return };
    let env = s3_env(&endpoint);
    let (s3, job) = s3_corpus(&endpoint, 1600);
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &pairs(&env));
    let victim = Worker::start(&service.url, "victim", &pairs(&env));
    let _other = Worker::start(&service.url, "survivor", &pairs(&env));
    let output = format!("{job}/out");
    let id = service.submit(&encode_spec(
        &format!("s3://{BUCKET}/{job}/in/"),
        &format!("s3://{BUCKET}/{output}"),
        100,
    ));
    // Kill the victim while it holds a lease.
    wait_done_shards(&service, &id, 2);
    wait_for("the victim to hold a lease", || {
        service
            .job(&id)
            .shards
            .iter()
            .any(|s| s.state == "leased" && s.worker.as_deref() == Some("victim"))
    });
    kill9(victim.0.id());
    let job_view = service.wait_final(&id);
    assert_eq!(job_view.state, "succeeded", "{job_view:?}");
    assert_eq!(job_view.shards_done, 16);
    // The victim's shard was leased again after the lease timed out.
    let redone: Vec<_> = job_view.shards.iter().filter(|s| s.attempts > 1).collect();
    assert!(!redone.is_empty(), "no shard was redone: {job_view:?}");
    assert!(
        redone
            .iter()
            .all(|s| s.causes[0].contains("victim lost its lease")),
        "{redone:?}"
    );
    assert_eq!(job_view.summary.as_ref().unwrap()["failed_shards"], 0);
    check_s3_output(&s3, &output, 1600);
}

#[test]
fn a_coordinator_killed_and_restarted_mid_job_finishes_it_exactly_once() {
    let Some(endpoint) = endpoint() else { return };
    let env = s3_env(&endpoint);
    let (s3, job) = s3_corpus(&endpoint, 1600);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let mut service = Service::start(&state, "127.0.0.1:0", &pairs(&env));
    let _workers = [
        Worker::start(&service.url, "w1", &pairs(&env)),
        Worker::start(&service.url, "w2", &pairs(&env)),
    ];
    let first = service.submit(&encode_spec(
        &format!("s3://{BUCKET}/{job}/in/"),
        &format!("s3://{BUCKET}/{job}/out1"),
        100,
    ));
    // A second job queued behind the first survives the restart too.
    let second = service.submit(&encode_spec(
        &format!("s3://{BUCKET}/{job}/in/"),
        &format!("s3://{BUCKET}/{job}/out2"),
        400,
    ));
    wait_done_shards(&service, &first, 3);
    let before = service.job(&first);
    assert!(before.shards_done < before.shards_total, "{before:?}");
    kill9(service.child.id());
    let _ = service.child.wait();
    std::thread::sleep(Duration::from_secs(1));
    let port = service.port().to_string();
    service = Service::start(&state, &format!("127.0.0.1:{port}"), &pairs(&env));
    for (id, out, shards) in [(&first, "out1", 16), (&second, "out2", 4)] {
        let view = service.wait_final(id);
        assert_eq!(view.state, "succeeded", "{view:?}");
        assert_eq!(view.shards_done, shards);
        check_s3_output(&s3, &format!("{job}/{out}"), 1600);
    }
    // Shards committed before the kill were not encoded again.
    let after = service.job(&first);
    let redone = after.shards.iter().filter(|s| s.attempts > 1).count() as u64;
    assert!(
        redone <= 2,
        "at most the two shards in flight may be redone: {after:?}"
    );
}

fn status_of(url: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let client = Client::new();
    let mut r = match method {
        "GET" => client.get(format!("{url}{path}")),
        _ => client.post(format!("{url}{path}")).body(body.to_string()),
    };
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn unauthorized_and_malformed_requests_get_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    // A public address without a token is refused.
    let out = sparq_cmd(&["serve", "--listen", "0.0.0.0:0", "--state"])
        .arg(dir.path().join("x.db"))
        .env_remove("SPARQ_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without a token"),
        "{err}"
    );

    let token = "s3cret-token";
    let service = Service::start(
        &dir.path().join("state.db"),
        "127.0.0.1:0",
        &[("SPARQ_TOKEN", token)],
    );
    let url = &service.url;
    let (code, _) = status_of(url, "GET", "/healthz", None, "");
    assert_eq!(code, 200, "health needs no token");
    let (code, body) = status_of(url, "GET", "/v1/jobs", None, "");
    assert_eq!(code, 401);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("missing bearer token"));
    let (code, body) = status_of(url, "GET", "/v1/jobs", Some("s3cret-tokem"), "");
    assert_eq!(code, 401);
    assert!(body["error"].as_str().unwrap().contains("wrong token"));
    let (code, _) = status_of(url, "POST", "/v1/leases", Some("nope"), "{}");
    assert_eq!(code, 401, "workers need the token too");
    let t = Some(token);
    let (code, body) = status_of(url, "POST", "/v1/jobs", t, "{not json");
    assert_eq!(code, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("malformed request body"));
    let cases = [
        (json!(["a"]), "is a JSON object"),
        (
            json!({"kind": "encode", "input": "examples/corpus"}),
            "`output`",
        ),
        (
            json!({"kind": "encode", "input": "a", "output": "b", "shard_rowz": 5}),
            "unknown key `shard_rowz`",
        ),
        (
            json!({"kind": "encode", "input": "a", "output": "b", "shard_rows": "many"}),
            "shard_rows",
        ),
        (
            json!({"kind": "encode", "input": "/etc", "output": "b"}),
            "outside the folders",
        ),
        (
            json!({"kind": "encode", "input": "a", "output": "https://x/y"}),
            "not supported",
        ),
        (
            json!({"kind": "deploy", "command": "rm -rf /"}),
            "unknown kind",
        ),
        (
            json!({"kind": "train", "train_data": "a", "output": "b", "device": "cuda:0"}),
            "not a setting",
        ),
    ];
    for (spec, message) in cases {
        let (code, body) = status_of(url, "POST", "/v1/jobs", t, &spec.to_string());
        assert_eq!(code, 400, "{spec}");
        let e = body["error"].as_str().unwrap();
        assert!(e.contains(message), "{spec}: {e}");
    }
    let huge = json!({"kind": "encode", "input": "a".repeat(400_000), "output": "b"});
    let (code, _) = status_of(url, "POST", "/v1/jobs", t, &huge.to_string());
    assert_eq!(code, 413);
    let (code, body) = status_of(url, "GET", "/v1/jobs/j-404", t, "");
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("no job `j-404`"));
    let (code, _) = status_of(url, "POST", "/v1/jobs/j-404/cancel", t, "");
    assert_eq!(code, 404);
    let (code, _) = status_of(url, "POST", "/v1/leases/zzz/heartbeat", t, "{\"rows\": -1}");
    assert_eq!(code, 400);
    let (code, body) = status_of(
        url,
        "POST",
        "/v1/leases/zzz/heartbeat",
        t,
        "{\"rows\": 1, \"tokens\": 1}",
    );
    assert_eq!(
        (code, body["keep"].clone()),
        (200, json!(false)),
        "an unknown lease is told to stop"
    );

    // The CLI says the same, with the token from the environment.
    let spec = dir.path().join("bad.toml");
    std::fs::write(
        &spec,
        "kind = \"encode\"\ninput = \"examples/corpus\"\noutput = \"x\"\nbatch_tokenz = 1\n",
    )
    .unwrap();
    let out = sparq_cmd(&["submit", "--coordinator", url])
        .arg(&spec)
        .env("SPARQ_TOKEN", token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml")
            && err.contains("400")
            && err.contains("unknown key `batch_tokenz`"),
        "{err}"
    );
    let out = sparq_cmd(&["status", "--coordinator", url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = sparq_cmd(&["status", "--coordinator", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the coordinator"));
}

/// Writes an encode job spec (TOML) reading `input` into `output`, with `extra` lines.
fn write_encode_spec(path: &Path, input: &Path, output: &Path, extra: &str) {
    std::fs::write(
        path,
        format!(
            "kind = \"encode\"\ninput = \"{}\"\noutput = \"{}\"\n{extra}\n",
            input.display(),
            output.display()
        ),
    )
    .unwrap();
}

/// `sparq submit --wait SPEC` with `extra` flags, run to its end.
fn submit_wait(url: &str, spec: &Path, extra: &[&str]) -> std::process::Output {
    sparq_cmd(&["submit", "--wait", "--coordinator", url])
        .args(extra)
        .arg(spec)
        .output()
        .unwrap()
}

/// The summary line of a `submit --wait` that succeeded.
fn succeeded_summary(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn submit_wait_status_cancel_and_a_train_job_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus.join("a.parquet"), 0..30, 10);
    write_corpus(&corpus.join("b.parquet"), 30..60, 10);
    let service = Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &[]);
    let url = service.url.clone();
    // No worker yet: a job waits; cancelling it ends it, and `submit --wait` exits 3.
    let spec = dir.path().join("encode.toml");
    let out_dir = dir.path().join("out");
    write_encode_spec(&spec, &corpus, &out_dir, "shard_rows = 10");
    let mut waiting = sparq_cmd(&["submit", "--wait", "--coordinator", &url])
        .arg(&spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = String::new();
    BufReader::new(waiting.stdout.as_mut().unwrap())
        .read_line(&mut id)
        .unwrap();
    let id = id.trim().to_string();
    wait_for("the job to be planned", || {
        service.job(&id).state == "running"
    });
    let out = sparq_cmd(&["cancel", &id, "--coordinator", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(waiting.wait().unwrap().code(), Some(3));
    let out = sparq_cmd(&["status", &id, "--wait", "--coordinator", &url])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "status --wait gives the job's exit code"
    );
    let out = sparq_cmd(&["cancel", &id, "--coordinator", &url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already ended (cancelled)"));

    // A bad column fails at planning, naming the file and column.
    let bad = dir.path().join("bad.toml");
    write_encode_spec(
        &bad,
        &corpus,
        &dir.path().join("bad-out"),
        "text_column = \"body\"",
    );
    let out = submit_wait(&url, &bad, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a.parquet") && err.contains("no column `body`"),
        "{err}"
    );

    // With a worker, the same spec (new output) runs to the end and `--wait` exits 0.
    let _worker = Worker::start(&url, "w", &[]);
    write_encode_spec(&spec, &corpus, &dir.path().join("out2"), "shard_rows = 10");
    let summary = succeeded_summary(&submit_wait(&url, &spec, &[]));
    assert_eq!(summary["docs"], 60);
    let (rows, _) = read_output(&dir.path().join("out2"));
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(ids, (0..60).collect::<Vec<_>>());

    // A named submission is exactly once: retried, it finds the first job.
    let named = |spec: &Path, name: &str| submit_wait(&url, spec, &["--name", name]);
    let first = named(&spec, "nightly-1");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = named(&spec, "nightly-1");
    assert!(again.status.success());
    let first_id = String::from_utf8_lossy(&first.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout)
            .lines()
            .next()
            .unwrap(),
        first_id
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("was submitted before"));
    let conflict = named(&bad, "nightly-1");
    assert_eq!(conflict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&conflict.stderr).contains("409"));
    assert!(String::from_utf8_lossy(&conflict.stderr).contains("exists with another spec"));
    let ugly = named(&spec, "no/slashes");
    assert!(String::from_utf8_lossy(&ugly.stderr).contains("400"));
    let out = sparq_cmd(&["status", "--coordinator", &url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&first_id)
            && table.contains(&id)
            && table.contains("cancelled")
            && table.contains("succeeded")
            && table.contains("6/6"),
        "{table}"
    );

    // A train job: the worker runs `sparq train` and reports its summary.
    let train = dir.path().join("train.toml");
    let train_out = dir.path().join("trained");
    std::fs::write(
        &train,
        format!(
            "kind = \"train\"\ntrain_data = \"examples/pairs/pairs.parquet\"\noutput = \"{}\"\nmax_steps = 3\nbatch_size = 4\nsave_steps = 2\nlogging_steps = 1\n",
            train_out.display()
        ),
    )
    .unwrap();
    let summary = succeeded_summary(&submit_wait(&url, &train, &[]));
    assert_eq!(summary["steps"], 3);
    assert!(train_out.join("model.safetensors").is_file());

    // Every job has ended: a worker with --idle-exit leaves after that long without work.
    let mut idle = sparq_cmd(&["worker", "--coordinator", &url, "--idle-exit", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    wait_for("the idle worker to exit", || {
        idle.try_wait().unwrap().is_some()
    });
    assert!(started.elapsed() < Duration::from_secs(30));
    let out = idle.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no work for 1s; exiting"));
}

#[test]
fn two_hundred_jobs_submitted_at_once_each_run_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in/docs.parquet");
    write_corpus(&input, 0..12, 12);
    let service = Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &[]);
    let _workers = [
        Worker::start(&service.url, "w1", &[]),
        Worker::start(&service.url, "w2", &[]),
    ];
    let url = service.url.clone();
    let submitters: Vec<_> = (0..4)
        .map(|t| {
            let (url, dir) = (url.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || {
                let client = http();
                (0..50)
                    .map(|i| {
                        let spec = json!({
                            "kind": "encode",
                            "input": dir.join("in").display().to_string(),
                            "output": dir.join(format!("out/{t}-{i}")).display().to_string(),
                        });
                        let r = client
                            .post(format!("{url}/v1/jobs"))
                            .json(&spec)
                            .send()
                            .unwrap();
                        assert_eq!(r.status(), 201);
                        r.json::<Value>().unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids: Vec<String> = submitters
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "job ids are unique");
    wait_for("every job to end", || {
        let all: Vec<JobView> =
            serde_json::from_value(get(&url, "/v1/jobs", None)["jobs"].take()).unwrap();
        all.iter().all(|j| sparq::serve::api::is_final(&j.state))
    });
    let all: Vec<JobView> =
        serde_json::from_value(get(&url, "/v1/jobs", None)["jobs"].take()).unwrap();
    assert_eq!(all.len(), 200, "no job lost");
    for j in &all {
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(
            (j.shards_total, j.attempts, j.retries),
            (1, 1, 0),
            "ran once: {j:?}"
        );
        assert_eq!(j.summary.as_ref().unwrap()["docs"], 12);
    }
    for t in 0..4 {
        for i in 0..50 {
            let out = dir.path().join(format!("out/{t}-{i}"));
            let (rows, names) = read_output(&out);
            assert_eq!(names.len(), 1);
            let mut got: Vec<i64> = rows.iter().map(|r| r.0).collect();
            got.sort();
            assert_eq!(got, (0..12).collect::<Vec<_>>(), "{}", out.display());
            assert!(out.join("_SUCCESS").is_file());
        }
    }
    let _ = std::io::stderr().flush();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The README's multi-machine block, run by bash as written, in a copy of what it uses (the
/// job spec, the sample corpus, the bundled model, and the binary where `make demo` puts it).
#[test]
fn readme_several_machines_section_runs_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("## Several machines")
        .nth(1)
        .expect("README has the section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    copy_tree(&root().join("jobs"), &d.join("jobs"));
    copy_tree(&root().join("examples/corpus"), &d.join("examples/corpus"));
    copy_tree(&tiny_model(), &d.join("models/splade-bert-tiny-nq"));
    std::fs::create_dir_all(d.join("target/release")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sparq"), d.join("target/release/sparq"))
        .unwrap();
    let out = Command::new("bash")
        .args(["-e", "-c", block])
        .current_dir(d)
        .env_remove("SPARQ_TOKEN")
        .env_remove("SPARQ_COORDINATOR")
        .env_remove("SPARQ_MODEL")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("succeeded"),
        "status shows the job: {stdout}"
    );
    let output = d.join("runs/encode-local");
    assert!(output.join("_SUCCESS").is_file(), "{stderr}");
    let out = sparq_cmd(&["inspect", "--json"])
        .arg(&output)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["rows"].as_u64(), report["files"].as_u64()),
        (Some(60), Some(6))
    );
    assert_eq!(report["null_vectors"], 0);
}

/// Every job spec in jobs/ passes the service's own checks (keys, types, paths).
#[test]
fn the_example_job_specs_pass_the_services_checks() {
    use sparq::serve::spec::{parse_spec, JobSpec, Roots};
    let repo = root().canonicalize().unwrap();
    // The compose setup's bucket, as docker-compose.yml allows it.
    let roots = Roots::new(std::slice::from_ref(&repo), repo.clone(), tiny_model())
        .and_then(|r| r.with_s3(&["s3://sparq".to_string()]))
        .unwrap();
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(repo.join("jobs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let doc = sparq::serve::client::read_spec(&path).unwrap();
        let spec = parse_spec(&doc, &roots).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let JobSpec::Encode { args, .. } = &spec {
            assert!(
                args.model.join("config.json").is_file(),
                "{}",
                path.display()
            );
        }
        kinds.push(spec.kind().as_str());
    }
    kinds.sort();
    assert!(
        kinds.contains(&"encode") && kinds.contains(&"train"),
        "{kinds:?}"
    );
    assert!(kinds.len() >= 4);
}
