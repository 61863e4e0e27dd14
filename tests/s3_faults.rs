//! S3 that misbehaves: `sparq encode`, `export` and `train` (checkpoints on S3) through a proxy
//! that fails about one request in ten (503 SlowDown, 500 InternalError, connection resets,
//! 5 s stalls, bodies cut in half) write exactly what they write without it, and say how
//! many requests they retried, by cause, consistently with what the proxy injected.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use common::corpus::{text_for, write_batch, write_corpus};
use common::s3::{endpoint, upload, BUCKET};
use common::s3_fault_proxy::{Fault, FaultPlan, FaultProxy};
use common::{root, tiny_model};
use sparq::io::retry::s3_requests;
use sparq::io::{CommitOutcome, Committer, StoreUrl};

const KINDS: [Fault; 5] = [
    Fault::SlowDown,
    Fault::InternalError,
    Fault::Reset,
    Fault::Stall,
    Fault::Truncated,
];

/// A sparq command reaching S3 at `endpoint`, retrying fast and cutting a stall after 2 s
/// (the proxy's stalls last 5 s). The same settings with and without the proxy.
fn sparq(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL").args(args);
    common::s3::env(&mut c, endpoint);
    c.env("SPARQ_S3_STALL_TIMEOUT_SECS", "2")
        .env("SPARQ_S3_BACKOFF_INITIAL_SECS", "0.05")
        .env("SPARQ_S3_BACKOFF_MAX_SECS", "0.5")
        .env("SPARQ_S3_MAX_RETRIES", "10");
    c
}

fn run_ok(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every object under `prefix`, by name relative to it.
fn objects(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> BTreeMap<String, Vec<u8>> {
    rt.block_on(async {
        let listed: Vec<_> = store
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for meta in listed {
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let name = meta.location.as_ref()[prefix.len() + 1..].to_string();
            out.insert(name, bytes.to_vec());
        }
        out
    })
}

/// Asserts the two outputs hold the same objects with the same bytes, except `skip`, and
/// that `faulty` names its own prefix where `clean` names its own (paths inside JSON files).
fn assert_same_objects(
    clean: &BTreeMap<String, Vec<u8>>,
    faulty: &BTreeMap<String, Vec<u8>>,
    renamed: (&str, &str),
    skip: &[&str],
) {
    assert_eq!(
        clean.keys().collect::<Vec<_>>(),
        faulty.keys().collect::<Vec<_>>(),
        "the outputs hold different objects"
    );
    assert!(!clean.is_empty());
    for (name, bytes) in clean {
        // `skip` names an object, an object in any folder (`_COMPLETE`), or a folder (`x/`).
        let skipped = skip.iter().any(|s| {
            name == s || name.ends_with(&format!("/{s}")) || s.ends_with('/') && name.starts_with(s)
        });
        if skipped {
            continue;
        }
        let other = &faulty[name];
        if bytes != other {
            let a = String::from_utf8_lossy(bytes).replace(renamed.0, renamed.1);
            assert!(
                a.as_bytes() == other.as_slice(),
                "{name} differs: {} vs {} bytes",
                bytes.len(),
                other.len()
            );
        }
    }
}

/// The `sparq: N S3 requests, M retried (cause ×n, ...)` line of a run's stderr.
fn reported(out: &Output) -> (u64, u64, BTreeMap<String, u64>) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("sparq: ")
                .filter(|l| l.contains(" S3 requests, "))
        })
        .unwrap_or_else(|| panic!("no S3 line in: {stderr}"));
    let (requests, rest) = line.split_once(" S3 requests, ").unwrap();
    let (retried, causes) = rest.split_once(" retried").unwrap();
    let causes = causes
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(", ")
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (k, v) = c.split_once(" ×").unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    (requests.parse().unwrap(), retried.parse().unwrap(), causes)
}

/// The cause sparq counts a fault under.
fn cause(fault: Fault) -> &'static str {
    match fault {
        Fault::SlowDown => "503",
        Fault::InternalError => "500",
        Fault::Reset => "reset",
        Fault::Stall => "timeout",
        Fault::Truncated => "truncated",
    }
}

