//! `sparq encode` on local disk: exactly-once output equal to `encode-text`, resume, settings
//! checks, kills of workers and of the coordinator, and bad input.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::corpus::*;
use common::process::*;
use common::*;

fn sparq() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL");
    c
}

fn encode(input: &Path, output: &Path, extra: &[&str]) -> Output {
    sparq()
        .args([
            "encode",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--threads",
            "1",
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no summary; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_workers_write_every_row_once_equal_to_encode_text_and_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..700, 128);
    write_corpus(&input.join("b.parquet"), 700..1000, 50);
    write_corpus(&input.join("sub/c.parquet"), 1000..1100, 1000);
    std::fs::write(input.join("_ignored.parquet"), b"not parquet").unwrap();
    let out_dir = dir.path().join("out");
    let out = encode(
        &input,
        &out_dir,
        &[
            "--workers",
            "2",
            "--shard-rows",
            "150",
            "--keep-columns",
            "lang",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["docs"], 1100);
    assert_eq!(s["failed_shards"], 0);
    assert_eq!(
        s["null_texts"].as_u64().unwrap(),
        (0..1100).filter(|i| text_for(*i).is_none()).count() as u64
    );
    let (rows, parts) = read_output(&out_dir);
    assert_eq!(parts.len(), 5 + 2 + 1, "{parts:?}");
    let ids: Vec<i64> = (0..1100).collect();
    let mut expected = reference_vectors(&ids);
    // Null texts are empty vectors in the output.
    for (id, v) in expected.iter_mut() {
        if text_for(*id).is_none() {
            *v = Default::default();
        }
    }
    assert_exactly_once(&rows, &expected);
    // Marker and manifest written last; no attempt left behind.
    assert!(out_dir.join("_SUCCESS").is_file());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["rows"], 1100);
    assert_eq!(manifest["files"].as_array().unwrap().len(), parts.len());
    assert!(
        !out_dir.join("_attempts").exists(),
        "no attempt left behind"
    );

    // Rerun: everything skipped, nothing rewritten.
    let before = std::fs::metadata(out_dir.join(&parts[0]))
        .unwrap()
        .modified()
        .unwrap();
    let out = encode(
        &input,
        &out_dir,
        &[
            "--workers",
            "2",
            "--shard-rows",
            "150",
            "--keep-columns",
            "lang",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&out)["skipped_shards"], parts.len());
    assert_eq!(summary(&out)["docs"], 0);
    assert_eq!(
        std::fs::metadata(out_dir.join(&parts[0]))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );

    // Other settings are refused; --overwrite replaces.
    let out = encode(
        &input,
        &out_dir,
        &[
            "--shard-rows",
            "150",
            "--keep-columns",
            "lang",
            "--max-active-dims",
            "8",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--max-active-dims") && stderr(&out).contains("--overwrite"),
        "{}",
        stderr(&out)
    );
    let out = encode(
        &input,
        &out_dir,
        &[
            "--shard-rows",
            "400",
            "--max-active-dims",
            "8",
            "--overwrite",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (rows, parts) = read_output(&out_dir);
    assert_eq!(rows.len(), 1100);
    assert_eq!(parts.len(), 2 + 1 + 1);
    assert!(rows.iter().all(|(_, v)| v.as_ref().unwrap().len() <= 8));
}

fn committed_parts(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
                .count()
        })
        .unwrap_or(0)
}

fn start_encode(input: &Path, output: &Path) -> Child {
    sparq()
        .args([
            "encode",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
        .args(["--workers", "2", "--shard-rows", "300", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_of_a_worker_mid_shard_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..3000, 100);
    let out_dir = dir.path().join("out");
    let child = start_encode(&input, &out_dir);
    let pid = child.id();
    wait_for("a committed part", || committed_parts(&out_dir) >= 1);
    let workers = children_of(pid);
    assert_eq!(workers.len(), 2, "two worker processes");
    kill9(workers[0]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("killed"),
        "the kill is reported: {}",
        stderr(&out)
    );
    let (rows, _) = read_output(&out_dir);
    // Every id once, null texts included (as empty vectors).
    assert_exactly_once(&rows, &reference_vectors(&(0..3000).collect::<Vec<_>>()));
    assert!(out_dir.join("_SUCCESS").is_file());
}

#[test]
fn kill_9_of_the_coordinator_then_rerun_finishes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..1500, 100);
    write_corpus(&input.join("b.parquet"), 1500..3000, 100);
    let out_dir = dir.path().join("out");
    let mut child = start_encode(&input, &out_dir);
    wait_for("a committed part", || committed_parts(&out_dir) >= 2);
    let workers = children_of(child.id());
    kill9(child.id());
    let _ = child.wait();
    // Workers die with their coordinator (no orphan keeps committing).
    wait_for("workers to exit", || {
        workers.iter().all(|w| {
            !Path::new(&format!("/proc/{w}")).exists() || {
                std::fs::read_to_string(format!("/proc/{w}/stat"))
                    .map_or(true, |s| s.contains(") Z "))
            }
        })
    });
    assert!(!out_dir.join("_SUCCESS").exists());
    let done_before = committed_parts(&out_dir);
    let out = encode(&input, &out_dir, &["--workers", "2", "--shard-rows", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        summary(&out)["skipped_shards"].as_u64().unwrap() as usize,
        done_before
    );
    let (rows, parts) = read_output(&out_dir);
    assert_eq!(parts.len(), 10);
    // Every id once, null texts included (as empty vectors).
    assert_exactly_once(&rows, &reference_vectors(&(0..3000).collect::<Vec<_>>()));
}

#[test]
fn missing_column_stops_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("in/a.parquet"), 0..10, 5);
    let out_dir = dir.path().join("out");
    let out = encode(&dir.path().join("in"), &out_dir, &["--text-column", "body"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("a.parquet") && err.contains("`body`") && err.contains("--text-column"),
        "{err}"
    );
    assert_eq!(committed_parts(&out_dir), 0);
    let out = encode(&dir.path().join("in"), &out_dir, &["--text-column", "id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a string"), "{}", stderr(&out));
}

#[test]
fn a_file_damaged_past_its_footer_fails_its_shard_while_the_rest_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..40, 10);
    write_corpus(&input.join("b.parquet"), 40..60, 20);
    write_corpus(&input.join("c.parquet"), 60..100, 10);
    corrupt_data_pages(&input.join("b.parquet"));
    let out_dir = dir.path().join("out");
    let out = encode(&input, &out_dir, &["--workers", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("b.parquet") && err.contains("failed"), "{err}");
    assert_eq!(summary(&out)["failed_shards"], 1);
    let (rows, _) = read_output(&out_dir);
    assert_eq!(rows.len(), 80);
    assert!(!out_dir.join("_SUCCESS").exists());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], false);
}

