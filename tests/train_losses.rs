//! The losses inside SpladeLoss against sentence-transformers (references written by
//! tests/reference/make_distill_reference.py): SparseMarginMSELoss, SparseDistillKLDivLoss,
//! the regularizer thresholds and the document-only regularizer, loss parts and every
//! parameter's gradient. Then the step's two other paths against the plain one: two ranks over
//! localhost (the TCP collective, gradients in buckets) equal one process with the merged batch,
//! and gradient caching equals no caching.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{root, tiny_model};
use serde_json::Value;
use sparq::train::collective::{Collective, CollectiveKind};
use sparq::train::dist::RankEnv;
use sparq::train::loss::splade_loss;
use sparq::train::loss::{LossKind, LossSpec};
use sparq::train::model::TrainModel;
use sparq::train::optim::{zero_grad, Param};
use sparq::train::step::{chunk_seed, forward_backward, Batch, StepOptions, StepStats};
use tch::{Device, Kind, Tensor};

/// libtorch's random generator is global and every step seeds it: the tests of this file take
/// turns, so that none reseeds it between another's seeding and its dropout draws.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn model() -> (TrainModel, Vec<Param>) {
    let mut m = TrainModel::load(&tiny_model(), Device::Cpu, false).unwrap();
    m.set_dropout(false); // The references ran in eval mode; equalities need no dropout.
    let params = m.params.iter().map(|(n, t)| Param::new(n, t)).collect();
    (m, params)
}

fn labels_tensor(rows: &[Vec<f32>]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
}

/// The case's options as sparq's loss settings, with λ_q and λ_d.
fn spec_of(case: &Value) -> (LossSpec, f64, f64) {
    let o = &case["options"];
    let kind = case["loss"].as_str().unwrap().parse::<LossKind>().unwrap();
    let c = &case["loss_config"];
    let temperature = c["temperature"].as_f64().unwrap_or(2.0);
    let spec = LossSpec {
        kind,
        student_temperature: c["student_temperature"].as_f64().unwrap_or(temperature),
        teacher_temperature: c["teacher_temperature"].as_f64().unwrap_or(temperature),
        query_regularizer: !o["query_regularizer_weight"].is_null(),
        query_threshold: o["query_regularizer_threshold"].as_u64(),
        document_threshold: o["document_regularizer_threshold"].as_u64(),
        document_regularizer_only: o["use_document_regularizer_only"].as_bool() == Some(true),
    };
    let lq = o["query_regularizer_weight"].as_f64().unwrap_or(0.0);
    (spec, lq, o["document_regularizer_weight"].as_f64().unwrap())
}

fn grads(params: &[Param]) -> Vec<Tensor> {
    params.iter().map(|p| p.tensor.grad().copy()).collect()
}

/// |got − want| / |want|; where |want| is below `floor` (the attention key biases, whose true
/// gradient is exactly 0, hold rounding noise only) the difference is measured against `floor`.
fn rel(got: &Tensor, want: &Tensor, floor: f64) -> f64 {
    let norm = want.norm().double_value(&[]);
    let diff = (got - want).norm().double_value(&[]);
    diff / norm.max(floor)
}

/// The noise floor of a gradient: 1e-7 of its global norm.
fn floor_of(norms: impl Iterator<Item = f64>) -> f64 {
    1e-7 * norms.map(|n| n * n).sum::<f64>().sqrt()
}

