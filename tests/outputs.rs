//! Outputs are self-describing and commands behave in pipes (#15): `inspect`, `decode` and
//! `export` use the model and id column an output records, refuse another model naming both
//! folders, end quietly when their reader goes away (`| head -1`), stream to stdout with
//! `--output -`, and give Qdrant only the point ids it accepts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::corpus::{text_for, write_batch, write_corpus};
use common::{copy_dir, tiny_model};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use sparq::encode::SparseVector;
use sparq::model::layout::ModelLayout;
use sparq::model::tokenizer::SpladeTokenizer;

const SPARQ: &str = env!("CARGO_BIN_EXE_sparq");

/// The binary, run from `cwd` as a user would, without a default model in the environment.
fn sparq(cwd: &Path) -> Command {
    let mut c = Command::new(SPARQ);
    c.current_dir(cwd)
        .env_remove("SPARQ_MODEL")
        .env_remove("RUST_LOG");
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Stderr without the line saying which model a reader uses: what is left must be empty for
/// a command that ended quietly.
fn noise(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.starts_with("sparq: using model"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A copy of the bundled model that is another model to sparq: an extra JSON file changes its
/// fingerprint (which hashes every JSON file of the folder) and nothing else.
fn model_copy(at: &Path) -> PathBuf {
    copy_dir(&tiny_model(), at);
    std::fs::write(at.join("sparq_test_note.json"), b"{\"copy\": true}\n").unwrap();
    at.to_path_buf()
}

fn tokenizer(model: &Path) -> SpladeTokenizer {
    SpladeTokenizer::load(&ModelLayout::read(model).unwrap()).unwrap()
}

/// The UUID of row `i`, spelled three ways (canonical, upper case, without hyphens).
fn uuid_text(i: i64) -> (String, String) {
    let canonical = format!("{:08x}-0000-4000-8000-{:012x}", i + 0xabc, i);
    let spelled = match i % 3 {
        0 => canonical.clone(),
        1 => canonical.to_uppercase(),
        _ => canonical.replace('-', ""),
    };
    (canonical, spelled)
}

/// `rows` rows with ids of every kind: `doc_id` (`doc-<i>`), `n` (i × 10), `signed` (row 2
/// is -3), `uuid` (see [`uuid_text`]), `digits` (`1000 + i` as text), and `text`.
fn write_mixed_ids(path: &Path, rows: i64) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
        Field::new("signed", DataType::Int64, false),
        Field::new("uuid", DataType::Utf8, false),
        Field::new("digits", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let ids = 0..rows;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                ids.clone().map(|i| format!("doc-{i}")),
            )) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(ids.clone().map(|i| i * 10))),
            Arc::new(Int64Array::from_iter_values(ids.clone().map(|i| {
                if i == 2 {
                    -3
                } else {
                    i
                }
            }))),
            Arc::new(StringArray::from_iter_values(
                ids.clone().map(|i| uuid_text(i).1),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.clone().map(|i| (1000 + i).to_string()),
            )),
            Arc::new(StringArray::from_iter(ids.map(text_for))),
        ],
    )
    .unwrap();
    write_batch(path, batch, 10);
}

/// Encodes `input` into `output` (one worker, one thread) with `args`.
fn encode(input: &Path, output: &Path, args: &[&str]) -> Output {
    sparq(input)
        .args(["encode", "--workers", "1", "--threads", "1", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(args)
        .output()
        .unwrap()
}

/// The `doc_id`s and vectors of an output encoded from [`write_mixed_ids`].
fn vectors_by_doc_id(dir: &Path) -> BTreeMap<String, SparseVector> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("part-") && name.ends_with(".parquet")) {
            continue;
        }
        let file = std::fs::File::open(entry.path()).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let ids = batch.column_by_name("doc_id").unwrap();
            let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
            let vectors =
                sparq::io::output::read_sparse(batch.column_by_name("sparse").unwrap().as_ref())
                    .unwrap();
            for (i, v) in vectors.into_iter().enumerate() {
                out.insert(ids.value(i).to_string(), v.unwrap());
            }
        }
    }
    out
}

/// The mixed-id corpus encoded with `--id-column doc_id` and every other id column kept.
fn encode_mixed(dir: &Path, rows: i64, extra: &[&str]) -> PathBuf {
    write_mixed_ids(&dir.join("in/a.parquet"), rows);
    let out = dir.join("out");
    let mut args = vec![
        "--id-column",
        "doc_id",
        "--keep-columns",
        "n,signed,uuid,digits",
        "--shard-rows",
        "20",
    ];
    args.extend_from_slice(extra);
    ok(encode(&dir.join("in"), &out, &args));
    out
}

