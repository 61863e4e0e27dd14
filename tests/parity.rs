//! Numbers equal to sentence-transformers (`tests/reference/make_reference.py` wrote the
//! references with `SparseEncoder.encode_document` / `encode_query`, fp32 CPU).

mod common;

use std::path::Path;

use common::*;
use sparq::model::{DeviceSpec, Dtype, EncodeOptions, InputKind, SpladeEncoder};

/// fp32 weights within 1e-4 of the reference, same non-zero dims (weights under 1e-4 ignored).
const TOL: f32 = 1e-4;

fn encode(
    model: &Path,
    kind: InputKind,
    opts: EncodeOptions,
    dtype: Dtype,
) -> Vec<sparq::encode::SparseVector> {
    let encoder = SpladeEncoder::load(model, DeviceSpec::Cpu, Some(dtype)).unwrap();
    let texts = fixture_texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    encoder.encode(&refs, kind, opts).unwrap()
}

fn reference(name: &str) -> Vec<sparq::encode::SparseVector> {
    read_vectors(&root().join("tests/reference").join(name))
}

#[test]
fn bundled_model_v6_layout_documents_and_queries_match_reference() {
    let opts = EncodeOptions::default();
    let docs = encode(&tiny_model(), InputKind::Document, opts, Dtype::F32);
    assert_close(
        "documents",
        &docs,
        &reference("tiny-documents.jsonl"),
        TOL,
        TOL,
    );
    let queries = encode(&tiny_model(), InputKind::Query, opts, Dtype::F32);
    assert_close(
        "queries",
        &queries,
        &reference("tiny-queries.jsonl"),
        TOL,
        TOL,
    );
    // Sanity that the comparison has teeth: real vectors, not all empty.
    assert!(docs.iter().filter(|v| v.len() > 10).count() > 20);
}

#[test]
fn max_active_dims_keeps_the_reference_top_k() {
    let opts = EncodeOptions {
        batch_size: 32,
        max_active_dims: Some(16),
        ..Default::default()
    };
    let docs = encode(&tiny_model(), InputKind::Document, opts, Dtype::F32);
    assert!(docs.iter().all(|v| v.len() <= 16));
    assert_close(
        "k16",
        &docs,
        &reference("tiny-k16-documents.jsonl"),
        TOL,
        TOL,
    );
}

#[test]
fn distilbert_v5_layout_sum_log1p_relu_prompts_lowercase_truncation_match_reference() {
    // A random DistilBERT saved in the v4/v5 layout: MLMTransformer with max_seq_length 64 and
    // do_lower_case over a cased tokenizer, SpladePooling sum + log1p_relu, query/document prompts.
    let model = root().join("tests/fixtures/models/distil-sum-tiny");
    let opts = EncodeOptions::default();
    let docs = encode(&model, InputKind::Document, opts, Dtype::F32);
    assert_close(
        "documents",
        &docs,
        &reference("distil-documents.jsonl"),
        TOL,
        TOL,
    );
    let queries = encode(&model, InputKind::Query, opts, Dtype::F32);
    assert_close(
        "queries",
        &queries,
        &reference("distil-queries.jsonl"),
        TOL,
        TOL,
    );
    assert_ne!(
        docs, queries,
        "prompts must make queries differ from documents"
    );
}

#[test]
fn batched_output_equals_one_by_one_output() {
    let one = encode(
        &tiny_model(),
        InputKind::Document,
        EncodeOptions {
            batch_size: 1,
            max_active_dims: None,
            ..Default::default()
        },
        Dtype::F32,
    );
    for batch_size in [2, 5, 13, 64] {
        let got = encode(
            &tiny_model(),
            InputKind::Document,
            EncodeOptions {
                batch_size,
                max_active_dims: None,
                ..Default::default()
            },
            Dtype::F32,
        );
        assert_close(&format!("batch {batch_size}"), &got, &one, 1e-5, 1e-5);
    }
}

#[test]
fn bf16_is_close_to_the_reference() {
    let docs = encode(
        &tiny_model(),
        InputKind::Document,
        EncodeOptions::default(),
        Dtype::Bf16,
    );
    let want = reference("tiny-documents.jsonl");
    for (n, (g, w)) in docs.iter().zip(&want).enumerate() {
        let c = cosine(g, w);
        assert!(c >= 0.99, "text {n}: bf16 cosine {c} < 0.99");
    }
}

#[test]
fn null_input_gives_an_empty_vector_and_empty_string_does_not() {
    let encoder = SpladeEncoder::load(&tiny_model(), DeviceSpec::Cpu, None).unwrap();
    let out = encoder
        .encode(
            &[None, Some(""), Some("hello")],
            InputKind::Document,
            EncodeOptions::default(),
        )
        .unwrap();
    assert!(out[0].is_empty());
    assert!(
        !out[1].is_empty(),
        "[CLS] [SEP] alone still activates some dims"
    );
    assert!(!out[2].is_empty());
}
