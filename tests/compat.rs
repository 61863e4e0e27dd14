//! What an earlier sparq left on disk still works with this one: `tests/fixtures/compat/`
//! (written by `tests/reference/make_compat_fixtures.sh` with the binary named in its
//! `VERSION`) holds an interrupted encode output and a training checkpoint. This binary resumes
//! the output exactly once, inspects and exports it, and resumes the training run to the same
//! weights the old binary reached without interruption.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use object_store::ObjectStore;

const F: &str = "tests/fixtures/compat";

fn sparq() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL");
    c
}

#[test]
fn an_interrupted_output_of_the_earlier_version_resumes_inspects_and_exports() {
    let Some(endpoint) = common::s3::endpoint() else {
        return;
    };
    let s3: Arc<dyn ObjectStore> = Arc::new(common::s3::store(&endpoint));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::s3::upload(
        &s3,
        &root().join(F).join("corpus.parquet"),
        "compat/corpus/corpus.parquet",
    ));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("output");
    copy_dir(&root().join(F).join("output"), &out);
    let mut cmd = sparq();
    cmd.args([
        "encode",
        "--input",
        "s3://sparq-test/compat/corpus",
        "--shard-rows",
        "10",
        "--keep-columns",
        "text",
        "--threads",
        "1",
        "--output",
    ])
    .arg(&out);
    common::s3::env(&mut cmd, &endpoint);
    let run = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&run.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["skipped_shards"], 2, "{summary}");
    assert_eq!(summary["committed_shards"], 2, "{summary}");
    // Every row once, equal to the library's vectors of the fixture's texts.
    let (rows, _) = common::corpus::read_output(&out);
    let mut ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    ids.sort();
    assert_eq!(ids, (0..40).collect::<Vec<_>>());
    let encoder =
        sparq::model::SpladeEncoder::load(&tiny_model(), sparq::model::DeviceSpec::Cpu, None)
            .unwrap();
    let texts: Vec<String> = (0..40)
        .map(|i| format!("passage {i}: the river and the mountain, whisky and bread, number {i}"))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let want = encoder
        .encode(
            &refs,
            sparq::model::InputKind::Document,
            sparq::model::EncodeOptions::default(),
        )
        .unwrap();
    let mut got = vec![sparq::encode::SparseVector::default(); 40];
    for (id, v) in rows {
        got[id as usize] = v.unwrap();
    }
    assert_close("resumed output", &got, &want, 1e-5, 1e-5);
    // inspect and export read it.
    let inspect = sparq()
        .args(["inspect", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(report["rows"], 40);
    let jsonl = tmp.path().join("x.jsonl");
    let export = sparq()
        .args(["export", "--format", "jsonl", "--input"])
        .arg(&out)
        .arg("--output")
        .arg(&jsonl)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap().lines().count(), 40);
}

#[test]
fn a_checkpoint_of_the_earlier_version_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("train");
    copy_dir(&root().join(F).join("train"), &out);
    let run = sparq()
        .args([
            "train",
            "--model",
            &format!("{F}/bert-micro"),
            "--train-data",
            &format!("{F}/pairs.parquet"),
            "--max-steps",
            "4",
            "--save-steps",
            "2",
            "--batch-size",
            "8",
            "--learning-rate",
            "1e-3",
            "--threads",
            "1",
            "--resume",
            "--output",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let read = |p: &Path| {
        let mut t = tch::Tensor::read_safetensors(p).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let got = read(&out.join("model.safetensors"));
    let want = read(&root().join(F).join("final-weights.safetensors"));
    assert_eq!(got.len(), want.len());
    for ((n, a), (m, b)) in got.iter().zip(&want) {
        assert_eq!(n, m);
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "{n}: {diff}");
    }
}
