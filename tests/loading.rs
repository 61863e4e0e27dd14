//! Model folders as users have them: both sentence-transformers layouts, plain Hugging Face
//! folders, sharded weights, and every way a folder can be wrong.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use sparq::model::{DeviceSpec, EncodeOptions, InputKind, ModelError, SpladeEncoder};

fn copy(from: &Path, to: &Path, names: &[&str]) {
    fs::create_dir_all(to).unwrap();
    for name in names {
        fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

fn encode_docs(model: &Path) -> Vec<sparq::encode::SparseVector> {
    let encoder = SpladeEncoder::load(model, DeviceSpec::Cpu, None).unwrap();
    let texts = fixture_texts();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    encoder
        .encode(&refs, InputKind::Document, EncodeOptions::default())
        .unwrap()
}

fn tiny_reference() -> Vec<sparq::encode::SparseVector> {
    read_vectors(&root().join("tests/reference/tiny-documents.jsonl"))
}

fn load_err(model: &Path) -> String {
    match SpladeEncoder::load(model, DeviceSpec::Cpu, None) {
        Ok(_) => panic!("{} loaded but should not", model.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains("Exception raised from"),
                "libtorch backtrace leaked: {msg}"
            );
            msg
        }
    }
}

const HF_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

#[test]
fn v5_mlmtransformer_layout_gives_the_same_vectors() {
    // The layout of the reference model splade-cocondenser-gooaq (sentence-transformers 4/5).
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    copy(&tiny_model(), m, &HF_FILES);
    fs::write(
        m.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.sparse_encoder.models.MLMTransformer"},
            {"idx":1,"name":"1","path":"1_SpladePooling","type":"sentence_transformers.sparse_encoder.models.SpladePooling"}]"#,
    )
    .unwrap();
    fs::write(
        m.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 256, "do_lower_case": false}"#,
    )
    .unwrap();
    fs::create_dir(m.join("1_SpladePooling")).unwrap();
    fs::write(
        m.join("1_SpladePooling/config.json"),
        r#"{"pooling_strategy":"max","activation_function":"relu","word_embedding_dimension":30522}"#,
    )
    .unwrap();
    fs::write(
        m.join("config_sentence_transformers.json"),
        r#"{"prompts":{"query":"","document":""},"default_prompt_name":null}"#,
    )
    .unwrap();
    assert_close("v5", &encode_docs(m), &tiny_reference(), 1e-4, 1e-4);
}

#[test]
fn plain_hugging_face_masked_lm_folder_uses_max_relu_pooling() {
    let dir = tempfile::tempdir().unwrap();
    copy(&tiny_model(), dir.path(), &HF_FILES);
    assert_close(
        "hf",
        &encode_docs(dir.path()),
        &tiny_reference(),
        1e-4,
        1e-4,
    );
}

#[test]
fn sharded_safetensors_with_index_load_like_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    copy(
        &tiny_model(),
        m,
        &["config.json", "tokenizer.json", "tokenizer_config.json"],
    );
    let tensors = tch::Tensor::read_safetensors(tiny_model().join("model.safetensors")).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    tch::Tensor::write_safetensors(a, m.join("model-00001-of-00002.safetensors")).unwrap();
    tch::Tensor::write_safetensors(b, m.join("model-00002-of-00002.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for (name, _) in a {
        map.insert(name.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (name, _) in b {
        map.insert(name.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    fs::write(m.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_close("sharded", &encode_docs(m), &tiny_reference(), 1e-4, 1e-4);
}

#[test]
fn missing_folder_is_a_clear_error() {
    let msg = load_err(Path::new("/nonexistent/model"));
    assert!(
        msg.contains("/nonexistent/model") && msg.contains("--model"),
        "{msg}"
    );
}

#[test]
fn missing_weights_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy(
        &tiny_model(),
        dir.path(),
        &["config.json", "tokenizer.json", "tokenizer_config.json"],
    );
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("is missing"),
        "{msg}"
    );
}

#[test]
fn truncated_weights_are_reported_as_corrupt_without_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    copy(&tiny_model(), dir.path(), &HF_FILES);
    let bytes = fs::read(dir.path().join("model.safetensors")).unwrap();
    fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 3],
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("corrupt"),
        "{msg}"
    );
}

#[test]
fn weights_of_another_model_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    copy(&tiny_model(), dir.path(), &HF_FILES);
    let config = fs::read_to_string(dir.path().join("config.json")).unwrap();
    fs::write(
        dir.path().join("config.json"),
        config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("bert.encoder.layer.2") && msg.contains("model.safetensors"),
        "{msg}"
    );
    let dir = tempfile::tempdir().unwrap();
    copy(&tiny_model(), dir.path(), &HF_FILES);
    fs::write(
        dir.path().join("config.json"),
        config.replace("\"intermediate_size\": 512", "\"intermediate_size\": 256"),
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("intermediate.dense.weight") && msg.contains("[512, 128]"),
        "{msg}"
    );
}

#[test]
fn unsupported_architecture_says_what_is_supported() {
    let dir = tempfile::tempdir().unwrap();
    copy(&tiny_model(), dir.path(), &HF_FILES);
    let config = fs::read_to_string(dir.path().join("config.json")).unwrap();
    fs::write(
        dir.path().join("config.json"),
        config
            .replace("\"model_type\": \"bert\"", "\"model_type\": \"gpt2\"")
            .replace("BertForMaskedLM", "GPT2LMHeadModel"),
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("gpt2") && msg.contains("BertForMaskedLM"),
        "{msg}"
    );
}

#[test]
fn unsupported_module_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy(&tiny_model(), dir.path(), &HF_FILES);
    fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.sparse_encoder.modules.SparseStaticEmbedding"}]"#,
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("SparseStaticEmbedding") && msg.contains("modules.json"),
        "{msg}"
    );
}

#[test]
fn tokenizer_larger_than_the_model_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy(&tiny_model(), dir.path(), &HF_FILES);
    let config = fs::read_to_string(dir.path().join("config.json")).unwrap();
    fs::write(
        dir.path().join("config.json"),
        config.replace("\"vocab_size\": 30522", "\"vocab_size\": 1000"),
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("tokenizer.json") && msg.contains("30522") && msg.contains("1000"),
        "{msg}"
    );
}

#[test]
fn cuda_request_without_gpu_is_a_clear_error() {
    if tch::Cuda::is_available() {
        return; // Only meaningful on a machine without a GPU.
    }
    match SpladeEncoder::load(&tiny_model(), DeviceSpec::Cuda(0), None) {
        Err(ModelError::Device { detail, .. }) => {
            assert!(detail.contains("--device cpu"), "{detail}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("cuda:0 loaded without a GPU"),
    }
}
