//! Training parity with sentence-transformers (references written by
//! tests/reference/make_train_reference.py): SpladeLoss and its parts, every parameter's
//! gradient, and clipping + AdamW fed the reference's gradients.

mod common;

use std::collections::HashMap;

use common::{root, tiny_model};
use sparq::train::loss::{splade_loss, LossSpec};
use sparq::train::model::TrainModel;
use sparq::train::optim::{clip_grad_norm, zero_grad, AdamW, Param};
use tch::{Device, Kind, Tensor};

const WORD: &str = "bert.embeddings.word_embeddings.weight";

fn reference() -> serde_json::Value {
    let path = root().join("tests/reference/train/reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(root().join("tests/reference/train").join(name))
        .unwrap()
        .into_iter()
        .collect()
}

/// The reference's full gradient of `name` (the word embeddings are stored by rows).
fn full(stored: &HashMap<String, Tensor>, name: &str, like: &Tensor) -> Tensor {
    if name == WORD {
        let rows = &stored[&format!("{WORD}.rows")];
        let values = &stored[&format!("{WORD}.values")];
        like.zeros_like()
            .index_put(&[Some(rows.shallow_clone())], values, false)
    } else {
        stored[name].shallow_clone()
    }
}

fn texts(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

fn model() -> TrainModel {
    let mut m = TrainModel::load(&tiny_model(), Device::Cpu, false).unwrap();
    m.set_dropout(false); // The reference ran in eval mode: no dropout.
    m
}

#[test]
fn loss_and_gradients_equal_the_reference() {
    tch::set_num_threads(1);
    let r = reference();
    let (lq, ld) = (
        r["lambda_query"].as_f64().unwrap(),
        r["lambda_document"].as_f64().unwrap(),
    );
    let m = model();
    let names: Vec<&str> = m.params.iter().map(|(n, _)| n.as_str()).collect();
    for (b, batch) in r["batches"].as_array().unwrap().iter().enumerate() {
        for (_, t) in &m.params {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let queries = m
            .forward(&m.tokenize(&texts(&batch["anchor"])).unwrap())
            .unwrap();
        let mut docs_text = texts(&batch["positive"]);
        docs_text.extend(texts(&batch["negative"]));
        let docs = m.forward(&m.tokenize(&docs_text).unwrap()).unwrap();
        let mut columns = vec![queries.shallow_clone()];
        columns.extend(docs.split(queries.size()[0], 0));
        let parts = splade_loss(&columns, None, &LossSpec::default(), lq, ld, None).unwrap();
        let query_regularizer = parts.query_regularizer.as_ref().unwrap();
        for (key, got) in [
            ("loss", &parts.total),
            ("base_loss", &parts.base),
            ("query_regularizer_loss", query_regularizer),
            ("document_regularizer_loss", &parts.document_regularizer),
        ] {
            let want = batch[key].as_f64().unwrap();
            let got = got.double_value(&[]);
            assert!(
                (got - want).abs() <= 1e-5,
                "batch {b} {key}: {got} vs {want}"
            );
        }
        parts.total.backward();
        let grads = tensors(&format!("grads-{b}.safetensors"));
        let mut stored: Vec<String> = grads
            .keys()
            .map(|k| {
                k.trim_end_matches(".rows")
                    .trim_end_matches(".values")
                    .to_string()
            })
            .collect();
        stored.sort();
        stored.dedup();
        let mut mine: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        mine.sort();
        assert_eq!(mine, stored, "parameter names differ from the reference's");
        for (name, t) in &m.params {
            let want = full(&grads, name, t);
            let got = t.grad();
            let norm = want.norm().double_value(&[]);
            let diff = (&got - &want).norm().double_value(&[]);
            // Parameters whose true gradient is zero (the attention key biases: softmax is
            // shift-invariant) hold rounding noise in both; bound those absolutely.
            if norm < 1e-6 {
                assert!(
                    diff <= 1e-6,
                    "batch {b} {name}: |Δg| {diff} where the reference is ~0"
                );
            } else {
                assert!(
                    diff / norm <= 1e-4,
                    "batch {b} {name}: |Δg|/|g| = {}",
                    diff / norm
                );
            }
        }
    }
}

#[test]
fn clipping_and_adamw_equal_the_reference_on_its_gradients() {
    tch::set_num_threads(1);
    let r = reference();
    let opt = &r["optimizer"];
    let no_decay: Vec<&str> = opt["no_decay"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let m = model();
    let mut params: Vec<Param> = m
        .params
        .iter()
        .map(|(name, t)| Param::new(name, t))
        .collect();
    for p in &params {
        assert_eq!(p.decay, !no_decay.contains(&p.name.as_str()), "{}", p.name);
    }
    let adamw = AdamW {
        weight_decay: opt["weight_decay"].as_f64().unwrap(),
        ..AdamW::default()
    };
    let lr = opt["lr"].as_f64().unwrap();
    let files = opt["optimizer_only"]["gradients"].as_array().unwrap();
    let norms = opt["optimizer_only"]["grad_norms_before_clipping"]
        .as_array()
        .unwrap();
    for (step, file) in files.iter().enumerate() {
        let grads = tensors(file.as_str().unwrap());
        zero_grad(&mut params);
        // d/dp Σ p·g = g exactly: installs the reference's gradient.
        let terms: Vec<Tensor> = params
            .iter()
            .map(|p| (&p.tensor * full(&grads, &p.name, &p.tensor)).sum(Kind::Float))
            .collect();
        let loss = Tensor::stack(&terms, 0).sum(Kind::Float);
        loss.backward();
        let norm = clip_grad_norm(&params, opt["max_grad_norm"].as_f64().unwrap()).unwrap();
        let want = norms[step].as_f64().unwrap();
        assert!(
            (norm - want).abs() <= 1e-4 * want,
            "step {step}: norm {norm} vs {want}"
        );
        adamw.step(&mut params, lr, step as u64 + 1).unwrap();
    }
    let after = tensors("optimizer-only-3-steps.safetensors");
    for p in &params {
        let (got, want) = if p.name == WORD {
            let rows = &after[&format!("{WORD}.rows")];
            (
                p.tensor.index_select(0, rows),
                after[&format!("{WORD}.values")].shallow_clone(),
            )
        } else {
            (p.tensor.shallow_clone(), after[&p.name].shallow_clone())
        };
        let diff = (&got - &want).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-6,
            "{}: max |Δ| {diff} after 3 AdamW steps",
            p.name
        );
    }
}
