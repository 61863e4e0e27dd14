//! `sparq encode` of text corpora: the same rows as JSON lines (plain, gzip, zstd), TSV
//! (`--columns`) and CSV (header) give the parquet path's output bit for bit, with plain files
//! cut into byte ranges at arbitrary bytes (mid-line, mid-character); bad lines are named by
//! file, line and column, or skipped and counted; a killed run resumes exactly once; S3 input.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use sparq::encode::SparseVector;

use common::corpus::{text_for, write_batch};
use common::process::{children_of, kill9, wait_for};
use common::root;

fn sparq() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL");
    c
}

/// Encodes with shards of about 3 rows and one sequence per forward pass (so every vector is
/// computed alone, whatever the shard cuts: equal bits).
fn encode(input: &str, output: &Path, extra: &[&str]) -> Output {
    encode_with(sparq(), input, output, extra)
}

fn encode_with(mut cmd: Command, input: &str, output: &Path, extra: &[&str]) -> Output {
    cmd.args(["encode", "--input", input, "--output"])
        .arg(output)
        .args(["--shard-rows", "3", "--batch-tokens", "1", "--threads", "1"])
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Row `i`'s id and text: varied lengths, multibyte characters, commas and quotes.
fn row(i: usize) -> (String, String) {
    let mut text = text_for(i as i64 + 1).unwrap_or_default();
    if i % 4 == 1 {
        text = format!(
            "{text} café naïve 日本語のテキスト ünïcødé {}",
            "語".repeat(i % 50)
        );
    }
    if i % 6 == 2 {
        text.push_str(r#", she said "yes, twice""#);
    }
    (format!("doc-{i}"), text)
}

const ROWS: usize = 40;

fn rows() -> Vec<(String, String)> {
    (0..ROWS).map(row).collect()
}

fn write_parquet(path: &Path, rows: &[(String, String)]) {
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0)));
    let texts: ArrayRef = Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1)));
    let batch = RecordBatch::try_from_iter([("id", ids), ("text", texts)]).unwrap();
    write_batch(path, batch, 7);
}

/// JSON lines: a BEIR-like layout with extra fields, a blank line inside and one at the end.
fn jsonl(rows: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, (id, text)) in rows.iter().enumerate() {
        let line = serde_json::json!({"id": id, "title": "t", "text": text});
        writeln!(out, "{line}").unwrap();
        if k == 10 {
            out.extend_from_slice(b"\n");
        }
    }
    out.extend_from_slice(b"\n");
    out
}

/// TSV without a header, CRLF line ends.
fn tsv(rows: &[(String, String)]) -> Vec<u8> {
    rows.iter()
        .flat_map(|(id, text)| format!("{id}\t{text}\r\n").into_bytes())
        .collect()
}

/// CSV with a header; texts with commas or quotes quoted.
fn csv(rows: &[(String, String)]) -> Vec<u8> {
    let mut out = b"text,id\n".to_vec();
    for (id, text) in rows {
        let field = if text.contains([',', '"']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.clone()
        };
        writeln!(out, "{field},{id}").unwrap();
    }
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Every row of a local output's parts: id → vector (nulls are a test failure).
fn read_output(dir: &Path) -> BTreeMap<String, SparseVector> {
    let mut out = BTreeMap::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-") && n.ends_with(".parquet"))
        .collect();
    names.sort();
    for name in names {
        let bytes = bytes::Bytes::from(std::fs::read(dir.join(&name)).unwrap());
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let ids = batch.column_by_name("id").unwrap();
            let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
            let vectors =
                sparq::io::output::read_sparse(batch.column_by_name("sparse").unwrap().as_ref())
                    .unwrap();
            for (i, v) in vectors.into_iter().enumerate() {
                let id = ids.value(i).to_string();
                assert!(out.insert(id.clone(), v.unwrap()).is_none(), "{id} twice");
            }
        }
    }
    out
}

