//! Router models (sentence-transformers `Router`, legacy `Asym`): an inference-free query route
//! (`SparseStaticEmbedding` from its weights file or from idf.json) beside an MLM document
//! route, and two full encoders in one model. References were written by
//! `tests/reference/make_router_reference.py` with `encode_query` / `encode_document`
//! (fp32, CPU).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use sparq::encode::SparseVector;
use sparq::model::{fingerprint, DeviceSpec, Dtype, EncodeOptions, InputKind, SpladeEncoder};

/// fp32 weights within 1e-4 of the reference, same non-zero dims.
const TOL: f32 = 1e-4;

const FIXTURES: [&str; 4] = ["static", "idf", "asym", "two"];

fn model(name: &str) -> PathBuf {
    root()
        .join("tests/fixtures/models")
        .join(format!("router-{name}"))
}

/// The fixture texts plus multilingual, repetitive, long and empty ones.
fn texts() -> Vec<String> {
    let extra = std::fs::read_to_string(root().join("tests/fixtures/router-texts.jsonl")).unwrap();
    let mut texts = fixture_texts();
    texts.extend(
        extra
            .lines()
            .map(|l| serde_json::from_str::<String>(l).unwrap()),
    );
    texts
}

fn reference(name: &str, kind: InputKind) -> Vec<SparseVector> {
    let kind = match kind {
        InputKind::Query => "queries",
        InputKind::Document => "documents",
    };
    read_vectors(&root().join(format!("tests/reference/router-{name}-{kind}.jsonl")))
}

fn encode(
    encoder: &SpladeEncoder,
    texts: &[String],
    kind: InputKind,
    batch_size: usize,
) -> Vec<SparseVector> {
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let opts = EncodeOptions {
        batch_size,
        max_active_dims: None,
        ..Default::default()
    };
    encoder.encode(&refs, kind, opts).unwrap()
}

fn load(name: &str, dtype: Dtype) -> SpladeEncoder {
    SpladeEncoder::load(&model(name), DeviceSpec::Cpu, Some(dtype)).unwrap()
}

#[test]
fn every_fixture_matches_the_reference_for_queries_and_documents() {
    let texts = texts();
    for name in FIXTURES {
        let encoder = load(name, Dtype::F32);
        for kind in [InputKind::Query, InputKind::Document] {
            let got = encode(&encoder, &texts, kind, 8);
            let want = reference(name, kind);
            assert_close(&format!("{name} {kind:?}"), &got, &want, TOL, TOL);
            // Teeth: real vectors, not all empty.
            assert!(
                got.iter().filter(|v| v.len() > 3).count() > texts.len() / 2,
                "{name} {kind:?}: mostly empty vectors"
            );
        }
    }
}

#[test]
fn inference_free_routes_are_the_query_routes_only() {
    for (name, free) in [
        ("static", true),
        ("idf", true),
        ("asym", true),
        ("two", false),
    ] {
        let encoder = load(name, Dtype::F32);
        assert_eq!(encoder.inference_free_queries(), free, "{name}");
        assert_eq!(
            encoder.route(InputKind::Query).is_inference_free(),
            free,
            "{name}"
        );
        assert!(!encoder.route(InputKind::Document).is_inference_free());
    }
}

/// The `weight` tensor of the static route, read straight from its safetensors file.
fn static_weights(dir: &Path) -> Vec<f32> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor("weight").unwrap();
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn static_queries_are_exact_lookups_of_the_stored_weights() {
    let route_dir = model("static").join("query_0_SparseStaticEmbedding");
    let weights = static_weights(&route_dir);
    let texts = texts();
    let encoder = load("static", Dtype::F32);
    let got = encode(&encoder, &texts, InputKind::Query, 32);
    let want = reference("static", InputKind::Query);
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        // Exactly the reference: no arithmetic happens on the way.
        assert_eq!(g.indices, w.indices, "query {n}: dims");
        assert_eq!(g.values, w.values, "query {n}: weights");
        for (&i, &v) in g.indices.iter().zip(&g.values) {
            assert_eq!(v, weights[i as usize], "query {n} dim {i}");
        }
    }
    // Without special tokens: [CLS] and [SEP] never appear (their weights are non-zero).
    let tokenizer = encoder.route(InputKind::Query).tokenizer();
    let cls = tokenizer.inner().token_to_id("[CLS]").unwrap();
    assert_ne!(
        weights[cls as usize], 0.0,
        "the check below needs a weighted [CLS]"
    );
    assert!(got.iter().all(|v| !v.indices.contains(&cls)));
    // A repeated token counts once.
    let repeated = encode(
        &encoder,
        &["weather weather weather".into()],
        InputKind::Query,
        1,
    );
    let once = encode(&encoder, &["weather".into()], InputKind::Query, 1);
    assert_eq!(repeated, once);
}

