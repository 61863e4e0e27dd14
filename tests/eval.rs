//! `sparq eval` against sentence-transformers' SparseInformationRetrievalEvaluator
//! (`tests/reference/make_eval_reference.py` wrote the fixtures and reference metrics).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use sparq::encode::SparseVector;
use sparq::eval::run::evaluate;
use sparq::eval::{IrDataset, SparsityCounts};

/// An id and its vector.
type Named = (String, SparseVector);

const KEYS: [&str; 20] = [
    "dot_accuracy@1",
    "dot_accuracy@3",
    "dot_accuracy@5",
    "dot_accuracy@10",
    "dot_precision@1",
    "dot_precision@3",
    "dot_precision@5",
    "dot_precision@10",
    "dot_recall@1",
    "dot_recall@3",
    "dot_recall@5",
    "dot_recall@10",
    "dot_ndcg@10",
    "dot_mrr@10",
    "dot_map@100",
    "query_active_dims",
    "query_sparsity_ratio",
    "corpus_active_dims",
    "corpus_sparsity_ratio",
    "avg_flops",
];

fn reference(name: &str) -> HashMap<String, f64> {
    serde_json::from_slice(&std::fs::read(root().join("tests/reference").join(name)).unwrap())
        .unwrap()
}

fn assert_metrics(
    label: &str,
    got: &serde_json::Map<String, serde_json::Value>,
    want: &HashMap<String, f64>,
    tol: f64,
) {
    let mut keys: Vec<&String> = got.keys().filter(|k| *k != "dataset").collect();
    keys.sort();
    let mut expected: Vec<&str> = KEYS.to_vec();
    expected.sort();
    assert_eq!(keys, expected, "{label}: exactly the reference's keys");
    for key in KEYS {
        let (g, w) = (got[key].as_f64().unwrap(), want[key]);
        assert!(
            (g - w).abs() <= tol,
            "{label} {key}: got {g}, reference {w}"
        );
    }
}

fn sparq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparq"))
        .current_dir(root())
        .env_remove("SPARQ_MODEL")
        .args(args)
        .output()
        .unwrap()
}

fn json_lines(out: &Output) -> Vec<serde_json::Map<String, serde_json::Value>> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn same_vectors_give_the_reference_metrics_within_1e6() {
    let ds = IrDataset::load(&root().join("tests/fixtures/beir-small"), "test", false).unwrap();
    let text =
        std::fs::read_to_string(root().join("tests/reference/eval-beir-small-vectors.jsonl"))
            .unwrap();
    let (mut queries, mut docs): (Vec<Named>, Vec<Named>) = (vec![], vec![]);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let entry = (v["id"].as_str().unwrap().to_string(), parse_vector(line));
        if v["kind"] == "query" {
            queries.push(entry)
        } else {
            docs.push(entry)
        }
    }
    let judged: Vec<&str> = ds
        .judged_queries()
        .iter()
        .map(|(q, _)| q.as_str())
        .collect();
    assert_eq!(
        judged,
        queries.iter().map(|(q, _)| q.as_str()).collect::<Vec<_>>(),
        "same evaluated queries, same order"
    );
    let corpus_ids: Vec<String> = ds.corpus.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        corpus_ids,
        docs.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
        "same corpus"
    );
    let qv: Vec<SparseVector> = queries.into_iter().map(|q| q.1).collect();
    let dv: Vec<SparseVector> = docs.into_iter().map(|d| d.1).collect();
    let mut metrics = evaluate(&qv, &dv, &corpus_ids, &judged, &ds, 2, None).unwrap();
    metrics.extend(SparsityCounts::new(30522, &qv, &dv).metrics());
    let got: serde_json::Map<String, serde_json::Value> =
        metrics.into_iter().map(|(k, v)| (k, v.into())).collect();
    assert_metrics(
        "same vectors",
        &got,
        &reference("eval-beir-small.json"),
        1e-6,
    );
}