/// Asserts faults were injected and that sparq's reports of the runs count every request the
/// proxy saw and at least every fault it injected, by cause. Returns the injected faults.
fn assert_reported(proxy: &FaultProxy, outs: &[&Output], what: &str) -> BTreeMap<Fault, u64> {
    let injected = proxy.injected();
    let total: u64 = injected.values().sum();
    let (mut requests, mut retried, mut causes) = (0, 0, BTreeMap::<String, u64>::new());
    for out in outs {
        let (r, t, c) = reported(out);
        requests += r;
        retried += t;
        for (k, v) in c {
            *causes.entry(k).or_default() += v;
        }
    }
    eprintln!(
        "{what}: proxy saw {} requests, injected {injected:?}; sparq: {requests} requests, \
         {retried} retried {causes:?}",
        proxy.requests()
    );
    assert!(total > 0, "{what}: no fault injected");
    assert_eq!(requests, proxy.requests(), "{what}: requests");
    assert!(
        retried >= total,
        "{what}: {retried} retried < {total} faults"
    );
    for (fault, n) in &injected {
        let counted = causes.get(cause(*fault)).copied().unwrap_or(0);
        assert!(
            counted >= *n,
            "{what}: {fault:?} ×{n} injected, {counted} counted"
        );
    }
    injected
}

/// Removes what an earlier run left under `prefix`: the tests use fixed names, so that the
/// proxy, which draws its faults from the seed and each request's path, fails the same
/// requests every run.
fn clear(rt: &tokio::runtime::Runtime, store: &Arc<dyn ObjectStore>, prefix: &str) {
    rt.block_on(async {
        let listed: Vec<_> = store
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        for meta in listed {
            store.delete(&meta.location).await.unwrap();
        }
    });
}

/// Asserts the proxy injected every kind of fault.
fn assert_every_kind(injected: &BTreeMap<Fault, u64>, what: &str) {
    for kind in KINDS {
        assert!(
            injected.get(&kind).copied().unwrap_or(0) > 0,
            "{what}: no {kind:?}: {injected:?}"
        );
    }
}

#[test]
fn encode_and_export_through_faults_write_what_they_write_without() {
    let Some(endpoint) = endpoint() else { return };
    let started = Instant::now();
    let rt = runtime();
    let store: Arc<dyn ObjectStore> = Arc::new(common::s3::store(&endpoint));
    let job = "s3-faults/encode-export";
    clear(&rt, &store, job);
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("a.parquet"), 0..600, 50);
    write_corpus(&dir.path().join("b.parquet"), 600..1000, 50);
    for f in ["a", "b"] {
        let local = dir.path().join(format!("{f}.parquet"));
        rt.block_on(upload(&store, &local, &format!("{job}/in/{f}.parquet")));
    }
    let input = format!("s3://{BUCKET}/{job}/in/");
    let encode = |endpoint: &str, out: &str| {
        let output = format!("s3://{BUCKET}/{job}/{out}");
        sparq(
            endpoint,
            &[
                "encode",
                "--input",
                &input,
                "--output",
                &output,
                "--workers",
                "2",
                "--shard-rows",
                "100",
                "--threads",
                "1",
            ],
        )
    };
    run_ok(encode(&endpoint, "clean"));
    let proxy = FaultProxy::start(&endpoint, FaultPlan::default());
    let out = run_ok(encode(&proxy.url, "faulty"));
    let clean = objects(&rt, &store, &format!("{job}/clean"));
    let faulty = objects(&rt, &store, &format!("{job}/faulty"));
    assert_eq!(
        clean.keys().filter(|k| k.starts_with("part-")).count(),
        10,
        "{:?}",
        clean.keys()
    );
    // The manifest holds the run's seconds and request counts (its parts must agree), the
    // lock its pid and times.
    assert_same_objects(
        &clean,
        &faulty,
        ("/clean", "/faulty"),
        &["_manifest.json", "_sparq_lock/"],
    );
    let manifest = |o: &BTreeMap<String, Vec<u8>>| {
        let m: serde_json::Value = serde_json::from_slice(&o["_manifest.json"]).unwrap();
        (m["files"].clone(), m["rows"].clone(), m["complete"].clone())
    };
    assert_eq!(manifest(&clean), manifest(&faulty));
    assert_every_kind(&assert_reported(&proxy, &[&out], "encode"), "encode");
    // The summary (stdout and manifest) counts the retries up to the manifest's own upload.
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let (requests, retried, _) = reported(&out);
    let in_summary = |k: &str| summary["s3_requests"][k].as_u64().unwrap();
    assert!(in_summary("requests") <= requests && in_summary("requests") > 0);
    assert!(in_summary("retried") <= retried && in_summary("retried") > 0);
    drop(proxy);

    // Export the clean output to S3, one file per part, with and without faults.
    let export = |endpoint: &str, out: &str| {
        let input = format!("s3://{BUCKET}/{job}/clean");
        let output = format!("s3://{BUCKET}/{job}/{out}/");
        sparq(
            endpoint,
            &[
                "export", "--input", &input, "--output", &output, "--format", "jsonl",
            ],
        )
    };
    run_ok(export(&endpoint, "export-clean"));
    // The seeds are chosen so that each run meets every kind of fault (the same requests
    // fail every run: the faults follow the seed and the requests' paths).
    let proxy = FaultProxy::start(
        &endpoint,
        FaultPlan {
            seed: 4,
            ..FaultPlan::default()
        },
    );
    let out = run_ok(export(&proxy.url, "export-faulty"));
    let clean = objects(&rt, &store, &format!("{job}/export-clean"));
    let faulty = objects(&rt, &store, &format!("{job}/export-faulty"));
    assert_eq!(clean.len(), 10, "{:?}", clean.keys());
    assert_same_objects(&clean, &faulty, ("", ""), &[]);
    assert_every_kind(&assert_reported(&proxy, &[&out], "export"), "export");
    eprintln!("encode and export with faults: {:?}", started.elapsed());
}