#[test]
fn readers_use_the_model_and_id_column_the_output_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = model_copy(&dir.join("my-model"));
    let out = encode_mixed(dir, 40, &["--model", model.to_str().unwrap()]);
    let source = vectors_by_doc_id(&out);
    let tok = tokenizer(&model);
    let named = format!("using model {} (recorded in the output)", model.display());

    // inspect: real token strings, from the recorded model, even with SPARQ_MODEL naming
    // another (the default comes after the record).
    for env in [None, Some(tiny_model())] {
        let mut cmd = sparq(dir);
        cmd.args(["inspect", "--json"]).arg(&out);
        if let Some(m) = &env {
            cmd.env("SPARQ_MODEL", m);
        }
        let run = ok(cmd.output().unwrap());
        assert!(stderr(&run).contains(&named), "{}", stderr(&run));
        let report: Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(report["rows"], 40);
        let top = report["top_tokens_by_document_frequency"]
            .as_array()
            .unwrap();
        assert!(!top.is_empty());
        for t in top {
            let id = t["id"].as_u64().unwrap() as u32;
            assert_eq!(t["token"], tok.token(id).as_str(), "{t}");
        }
    }
    let text = ok(sparq(dir).arg("inspect").arg(&out).output().unwrap());
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("40 rows"), "{text}");
    assert!(!text.contains(" ? "), "tokens shown as `?`: {text}");

    // decode by the recorded id column, no flags.
    let run = ok(sparq(dir)
        .arg("decode")
        .arg(&out)
        .args(["--id", "doc-3", "--top", "3"])
        .output()
        .unwrap());
    assert!(stderr(&run).contains(&named), "{}", stderr(&run));
    let rows = lines(&run.stdout);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], "doc-3");
    let v = &source["doc-3"];
    let best = (0..v.values.len())
        .max_by(|&a, &b| v.values[a].total_cmp(&v.values[b]).then(b.cmp(&a)))
        .unwrap();
    assert_eq!(rows[0]["tokens"][0][0], tok.token(v.indices[best]).as_str());
    // An explicit --id-column still wins.
    let run = ok(sparq(dir)
        .arg("decode")
        .arg(&out)
        .args(["--id-column", "n", "--id", "30"])
        .output()
        .unwrap());
    assert_eq!(lines(&run.stdout)[0]["id"], 30);

    // export anserini, no flags: the recorded ids and token strings.
    let file = dir.join("anserini.jsonl");
    ok(sparq(dir)
        .args(["export", "--format", "anserini", "--input"])
        .arg(&out)
        .arg("--output")
        .arg(&file)
        .output()
        .unwrap());
    let exported = lines(&std::fs::read(&file).unwrap());
    assert_eq!(exported.len(), 40);
    for line in &exported {
        let id = line["id"].as_str().unwrap();
        let v = &source[id];
        let want: BTreeMap<String, i64> = v
            .indices
            .iter()
            .zip(&v.values)
            .map(|(&i, &w)| (tok.token(i), (w as f64 * 100.0).round() as i64))
            .filter(|p| p.1 != 0)
            .collect();
        let got: BTreeMap<String, i64> = line["vector"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, w)| (k.clone(), w.as_i64().unwrap()))
            .collect();
        assert_eq!(got, want, "row {id}");
    }

    // Another --model is refused, naming the recorded folder and the given one.
    let refused = dir.join("refused.jsonl");
    let run = sparq(dir)
        .args(["export", "--format", "anserini", "--input"])
        .arg(&out)
        .arg("--output")
        .arg(&refused)
        .arg("--model")
        .arg(tiny_model())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = stderr(&run);
    assert!(
        err.contains("another model")
            && err.contains(&model.display().to_string())
            && err.contains(&tiny_model().display().to_string()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!refused.exists());
    let run = sparq(dir)
        .arg("decode")
        .arg(&out)
        .args(["--id", "doc-3", "--model"])
        .arg(tiny_model())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains(&model.display().to_string()),
        "{}",
        stderr(&run)
    );
}

