//! RoBERTa, XLM-R, multilingual BERT (105,879-token vocabulary) and BGE-M3 equal to their
//! references: sentence-transformers 6.2 (`encode_document` / `encode_query`) and FlagEmbedding
//! 1.4.2 (`BGEM3FlagModel ... ["lexical_weights"]`), fp32 on CPU, written with the fixtures by
//! `tests/reference/make_roberta_reference.py` (its docstring says how to rerun it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sparq::encode::SparseVector;
use sparq::model::layout::ModelLayout;
use sparq::model::tokenizer::SpladeTokenizer;
use sparq::model::{DeviceSpec, Dtype, EncodeOptions, InputKind, SpladeEncoder};

/// fp32 weights within 1e-4 of the reference, same non-zero dims (weights under 1e-4 ignored).
const TOL: f32 = 1e-4;

const FAMILIES: [&str; 4] = ["roberta-tiny", "xlmr-tiny", "mbert-tiny", "bge-m3-tiny"];

fn model(name: &str) -> PathBuf {
    root().join("tests/fixtures/models").join(name)
}

/// texts.jsonl, then the multilingual / whitespace / long texts.
fn texts() -> Vec<String> {
    let mut out = fixture_texts();
    let more =
        std::fs::read_to_string(root().join("tests/fixtures/texts-multilingual.jsonl")).unwrap();
    out.extend(
        more.lines()
            .map(|l| serde_json::from_str::<String>(l).unwrap()),
    );
    out
}

fn reference(name: &str) -> Vec<SparseVector> {
    read_vectors(&root().join("tests/reference").join(name))
}

fn reference_ids(name: &str) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(root().join("tests/reference").join(name)).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn encode(
    encoder: &SpladeEncoder,
    kind: InputKind,
    batch_size: usize,
    k: Option<usize>,
) -> Vec<SparseVector> {
    let texts = texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let opts = EncodeOptions {
        batch_size,
        max_active_dims: k,
        ..Default::default()
    };
    encoder.encode(&refs, kind, opts).unwrap()
}

fn load(name: &str, dtype: Dtype) -> SpladeEncoder {
    SpladeEncoder::load(&model(name), DeviceSpec::Cpu, Some(dtype)).unwrap()
}

/// Documents and queries of `name` equal the reference in fp32; returns the documents.
fn assert_matches_reference(name: &str) -> Vec<SparseVector> {
    let encoder = load(name, Dtype::F32);
    let docs = encode(&encoder, InputKind::Document, 8, None);
    assert_close(
        &format!("{name} documents"),
        &docs,
        &reference(&format!("{name}-documents.jsonl")),
        TOL,
        TOL,
    );
    let queries = encode(&encoder, InputKind::Query, 8, None);
    assert_close(
        &format!("{name} queries"),
        &queries,
        &reference(&format!("{name}-queries.jsonl")),
        TOL,
        TOL,
    );
    // The comparison has teeth: real vectors, not all empty.
    assert!(docs.iter().filter(|v| v.len() > 5).count() > 30, "{name}");
    docs
}

#[test]
fn roberta_v6_layout_with_prompts_matches_reference() {
    let docs = assert_matches_reference("roberta-tiny");
    let queries = reference("roberta-tiny-queries.jsonl");
    assert_ne!(docs, queries, "prompts must make queries differ");
}

#[test]
fn xlm_roberta_unigram_log1p_relu_matches_reference() {
    assert_matches_reference("xlmr-tiny");
}

#[test]
fn multilingual_bert_105879_vocab_matches_reference_including_ids_above_65535() {
    assert_matches_reference("mbert-tiny");
    let encoder = load("mbert-tiny", Dtype::F32);
    assert_eq!(encoder.dimension(), 105_879);
    assert_eq!(encoder.tokenizer().inner().get_vocab_size(true), 105_879);
    // Multilingual texts tokenize to ids past u16 (CJK, hangul, Cyrillic... sit at the top).
    let ids = reference_ids("mbert-tiny-tokens.jsonl");
    let high = ids.iter().flatten().filter(|&&i| i > 65_535).count();
    assert!(high > 50, "only {high} token ids above 65,535");
}