/// `n` (query, answer, negative) rows.
fn write_pairs(path: &std::path::Path, n: i64) {
    let column = |f: &dyn Fn(i64) -> String| -> ArrayRef {
        Arc::new(StringArray::from((0..n).map(f).collect::<Vec<_>>()))
    };
    let schema = Arc::new(Schema::new(
        ["query", "answer", "negative"]
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            column(&|i| format!("q{i} {}", text_for(i + 5000).unwrap_or_default())),
            column(&|i| text_for(i * 3 + 1).unwrap_or_default() + &format!(" answer {i}")),
            column(&|i| text_for(i * 3 + 2).unwrap_or_default() + &format!(" other {i}")),
        ],
    )
    .unwrap();
    write_batch(path, batch, 16);
}

#[test]
fn training_through_faults_checkpoints_and_resumes_as_without() {
    let Some(endpoint) = endpoint() else { return };
    let rt = runtime();
    let store: Arc<dyn ObjectStore> = Arc::new(common::s3::store(&endpoint));
    let job = "s3-faults/train";
    clear(&rt, &store, job);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.parquet");
    write_pairs(&data, 32);
    rt.block_on(upload(&store, &data, &format!("{job}/data/pairs.parquet")));
    let train = |endpoint: &str, out: &str, steps: &str, extra: &[&str]| {
        let data = format!("s3://{BUCKET}/{job}/data");
        let output = format!("s3://{BUCKET}/{job}/{out}");
        let model = tiny_model();
        let mut args = vec![
            "train",
            "--model",
            model.to_str().unwrap(),
            "--train-data",
            &data,
            "--output",
            &output,
            "--max-steps",
            steps,
            "--batch-size",
            "4",
            "--threads",
            "1",
            "--learning-rate",
            "1e-3",
            "--save-steps",
            "1",
            "--save-total-limit",
            "2",
        ];
        args.extend(extra);
        let c = sparq(endpoint, &args);
        run_ok(c)
    };
    // Two steps, then resumed to four: checkpoints written, listed, read back and pruned.
    train(&endpoint, "clean", "2", &[]);
    train(&endpoint, "clean", "4", &["--resume"]);
    let proxy = FaultProxy::start(
        &endpoint,
        FaultPlan {
            seed: 11,
            ..FaultPlan::default()
        },
    );
    let first = train(&proxy.url, "faulty", "2", &[]);
    let resumed = train(&proxy.url, "faulty", "4", &["--resume"]);
    let clean = objects(&rt, &store, &format!("{job}/clean"));
    let faulty = objects(&rt, &store, &format!("{job}/faulty"));
    assert!(
        clean.contains_key("model.safetensors"),
        "{:?}",
        clean.keys()
    );
    assert!(
        clean.contains_key("checkpoint-3/optimizer.safetensors")
            && !clean.contains_key("checkpoint-1/_COMPLETE"),
        "{:?}",
        clean.keys()
    );
    // A checkpoint's marker names the run that wrote it.
    assert_same_objects(&clean, &faulty, ("/clean", "/faulty"), &["_COMPLETE"]);
    let injected = assert_reported(&proxy, &[&first, &resumed], "train");
    assert_every_kind(&injected, "train");
}

