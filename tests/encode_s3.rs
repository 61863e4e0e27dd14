//! `sparq encode` against a real S3 server (SeaweedFS on 127.0.0.1, started by
//! `scripts/s3-test-server.sh`, which `make test` runs): S3 in and out, exactly once,
//! resume, kill -9 of a worker, the create-once commit under races, and failing fast.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::corpus::*;
use common::process::*;
use common::*;

use object_store::ObjectStore;
use sparq::io::{CommitOutcome, Committer, StoreUrl};

use common::s3::{endpoint, read_parts, upload, BUCKET};

fn set_env(endpoint: &str) {
    // Every test sets the same values, so concurrent tests agree.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testkey");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testsecret");
    std::env::set_var("AWS_ENDPOINT_URL", endpoint);
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_REGION", "us-east-1");
}

fn store(endpoint: &str) -> Arc<dyn ObjectStore> {
    Arc::new(common::s3::store(endpoint))
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4())
}

fn sparq(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL").args(args);
    c
}

fn summary(out: &Output) -> serde_json::Value {
    serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("summary line"),
    )
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn s3_to_s3_with_two_workers_exactly_once_resumes_and_survives_a_worker_kill() {
    let Some(endpoint) = endpoint() else { return };
    set_env(&endpoint);
    let rt = runtime();
    let s3 = store(&endpoint);
    let job = unique("job");
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("a.parquet"), 0..1200, 100);
    write_corpus(&dir.path().join("b.parquet"), 1200..2000, 100);
    rt.block_on(upload(
        &s3,
        &dir.path().join("a.parquet"),
        &format!("{job}/in/a.parquet"),
    ));
    rt.block_on(upload(
        &s3,
        &dir.path().join("b.parquet"),
        &format!("{job}/in/b.parquet"),
    ));
    let input = format!("s3://{BUCKET}/{job}/in/");
    let output = format!("s3://{BUCKET}/{job}/out");
    let args = [
        "encode",
        "--input",
        &input,
        "--output",
        &output,
        "--workers",
        "2",
        "--shard-rows",
        "200",
        "--threads",
        "1",
    ];
    let child = sparq(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill a worker once the first part is committed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, names) = rt.block_on(read_parts(&s3, &format!("{job}/out")));
        if names.iter().any(|n| n.starts_with("part-")) {
            break;
        }
        assert!(Instant::now() < deadline, "no part committed");
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(w) = children_of(child.id()).first() {
        kill9(*w);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rows, names) = rt.block_on(read_parts(&s3, &format!("{job}/out")));
    assert!(
        names.contains(&"_SUCCESS".to_string()) && names.contains(&"_manifest.json".to_string()),
        "{names:?}"
    );
    assert_eq!(names.iter().filter(|n| n.starts_with("part-")).count(), 10);
    // Every id once, null texts included (as empty vectors).
    assert_exactly_once(&rows, &reference_vectors(&(0..2000).collect::<Vec<_>>()));

    let out = sparq(&args).output().unwrap();
    assert!(out.status.success());
    assert_eq!(summary(&out)["skipped_shards"], 10);
    assert_eq!(summary(&out)["docs"], 0);
}

#[test]
fn local_input_to_s3_output_matches_local_output() {
    let Some(endpoint) = endpoint() else { return };
    set_env(&endpoint);
    let rt = runtime();
    let s3 = store(&endpoint);
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("in/a.parquet"), 0..300, 64);
    let job = unique("local-to-s3");
    let output = format!("s3://{BUCKET}/{job}");
    let input = dir.path().join("in");
    let out = sparq(&[
        "encode",
        "--input",
        input.to_str().unwrap(),
        "--output",
        &output,
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rows, _) = rt.block_on(read_parts(&s3, &job));
    // Every id once, null texts included (as empty vectors).
    assert_exactly_once(&rows, &reference_vectors(&(0..300).collect::<Vec<_>>()));
}

#[test]
fn racing_commits_of_one_part_publish_exactly_one() {
    let Some(endpoint) = endpoint() else { return };
    set_env(&endpoint);
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let urls = [
        format!("s3://{BUCKET}/{}", unique("race")),
        dir.path().join("out").to_string_lossy().into_owned(),
    ];
    for url in urls {
        let committer = Committer::new(&StoreUrl::parse(&url).unwrap()).unwrap();
        let outcomes: Vec<CommitOutcome> = rt.block_on(async {
            let tasks: Vec<_> = (0..8u8)
                .map(|n| {
                    let c = committer.clone();
                    tokio::spawn(
                        async move { c.commit("part-x.parquet", vec![n; 1000]).await.unwrap() },
                    )
                })
                .collect();
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .map(|r| r.unwrap())
                .collect()
        });
        let won = outcomes
            .iter()
            .filter(|o| **o == CommitOutcome::Committed)
            .count();
        assert_eq!(won, 1, "{url}: {outcomes:?}");
        let stored = rt
            .block_on(committer.get("part-x.parquet"))
            .unwrap()
            .unwrap();
        assert!(
            stored.iter().all(|b| *b == stored[0]),
            "{url}: the part is one attempt's bytes, whole"
        );
    }
}

#[test]
fn unreachable_endpoint_wrong_credentials_and_missing_bucket_fail_fast() {
    let Some(endpoint) = endpoint() else { return };
    set_env(&endpoint);
    let started = Instant::now();
    let out = sparq(&[
        "encode",
        "--input",
        "examples/corpus",
        "--output",
        "s3://sparq-test/x",
    ])
    .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("s3://sparq-test/x") && err.contains("AWS_ENDPOINT_URL"),
        "{err}"
    );
    let out = sparq(&[
        "encode",
        "--input",
        "examples/corpus",
        "--output",
        "s3://sparq-test/y",
    ])
    .env("AWS_SECRET_ACCESS_KEY", "wrong")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWS_SECRET_ACCESS_KEY"));
    let out = sparq(&[
        "encode",
        "--input",
        "examples/corpus",
        "--output",
        "s3://no-such-bucket/y",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bucket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
