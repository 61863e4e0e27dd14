//! ModernBERT (`ModernBertForMaskedLM`) equal to sentence-transformers: a random-weight fixture
//! with global and sliding-window layers, a 16-token local window and texts longer than it
//! (`tests/reference/make_modernbert_reference.py` wrote the fixture and the references with
//! `SparseEncoder.encode_document` / `encode_query`, fp32 CPU).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use sparq::encode::SparseVector;
use sparq::model::{DeviceSpec, Dtype, EncodeOptions, InputKind, ModelError, SpladeEncoder};

/// fp32 weights within 1e-4 of the reference, same non-zero dims (weights under 1e-4 ignored).
const TOL: f32 = 1e-4;

fn fixture() -> PathBuf {
    root().join("tests/fixtures/models/modernbert-tiny")
}

/// tests/fixtures/texts.jsonl, then the multilingual and long texts of modernbert-texts.jsonl.
fn texts() -> Vec<String> {
    let extra =
        std::fs::read_to_string(root().join("tests/fixtures/modernbert-texts.jsonl")).unwrap();
    let mut texts = fixture_texts();
    texts.extend(
        extra
            .lines()
            .map(|l| serde_json::from_str::<String>(l).unwrap()),
    );
    texts
}

fn encode(model: &Path, kind: InputKind, batch_size: usize, dtype: Dtype) -> Vec<SparseVector> {
    let encoder = SpladeEncoder::load(model, DeviceSpec::Cpu, Some(dtype)).unwrap();
    let texts = texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let opts = EncodeOptions {
        batch_size,
        max_active_dims: None,
        ..Default::default()
    };
    encoder.encode(&refs, kind, opts).unwrap()
}

fn reference(name: &str) -> Vec<SparseVector> {
    read_vectors(&root().join("tests/reference").join(name))
}

/// The fixture's `local_attention` (the whole window, both sides).
fn local_window() -> usize {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    config["local_attention"].as_u64().unwrap() as usize
}

#[test]
fn token_ids_equal_transformers_and_many_texts_run_past_the_local_window() {
    let encoder = SpladeEncoder::load(&fixture(), DeviceSpec::Cpu, None).unwrap();
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = encoder.tokenize(&refs, InputKind::Document).unwrap();
    let want: Vec<Vec<u32>> =
        std::fs::read_to_string(root().join("tests/reference/modernbert-token-ids.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(ids.len(), want.len());
    for (n, (got, want)) in ids.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "text {n}: {:?}", texts[n]);
    }
    // A token at distance window/2 + 1 or more from another exists only in sequences longer
    // than window + 1: they must be present, or the band mask goes untested.
    let window = local_window();
    let past = ids.iter().filter(|s| s.len() > window + 1).count();
    assert!(
        past >= ids.len() / 2,
        "only {past} of {} texts run past the {window}-token local window",
        ids.len()
    );
    // Truncated at max_seq_length (96) too.
    assert!(ids.iter().any(|s| s.len() == 96));
}

#[test]
fn documents_and_queries_match_the_reference() {
    let docs = encode(&fixture(), InputKind::Document, 32, Dtype::F32);
    let want = reference("modernbert-documents.jsonl");
    eprintln!("documents: max abs diff {:e}", max_abs_diff(&docs, &want));
    assert_close("documents", &docs, &want, TOL, TOL);
    let queries = encode(&fixture(), InputKind::Query, 32, Dtype::F32);
    let want = reference("modernbert-queries.jsonl");
    eprintln!("queries: max abs diff {:e}", max_abs_diff(&queries, &want));
    assert_close("queries", &queries, &want, TOL, TOL);
    // Real, sparse-ish vectors (the decoder bias was shifted to ~60 active dims).
    assert!(docs.iter().all(|v| !v.is_empty() && v.len() < 400));
    assert!(docs.iter().map(SparseVector::len).sum::<usize>() > 20 * docs.len());
}

#[test]
fn a_wider_window_changes_long_texts_so_the_band_mask_is_what_matches() {
    // The same weights with local attention as wide as the sequences: short texts are
    // unchanged, texts longer than the window must move away from the reference.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), tmp.path());
    let path = tmp.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["local_attention"] = 1024.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let wide = encode(tmp.path(), InputKind::Document, 32, Dtype::F32);
    let want = reference("modernbert-documents.jsonl");
    let moved = wide
        .iter()
        .zip(&want)
        .filter(|(g, w)| {
            let (gm, wm) = (to_map(g), to_map(w));
            wm.iter()
                .any(|(k, v)| (gm.get(k).copied().unwrap_or(0.0) - v).abs() > 1e-3)
        })
        .count();
    assert!(moved >= want.len() / 2, "only {moved} texts changed");
}