#[test]
fn a_create_once_commit_whose_answer_is_lost_is_committed_once() {
    let Some(endpoint) = endpoint() else { return };
    let rt = runtime();
    let store: Arc<dyn ObjectStore> = Arc::new(common::s3::store(&endpoint));
    let prefix = "s3-faults/commit";
    clear(&rt, &store, prefix);
    // Each request's first arrival reaches the server, then its answer is lost.
    let proxy = FaultProxy::start(
        &endpoint,
        FaultPlan {
            rate: 1.0,
            kinds: vec![Fault::Reset, Fault::Stall],
            first_arrival_only: true,
            ..FaultPlan::default()
        },
    );
    // Only this test reads these in-process; the others give their children their own.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testkey"),
        ("AWS_SECRET_ACCESS_KEY", "testsecret"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("SPARQ_S3_STALL_TIMEOUT_SECS", "1"),
        ("SPARQ_S3_BACKOFF_INITIAL_SECS", "0.05"),
    ] {
        std::env::set_var(k, v);
    }
    std::env::set_var("AWS_ENDPOINT_URL", &proxy.url);
    let url = StoreUrl::parse(&format!("s3://{BUCKET}/{prefix}")).unwrap();
    let committer = Committer::new(&url).unwrap();
    let before = s3_requests();
    // The first attempt created the part; its retry is told it exists: committed once.
    for (name, bytes) in [("part-a", b"first a"), ("part-b", b"first b")] {
        let outcome = rt.block_on(committer.commit(name, bytes.to_vec())).unwrap();
        assert_eq!(outcome, CommitOutcome::AlreadyCommitted, "{name}");
    }
    let outcome = rt
        .block_on(committer.commit("part-a", b"other a".to_vec()))
        .unwrap();
    assert_eq!(outcome, CommitOutcome::AlreadyCommitted);
    let objects = objects(&rt, &store, prefix);
    assert_eq!(objects["part-a"], b"first a");
    assert_eq!(objects["part-b"], b"first b");
    // Every "already exists" is checked by looking the part up (HEAD), and each HEAD's first
    // arrival loses its answer too: per commit of a new part, PUT, its retry, HEAD, its retry;
    // the third commit's PUT and HEAD were seen before and pass.
    assert_eq!(
        proxy.injected(),
        [(Fault::Reset, 2), (Fault::Stall, 2)].into()
    );
    let counted = s3_requests().since(&before);
    assert_eq!((counted.requests, counted.retried), (10, 4), "{counted}");
    assert_eq!(
        counted.causes,
        [("reset".into(), 2), ("timeout".into(), 2)].into()
    );
}

#[test]
fn a_bad_retry_setting_is_refused_naming_the_variable() {
    let Some(endpoint) = endpoint() else { return };
    let out = sparq(
        &endpoint,
        &[
            "encode",
            "--input",
            "examples/corpus",
            "--output",
            "s3://sparq-test/never",
        ],
    )
    .env("SPARQ_S3_MAX_RETRIES", "many")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SPARQ_S3_MAX_RETRIES=\"many\"") && err.contains("whole number"),
        "{err}"
    );
}

#[test]
fn retries_that_run_out_say_so_and_the_limit_is_the_setting() {
    let Some(endpoint) = endpoint() else { return };
    let proxy = FaultProxy::start(
        &endpoint,
        FaultPlan {
            rate: 1.0,
            kinds: vec![Fault::Reset],
            ..FaultPlan::default()
        },
    );
    let out = sparq(
        &proxy.url,
        &[
            "encode",
            "--input",
            "examples/corpus",
            "--output",
            "s3://sparq-test/never",
        ],
    )
    .env("SPARQ_S3_MAX_RETRIES", "2")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gave up after 2 retries"), "{err}");
    assert_eq!(
        reported(&out),
        (3, 2, [("reset".to_string(), 2)].into()),
        "{err}"
    );
    assert_eq!(proxy.requests(), 3);
}