#[test]
fn end_to_end_metrics_match_for_beir_and_nanobeir_layouts() {
    let want = reference("eval-beir-small.json");
    let out = sparq(&["eval", "--beir", "tests/fixtures/beir-small"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_metrics("beir", &lines[0], &want, 1e-4);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown queries") && err.contains("unknown documents"),
        "warned: {err}"
    );
    let lines = json_lines(&sparq(&["eval", "--beir", "tests/fixtures/nanobeir-small"]));
    assert_metrics("nanobeir parquet", &lines[0], &want, 1e-4);
}

#[test]
fn several_datasets_print_each_and_their_mean() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run.tsv");
    let out = sparq(&[
        "eval",
        "--beir",
        "tests/fixtures/beir-small",
        "--beir",
        "tests/fixtures/beir-other",
        "--run-file",
        run.to_str().unwrap(),
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["dataset"], "beir-small");
    assert_metrics("small", &lines[0], &reference("eval-beir-small.json"), 1e-4);
    assert_metrics("other", &lines[1], &reference("eval-beir-other.json"), 1e-4);
    assert_eq!(lines[2]["dataset"], "mean");
    assert_metrics("mean", &lines[2], &reference("eval-mean.json"), 1e-4);
    // One TREC run per dataset.
    let trec = std::fs::read_to_string(dir.path().join("run-beir-small.tsv")).unwrap();
    let first: Vec<&str> = trec.lines().next().unwrap().split(' ').collect();
    assert_eq!(
        (first[0], first[1], first[3], first[5]),
        ("q-whisky", "Q0", "1", "sparq")
    );
    let q = trec.lines().filter(|l| l.starts_with("q-whisky ")).count();
    assert_eq!(q, 27, "the whole 27-document corpus is ranked (k = 100)");
    let scores: Vec<f64> = trec
        .lines()
        .filter(|l| l.starts_with("q-whisky "))
        .map(|l| l.split(' ').nth(4).unwrap().parse().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn corpus_vectors_of_an_encode_output_give_the_same_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let corpus =
        std::fs::read_to_string(root().join("tests/fixtures/beir-small/corpus.jsonl")).unwrap();
    let (ids, texts): (Vec<String>, Vec<String>) = corpus
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["_id"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .unzip();
    let batch = arrow::array::RecordBatch::try_from_iter(vec![
        (
            "_id",
            std::sync::Arc::new(arrow::array::StringArray::from(ids)) as arrow::array::ArrayRef,
        ),
        (
            "text",
            std::sync::Arc::new(arrow::array::StringArray::from(texts)),
        ),
    ])
    .unwrap();
    corpus::write_batch(&dir.path().join("in/corpus.parquet"), batch, 10);
    let out_dir = dir.path().join("vectors");
    let out = sparq(&[
        "encode",
        "--input",
        dir.path().join("in").to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
        "--id-column",
        "_id",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&sparq(&[
        "eval",
        "--beir",
        "tests/fixtures/beir-small",
        "--corpus-vectors",
        out_dir.to_str().unwrap(),
    ]));
    assert_metrics(
        "corpus vectors",
        &lines[0],
        &reference("eval-beir-small.json"),
        1e-4,
    );
}

fn eval_err(dir: &Path) -> String {
    let out = sparq(&["eval", "--beir", dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_datasets_fail_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = eval_err(&dir.path().join("absent"));
    assert!(
        err.contains("absent") && err.contains("corpus.jsonl"),
        "{err}"
    );
    let d = dir.path().join("broken");
    std::fs::create_dir_all(d.join("qrels")).unwrap();
    std::fs::write(
        d.join("corpus.jsonl"),
        "{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"b\", \"text\": \n",
    )
    .unwrap();
    std::fs::write(
        d.join("queries.jsonl"),
        "{\"_id\": \"q\", \"text\": \"x\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq\ta\t1\n",
    )
    .unwrap();
    let err = eval_err(&d);
    assert!(
        err.contains("corpus.jsonl, line 2") && err.contains("not valid JSON"),
        "{err}"
    );
    std::fs::write(d.join("corpus.jsonl"), "{\"_id\": \"a\", \"text\": \"\"}\n").unwrap();
    let err = eval_err(&d);
    assert!(err.contains("corpus has no document"), "{err}");
    std::fs::write(
        d.join("corpus.jsonl"),
        "{\"_id\": \"a\", \"text\": \"x\"}\n",
    )
    .unwrap();
    std::fs::remove_file(d.join("qrels/test.tsv")).unwrap();
    let err = eval_err(&d);
    assert!(err.contains("test.tsv") && err.contains("--split"), "{err}");
}

#[test]
fn a_compressed_beir_folder_gives_the_reference_metrics() {
    use std::io::Write;
    let want = reference("eval-beir-small.json");
    let fixture = root().join("tests/fixtures/beir-small");
    let read = |name: &str| std::fs::read(fixture.join(name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // corpus.jsonl.gz, queries.jsonl.zst and qrels/test.tsv.gz, as users compress them.
    let folder = dir.path().join("beir-small");
    std::fs::create_dir_all(folder.join("qrels")).unwrap();
    let gzip = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    std::fs::write(folder.join("corpus.jsonl.gz"), gzip(&read("corpus.jsonl"))).unwrap();
    std::fs::write(
        folder.join("queries.jsonl.zst"),
        zstd::encode_all(&read("queries.jsonl")[..], 3).unwrap(),
    )
    .unwrap();
    std::fs::write(
        folder.join("qrels/test.tsv.gz"),
        gzip(&read("qrels/test.tsv")),
    )
    .unwrap();
    let lines = json_lines(&sparq(&["eval", "--beir", folder.to_str().unwrap()]));
    assert_eq!(lines.len(), 1);
    assert_metrics("beir compressed", &lines[0], &want, 1e-4);
}
