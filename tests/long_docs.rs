//! `--long-docs window`: every window of a long text encoded and max-pooled, equal to
//! sentence-transformers run on each window (tests/reference/make_longdocs_reference.py), in
//! the library, `encode-text` and `encode` on parquet; and the settings' refusals.

mod common;

use std::process::Output;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::corpus::{read_output, write_batch};
use common::*;
use sparq::encode::SparseVector;
use sparq::model::{DeviceSpec, Dtype, EncodeOptions, InputKind, LongDocs, SpladeEncoder};

const TOL: f32 = 1e-4;

fn long_texts() -> Vec<String> {
    std::fs::read_to_string(root().join("tests/fixtures/long_texts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The reference vectors and each text's number of windows.
fn reference(stride: usize) -> (Vec<SparseVector>, Vec<u64>) {
    let path = root().join(format!("tests/reference/longdocs-s{stride}.jsonl"));
    let text = std::fs::read_to_string(path).unwrap();
    let windows = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["windows"]
                .as_u64()
                .unwrap()
        })
        .collect();
    (
        read_vectors(&root().join(format!("tests/reference/longdocs-s{stride}.jsonl"))),
        windows,
    )
}

fn encode(encoder: &SpladeEncoder, long_docs: LongDocs, batch_size: usize) -> Vec<SparseVector> {
    let texts = long_texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let opts = EncodeOptions {
        batch_size,
        long_docs,
        ..Default::default()
    };
    encoder.encode(&refs, InputKind::Document, opts).unwrap()
}

#[test]
fn windows_max_pooled_equal_the_reference_and_truncation_only_where_one_window() {
    let encoder = SpladeEncoder::load(&tiny_model(), DeviceSpec::Cpu, Some(Dtype::F32)).unwrap();
    let truncated = encode(&encoder, LongDocs::Truncate, 32);
    for stride in [0, 48] {
        let (want, windows) = reference(stride);
        let got = encode(&encoder, LongDocs::Window { stride }, 32);
        assert_close(&format!("stride {stride}"), &got, &want, TOL, TOL);
        // Teeth: the fixture has texts of one window and of several.
        assert!(windows.contains(&1) && windows.iter().any(|&w| w >= 5));
        for (n, &w) in windows.iter().enumerate() {
            if w == 1 {
                assert_eq!(got[n], truncated[n], "text {n}: one window is truncation");
            } else {
                assert!(
                    got[n].len() > truncated[n].len(),
                    "text {n}: {w} windows must add dims to the first window's"
                );
            }
        }
        let one_by_one = encode(&encoder, LongDocs::Window { stride }, 1);
        assert_close("batch 1 vs 32", &one_by_one, &got, 1e-5, 1e-5);
    }
}

#[test]
fn max_active_dims_applies_to_the_pooled_vector_and_bf16_stays_close() {
    let encoder = SpladeEncoder::load(&tiny_model(), DeviceSpec::Cpu, Some(Dtype::F32)).unwrap();
    let texts = long_texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let opts = EncodeOptions {
        batch_size: 8,
        max_active_dims: Some(24),
        long_docs: LongDocs::Window { stride: 48 },
    };
    let got = encoder.encode(&refs, InputKind::Document, opts).unwrap();
    let (want, _) = reference(48);
    let want: Vec<SparseVector> = want
        .into_iter()
        .map(|v| sparq::model::windows::top_k(v, 24))
        .collect();
    assert!(got.iter().all(|v| v.len() <= 24) && got.iter().filter(|v| v.len() == 24).count() >= 6);
    assert_close("top 24 of the pooled vector", &got, &want, TOL, TOL);

    let bf16 = SpladeEncoder::load(&tiny_model(), DeviceSpec::Cpu, Some(Dtype::Bf16)).unwrap();
    let got = encode(&bf16, LongDocs::Window { stride: 48 }, 8);
    let (want, _) = reference(48);
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            cosine(g, w) >= 0.99,
            "text {n}: bf16 cosine {}",
            cosine(g, w)
        );
    }
}

fn sparq(args: &[&str], stdin: Option<&[u8]>) -> Output {
    common::process::run_sparq(args, stdin.unwrap_or_default())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn encode_text_windows_long_lines_and_refuses_a_stride_the_window_cannot_hold() {
    let input = std::fs::read(root().join("tests/fixtures/long_texts.jsonl")).unwrap();
    let out = sparq(
        &[
            "encode-text",
            "--long-docs",
            "window",
            "--window-stride",
            "48",
        ],
        Some(&input),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let got: Vec<SparseVector> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(parse_vector)
        .collect();
    assert_close("encode-text", &got, &reference(48).0, TOL, TOL);

    // The tiny model's windows are 256 tokens, 254 of them text.
    let out = sparq(
        &[
            "encode-text",
            "--long-docs",
            "window",
            "--window-stride",
            "254",
        ],
        Some(b"\"x\"\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--window-stride 254 must be below the 254 text tokens"),
        "{}",
        stderr(&out)
    );
    let out = sparq(&["encode-text", "--window-stride", "8"], Some(b"\"x\"\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("add --long-docs window"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn encode_on_parquet_pools_windows_per_row_and_the_setting_is_part_of_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let texts = long_texts();
    let n = texts.len() as i64;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())) as ArrayRef,
            Arc::new(StringArray::from(texts.clone())),
        ],
    )
    .unwrap();
    let input = dir.path().join("in/docs.parquet");
    write_batch(&input, batch, 3);
    let output = dir.path().join("out");
    let (input, output) = (input.to_str().unwrap(), output.to_str().unwrap());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "encode",
            "--input",
            input,
            "--output",
            output,
            "--workers",
            "2",
        ];
        args.extend_from_slice(extra);
        sparq(&args, None)
    };
    let windowed = [
        "--long-docs",
        "window",
        "--window-stride",
        "48",
        "--shard-rows",
        "4",
    ];
    let out = run(&windowed);
    assert!(out.status.success(), "{}", stderr(&out));
    let (rows, _) = read_output(std::path::Path::new(output));
    let mut rows: Vec<(i64, SparseVector)> =
        rows.into_iter().map(|(id, v)| (id, v.unwrap())).collect();
    rows.sort_by_key(|r| r.0);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>()
    );
    let got: Vec<SparseVector> = rows.into_iter().map(|r| r.1).collect();
    assert_close("encode", &got, &reference(48).0, TOL, TOL);

    // The same output with truncation would mix two kinds of vector: refused, naming both.
    let out = run(&["--shard-rows", "4"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("--long-docs: was window, now truncate"),
        "{}",
        stderr(&out)
    );
}