#[test]
fn bge_m3_lexical_weights_match_flag_embedding() {
    let docs = assert_matches_reference("bge-m3-tiny");
    let encoder = load("bge-m3-tiny", Dtype::F32);
    assert_eq!(encoder.dimension(), 1502);
    // cls/eos/pad/unk never appear; each vector holds only ids of its own text.
    let texts = texts();
    for (n, (v, text)) in docs.iter().zip(&texts).enumerate() {
        let ids = encoder.tokenize(&[text], InputKind::Document).unwrap();
        for i in &v.indices {
            assert!(![0, 1, 2, 3].contains(i), "text {n}: special id {i} kept");
            assert!(ids[0].contains(i), "text {n}: id {i} not in the text");
        }
    }
}

#[test]
fn bge_m3_max_active_dims_keeps_the_largest_weights() {
    let encoder = load("bge-m3-tiny", Dtype::F32);
    let got = encode(&encoder, InputKind::Document, 8, Some(4));
    let full = reference("bge-m3-tiny-documents.jsonl");
    for (n, (g, w)) in got.iter().zip(&full).enumerate() {
        assert_eq!(g.len(), w.len().min(4), "text {n}");
        let mut weights = w.values.clone();
        weights.sort_by(|a, b| b.total_cmp(a));
        let floor = weights.get(3).copied().unwrap_or(0.0);
        assert!(g.values.iter().all(|&x| x >= floor - TOL), "text {n}");
    }
}

#[test]
fn token_ids_equal_the_reference_tokenizers() {
    for name in FAMILIES {
        let encoder = load(name, Dtype::F32);
        let want = reference_ids(&format!("{name}-tokens.jsonl"));
        for (n, (text, want)) in texts().iter().zip(&want).enumerate() {
            let got = encoder.tokenizer().encode(text).unwrap();
            assert_eq!(&got, want, "{name} text {n}: {text:?}");
        }
    }
}

/// Folders whose tokenizer.json transformers 5 does not use as saved (see
/// `src/model/tokenizer_roberta.rs`).
#[test]
fn tokenizer_variants_equal_transformers_rebuilt_pipelines() {
    for name in ["bpe-prefix-space", "bpe-json-diverges", "unigram-no-prefix"] {
        let dir = root().join("tests/fixtures/tokenizers").join(name);
        let layout = ModelLayout::read(&dir).unwrap();
        let tokenizer = SpladeTokenizer::load(&layout).unwrap();
        let want = reference_ids(&format!("tokens-{name}.jsonl"));
        assert_eq!(want.len(), texts().len());
        for (n, (text, want)) in texts().iter().zip(&want).enumerate() {
            let got = tokenizer.encode(text).unwrap();
            assert_eq!(&got, want, "{name} text {n}: {text:?}");
        }
    }
}