#[test]
fn distillation_losses_and_regularizer_options_equal_the_reference() {
    let _turn = turn();
    tch::set_num_threads(1);
    let dir = root().join("tests/reference/distill");
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let stored: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("grads.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let stride = r["stride"].as_i64().unwrap();
    let row_stride = r["row_stride"].as_i64().unwrap();
    let word = r["word_embedding_key"].as_str().unwrap();
    let (m, mut params) = model();
    let (mut worst_loss, mut worst_grad) = (0f64, 0f64);
    for case in r["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (spec, lq, ld) = spec_of(case);
        let columns: Vec<Vec<&str>> = case["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                r["batch"][c.as_str().unwrap()]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect()
            })
            .collect();
        let labels = case["labels"].as_array().map(|rows| {
            let rows: Vec<Vec<f32>> = rows
                .iter()
                .map(|v| match v.as_array() {
                    Some(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
                    None => vec![v.as_f64().unwrap() as f32],
                })
                .collect();
            labels_tensor(&rows)
        });
        let batch = Batch { columns, labels };
        let options = StepOptions {
            spec: &spec,
            lambda_query: lq,
            lambda_document: ld,
            mini_batch: None,
            seed: 0,
        };
        zero_grad(&mut params);
        let stats = forward_backward(&m, &batch, &options, None).unwrap();
        let parts = &case["components"];
        assert_eq!(
            parts.get("query_regularizer_loss").is_some(),
            spec.query_regularizer,
            "{name}: whether there is a query term"
        );
        for (key, got) in [
            ("base_loss", stats.base),
            ("document_regularizer_loss", stats.document_regularizer),
            ("query_regularizer_loss", stats.query_regularizer),
        ] {
            let want = parts[key].as_f64().unwrap_or(0.0);
            worst_loss = worst_loss.max((got - want).abs() / want.abs().max(1.0));
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{name} {key}: {got} vs {want}"
            );
        }
        let want = case["total"].as_f64().unwrap();
        assert!((stats.total - want).abs() <= 1e-5 * want.abs().max(1.0));
        let stat = &case["gradient_stats"];
        let floor = floor_of(
            stat.as_object()
                .unwrap()
                .values()
                .map(|s| s["norm"].as_f64().unwrap()),
        );
        for p in &params {
            let g = p.tensor.grad();
            let (got, want) = if p.name == word {
                let rows = &stored[&format!("{name}/{word}.rows")];
                let cols = Tensor::arange_start_step(
                    0,
                    g.size()[1],
                    row_stride,
                    (Kind::Int64, Device::Cpu),
                );
                (
                    g.index_select(0, rows).index_select(1, &cols),
                    stored[&format!("{name}/{word}.values")].shallow_clone(),
                )
            } else {
                let idx = Tensor::arange_start_step(
                    0,
                    g.numel() as i64,
                    stride,
                    (Kind::Int64, Device::Cpu),
                );
                (
                    g.reshape([-1]).index_select(0, &idx),
                    stored[&format!("{name}/{}", p.name)].shallow_clone(),
                )
            };
            let d = rel(&got, &want, floor * 1e3);
            worst_grad = worst_grad.max(d);
            assert!(d <= 1e-4, "{name} {}: sampled |Δg|/|g| = {d}", p.name);
            let s = &stat[&p.name];
            let (norm, sum, abs_sum) = (
                s["norm"].as_f64().unwrap(),
                s["sum"].as_f64().unwrap(),
                s["abs_sum"].as_f64().unwrap(),
            );
            let my_norm = g.norm().double_value(&[]);
            let my_sum = g.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
            assert!(
                (my_norm - norm).abs() <= 1e-4 * norm + floor,
                "{name} {}: |g| {my_norm} vs {norm}",
                p.name
            );
            assert!(
                (my_sum - sum).abs() <= 1e-4 * abs_sum + floor,
                "{name} {}: Σg {my_sum} vs {sum}",
                p.name
            );
        }
    }
    eprintln!("largest |Δ loss part|/max(|part|, 1) {worst_loss:e}, largest sampled |Δg|/|g| {worst_grad:e}");
}

/// Four (query, positive, negative_1, negative_2) rows with teacher scores.
const ROWS: [[&str; 4]; 4] = [
    [
        "what causes the northern lights",
        "Charged particles from the sun collide with gases in the upper atmosphere.",
        "The northern part of the country has long winters.",
        "Charged batteries should be stored in a cool place.",
    ],
    [
        "how long should you boil an egg",
        "Simmer a soft-boiled egg for about six minutes.",
        "Eggs are a common source of protein.",
        "Boiling water at altitude takes longer.",
    ],
    [
        "who invented the printing press",
        "Johannes Gutenberg developed a movable-type printing press around 1440.",
        "A hydraulic press uses a fluid-filled cylinder.",
        "The press office published a statement on Tuesday.",
    ],
    [
        "why do cats purr",
        "Cats purr by twitching the muscles of the larynx, often from contentment.",
        "Dogs wag their tails to communicate with people.",
        "The cat sat on the mat all afternoon.",
    ],
];
const TEACHER: [[f32; 3]; 4] = [
    [9.5, 2.25, -1.5],
    [7.0, 4.5, 3.75],
    [8.25, 1.0, 0.5],
    [6.5, 3.0, 5.5],
];