/// The same vectors, bit for bit.
fn assert_same_bits(
    what: &str,
    got: &BTreeMap<String, SparseVector>,
    want: &BTreeMap<String, SparseVector>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: ids"
    );
    for (id, w) in want {
        let g = &got[id];
        let bits = |v: &SparseVector| v.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            g.indices == w.indices && bits(g) == bits(w),
            "{what}: the vector of {id} differs from the parquet path's"
        );
    }
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("_manifest.json")).unwrap()).unwrap()
}

#[test]
fn every_text_format_encodes_as_the_same_rows_in_parquet_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows();
    let parquet = dir.path().join("corpus.parquet");
    write_parquet(&parquet, &rows);
    let base_out = dir.path().join("out-parquet");
    let out = encode(parquet.to_str().unwrap(), &base_out, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = read_output(&base_out);
    assert_eq!(want.len(), ROWS);

    let jsonl_bytes = jsonl(&rows);
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("corpus.jsonl", jsonl_bytes.clone(), vec![]),
        ("corpus.jsonl.gz", gzip(&jsonl_bytes), vec![]),
        (
            "corpus.jsonl.zst",
            zstd::encode_all(&jsonl_bytes[..], 3).unwrap(),
            vec![],
        ),
        ("collection.tsv", tsv(&rows), vec!["--columns", "id,text"]),
        ("corpus.csv", csv(&rows), vec![]),
    ];
    for (name, bytes, flags) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let out_dir = dir.path().join(format!("out-{name}"));
        let mut args = flags.clone();
        args.extend(["--workers", "2"]);
        let out = encode(path.to_str().unwrap(), &out_dir, &args);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_same_bits(name, &read_output(&out_dir), &want);
        let m = manifest(&out_dir);
        assert!(out_dir.join("_SUCCESS").is_file(), "{name}");
        assert_eq!(m["rows"], ROWS as u64, "{name}");
        let parts = m["files"].as_array().unwrap();
        // Row identity: each part's byte range and its first row in the file.
        let mut next_byte = 0;
        let mut next_row = 0;
        for p in parts {
            assert_eq!(p["bytes"][0], next_byte, "{name}: ranges tile the file");
            assert_eq!(p["first_row"], next_row, "{name}");
            next_byte = p["bytes"][1].as_u64().unwrap();
            next_row += p["rows"].as_u64().unwrap();
        }
        assert_eq!(next_byte, bytes.len() as u64, "{name}");
        if name.ends_with(".gz") || name.ends_with(".zst") {
            assert_eq!(parts.len(), 1, "{name}: a compressed file is one shard");
        } else {
            assert!(parts.len() >= 8, "{name}: {} byte ranges", parts.len());
        }
        if name == "corpus.jsonl" {
            // The fixture cuts lines and characters: some range starts mid-line, and one
            // inside a multibyte character.
            let starts: Vec<usize> = parts
                .iter()
                .map(|p| p["bytes"][0].as_u64().unwrap() as usize)
                .filter(|&s| s > 0)
                .collect();
            assert!(starts.iter().any(|&s| bytes[s - 1] != b'\n'));
            assert!(
                starts.iter().any(|&s| bytes[s] & 0xC0 == 0x80),
                "no range starts inside a multibyte character: change the fixture"
            );
        }
    }
}

