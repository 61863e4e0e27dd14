//! Training an inference-free Router model (query route SparseStaticEmbedding, document route
//! MLM + SpladePooling): loss, gradients and optimizer groups against the references of
//! tests/reference/make_router_train_reference.py, then `sparq train` as a user runs it — the
//! saved Router loads in sentence-transformers with sparq's vectors, and a resume is exact.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::corpus::{text_for, write_batch};
use common::{copy_dir, root};
use sparq::model::InputKind;
use sparq::train::loss::{splade_loss, LossSpec};
use sparq::train::model::TrainModel;
use sparq::train::optim::{clip_grad_norm, linear_lr, zero_grad, AdamW};
use tch::{Device, Kind, Tensor};

const SPARQ: &str = env!("CARGO_BIN_EXE_sparq");
const STATIC: &str = "query_0_SparseStaticEmbedding";
const MLM: &str = "document_0_MLMTransformer";
/// The static weights' learning rate in the CLI runs (the upstream docs' pattern).
const STATIC_LR: &str = r"SparseStaticEmbedding\..*=5e-2";

fn reference() -> serde_json::Value {
    let path = root().join("tests/reference/train-router/reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(root().join("tests/reference/train-router").join(name))
        .unwrap()
        .into_iter()
        .collect()
}

/// A copy of the Router fixture `name` under `dir` with trainable static weights (the fixture
/// saves `"frozen": true`), as the reference script prepares it.
fn trainable_router(dir: &Path, name: &str) -> PathBuf {
    let model = dir.join(name);
    copy_dir(&root().join("tests/fixtures/models").join(name), &model);
    let config = model.join(STATIC).join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    value["frozen"] = serde_json::Value::Bool(false);
    std::fs::write(&config, value.to_string()).unwrap();
    model
}

fn texts(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

fn router_mapping(r: &serde_json::Value) -> Vec<(String, InputKind)> {
    r["router_mapping"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(c, route)| {
            let kind = match route.as_str().unwrap() {
                "query" => InputKind::Query,
                _ => InputKind::Document,
            };
            (c.clone(), kind)
        })
        .collect()
}

fn lr_mapping(r: &serde_json::Value) -> Vec<(String, f64)> {
    r["optimizer"]["learning_rate_mapping"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv[0].as_str().unwrap().into(), kv[1].as_f64().unwrap()))
        .collect()
}

fn columns() -> Vec<String> {
    ["anchor", "positive", "negative"]
        .map(String::from)
        .to_vec()
}

fn loaded(dir: &Path) -> TrainModel {
    let mut m =
        TrainModel::load(&trainable_router(dir, "router-static"), Device::Cpu, false).unwrap();
    m.set_dropout(false); // The reference ran in eval mode.
    m.route_columns(&columns(), &router_mapping(&reference()))
        .unwrap();
    m
}

#[test]
fn router_loss_and_gradients_equal_the_reference() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let r = reference();
    let m = loaded(tmp.path());
    assert!(m.is_inference_free());
    let trainable = m.trainable();
    let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
    for (b, batch) in r["batches"].as_array().unwrap().iter().enumerate() {
        for (_, t) in &trainable {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let cols: Vec<Vec<&str>> = columns().iter().map(|c| texts(&batch[c])).collect();
        let (queries, docs) = m.forward_columns(&cols).unwrap();
        let documents = docs.split(queries.size()[0], 0);
        let ld = r["lambda_document"].as_f64().unwrap();
        let mut columns = vec![queries.shallow_clone()];
        columns.extend(documents);
        // The reference's query weight is None: no query term.
        let spec = LossSpec {
            query_regularizer: false,
            ..LossSpec::default()
        };
        let parts = splade_loss(&columns, None, &spec, 0.0, ld, None).unwrap();
        for (key, got) in [
            ("loss", &parts.total),
            ("base_loss", &parts.base),
            ("document_regularizer_loss", &parts.document_regularizer),
        ] {
            let want = batch[key].as_f64().unwrap();
            let got = got.double_value(&[]);
            worst_loss = worst_loss.max((got - want).abs());
            assert!(
                (got - want).abs() <= 1e-5,
                "batch {b} {key}: {got} vs {want}"
            );
        }
        parts.total.backward();
        let grads = tensors(&format!("grads-{b}.safetensors"));
        let mut mine: Vec<&str> = trainable.iter().map(|(n, _)| n.as_str()).collect();
        let mut theirs: Vec<&str> = grads.keys().map(String::as_str).collect();
        mine.sort();
        theirs.sort();
        assert_eq!(mine, theirs, "parameter names differ from the reference's");
        for (name, t) in &trainable {
            let want = &grads[name];
            let norm = want.norm().double_value(&[]);
            let diff = (t.grad() - want).norm().double_value(&[]);
            if norm < 1e-6 {
                assert!(diff <= 1e-6, "batch {b} {name}: |Δg| {diff}, reference ~0");
            } else {
                worst_grad = worst_grad.max(diff / norm);
                assert!(
                    diff / norm <= 1e-4,
                    "batch {b} {name}: |Δg|/|g| = {}",
                    diff / norm
                );
            }
        }
        // The static weights are trained by the anchors only: their gradient is non-zero
        // exactly at the anchors' tokens.
        let g = t_static(&trainable).grad();
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
    eprintln!("max |Δloss| {worst_loss:e}, max |Δg|/|g| {worst_grad:e}");
}

fn t_static(trainable: &[(String, Tensor)]) -> Tensor {
    trainable
        .iter()
        .find(|(n, _)| n == &format!("{STATIC}.weight"))
        .map(|(_, t)| t.shallow_clone())
        .expect("the static weight is trainable")
}

#[test]
fn learning_rate_groups_schedule_and_adamw_equal_the_reference() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let r = reference();
    let opt = &r["optimizer"];
    let m = loaded(tmp.path());
    let mut params = m.optimizer_params(&lr_mapping(&r)).unwrap();
    let base = opt["learning_rate"].as_f64().unwrap();
    // Every parameter sits in the reference's group: same peak learning rate, same decay.
    let groups = opt["groups"].as_array().unwrap();
    for p in &params {
        let group = groups
            .iter()
            .find(|g| texts(&g["params"]).contains(&p.name.as_str()))
            .unwrap_or_else(|| panic!("{} is in no reference group", p.name));
        assert_eq!(
            p.peak_lr.unwrap_or(base),
            group["lr"].as_f64().unwrap(),
            "{}",
            p.name
        );
        assert_eq!(
            p.decay,
            group["weight_decay"].as_f64().unwrap() > 0.0,
            "{}",
            p.name
        );
    }
    assert_eq!(
        params.len(),
        groups
            .iter()
            .map(|g| g["params"].as_array().unwrap().len())
            .sum::<usize>()
    );
    let (warmup, total) = (
        opt["warmup_steps"].as_u64().unwrap(),
        opt["total_steps"].as_u64().unwrap(),
    );
    let adamw = AdamW {
        weight_decay: opt["weight_decay"].as_f64().unwrap(),
        ..AdamW::default()
    };
    let order = opt["order"].as_array().unwrap();
    let norms = opt["grad_norms_before_clipping"].as_array().unwrap();
    let lrs = opt["group_lrs_per_step"].as_array().unwrap();
    for (step, b) in order.iter().enumerate() {
        let step = step as u64;
        for (g, group) in groups.iter().enumerate() {
            let want = lrs[step as usize][g].as_f64().unwrap();
            let got = linear_lr(group["lr"].as_f64().unwrap(), step, warmup, total);
            assert!(
                (got - want).abs() <= 1e-15,
                "step {step} group {g}: {got} vs {want}"
            );
        }
        let grads = tensors(&format!("grads-{}.safetensors", b.as_u64().unwrap()));
        zero_grad(&mut params);
        // d/dp Σ p·g = g exactly: installs the reference's gradient.
        let terms: Vec<Tensor> = params
            .iter()
            .map(|p| (&p.tensor * &grads[&p.name]).sum(Kind::Float))
            .collect();
        Tensor::stack(&terms, 0).sum(Kind::Float).backward();
        let norm = clip_grad_norm(&params, opt["max_grad_norm"].as_f64().unwrap()).unwrap();
        let want = norms[step as usize].as_f64().unwrap();
        assert!(
            (norm - want).abs() <= 1e-4 * want,
            "step {step}: norm {norm} vs {want}"
        );
        let lr_at = |peak| linear_lr(peak, step, warmup, total);
        adamw
            .step_scheduled(&mut params, lr_at, base, step + 1)
            .unwrap();
    }
    let after = tensors("optimizer-only-4-steps.safetensors");
    let mut worst = 0.0f64;
    for p in &params {
        let diff = (&p.tensor - &after[&p.name]).abs().max().double_value(&[]);
        worst = worst.max(diff);
        assert!(diff <= 1e-6, "{}: max |Δ| {diff} after 4 steps", p.name);
    }
    eprintln!("max |Δparam| after 4 steps: {worst:e}");
}

#[test]
fn learning_rate_patterns_match_trainer_names_and_module_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let m = loaded(tmp.path());
    let peak = |pattern: &str| -> Vec<(String, Option<f64>)> {
        m.optimizer_params(&[(pattern.to_string(), 1e-2)])
            .unwrap()
            .into_iter()
            .filter(|p| p.peak_lr.is_some())
            .map(|p| (p.name, p.peak_lr))
            .collect()
    };
    // The upstream docs' pattern matches the static weight by its module folder alone.
    let only_static = vec![(format!("{STATIC}.weight"), Some(1e-2))];
    assert_eq!(peak(r"SparseStaticEmbedding\..*"), only_static);
    assert_eq!(
        peak(r"^model\.0\.sub_modules\.query\.0\.weight$"),
        only_static
    );
    let head = peak(r"^model\.0\.sub_modules\.document\.0\.model\.cls\.");
    assert_eq!(head.len(), 5, "{head:?}");
    assert_eq!(peak(&format!("^{MLM}\\.cls\\.")), head);
    // A plain model's parameters are the trainer's `model.0.model.<Hugging Face name>`.
    let plain = TrainModel::load(&common::tiny_model(), Device::Cpu, false).unwrap();
    let mapped: Vec<String> = plain
        .optimizer_params(&[(r"^model\.0\.model\.cls\.".into(), 1e-2)])
        .unwrap()
        .into_iter()
        .filter(|p| p.peak_lr == Some(1e-2))
        .map(|p| p.name)
        .collect();
    assert!(
        !mapped.is_empty() && mapped.iter().all(|n| n.starts_with("cls.")),
        "{mapped:?}"
    );
    let err = m
        .optimizer_params(&[("no_such_module".into(), 1e-3)])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("matches no trainable parameter"), "{err}");
}