/// Largest weight difference over all dims of all vectors (a missing dim counts as 0).
fn max_abs_diff(got: &[SparseVector], want: &[SparseVector]) -> f32 {
    let mut max = 0.0f32;
    for (g, w) in got.iter().zip(want) {
        let (gm, wm) = (to_map(g), to_map(w));
        for k in gm.keys().chain(wm.keys()) {
            let d = gm.get(k).copied().unwrap_or(0.0) - wm.get(k).copied().unwrap_or(0.0);
            max = max.max(d.abs());
        }
    }
    max
}

fn to_map(v: &SparseVector) -> std::collections::BTreeMap<u32, f32> {
    v.indices
        .iter()
        .copied()
        .zip(v.values.iter().copied())
        .collect()
}

#[test]
fn batched_output_equals_one_by_one_output() {
    let one = encode(&fixture(), InputKind::Document, 1, Dtype::F32);
    for batch_size in [3, 7, 64] {
        let got = encode(&fixture(), InputKind::Document, batch_size, Dtype::F32);
        eprintln!(
            "batch {batch_size} vs 1: max abs diff {:e}",
            max_abs_diff(&got, &one)
        );
        assert_close(&format!("batch {batch_size}"), &got, &one, 1e-5, 1e-5);
    }
}

#[test]
fn bf16_is_close_to_the_reference() {
    for batch_size in [1, 32] {
        let docs = encode(&fixture(), InputKind::Document, batch_size, Dtype::Bf16);
        let want = reference("modernbert-documents.jsonl");
        let lowest = docs
            .iter()
            .zip(&want)
            .map(|(g, w)| cosine(g, w))
            .fold(1.0f32, f32::min);
        eprintln!("bf16 batch {batch_size}: lowest cosine {lowest}");
        for (n, (g, w)) in docs.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            assert!(
                c >= 0.99,
                "batch {batch_size}, text {n}: bf16 cosine {c} < 0.99"
            );
        }
    }
}

#[test]
fn encode_text_cli_runs_the_fixture() {
    let texts = texts();
    let input: String = texts
        .iter()
        .map(|t| serde_json::to_string(t).unwrap() + "\n")
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparq"))
        .args(["encode-text", "--model"])
        .arg(fixture())
        .env_remove("SPARQ_MODEL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<SparseVector> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(parse_vector)
        .collect();
    assert_close(
        "encode-text",
        &got,
        &reference("modernbert-documents.jsonl"),
        TOL,
        TOL,
    );
}

#[test]
fn unsupported_rope_settings_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), tmp.path());
    let path = tmp.path().join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut config = original.clone();
    config["rope_parameters"]["sliding_attention"]["rope_type"] = "yarn".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let err = SpladeEncoder::load(tmp.path(), DeviceSpec::Cpu, None)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::Config { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("rope_parameters.sliding_attention.rope_type") && message.contains("yarn"),
        "{message}"
    );
    let mut config = original;
    config["layer_types"] = serde_json::json!(["full_attention", "chunked_attention"]);
    std::fs::write(&path, config.to_string()).unwrap();
    let message = SpladeEncoder::load(tmp.path(), DeviceSpec::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("layer_types"), "{message}");
}

#[test]
fn hub_style_config_keys_give_the_same_vectors() {
    // Checkpoints on the hub carry `global_attn_every_n_layers`, `global_rope_theta` and
    // `local_rope_theta`, not transformers 5's `layer_types` / `rope_parameters`.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), tmp.path());
    let path = tmp.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rope = config["rope_parameters"].clone();
    let object = config.as_object_mut().unwrap();
    object.remove("layer_types");
    object.remove("rope_parameters");
    object.insert("global_attn_every_n_layers".into(), 3.into());
    object.insert(
        "global_rope_theta".into(),
        rope["full_attention"]["rope_theta"].clone(),
    );
    object.insert(
        "local_rope_theta".into(),
        rope["sliding_attention"]["rope_theta"].clone(),
    );
    std::fs::write(&path, config.to_string()).unwrap();
    let docs = encode(tmp.path(), InputKind::Document, 32, Dtype::F32);
    assert_close(
        "hub-style config",
        &docs,
        &reference("modernbert-documents.jsonl"),
        TOL,
        TOL,
    );
}

#[test]
fn training_a_modernbert_is_refused_with_what_to_do() {
    let err = sparq::train::model::TrainModel::load(&fixture(), tch::Device::Cpu, false)
        .err()
        .expect("training a ModernBERT must be refused");
    let message = err.to_string();
    assert!(
        message.contains("training a ModernBERT model is not supported")
            && message.contains("SparseEncoderTrainer"),
        "{message}"
    );
}
