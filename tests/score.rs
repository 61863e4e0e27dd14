//! Cross-encoder scoring: the model against `CrossEncoder.predict` (references written by
//! tests/reference/make_cross_encoder_reference.py), and `sparq score` end to end.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;
use sparq::model::cross_encoder::{CrossEncoder, ScoreActivation};
use sparq::model::tokenizer::SpladeTokenizer;

fn fixture() -> PathBuf {
    common::root().join("tests/fixtures/models/cross-encoder-tiny")
}

/// One reference line: the pair, `predict`'s score and logit, and its tokens.
struct Reference {
    query: String,
    text: String,
    score: f32,
    logit: f32,
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
}

fn references() -> Vec<Reference> {
    let path = common::root().join("tests/reference/cross-encoder-tiny.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Reference {
                query: v["query"].as_str().unwrap().into(),
                text: v["text"].as_str().unwrap().into(),
                score: v["score"].as_f64().unwrap() as f32,
                logit: v["logit"].as_f64().unwrap() as f32,
                input_ids: ids(&v["input_ids"]),
                token_type_ids: ids(&v["token_type_ids"]),
            }
        })
        .collect()
}

fn pairs(refs: &[Reference]) -> Vec<(&str, &str)> {
    refs.iter()
        .map(|r| (r.query.as_str(), r.text.as_str()))
        .collect()
}

fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max)
}

/// A copy of the fixture with `edit` applied to the JSON file `name`.
fn edited_fixture(name: &str, edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join(name);
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    match CrossEncoder::load(dir, tch::Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn pairs_tokenize_as_the_cross_encoder_tokenizes_them() {
    let refs = references();
    let tokenizer = SpladeTokenizer::load_for_pairs(&fixture(), 32, false).unwrap();
    let got = tokenizer.encode_pairs(&pairs(&refs)).unwrap();
    let mut truncated = 0;
    for (g, r) in got.iter().zip(&refs) {
        assert_eq!(g.ids, r.input_ids, "ids of ({:?}, {:?})", r.query, r.text);
        assert_eq!(g.type_ids, r.token_type_ids, "types of {:?}", r.query);
        truncated += usize::from(g.ids.len() == 32);
    }
    // The fixture must exercise pair truncation.
    assert!(truncated >= 4, "{truncated} truncated pairs");
}

#[test]
fn scores_equal_cross_encoder_predict() {
    let refs = references();
    let model = CrossEncoder::load(&fixture(), tch::Device::Cpu).unwrap();
    assert_eq!(model.activation(), ScoreActivation::Sigmoid);
    assert_eq!(model.max_length(), 32);
    let want: Vec<f32> = refs.iter().map(|r| r.score).collect();
    let got = model.predict(&pairs(&refs), 4).unwrap();
    let diff = max_abs_diff(&got, &want);
    eprintln!("max |score - CrossEncoder.predict| = {diff:e}");
    assert!(diff <= 1e-4, "max abs diff {diff}");

    let one_by_one: Vec<f32> = pairs(&refs)
        .iter()
        .map(|p| model.predict(&[*p], 1).unwrap()[0])
        .collect();
    let all_at_once = model.predict(&pairs(&refs), 64).unwrap();
    let batched = max_abs_diff(&all_at_once, &one_by_one);
    eprintln!("max |batched - one by one| = {batched:e}");
    assert!(batched <= 1e-5, "batched vs one-by-one {batched}");
    assert!(model.predict(&[], 4).unwrap().is_empty());
    assert!(model.predict(&pairs(&refs), 0).is_err());
}

#[test]
fn the_saved_activation_is_applied() {
    let refs = references();
    let dir = edited_fixture("config_sentence_transformers.json", |v| {
        v["activation_fn"] = "torch.nn.modules.linear.Identity".into();
    });
    let model = CrossEncoder::load(dir.path(), tch::Device::Cpu).unwrap();
    assert_eq!(model.activation(), ScoreActivation::Identity);
    let want: Vec<f32> = refs.iter().map(|r| r.logit).collect();
    let diff = max_abs_diff(&model.predict(&pairs(&refs), 8).unwrap(), &want);
    assert!(diff <= 1e-4, "logits: max abs diff {diff}");

    let dir = edited_fixture("config_sentence_transformers.json", |v| {
        v["activation_fn"] = "torch.nn.modules.activation.Softmax".into();
    });
    let err = load_error(dir.path());
    assert!(
        err.contains("activation_fn `torch.nn.modules.activation.Softmax`"),
        "{err}"
    );
}

#[test]
fn what_sparq_cannot_score_is_refused_at_load() {
    let dir = edited_fixture("config.json", |v| {
        v["id2label"] = serde_json::json!({"0": "no", "1": "yes"});
    });
    let err = load_error(dir.path());
    assert!(err.contains("a cross-encoder with 2 labels"), "{err}");
    assert!(err.contains("config.json"), "{err}");

    let err = load_error(&common::tiny_model());
    assert!(
        err.contains("a SparseEncoder, which is not a cross-encoder"),
        "{err}"
    );
    let masked_lm = common::root().join("tests/fixtures/models/router-two/query_0_MLMTransformer");
    let err = load_error(&masked_lm);
    assert!(err.contains("a model that is not a cross-encoder"), "{err}");

    let dir = edited_fixture("config.json", |v| {
        v["model_type"] = "roberta".into();
        v["architectures"] = serde_json::json!(["RobertaForSequenceClassification"]);
    });
    let err = load_error(dir.path());
    assert!(err.contains("a roberta cross-encoder"), "{err}");

    let err = load_error(Path::new("/nonexistent/cross-encoder"));
    assert!(err.contains("does not exist"), "{err}");
}