#[test]
fn a_corrupt_or_non_parquet_file_is_refused_before_any_output_exists() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..40, 10);
    write_corpus(&input.join("c.parquet"), 40..80, 10);
    let good = std::fs::read(input.join("c.parquet")).unwrap();
    std::fs::write(input.join("b.parquet"), &good[..good.len() / 2]).unwrap();
    let out_dir = dir.path().join("out");
    let out = encode(&input, &out_dir, &["--workers", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("b.parquet") && err.contains("corrupt") && !err.contains("a.parquet"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing is written for a refused input");
    // A file that is neither parquet nor a text format sparq reads (JSON lines, TSV, CSV) is
    // refused the same way, naming it.
    let sheet = dir.path().join("docs.xlsx");
    std::fs::write(&sheet, "PK\u{3}\u{4} not a corpus").unwrap();
    let out = encode(&sheet, &out_dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("docs.xlsx") && stderr(&out).contains("not parquet"),
        "{}",
        stderr(&out)
    );
    assert!(!out_dir.exists());
    // Once the bad file is moved out, the rest is encoded, every row once.
    std::fs::remove_file(input.join("b.parquet")).unwrap();
    let out = encode(&input, &out_dir, &["--workers", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (rows, _) = read_output(&out_dir);
    assert_eq!(rows.len(), 80);
    assert!(out_dir.join("_SUCCESS").exists());
}

#[test]
fn invalid_utf8_rows_are_null_and_counted_nulls_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    write_binary_corpus(&dir.path().join("in/a.parquet"));
    let out_dir = dir.path().join("out");
    let out = encode(&dir.path().join("in"), &out_dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["failed_rows"], 1);
    assert_eq!(s["null_texts"], 1);
    let err = stderr(&out);
    assert!(
        err.contains("a.parquet")
            && err.contains("row group 1")
            && err.contains("row 2")
            && err.contains("UTF-8"),
        "{err}"
    );
    let (rows, _) = read_output(&out_dir);
    let by_id: std::collections::BTreeMap<i64, _> = rows.into_iter().collect();
    assert!(by_id[&1].as_ref().is_some_and(|v| !v.is_empty()));
    assert!(by_id[&3].is_none(), "invalid UTF-8 gives a null vector");
    assert!(
        by_id[&4].as_ref().is_some_and(|v| v.is_empty()),
        "null text gives an empty vector"
    );
}

#[test]
fn duplicate_ids_within_a_shard_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let batch = arrow::array::RecordBatch::try_from_iter(vec![
        (
            "id",
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![5, 6, 5, 7]))
                as arrow::array::ArrayRef,
        ),
        (
            "text",
            std::sync::Arc::new(arrow::array::StringArray::from(vec!["a", "b", "c", "d"])),
        ),
    ])
    .unwrap();
    write_batch(&dir.path().join("in/a.parquet"), batch, 10);
    let out = encode(&dir.path().join("in"), &dir.path().join("out"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&out)["duplicate_ids"], 1);
    assert!(
        stderr(&out).contains("duplicate ids") && stderr(&out).contains("\"5\""),
        "{}",
        stderr(&out)
    );
    // Both rows are written: sparq reports, it does not guess which one the user meant.
    assert_eq!(read_output(&dir.path().join("out")).0.len(), 4);
}