#[test]
fn batched_output_equals_one_by_one_output() {
    for name in FAMILIES {
        let encoder = load(name, Dtype::F32);
        let one = encode(&encoder, InputKind::Document, 1, None);
        for batch_size in [5, 64] {
            let got = encode(&encoder, InputKind::Document, batch_size, None);
            assert_close(
                &format!("{name} batch {batch_size}"),
                &got,
                &one,
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn bf16_is_close_to_the_reference() {
    for name in FAMILIES {
        let encoder = load(name, Dtype::Bf16);
        let docs = encode(&encoder, InputKind::Document, 8, None);
        let want = reference(&format!("{name}-documents.jsonl"));
        for (n, (g, w)) in docs.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            assert!(c >= 0.99, "{name} text {n}: bf16 cosine {c} < 0.99");
        }
    }
}

fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(&model(name), &dir);
    (tmp, dir)
}

#[test]
fn bge_m3_reads_sparse_linear_from_safetensors_too() {
    let (_tmp, dir) = copy_of("bge-m3-tiny");
    let (weight, bias) = sparq::model::bge_m3::read_sparse_linear(&dir, 32).unwrap();
    std::fs::remove_file(dir.join("sparse_linear.pt")).unwrap();
    let tensors = [("weight".to_string(), weight), ("bias".to_string(), bias)];
    tch::Tensor::write_safetensors(&tensors, dir.join("sparse_linear.safetensors")).unwrap();
    let encoder = SpladeEncoder::load(&dir, DeviceSpec::Cpu, Some(Dtype::F32)).unwrap();
    let docs = encode(&encoder, InputKind::Document, 8, None);
    assert_close(
        "safetensors head",
        &docs,
        &reference("bge-m3-tiny-documents.jsonl"),
        TOL,
        TOL,
    );
}

#[test]
fn bge_m3_reads_a_module_state_dict_with_its_metadata() {
    // `torch.save(linear.state_dict())` adds `_metadata` (a BUILD opcode) to what FlagEmbedding
    // writes; the same weights either way.
    let (_tmp, dir) = copy_of("bge-m3-tiny");
    let (w0, b0) = sparq::model::bge_m3::read_sparse_linear(&dir, 32).unwrap();
    std::fs::copy(
        root().join("tests/fixtures/pickles/sparse_linear_with_metadata.pt"),
        dir.join("sparse_linear.pt"),
    )
    .unwrap();
    let (w1, b1) = sparq::model::bge_m3::read_sparse_linear(&dir, 32).unwrap();
    assert!(w0.equal(&w1) && b0.equal(&b1));
    assert_ne!(w0.abs().sum(tch::Kind::Float).double_value(&[]), 0.0);
}

#[test]
fn bge_m3_unreadable_sparse_linear_names_the_file_and_the_conversion() {
    let (_tmp, dir) = copy_of("bge-m3-tiny");
    std::fs::write(dir.join("sparse_linear.pt"), b"not a zip archive").unwrap();
    let err = SpladeEncoder::load(&dir, DeviceSpec::Cpu, None)
        .err()
        .expect("a damaged sparse_linear.pt must be refused")
        .to_string();
    assert!(
        err.contains("sparse_linear.pt")
            && err.contains("sparse_linear.safetensors")
            && err.contains("torch.load"),
        "{err}"
    );
}

#[test]
fn training_refuses_bge_m3_clearly() {
    let err = sparq::train::model::TrainModel::load(&model("bge-m3-tiny"), tch::Device::Cpu, false)
        .err()
        .expect("BGE-M3 is not trainable as SPLADE")
        .to_string();
    assert!(
        err.contains("BGE-M3") && err.contains("sparse_linear"),
        "{err}"
    );
}

#[test]
fn roberta_trains_through_the_shared_model() {
    let mut model =
        sparq::train::model::TrainModel::load(&model("roberta-tiny"), tch::Device::Cpu, false)
            .unwrap();
    model.set_dropout(false);
    let ids = model.tokenize(&["a short text", "another one"]).unwrap();
    let out = model.forward(&ids).unwrap();
    assert_eq!(out.size(), [2, 2001]);
    assert!(
        out.requires_grad(),
        "gradients flow to the RoBERTa parameters"
    );
}

fn cli_encode(dir: &Path, lines: &str) -> Vec<SparseVector> {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparq"))
        .args(["encode-text", "--model"])
        .arg(dir)
        .env_remove("SPARQ_MODEL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(parse_vector)
        .collect()
}

#[test]
fn encode_text_cli_runs_every_family() {
    let texts = texts();
    let picked = [0usize, 34, 38, 41];
    let input: String = picked
        .iter()
        .map(|&i| serde_json::to_string(&texts[i]).unwrap() + "\n")
        .collect();
    for name in FAMILIES {
        let got = cli_encode(&model(name), &input);
        let want = reference(&format!("{name}-documents.jsonl"));
        let want: Vec<SparseVector> = picked.iter().map(|&i| want[i].clone()).collect();
        assert_close(&format!("{name} cli"), &got, &want, TOL, TOL);
    }
}