#[test]
fn idf_json_gives_the_weights_file_route_except_the_unknown_token() {
    let texts = texts();
    let from_json = encode(&load("idf", Dtype::F32), &texts, InputKind::Query, 32);
    let from_file = encode(&load("static", Dtype::F32), &texts, InputKind::Query, 32);
    let encoder = load("idf", Dtype::F32);
    let unk = encoder
        .route(InputKind::Query)
        .tokenizer()
        .inner()
        .token_to_id("[UNK]")
        .unwrap();
    let without_unk = |v: &SparseVector| -> Vec<(u32, f32)> {
        v.indices
            .iter()
            .copied()
            .zip(v.values.iter().copied())
            .filter(|(i, _)| *i != unk)
            .collect()
    };
    for (a, b) in from_json.iter().zip(&from_file) {
        assert_eq!(without_unk(a), without_unk(b));
    }
    // idf.json's entry for a token outside the vocabulary lands on [UNK], as upstream maps it.
    let unknown = encode(&encoder, &["東京".into()], InputKind::Query, 1);
    assert_eq!(unknown[0].indices, vec![unk]);
    assert_eq!(unknown[0].values, vec![1.25]);
}

#[test]
fn batched_equals_one_by_one() {
    let texts = texts();
    for name in ["static", "two"] {
        let encoder = load(name, Dtype::F32);
        for kind in [InputKind::Query, InputKind::Document] {
            let batched = encode(&encoder, &texts, kind, 16);
            let single = encode(&encoder, &texts, kind, 1);
            assert_close(&format!("{name} {kind:?}"), &batched, &single, 1e-5, 1e-5);
        }
    }
}

#[test]
fn bf16_model_routes_keep_cosine_099() {
    let texts = texts();
    for (name, kinds) in [
        ("static", vec![InputKind::Document]),
        ("two", vec![InputKind::Query, InputKind::Document]),
    ] {
        let encoder = load(name, Dtype::Bf16);
        for kind in kinds {
            let got = encode(&encoder, &texts, kind, 8);
            for (n, (g, w)) in got.iter().zip(reference(name, kind)).enumerate() {
                let c = cosine(g, &w);
                assert!(c >= 0.99, "{name} {kind:?}[{n}]: cosine {c}");
            }
        }
    }
}

#[test]
fn max_active_dims_keeps_the_largest_static_weights() {
    let encoder = load("static", Dtype::F32);
    let texts = texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let opts = EncodeOptions {
        batch_size: 8,
        max_active_dims: Some(3),
        ..Default::default()
    };
    let got = encoder.encode(&refs, InputKind::Query, opts).unwrap();
    for (g, full) in got.iter().zip(reference("static", InputKind::Query)) {
        let mut sorted = full.values.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        sorted.truncate(3);
        let mut kept = g.values.clone();
        kept.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(kept, sorted);
    }
}

fn sparq(args: &[&str], stdin: &str) -> Output {
    common::process::run_sparq(args, stdin.as_bytes())
}

#[test]
fn the_binary_encodes_queries_and_documents_by_their_routes() {
    let texts = texts();
    let jsonl: String = texts
        .iter()
        .map(|t| serde_json::to_string(t).unwrap() + "\n")
        .collect();
    for name in ["static", "two"] {
        let dir = model(name);
        let dir = dir.to_str().unwrap();
        for (flags, kind) in [
            (vec!["--query"], InputKind::Query),
            (vec![], InputKind::Document),
        ] {
            let mut args = vec!["encode-text", "--model", dir];
            args.extend(flags);
            let out = sparq(&args, &jsonl);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{name} {args:?}: {stderr}");
            let got: Vec<SparseVector> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(parse_vector)
                .collect();
            assert_close(
                &format!("{name} {kind:?}"),
                &got,
                &reference(name, kind),
                TOL,
                TOL,
            );
        }
    }
}

fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sparq-router-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&model(name), &dir);
    dir
}

#[test]
fn an_unknown_module_type_in_a_router_is_refused_naming_it_and_the_file() {
    let dir = copy_fixture("static", "unknown");
    let config = dir.join("router_config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "sentence_transformers.sparse_encoder.modules.sparse_static_embedding.SparseStaticEmbedding",
        "sentence_transformers.sparse_encoder.modules.sparse_auto_encoder.SparseAutoEncoder",
    );
    std::fs::write(&config, text).unwrap();
    let out = sparq(
        &["encode-text", "--model", dir.to_str().unwrap(), "--query"],
        "\"hello\"\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SparseAutoEncoder"), "{stderr}");
    assert!(stderr.contains("router_config.json"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_router_without_a_query_route_is_refused_naming_the_routes() {
    let dir = copy_fixture("static", "noroute");
    let config = dir.join("router_config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"query\": [", "\"questions\": [");
    std::fs::write(&config, text).unwrap();
    let err = SpladeEncoder::load(&dir, DeviceSpec::Cpu, Some(Dtype::F32))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("router_config.json"), "{err}");
    assert!(err.contains("no route for task `query`"), "{err}");
    assert!(err.contains("questions"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn training_a_two_encoder_router_is_refused_with_the_reason() {
    // Inference-free Routers train (tests/train_router.rs); two encoders do not.
    let err = sparq::train::model::TrainModel::load(&model("two"), tch::Device::Cpu, false)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("two-encoder Router"), "{err}");
    assert!(err.contains("router_config.json"), "{err}");
}

#[test]
fn the_fingerprint_covers_every_route() {
    let dir = copy_fixture("static", "fingerprint");
    let before = fingerprint(&dir).unwrap();
    let weights = dir.join("query_0_SparseStaticEmbedding/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    assert_ne!(fingerprint(&dir).unwrap(), before, "query route weights");
    let after_query = fingerprint(&dir).unwrap();
    let pooling = dir.join("document_1_SpladePooling/config.json");
    let text = std::fs::read_to_string(&pooling).unwrap();
    std::fs::write(&pooling, text.replace("log1p_relu", "relu")).unwrap();
    assert_ne!(
        fingerprint(&dir).unwrap(),
        after_query,
        "document route config"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sparq_encode_query_takes_the_inference_free_route() {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    let texts = texts();
    let dir = std::env::temp_dir().join(format!("sparq-router-encode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
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
    let input = dir.join("corpus.parquet");
    corpus::write_batch(&input, batch, 16);
    let output = dir.join("out");
    let out = sparq(
        &[
            "encode",
            "--model",
            model("static").to_str().unwrap(),
            "--query",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--workers",
            "1",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rows, _) = corpus::read_output(&output);
    let want = reference("static", InputKind::Query);
    assert_eq!(rows.len(), want.len());
    for (id, vector) in rows {
        // Static queries are lookups: exactly the reference (an empty text has no weights).
        let got = vector.unwrap_or_default();
        assert_eq!(got, want[id as usize], "row {id}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn memoized_word_ids_equal_the_tokenizer_on_whole_texts() {
    let encoder = load("static", Dtype::F32);
    let route = encoder.route(InputKind::Query);
    let mut texts = texts();
    texts.extend(
        [
            "tabs\tand\nnewlines\r\nand\u{00a0}nbsp",
            "control\u{0000}chars\u{0007}inside",
            "東京タワー and café",
            "[UNK] [CLS]literal[SEP] tokens",
            "punctuation!!!,,,??? (brackets) [and] {braces}",
            "  leading and trailing spaces  ",
            "CAPITALS Mixed ÀÉÎÕÜ",
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Twice: the first pass fills the cache, the second reads it.
    for pass in 0..2 {
        let got = route.tokenize(&refs).unwrap();
        for (text, ids) in texts.iter().zip(got) {
            let whole = route
                .tokenizer()
                .inner()
                .encode(text.as_str(), false)
                .unwrap();
            assert_eq!(ids, whole.get_ids(), "pass {pass}: {text:?}");
        }
    }
}