#[test]
fn bad_urls_and_missing_input_fail_fast_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let out = sparq()
        .args(["encode", "--input", "gs://bucket/x", "--output", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("gs://") && stderr(&out).contains("s3://"),
        "{}",
        stderr(&out)
    );
    let out = encode(
        &dir.path().join("nothing-here"),
        &dir.path().join("out"),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no parquet files"),
        "{}",
        stderr(&out)
    );
    write_corpus(&dir.path().join("in/a.parquet"), 0..10, 5);
    let out = encode(&dir.path().join("in"), &dir.path().join("in/out"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("inside --input"), "{}", stderr(&out));
}

#[test]
fn a_stalled_worker_loses_its_lease_and_the_shard_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..2000, 100);
    let out_dir = dir.path().join("out");
    let child = sparq()
        .args([
            "encode",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out_dir.to_str().unwrap(),
        ])
        .args([
            "--workers",
            "2",
            "--shard-rows",
            "250",
            "--threads",
            "1",
            "--lease-timeout",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("a committed part", || committed_parts(&out_dir) >= 1);
    // SIGSTOP: alive but silent, as a hung worker is.
    let workers = children_of(child.id());
    assert_eq!(unsafe { libc::kill(workers[0] as i32, libc::SIGSTOP) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("stalled"), "{}", stderr(&out));
    let (rows, _) = read_output(&out_dir);
    // Every id once, null texts included (as empty vectors).
    assert_exactly_once(&rows, &reference_vectors(&(0..2000).collect::<Vec<_>>()));
}

#[test]
fn batches_queued_ahead_of_the_one_waited_for_write_the_same_output() {
    // The GPU's launch-ahead bookkeeping, run on the CPU: several batches per chunk and
    // chunks finishing across each other, then every row once with the reference vectors.
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("in/a.parquet"), 0..300, 64);
    for depth in ["0", "3"] {
        let out = sparq()
            .args([
                "encode",
                "--threads",
                "1",
                "--batch-tokens",
                "300",
                "--input",
            ])
            .arg(dir.path().join("in"))
            .arg("--output")
            .arg(dir.path().join(format!("out-{depth}")))
            .env("SPARQ_PIPELINE_DEPTH", depth)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let (rows, _) = read_output(&dir.path().join(format!("out-{depth}")));
        let ids: Vec<i64> = (0..300).collect();
        assert_exactly_once(&rows, &reference_vectors(&ids));
    }
}