fn batch_of(rows: std::ops::Range<usize>) -> Batch<'static> {
    Batch {
        columns: (0..4)
            .map(|c| rows.clone().map(|r| ROWS[r][c]).collect())
            .collect(),
        labels: Some(labels_tensor(
            &rows.map(|r| TEACHER[r].to_vec()).collect::<Vec<_>>(),
        )),
    }
}

fn specs() -> Vec<LossSpec> {
    let mut thresholds = LossSpec {
        query_threshold: Some(15),
        document_threshold: Some(50),
        ..LossSpec::default()
    };
    thresholds.kind = LossKind::Mnrl;
    vec![
        LossSpec::default(),
        thresholds,
        LossSpec {
            kind: LossKind::MarginMse,
            ..LossSpec::default()
        },
        LossSpec {
            kind: LossKind::DistillKl,
            document_regularizer_only: true,
            ..LossSpec::default()
        },
    ]
}

/// Large enough that the regularizers' gradients are not lost next to the base loss's.
const LQ: f64 = 5e-3;
const LD: f64 = 3e-3;

fn step(
    m: &TrainModel,
    params: &mut [Param],
    batch: &Batch,
    spec: &LossSpec,
    mini_batch: Option<usize>,
    group: Option<&mut Collective>,
) -> (StepStats, Vec<Tensor>) {
    let options = StepOptions {
        spec,
        lambda_query: LQ,
        lambda_document: LD,
        mini_batch,
        seed: 7,
    };
    zero_grad(params);
    let stats = forward_backward(m, batch, &options, group).unwrap();
    (stats, grads(params))
}

fn assert_same(
    what: &str,
    a: &(StepStats, Vec<Tensor>),
    b: &(StepStats, Vec<Tensor>),
    names: &[String],
) {
    for (x, y, part) in [
        (a.0.total, b.0.total, "loss"),
        (a.0.base, b.0.base, "base loss"),
        (
            a.0.query_regularizer,
            b.0.query_regularizer,
            "query regularizer",
        ),
        (
            a.0.document_regularizer,
            b.0.document_regularizer,
            "document regularizer",
        ),
    ] {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs().max(1e-3),
            "{what}: {part} {x} vs {y}"
        );
    }
    let floor = floor_of(b.1.iter().map(|g| g.norm().double_value(&[])));
    for ((ga, gb), name) in a.1.iter().zip(&b.1).zip(names) {
        let d = rel(ga, gb, floor * 1e4);
        assert!(
            d <= 1e-5,
            "{what}: {name}: |Δg|/|g| = {d} (|g| {}, global floor {floor})",
            gb.norm().double_value(&[])
        );
    }
}

