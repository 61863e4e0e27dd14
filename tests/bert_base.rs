//! Parity on a BERT-base-size SPLADE model (12 layers, 768 hidden, 30522 vocab: the size of
//! splade-cocondenser). Its random weights (fixed seed) and reference vectors are generated
//! by `tests/reference/make_reference.py bert-base` with sentence-transformers; the model is
//! too large to commit, so this test needs the Python reference environment (`make test`
//! installs it into `.venv`) and says plainly when it skips.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};
use sparq::model::{DeviceSpec, Dtype, EncodeOptions, InputKind, SpladeEncoder};

fn reference_python() -> Option<PathBuf> {
    let python = std::env::var_os("SPARQ_REFERENCE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import sentence_transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

/// Generates the model and references once per script version (cached under target/).
fn generated() -> Option<PathBuf> {
    let python = reference_python()?;
    let script = root().join("tests/reference/make_reference.py");
    let mut hash = Sha256::new();
    hash.update(std::fs::read(&script).unwrap());
    hash.update(std::fs::read(root().join("tests/fixtures/texts.jsonl")).unwrap());
    let dir = root()
        .join("target/test-models")
        .join(format!("bert-base-{}", &hex::encode(hash.finalize())[..12]));
    if !dir.join("reference-queries.jsonl").is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new(python)
            .arg(&script)
            .arg("bert-base")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "make_reference.py bert-base failed");
    }
    Some(dir)
}

#[test]
fn bert_base_size_model_matches_reference_fp32_and_bf16() {
    let Some(dir) = generated() else {
        eprintln!(
            "SKIPPED bert_base parity: no Python with sentence-transformers at .venv/bin/python \
             (or $SPARQ_REFERENCE_PYTHON); `make test` installs it"
        );
        return;
    };
    let texts = fixture_texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let encoder =
        SpladeEncoder::load(&dir.join("model"), DeviceSpec::Cpu, Some(Dtype::F32)).unwrap();
    let opts = EncodeOptions {
        batch_size: 8,
        max_active_dims: None,
        ..Default::default()
    };
    let docs = encoder.encode(&refs, InputKind::Document, opts).unwrap();
    let want = read_vectors(&dir.join("reference-documents.jsonl"));
    assert_close("bert-base documents", &docs, &want, 1e-4, 1e-4);
    let queries = encoder.encode(&refs, InputKind::Query, opts).unwrap();
    assert_close(
        "bert-base queries",
        &queries,
        &read_vectors(&dir.join("reference-queries.jsonl")),
        1e-4,
        1e-4,
    );
    let mean_dims = docs.iter().map(|v| v.len()).sum::<usize>() as f64 / docs.len() as f64;
    assert!(
        (50.0..400.0).contains(&mean_dims),
        "mean active dims {mean_dims}: the fixture should be sparse"
    );

    let bf16 = SpladeEncoder::load(&dir.join("model"), DeviceSpec::Cpu, Some(Dtype::Bf16)).unwrap();
    let docs = bf16.encode(&refs, InputKind::Document, opts).unwrap();
    let mean_cos = docs
        .iter()
        .zip(&want)
        .map(|(g, w)| cosine(g, w))
        .sum::<f32>()
        / docs.len() as f32;
    for (n, (g, w)) in docs.iter().zip(&want).enumerate() {
        let c = cosine(g, w);
        assert!(
            c >= 0.99,
            "bf16 text {n}: cosine {c} < 0.99 (mean {mean_cos})"
        );
    }
}