#[test]
fn a_bad_line_names_file_line_and_column_or_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows();
    let mut text = String::from_utf8(jsonl(&rows[..20])).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    // Line 17, beyond the first shards.
    lines[16] = r#"{"id": "doc-broken", "text": "no closing quote}"#;
    text = lines.join("\n") + "\n";
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, &text).unwrap();
    let out = encode(path.to_str().unwrap(), &dir.path().join("out"), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}, line 17, column", path.display()))
            && err.contains("--bad-lines skip"),
        "{err}"
    );

    let out_dir = dir.path().join("out-skip");
    let out = encode(path.to_str().unwrap(), &out_dir, &["--bad-lines", "skip"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&out_dir);
    assert_eq!(m["summary"]["skipped_lines"], 1, "{m}");
    let example = m["summary"]["skipped_line_examples"][0].as_str().unwrap();
    assert!(example.contains("bad.jsonl, line 17, column"), "{example}");
    let got = read_output(&out_dir);
    // Line 17 is row 15 (a blank line follows row 10).
    assert_eq!(got.len(), 19);
    assert!(!got.contains_key("doc-15") && got.contains_key("doc-16"));

    // A TSV line with a missing field names the file's line too (CRLF counted as one end).
    let path = dir.path().join("short.tsv");
    let mut bytes = tsv(&rows[..12]);
    bytes.extend_from_slice(b"doc-x\r\n");
    std::fs::write(&path, &bytes).unwrap();
    let out = encode(
        path.to_str().unwrap(),
        &dir.path().join("out-tsv"),
        &["--columns", "id,text"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "short.tsv, line 13, column 6: 1 tab-separated fields where the columns are 2"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wrong_field_name_or_header_stops_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows();
    let path = dir.path().join("corpus.jsonl");
    std::fs::write(&path, jsonl(&rows)).unwrap();
    let out_dir = dir.path().join("out");
    let out = encode(path.to_str().unwrap(), &out_dir, &["--id-column", "_id"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 1, field `_id`: no field `_id` (fields: "),
        "{}",
        stderr(&out)
    );
    assert!(!out_dir.exists(), "nothing written");
    // A headerless TSV without --columns: its first line is no header.
    let path = dir.path().join("collection.tsv");
    std::fs::write(&path, tsv(&rows)).unwrap();
    let out = encode(path.to_str().unwrap(), &out_dir, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no column `id` (columns: doc-0, "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn kill_9_of_the_coordinator_then_rerun_gives_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<(String, String)> = (0..3000).map(row).collect();
    let path = dir.path().join("corpus.jsonl");
    std::fs::write(&path, jsonl(&rows)).unwrap();
    let out_dir = dir.path().join("out");
    let mut child = sparq()
        .args(["encode", "--input", path.to_str().unwrap(), "--output"])
        .arg(&out_dir)
        .args(["--shard-rows", "300", "--workers", "2", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let parts = || {
        std::fs::read_dir(&out_dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
                .count()
        })
    };
    wait_for("two committed parts", || parts() >= 2);
    let workers = children_of(child.id());
    kill9(child.id());
    let _ = child.wait();
    wait_for("workers to exit", || {
        workers.iter().all(|w| {
            std::fs::read_to_string(format!("/proc/{w}/stat")).map_or(true, |s| s.contains(") Z "))
        })
    });
    assert!(!out_dir.join("_SUCCESS").exists());
    let out = sparq()
        .args(["encode", "--input", path.to_str().unwrap(), "--output"])
        .arg(&out_dir)
        .args(["--workers", "2", "--threads", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert!(
        summary["skipped_shards"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    let got = read_output(&out_dir);
    let want: Vec<&String> = rows.iter().map(|r| &r.0).collect();
    let mut want = want;
    want.sort();
    assert_eq!(got.keys().collect::<Vec<_>>(), want, "every line once");
    assert_eq!(manifest(&out_dir)["rows"], 3000);
}

#[test]
fn a_jsonl_gz_corpus_on_s3_is_read_by_ranges_as_a_local_one() {
    let Some(endpoint) = common::s3::endpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rows = rows();
    let plain = jsonl(&rows);
    let local = dir.path().join("corpus.jsonl");
    std::fs::write(&local, &plain).unwrap();
    let local_out = dir.path().join("out-local");
    let out = encode(local.to_str().unwrap(), &local_out, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = read_output(&local_out);

    let store: Arc<dyn object_store::ObjectStore> = Arc::new(common::s3::store(&endpoint));
    let prefix = format!("text-inputs-{}", std::process::id());
    let gz = dir.path().join("corpus.jsonl.gz");
    std::fs::write(&gz, gzip(&plain)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(common::s3::upload(
        &store,
        &local,
        &format!("{prefix}/in/corpus.jsonl"),
    ));
    runtime.block_on(common::s3::upload(
        &store,
        &gz,
        &format!("{prefix}/gz/corpus.jsonl.gz"),
    ));
    for (input, name) in [("in/corpus.jsonl", "plain"), ("gz/", "gz")] {
        let out_dir = dir.path().join(format!("out-{name}"));
        let mut cmd = sparq();
        common::s3::env(&mut cmd, &endpoint);
        let url = format!("s3://{}/{prefix}/{input}", common::s3::BUCKET);
        let out = encode_with(cmd, &url, &out_dir, &[]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_same_bits(name, &read_output(&out_dir), &want);
    }
}

/// BEIR rows: id, title (empty for every third, null for every fifth), text.
fn titled_rows() -> Vec<(String, Option<String>, String)> {
    rows()
        .into_iter()
        .enumerate()
        .map(|(i, (id, text))| {
            let title = match i {
                _ if i % 5 == 4 => None,
                _ if i % 3 == 0 => Some(String::new()),
                _ => Some(format!(
                    "Title {i}: {}",
                    text_for(i as i64 + 100).unwrap_or_default()
                )),
            };
            (id, title, text)
        })
        .collect()
}

#[test]
fn title_column_encodes_title_space_text_as_a_pre_joined_parquet_does() {
    let dir = tempfile::tempdir().unwrap();
    let rows = titled_rows();
    // The reference: the texts joined beforehand, as BEIR joins them.
    let joined: Vec<(String, String)> = rows
        .iter()
        .map(|(id, title, text)| {
            let text = match title.as_deref() {
                Some(t) if !t.is_empty() => format!("{t} {text}"),
                _ => text.clone(),
            };
            (id.clone(), text)
        })
        .collect();
    let pre_joined = dir.path().join("joined.parquet");
    write_parquet(&pre_joined, &joined);
    let base = dir.path().join("out-joined");
    let out = encode(pre_joined.to_str().unwrap(), &base, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = read_output(&base);

    let column = |values: Vec<Option<String>>| -> ArrayRef { Arc::new(StringArray::from(values)) };
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            column(rows.iter().map(|r| Some(r.0.clone())).collect()),
        ),
        ("title", column(rows.iter().map(|r| r.1.clone()).collect())),
        (
            "text",
            column(rows.iter().map(|r| Some(r.2.clone())).collect()),
        ),
    ])
    .unwrap();
    let parquet = dir.path().join("corpus.parquet");
    write_batch(&parquet, batch, 7);
    let mut jsonl = Vec::new();
    for (id, title, text) in &rows {
        let line = serde_json::json!({"id": id, "title": title, "text": text});
        writeln!(jsonl, "{line}").unwrap();
    }
    let jsonl_path = dir.path().join("corpus.jsonl");
    std::fs::write(&jsonl_path, &jsonl).unwrap();
    let titled = ["--title-column", "title"];
    for (name, input) in [("parquet", &parquet), ("jsonl", &jsonl_path)] {
        let out_dir = dir.path().join(format!("out-{name}"));
        let out = encode(input.to_str().unwrap(), &out_dir, &titled);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_same_bits(name, &read_output(&out_dir), &want);
        let m = manifest(&out_dir);
        assert_eq!(m["settings"]["title_column"], "title", "{name}: {m}");

        // Resuming without the title is another output: refused, naming the setting.
        let again = encode(input.to_str().unwrap(), &out_dir, &[]);
        assert_eq!(again.status.code(), Some(1), "{name}: {}", stderr(&again));
        assert!(
            stderr(&again).contains("--title-column: was `title`, now none"),
            "{name}: {}",
            stderr(&again)
        );
    }

    // A title column that is not there stops before any work.
    let out = encode(
        parquet.to_str().unwrap(),
        &dir.path().join("out-missing"),
        &["--title-column", "heading"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no column `heading`") && stderr(&out).contains("--title-column"),
        "{}",
        stderr(&out)
    );
}