#[test]
fn the_model_in_training_encodes_queries_through_the_static_route() {
    use sparq::model::{DeviceSpec, Dtype, EncodeOptions, SparseEncode, SpladeEncoder};
    let tmp = tempfile::tempdir().unwrap();
    let dir = trainable_router(tmp.path(), "router-static");
    let mut m = TrainModel::load(&dir, Device::Cpu, false).unwrap();
    m.set_dropout(false);
    let texts = common::fixture_texts();
    let inputs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let encoder = SpladeEncoder::load(&dir, DeviceSpec::Cpu, Some(Dtype::F32)).unwrap();
    for kind in [InputKind::Query, InputKind::Document] {
        let ours = m
            .encode_texts(&inputs, kind, EncodeOptions::default())
            .unwrap();
        let theirs = encoder
            .encode_texts(&inputs, kind, EncodeOptions::default())
            .unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.indices, b.indices, "{kind:?}");
            for (x, y) in a.values.iter().zip(&b.values) {
                assert!((x - y).abs() <= 1e-5, "{kind:?}: {x} vs {y}");
            }
        }
    }
    let err = m
        .route_columns(&columns(), &[("question".into(), InputKind::Query)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`question`") && err.contains("anchor"),
        "{err}"
    );
}

/// `n` (anchor, positive, negative) rows.
fn write_pairs(path: &Path, n: i64) {
    let words = |i: i64| {
        text_for(i + 5000)
            .unwrap_or_else(|| format!("Passage {i}: a fallback text"))
            .split(' ')
            .take(6)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let column = |f: &dyn Fn(i64) -> String| -> ArrayRef {
        Arc::new(StringArray::from((0..n).map(f).collect::<Vec<_>>()))
    };
    let schema = Arc::new(Schema::new(
        columns()
            .iter()
            .map(|c| Field::new(c, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            column(&|i| format!("q{i} {}", words(i))),
            column(&|i| text_for(i * 3 + 1).unwrap_or_default() + &format!(" answer {i}")),
            column(&|i| text_for(i * 3 + 2).unwrap_or_default() + &format!(" other {i}")),
        ],
    )
    .unwrap();
    write_batch(path, batch, 64);
}

fn train(model: &Path, data: &Path, out: &Path, steps: u64, extra: &[&str]) -> String {
    let output = Command::new(SPARQ)
        .args(["train", "--model"])
        .arg(model)
        .arg("--train-data")
        .arg(data)
        .arg("--output")
        .arg(out)
        .args(["--max-steps", &steps.to_string()])
        .args([
            "--batch-size",
            "4",
            "--threads",
            "1",
            "--logging-steps",
            "1",
        ])
        .args(["--learning-rate", "1e-3", "--lambda-query", "0"])
        .args(extra)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn encode_text(model: &Path, texts: &Path, query: bool, out: &Path) {
    let mut cmd = Command::new(SPARQ);
    cmd.args(["encode-text", "--model"]).arg(model);
    if query {
        cmd.arg("--query");
    }
    let output = cmd
        .stdin(std::fs::File::open(texts).unwrap())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(out, &output.stdout).unwrap();
}

fn static_weights(model: &Path) -> Tensor {
    Tensor::read_safetensors(model.join(STATIC).join("model.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "weight")
        .unwrap()
        .1
}

#[test]
fn a_trained_router_loads_in_sentence_transformers_with_the_same_vectors() {
    let python = root().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("SKIPPED: no .venv with sentence-transformers (make reference-env)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.parquet");
    write_pairs(&data, 48);
    // router-idf: the static weights come from idf.json and are saved as model.safetensors.
    let model = trainable_router(tmp.path(), "router-idf");
    let out = tmp.path().join("trained");
    let mapping = [
        "--router-mapping",
        "anchor=query",
        "--save-steps",
        "0",
        "--learning-rate-mapping",
        STATIC_LR,
    ];
    train(&model, &data, &out, 3, &mapping);
    for file in [
        "modules.json",
        "router_config.json",
        "config_sentence_transformers.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert!(out.join(MLM).join("model.safetensors").is_file());
    assert!(!out.join(STATIC).join("idf.json").exists());
    let original = static_weights(&root().join("tests/fixtures/models/router-static"));
    let moved = (static_weights(&out) - original)
        .abs()
        .max()
        .double_value(&[]);
    assert!(moved > 1e-3, "the static weights did not move ({moved})");

    let texts = root().join("tests/fixtures/texts.jsonl");
    let (queries, docs) = (tmp.path().join("q.jsonl"), tmp.path().join("d.jsonl"));
    encode_text(&out, &texts, true, &queries);
    encode_text(&out, &texts, false, &docs);
    let script = r#"
import json, sys, torch
from sentence_transformers import SparseEncoder
model_dir, texts_path, queries, docs = sys.argv[1:5]
texts = [json.loads(l) for l in open(texts_path)]
m = SparseEncoder(model_dir, device="cpu", local_files_only=True)
def worst(ref, path):
    w = 0.0
    for i, line in enumerate(open(path)):
        v = json.loads(line); g = torch.zeros(ref.shape[1]); g[v["indices"]] = torch.tensor(v["values"])
        w = max(w, (g - ref[i]).abs().max().item())
    return w
q = m.encode_query(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
d = m.encode_document(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
print(json.dumps({"query": worst(q, queries), "document": worst(d, docs), "rows": len(texts)}))
"#;
    let run = Command::new(&python)
        .args(["-c", script])
        .arg(&out)
        .arg(&texts)
        .arg(&queries)
        .arg(&docs)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let line = String::from_utf8_lossy(&run.stdout);
    let r: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    eprintln!("sparq vs sentence-transformers on the trained Router: {r}");
    assert!(r["rows"].as_u64().unwrap() > 0);
    assert!(r["query"].as_f64().unwrap() <= 1e-4, "{r}");
    assert!(r["document"].as_f64().unwrap() <= 1e-4, "{r}");
}

#[test]
fn a_resumed_router_run_equals_the_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.parquet");
    write_pairs(&data, 48);
    let model = trainable_router(tmp.path(), "router-static");
    let whole = tmp.path().join("whole");
    let args = ["--save-steps", "2", "--learning-rate-mapping", STATIC_LR];
    train(&model, &data, &whole, 4, &args);
    let ckpt = whole.join("checkpoint-2");
    let state = Tensor::read_safetensors(ckpt.join("optimizer.safetensors")).unwrap();
    assert!(
        state
            .iter()
            .any(|(k, _)| k == &format!("exp_avg_sq.{STATIC}.weight")),
        "the checkpoint lacks the static weights' optimizer state"
    );
    assert!(ckpt.join(STATIC).join("model.safetensors").is_file());
    let part = tmp.path().join("part");
    copy_dir(&ckpt, &part.join("checkpoint-2"));
    train(
        &model,
        &data,
        &part,
        4,
        &[&args[..], &["--resume"]].concat(),
    );
    for file in [
        format!("{STATIC}/model.safetensors"),
        format!("{MLM}/model.safetensors"),
    ] {
        let read = |dir: &Path| {
            let mut w = Tensor::read_safetensors(dir.join(&file)).unwrap();
            w.sort_by(|a, b| a.0.cmp(&b.0));
            w
        };
        for ((n, a), (_, b)) in read(&whole).iter().zip(read(&part).iter()) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff == 0.0, "{file} {n}: resumed differs by {diff}");
        }
    }
    // A frozen static route (the fixture as released) keeps its weights.
    let frozen = tmp.path().join("frozen");
    let fixture = root().join("tests/fixtures/models/router-static");
    let log = Command::new(SPARQ)
        .args(["train", "--model"])
        .arg(&fixture)
        .arg("--train-data")
        .arg(&data)
        .arg("--output")
        .arg(&frozen)
        .args(["--max-steps", "1", "--batch-size", "4", "--save-steps", "0"])
        .args(["--learning-rate-mapping", STATIC_LR])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&log.stderr);
    assert!(!log.status.success() && err.contains("frozen"), "{err}");
    train(
        &fixture,
        &data,
        &frozen,
        1,
        &["--save-steps", "0", "--learning-rate-mapping", "cls=1e-3"],
    );
    let same = (static_weights(&frozen) - static_weights(&fixture))
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(same, 0.0);
}
