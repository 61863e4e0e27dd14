//! `sparq export`, `inspect` and `decode` on a real `sparq encode` output: every format parsed
//! by its own rules and compared with the source vectors.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::corpus::{read_output, write_corpus};
use common::{root, tiny_model};
use serde_json::Value;
use sparq::encode::SparseVector;
use sparq::model::layout::ModelLayout;
use sparq::model::tokenizer::SpladeTokenizer;

const SPARQ: &str = env!("CARGO_BIN_EXE_sparq");

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    out: PathBuf,
    source: BTreeMap<i64, SparseVector>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(dir.join("in")).unwrap();
    write_corpus(&dir.join("in/a.parquet"), 0..60, 20);
    let out = dir.join("encoded");
    let status = Command::new(SPARQ)
        .current_dir(root())
        .args([
            "encode",
            "--workers",
            "1",
            "--threads",
            "1",
            "--shard-rows",
            "30",
            "--input",
        ])
        .arg(dir.join("in"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (rows, _) = read_output(&out);
    let source = rows
        .into_iter()
        .map(|(id, v)| (id, v.expect("no failed rows in this corpus")))
        .collect();
    Fixture {
        _tmp: tmp,
        dir,
        out,
        source,
    }
}

fn export(f: &Fixture, output: &Path, args: &[&str]) -> Value {
    let out = Command::new(SPARQ)
        .current_dir(root())
        .args(["export", "--input"])
        .arg(&f.out)
        .arg("--output")
        .arg(output)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn read_lines(path: &Path) -> Vec<Value> {
    let mut text = String::new();
    let file = std::fs::File::open(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .unwrap();
    } else {
        std::io::BufReader::new(file)
            .read_to_string(&mut text)
            .unwrap();
    }
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tokenizer() -> SpladeTokenizer {
    SpladeTokenizer::load(&ModelLayout::read(&tiny_model()).unwrap()).unwrap()
}

fn quantized(v: &SparseVector, tok: &SpladeTokenizer, f: f64) -> BTreeMap<String, i64> {
    v.indices
        .iter()
        .zip(&v.values)
        .map(|(&i, &w)| (tok.token(i), (w as f64 * f).round() as i64))
        .filter(|p| p.1 != 0)
        .collect()
}

#[test]
fn anserini_lines_hold_integer_impacts_of_every_token() {
    let f = fixture();
    let tok = tokenizer();
    let file = f.dir.join("anserini.jsonl");
    let summary = export(&f, &file, &["--format", "anserini"]);
    assert_eq!(summary["export_summary"]["rows"].as_u64(), Some(60));
    let lines = read_lines(&file);
    assert_eq!(lines.len(), 60);
    for line in &lines {
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["contents", "id", "vector"]);
        assert_eq!(line["contents"], "");
        let id: i64 = line["id"].as_str().expect("string id").parse().unwrap();
        let vector: BTreeMap<String, i64> = line["vector"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_i64().expect("integer impact")))
            .collect();
        assert!(vector.values().all(|&q| q > 0));
        assert_eq!(vector, quantized(&f.source[&id], &tok, 100.0), "row {id}");
    }
}

#[test]
fn qdrant_folder_gzipped_round_trips_exactly() {
    let f = fixture();
    let folder = f.dir.join("qdrant");
    let summary = export(&f, &folder, &["--format", "qdrant", "--gzip"]);
    let files = summary["export_summary"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "one file per input part");
    let mut seen = HashMap::new();
    for name in files {
        let path = PathBuf::from(name.as_str().unwrap());
        assert!(path.starts_with(&folder) && path.to_string_lossy().ends_with(".jsonl.gz"));
        for line in read_lines(&path) {
            let id = line["id"].as_i64().expect("numeric id");
            let idx: Vec<u32> = serde_json::from_value(line["vector"]["indices"].clone()).unwrap();
            let val: Vec<f32> = serde_json::from_value(line["vector"]["values"].clone()).unwrap();
            assert!(idx.windows(2).all(|w| w[0] < w[1]), "indices ascending");
            seen.insert(
                id,
                SparseVector {
                    indices: idx,
                    values: val,
                },
            );
        }
    }
    assert_eq!(seen.len(), 60);
    for (id, v) in &f.source {
        let nonzero: Vec<(u32, f32)> = v
            .indices
            .iter()
            .copied()
            .zip(v.values.iter().copied())
            .filter(|p| p.1 != 0.0)
            .collect();
        let got: Vec<(u32, f32)> = seen[id]
            .indices
            .iter()
            .copied()
            .zip(seen[id].values.iter().copied())
            .collect();
        assert_eq!(got, nonzero, "row {id}");
    }
}

#[test]
fn elasticsearch_bulk_lines_with_top_k() {
    let f = fixture();
    let tok = tokenizer();
    let file = f.dir.join("es.jsonl");
    export(
        &f,
        &file,
        &[
            "--format",
            "elasticsearch",
            "--top-k",
            "5",
            "--index",
            "docs",
            "--field",
            "ml",
        ],
    );
    let lines = read_lines(&file);
    assert_eq!(lines.len(), 120, "an action and a document per row");
    for pair in lines.chunks(2) {
        let id: i64 = pair[0]["index"]["_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(pair[0]["index"]["_index"], "docs");
        let doc = pair[1]["ml"].as_object().unwrap();
        let v = &f.source[&id];
        let mut want: Vec<(u32, f32)> = v
            .indices
            .iter()
            .copied()
            .zip(v.values.iter().copied())
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        want.truncate(5);
        assert_eq!(doc.len(), want.len(), "row {id}");
        for (i, w) in want {
            let key = tok.token(i).replace('.', "_");
            assert!(!key.contains('.'));
            let got = doc[&key].as_f64().unwrap() as f32;
            assert!(got > 0.0);
            assert_eq!(got, w, "row {id} token {key}");
        }
    }
}

#[test]
fn jsonl_with_tokens_min_weight_and_quantization() {
    let f = fixture();
    let tok = tokenizer();
    let file = f.dir.join("plain.jsonl.gz");
    export(
        &f,
        &file,
        &[
            "--format",
            "jsonl",
            "--tokens",
            "--min-weight",
            "0.5",
            "--quantize",
            "10",
        ],
    );
    let lines = read_lines(&file);
    assert_eq!(lines.len(), 60);
    for line in &lines {
        let id = line["id"].as_i64().unwrap();
        let v = &f.source[&id];
        let want: Vec<(u32, i64)> = v
            .indices
            .iter()
            .zip(&v.values)
            .filter(|p| *p.1 >= 0.5)
            .map(|(&i, &w)| (i, (w as f64 * 10.0).round() as i64))
            .filter(|p| p.1 != 0)
            .collect();
        let idx: Vec<u32> = serde_json::from_value(line["indices"].clone()).unwrap();
        let val: Vec<i64> = serde_json::from_value(line["values"].clone()).unwrap();
        let tokens: Vec<String> = serde_json::from_value(line["tokens"].clone()).unwrap();
        assert_eq!(
            idx.iter().copied().zip(val).collect::<Vec<_>>(),
            want,
            "row {id}"
        );
        assert_eq!(
            tokens,
            idx.iter().map(|&i| tok.token(i)).collect::<Vec<_>>()
        );
    }
}

#[test]
fn inspect_and_decode_report_what_is_in_the_output() {
    let f = fixture();
    let out = Command::new(SPARQ)
        .current_dir(root())
        .arg("inspect")
        .arg(&f.out)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rows"], 60);
    assert_eq!(r["files"], 2);
    let dims: Vec<usize> = f.source.values().map(|v| v.indices.len()).collect();
    let mean = dims.iter().sum::<usize>() as f64 / dims.len() as f64;
    assert!((r["active_dims"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    let mut sorted = dims.clone();
    sorted.sort();
    assert_eq!(r["active_dims"]["p50"].as_u64(), Some(sorted[29] as u64));
    assert_eq!(
        r["active_dims"]["max"].as_u64(),
        Some(*sorted.last().unwrap() as u64)
    );
    let top = &r["top_tokens_by_document_frequency"][0];
    let id = top["id"].as_u64().unwrap() as u32;
    let df = f
        .source
        .values()
        .filter(|v| v.indices.contains(&id))
        .count();
    assert_eq!(top["documents"].as_u64(), Some(df as u64));
    assert!(f.source.values().all(|v| v
        .indices
        .iter()
        .filter(|&&i| i != id)
        .all(|i| { f.source.values().filter(|w| w.indices.contains(i)).count() <= df })));
    // Text form too.
    let text = Command::new(SPARQ)
        .current_dir(root())
        .arg("inspect")
        .arg(&f.out)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("60 rows in 2 files"));

    let tok = tokenizer();
    let out = Command::new(SPARQ)
        .current_dir(root())
        .arg("decode")
        .arg(&f.out)
        .args(["--id", "3,5", "--top", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for (row, id) in rows.iter().zip([3i64, 5]) {
        assert_eq!(row["id"], id);
        let v = &f.source[&id];
        let best = v.values.iter().cloned().fold(f32::MIN, f32::max);
        let best_token = tok.token(v.indices[v.values.iter().position(|&w| w == best).unwrap()]);
        assert_eq!(row["tokens"][0][0], best_token.as_str());
    }
    let missing = Command::new(SPARQ)
        .current_dir(root())
        .arg("decode")
        .arg(&f.out)
        .args(["--id", "999"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("999"));
}

#[test]
fn token_strings_from_another_model_are_refused() {
    let f = fixture();
    let out = Command::new(SPARQ)
        .current_dir(root())
        .args(["export", "--format", "anserini", "--input"])
        .arg(&f.out)
        .arg("--output")
        .arg(f.dir.join("x.jsonl"))
        .arg("--model")
        .arg(root().join("tests/fixtures/models/distil-sum-tiny"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another model"), "{err}");
    assert!(!f.dir.join("x.jsonl").exists());
    // Not an encode output at all.
    let out = Command::new(SPARQ)
        .current_dir(root())
        .args(["export", "--format", "qdrant", "--input"])
        .arg(root().join("tests/fixtures"))
        .arg("--output")
        .arg(f.dir.join("y.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sparq encode"));
}

#[test]
fn export_to_s3_equals_the_local_export() {
    use object_store::ObjectStoreExt;
    let Some(endpoint) = common::s3::endpoint() else {
        return;
    };
    let f = fixture();
    let local = f.dir.join("local.jsonl");
    export(&f, &local, &["--format", "qdrant"]);
    let key = format!("export-{}/q.jsonl", uuid::Uuid::new_v4());
    let mut cmd = Command::new(SPARQ);
    cmd.current_dir(root())
        .args(["export", "--format", "qdrant", "--input"])
        .arg(&f.out)
        .args(["--output", &format!("s3://sparq-test/{key}")]);
    common::s3::env(&mut cmd, &endpoint);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = common::s3::store(&endpoint);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = rt
        .block_on(async {
            store
                .get(&object_store::path::Path::from(key))
                .await?
                .bytes()
                .await
        })
        .unwrap();
    assert_eq!(bytes.as_ref(), std::fs::read(&local).unwrap().as_slice());
}
