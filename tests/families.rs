//! Every supported model family through the commands a user runs, not only the library:
//! `sparq encode` on parquet (documents and `--query`) equal to the library encoder, and
//! `sparq export --format anserini` naming dims by the model's own vocabulary.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::corpus::{read_output, write_batch};
use common::*;
use sparq::encode::SparseVector;
use sparq::model::{DeviceSpec, Dtype, EncodeOptions, InputKind, SpladeEncoder};

/// One model folder per family (each has its own parity test against its reference).
fn families() -> Vec<PathBuf> {
    let fixtures = root().join("tests/fixtures/models");
    let mut out = vec![tiny_model()];
    out.extend(
        [
            "distil-sum-tiny",
            "roberta-tiny",
            "xlmr-tiny",
            "mbert-tiny",
            "bge-m3-tiny",
            "modernbert-tiny",
            "router-static",
            "router-idf",
            "router-asym",
            "router-two",
        ]
        .iter()
        .map(|name| fixtures.join(name)),
    );
    out
}

fn sparq(args: &[&str]) -> std::process::Output {
    common::process::run_sparq(args, b"")
}

fn encode_with_binary(model: &Path, input: &Path, output: &Path, query: bool) -> Vec<SparseVector> {
    let mut args = vec![
        "encode",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--workers",
        "1",
    ];
    if query {
        args.push("--query");
    }
    let out = sparq(&args);
    assert!(
        out.status.success(),
        "{}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut rows, _) = read_output(output);
    rows.sort_by_key(|r| r.0);
    rows.into_iter().map(|(_, v)| v.unwrap()).collect()
}

#[test]
fn every_family_encodes_parquet_and_exports_through_the_binary() {
    let texts = fixture_texts();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(
                (0..texts.len() as i64).collect::<Vec<_>>(),
            )) as ArrayRef,
            Arc::new(StringArray::from(texts.clone())),
        ],
    )
    .unwrap();
    write_batch(&input, batch, 8);
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    for (n, model) in families().iter().enumerate() {
        let encoder = SpladeEncoder::load(model, DeviceSpec::Cpu, Some(Dtype::F32)).unwrap();
        for (kind, query) in [(InputKind::Document, false), (InputKind::Query, true)] {
            let output = dir.path().join(format!("out-{n}-{query}"));
            let got = encode_with_binary(model, &input, &output, query);
            let want = encoder
                .encode(&refs, kind, EncodeOptions::default())
                .unwrap();
            assert_close(
                &format!("{} {kind:?}", model.display()),
                &got,
                &want,
                1e-5,
                1e-5,
            );
            assert!(want.iter().filter(|v| v.len() > 3).count() > texts.len() / 2);
        }
        // Anserini names each dim by the model's vocabulary string.
        let exported = dir.path().join(format!("anserini-{n}.jsonl"));
        let out = sparq(&[
            "export",
            "--format",
            "anserini",
            "--input",
            dir.path().join(format!("out-{n}-false")).to_str().unwrap(),
            "--output",
            exported.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&exported)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let doc = encoder
            .encode(&refs[..1], InputKind::Document, EncodeOptions::default())
            .unwrap()
            .remove(0);
        let top = doc.indices[doc
            .values
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0];
        let token = encoder.tokenizer().token(top);
        assert!(
            first["vector"].get(&token).is_some(),
            "{}: token {token:?} missing from {first}",
            model.display()
        );
    }
}