#[test]
fn a_recorded_model_that_is_gone_is_named_and_replaced_only_by_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = model_copy(&dir.join("my-model"));
    let out = encode_mixed(dir, 20, &["--model", model.to_str().unwrap()]);
    let moved = dir.join("moved-model");
    std::fs::rename(&model, &moved).unwrap();
    let gone = model.display().to_string();

    // inspect still works: tokens unknown, and a warning says why and what to do.
    let run = ok(sparq(dir)
        .args(["inspect", "--json"])
        .arg(&out)
        .output()
        .unwrap());
    let err = stderr(&run);
    assert!(
        err.contains("warning") && err.contains(&gone) && err.contains("--model"),
        "{err}"
    );
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(report["top_tokens_by_document_frequency"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["token"].is_null()));
    // decode needs token strings: refused, naming the recorded folder; not with the bundled
    // model either (another model).
    let run = sparq(dir)
        .arg("decode")
        .arg(&out)
        .args(["--id", "doc-3"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = stderr(&run);
    assert!(
        err.contains(&gone) && err.contains("no longer exists") && err.contains("pass --model"),
        "{err}"
    );
    assert!(run.stdout.is_empty());
    // The same model elsewhere serves: given, or as the default.
    let v = &vectors_by_doc_id(&out)["doc-3"];
    let best = (0..v.values.len())
        .max_by(|&a, &b| v.values[a].total_cmp(&v.values[b]).then(b.cmp(&a)))
        .unwrap();
    let best = tokenizer(&moved).token(v.indices[best]);
    let run = ok(sparq(dir)
        .arg("decode")
        .arg(&out)
        .args(["--id", "doc-3", "--model"])
        .arg(&moved)
        .output()
        .unwrap());
    assert_eq!(lines(&run.stdout)[0]["tokens"][0][0], best.as_str());
    let run = ok(sparq(dir)
        .arg("decode")
        .arg(&out)
        .args(["--id", "doc-3"])
        .env("SPARQ_MODEL", &moved)
        .output()
        .unwrap());
    assert_eq!(lines(&run.stdout)[0]["tokens"][0][0], best.as_str());
    let err = stderr(&run);
    assert!(
        err.contains(&gone) && err.contains(&moved.display().to_string()),
        "{err}"
    );
}

/// Spawns `cmd` with its stdout and stderr piped.
fn spawn(cmd: &mut Command) -> std::process::Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the first line of the child's stdout, closes the pipe and waits: the exit status and
/// stderr.
fn first_line_then_close(mut child: std::process::Child) -> (String, Output) {
    let mut first = String::new();
    {
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        reader.read_line(&mut first).unwrap();
    } // The read end closes here, as when `head -1` exits.
    (first, child.wait_with_output().unwrap())
}

#[test]
fn commands_end_quietly_when_their_reader_goes_away() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("in/a.parquet"), 0..300, 100);
    let out = dir.join("out");
    ok(encode(&dir.join("in"), &out, &[]));
    let ids = (0..300)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let decode = |cmd: &mut Command| {
        cmd.arg("decode")
            .arg(&out)
            .args(["--top", "1000", "--id", &ids]);
    };
    // The whole output is far larger than a pipe's buffer (64 KiB), so the writer is still
    // writing when the reader leaves.
    let mut full = sparq(dir);
    decode(&mut full);
    let full = ok(full.output().unwrap());
    assert!(full.stdout.len() > 256 << 10, "{} bytes", full.stdout.len());

    let mut cmd = sparq(dir);
    decode(&mut cmd);
    let (first, run) = first_line_then_close(spawn(&mut cmd));
    assert_eq!(serde_json::from_str::<Value>(&first).unwrap()["id"], 0);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_eq!(noise(&run.stderr), "");

    // export --output - (a few hundred KiB of lines).
    let mut cmd = sparq(dir);
    cmd.args(["export", "--format", "jsonl", "--output", "-", "--input"])
        .arg(&out);
    let (first, run) = first_line_then_close(spawn(&mut cmd));
    assert!(serde_json::from_str::<Value>(&first).unwrap()["indices"].is_array());
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_eq!(noise(&run.stderr), "");

    // A reader gone before the first line: inspect, and encode's summary (the work is done).
    let mut cmd = sparq(dir);
    cmd.arg("inspect").arg(&out);
    let mut child = spawn(&mut cmd);
    drop(child.stdout.take());
    let run = child.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_eq!(noise(&run.stderr), "");
    let again = dir.join("again");
    let mut cmd = sparq(dir);
    cmd.args(["encode", "--workers", "1", "--threads", "1", "--input"])
        .arg(dir.join("in"))
        .arg("--output")
        .arg(&again);
    let mut child = spawn(&mut cmd);
    drop(child.stdout.take());
    let run = child.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert!(!stderr(&run).contains("panicked"), "{}", stderr(&run));
    assert!(again.join("_SUCCESS").exists());
}