#[test]
fn two_ranks_and_gradient_caching_equal_one_process_with_the_merged_batch() {
    let _turn = turn();
    tch::set_num_threads(1);
    let (m, mut params) = model();
    let names: Vec<String> = params.iter().map(|p| p.name.clone()).collect();
    let whole = batch_of(0..4);
    let mut reference = Vec::new();
    for spec in specs() {
        let plain = step(&m, &mut params, &whole, &spec, None, None);
        // Caching, one row and three rows per forward pass, equals the plain step.
        for mini in [1, 3] {
            let cached = step(&m, &mut params, &whole, &spec, Some(mini), None);
            assert_same(
                &format!("{:?} cached by {mini}", spec.kind),
                &cached,
                &plain,
                &names,
            );
        }
        reference.push(plain);
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ranks: Vec<_> = (0..2usize)
        .map(|rank| {
            std::thread::spawn(move || {
                tch::set_num_threads(1);
                let env = RankEnv {
                    rank,
                    world: 2,
                    local_rank: rank,
                    master: format!("127.0.0.1:{port}"),
                };
                let mut group = Collective::connect(
                    CollectiveKind::Tcp,
                    Some(&env),
                    Device::Cpu,
                    Duration::from_secs(60),
                )
                .unwrap()
                .unwrap();
                let (m, mut params) = model();
                let mine = batch_of(rank * 2..rank * 2 + 2);
                let mut out = Vec::new();
                for spec in specs() {
                    for mini in [None, Some(1)] {
                        let (stats, _) =
                            step(&m, &mut params, &mine, &spec, mini, Some(&mut group));
                        group.average_gradients(&params).unwrap();
                        out.push((stats, grads(&params)));
                    }
                }
                // Buckets change how the gradients travel, not their bits: 64 KiB buckets
                // (many) against one bucket holding every parameter.
                let mut by_cap = Vec::new();
                for cap in [64 << 10, usize::MAX] {
                    group.set_bucket_bytes(cap);
                    step(&m, &mut params, &mine, &specs()[0], None, Some(&mut group));
                    group.average_gradients(&params).unwrap();
                    by_cap.push((group.buckets().len(), grads(&params)));
                }
                let (many, small) = &by_cap[0];
                let (one, whole) = &by_cap[1];
                assert!(*many > 10 && *one == 1, "{many} and {one} buckets");
                for (a, b) in small.iter().zip(whole) {
                    assert!(a.equal(b), "bucketing changed a gradient on rank {rank}");
                }
                out
            })
        })
        .collect();
    let results: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    for (rank, runs) in results.iter().enumerate() {
        for (i, run) in runs.iter().enumerate() {
            let spec = &specs()[i / 2];
            let what = format!("rank {rank} of 2, {:?}, cached {}", spec.kind, i % 2 == 1);
            assert_same(&what, run, &reference[i / 2], &names);
        }
    }
    // The test can fail: per-rank regularizers (each rank's own rows) give other gradients.
    let half = step(&m, &mut params, &batch_of(0..2), &specs()[0], None, None);
    let d = rel(&half.1[0], &reference[0].1[0], 0.0);
    assert!(d > 1e-3, "one rank's half batch is indistinguishable: {d}");
}

#[test]
fn gradient_caching_reuses_the_dropout_masks_of_the_first_pass() {
    let _turn = turn();
    tch::set_num_threads(1);
    let (mut m, mut params) = model();
    m.set_dropout(true);
    let names: Vec<String> = params.iter().map(|p| p.name.clone()).collect();
    let batch = batch_of(0..4);
    let spec = LossSpec {
        kind: LossKind::DistillKl,
        ..LossSpec::default()
    };
    let cached = step(&m, &mut params, &batch, &spec, Some(2), None);
    // The gradient of the loss of the embeddings each mini-batch gets under its seed: what a
    // cached step computes if its second pass draws the first pass's masks.
    zero_grad(&mut params);
    let doc_texts: Vec<&str> = batch.columns[1..].iter().flatten().copied().collect();
    let passes = [batch.columns[0].clone(), doc_texts];
    let mut outputs = Vec::new();
    for (p, texts) in passes.iter().enumerate() {
        let mut chunks = Vec::new();
        for (k, chunk) in texts.chunks(2).enumerate() {
            tch::manual_seed(chunk_seed(7, p, k));
            chunks.push(m.forward(&m.tokenize(chunk).unwrap()).unwrap());
        }
        outputs.push(Tensor::cat(&chunks, 0));
    }
    let mut columns = vec![outputs[0].shallow_clone()];
    columns.extend(outputs[1].split(4, 0));
    let parts = splade_loss(&columns, batch.labels.as_ref(), &spec, LQ, LD, None).unwrap();
    parts.total.backward();
    let stats = StepStats {
        total: parts.total.double_value(&[]),
        base: parts.base.double_value(&[]),
        query_regularizer: parts.query_regularizer.as_ref().unwrap().double_value(&[]),
        document_regularizer: parts.document_regularizer.double_value(&[]),
        ..StepStats::default()
    };
    assert_same(
        "cached with dropout",
        &cached,
        &(stats, grads(&params)),
        &names,
    );
    // Dropout is on: the plain step's masks give another gradient.
    let plain = step(&m, &mut params, &batch, &spec, None, None);
    assert!(rel(&plain.1[0], &cached.1[0], 0.0) > 1e-4);
}