#[test]
fn export_to_stdout_equals_the_file_export_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("in/a.parquet"), 0..60, 20);
    let out = dir.join("out");
    ok(encode(&dir.join("in"), &out, &["--shard-rows", "30"]));
    for format in ["anserini", "qdrant", "elasticsearch", "jsonl"] {
        let file = dir.join(format!("{format}.jsonl"));
        let export = |output: &Path, extra: &[&str]| {
            ok(sparq(dir)
                .args(["export", "--format", format, "--input"])
                .arg(&out)
                .arg("--output")
                .arg(output)
                .args(extra)
                .output()
                .unwrap())
        };
        export(&file, &[]);
        let want = std::fs::read(&file).unwrap();
        let run = export(Path::new("-"), &[]);
        assert!(
            run.stdout == want,
            "{format}: stdout is not the file export; it starts {:?}",
            String::from_utf8_lossy(&run.stdout[..run.stdout.len().min(300)])
        );
        let rows = if format == "elasticsearch" { 120 } else { 60 };
        assert_eq!(lines(&run.stdout).len(), rows, "{format}");
        // The summary goes to stderr, so stdout holds the data alone.
        let summary = stderr(&run)
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or_else(|| panic!("{format}: no summary on stderr: {}", stderr(&run)));
        assert_eq!(summary["export_summary"]["rows"], 60, "{format}");
        assert_eq!(summary["export_summary"]["files"], serde_json::json!(["-"]));
        // gzipped to stdout.
        let run = export(Path::new("-"), &["--gzip"]);
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(run.stdout.as_slice())
            .read_to_end(&mut text)
            .unwrap();
        assert!(text == want, "{format} --gzip: not the file export");
    }
    assert!(!dir.join("-").exists(), "a folder named `-` was made");
}

/// Exports the output as Qdrant lines to `file` with `extra` flags.
fn qdrant(dir: &Path, out: &Path, file: &Path, extra: &[&str]) -> Output {
    sparq(dir)
        .args(["export", "--format", "qdrant", "--input"])
        .arg(out)
        .arg("--output")
        .arg(file)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn qdrant_gets_integer_or_uuid_point_ids_or_a_refusal_naming_the_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = encode_mixed(dir, 30, &[]);
    let file = dir.join("q.jsonl");
    let ids = |extra: &[&str]| -> Vec<Value> {
        ok(qdrant(dir, &out, &file, extra));
        let got = lines(&std::fs::read(&file).unwrap());
        std::fs::remove_file(&file).unwrap();
        got.iter().map(|l| l["id"].clone()).collect()
    };
    // Integer ids, and strings of digits: numbers.
    let numbers: BTreeSet<u64> = ids(&["--id-column", "n"])
        .iter()
        .map(|v| v.as_u64().expect("a number"))
        .collect();
    assert_eq!(numbers, (0..30).map(|i| i * 10).collect());
    let numbers: BTreeSet<u64> = ids(&["--id-column", "digits"])
        .iter()
        .map(|v| v.as_u64().expect("a number"))
        .collect();
    assert_eq!(numbers, (1000..1030).collect());
    // UUIDs, however spelled: canonical.
    let uuids: BTreeSet<String> = ids(&["--id-column", "uuid"])
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect();
    assert_eq!(uuids, (0..30).map(|i| uuid_text(i).0).collect());

    // Other ids are refused before anything is written, naming file, row and id.
    for (column, id, row) in [("doc_id", "doc-0", 0), ("signed", "-3", 2)] {
        let mut extra = vec!["--id-column", column];
        if column == "doc_id" {
            extra.clear(); // The recorded id column.
        }
        let run = qdrant(dir, &out, &file, &extra);
        assert_eq!(run.status.code(), Some(1), "{column}");
        let err = stderr(&run);
        assert!(
            err.contains(id)
                && err.contains(&format!("row {row} "))
                && err.contains("part-")
                && err.contains("--qdrant-ids uuid5"),
            "{column}: {err}"
        );
        assert!(!file.exists(), "{column}");
        let run = qdrant(dir, &out, Path::new("-"), &extra);
        assert_eq!(run.status.code(), Some(1));
        assert!(
            run.stdout.is_empty(),
            "{column}: lines written before the refusal"
        );
    }

    // --qdrant-ids uuid5: Python's uuid5(NAMESPACE_OID, id), the id kept in the payload.
    ok(qdrant(dir, &out, &file, &["--qdrant-ids", "uuid5"]));
    let points = lines(&std::fs::read(&file).unwrap());
    assert_eq!(points.len(), 30);
    let by_doc: BTreeMap<String, String> = points
        .iter()
        .map(|p| {
            (
                p["payload"]["doc_id"].as_str().unwrap().to_string(),
                p["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(by_doc.len(), 30);
    assert_eq!(by_doc["doc-0"], "42f596e7-781c-5a5c-a7a2-0dd22ac92b5c");
    assert_eq!(by_doc["doc-7"], "c38682c3-8a47-52e4-aa74-e1970c1c6f70");
    assert!(points.iter().all(|p| p["vector"]["indices"].is_array()));
}
