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

/// The BERT fixture and the XLM-RoBERTa one, by name.
const FIXTURES: [&str; 2] = ["cross-encoder-tiny", "cross-encoder-xlmr-tiny"];

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
    references_of("cross-encoder-tiny")
}

fn references_of(name: &str) -> Vec<Reference> {
    let path = common::root().join(format!("tests/reference/{name}.jsonl"));
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
    for name in FIXTURES {
        let refs = references_of(name);
        let dir = common::root().join("tests/fixtures/models").join(name);
        let tokenizer = SpladeTokenizer::load_for_pairs(&dir, 32, false).unwrap();
        let got = tokenizer.encode_pairs(&pairs(&refs)).unwrap();
        let mut truncated = 0;
        for (g, r) in got.iter().zip(&refs) {
            assert_eq!(
                g.ids, r.input_ids,
                "{name}: ids of ({:?}, {:?})",
                r.query, r.text
            );
            // RoBERTa's tokenizer returns no token types: the model reads zeros.
            if name == "cross-encoder-tiny" {
                assert_eq!(g.type_ids, r.token_type_ids, "types of {:?}", r.query);
            }
            truncated += usize::from(g.ids.len() == 32);
        }
        // The fixture must exercise pair truncation.
        assert!(truncated >= 4, "{name}: {truncated} truncated pairs");
    }
}

#[test]
fn scores_equal_cross_encoder_predict() {
    for name in FIXTURES {
        let refs = references_of(name);
        let dir = common::root().join("tests/fixtures/models").join(name);
        let model = CrossEncoder::load(&dir, tch::Device::Cpu).unwrap();
        assert_eq!(model.activation(), ScoreActivation::Sigmoid);
        assert_eq!(model.max_length(), 32);
        let want: Vec<f32> = refs.iter().map(|r| r.score).collect();
        let got = model.predict(&pairs(&refs), 4).unwrap();
        let diff = max_abs_diff(&got, &want);
        eprintln!("{name}: max |score - CrossEncoder.predict| = {diff:e}");
        assert!(diff <= 1e-4, "{name}: max abs diff {diff}");
        let logits: Vec<f32> = refs.iter().map(|r| r.logit).collect();
        let spread = logits.iter().cloned().fold(f32::MIN, f32::max)
            - logits.iter().cloned().fold(f32::MAX, f32::min);
        assert!(
            spread > 0.5,
            "{name}: the fixture's scores hardly differ ({spread})"
        );

        let one_by_one: Vec<f32> = pairs(&refs)
            .iter()
            .map(|p| model.predict(&[*p], 1).unwrap()[0])
            .collect();
        let all_at_once = model.predict(&pairs(&refs), 64).unwrap();
        let batched = max_abs_diff(&all_at_once, &one_by_one);
        eprintln!("{name}: max |batched - one by one| = {batched:e}");
        assert!(batched <= 1e-5, "{name}: batched vs one-by-one {batched}");
        assert!(model.predict(&[], 4).unwrap().is_empty());
        assert!(model.predict(&pairs(&refs), 0).is_err());
    }
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

    // A folder saved before sentence-transformers 4 (no modules.json; the activation under
    // `sbert_ce_default_activation_function` in config.json), as cross-encoder/ms-marco-* are.
    let dir = edited_fixture("config.json", |v| {
        v["sbert_ce_default_activation_function"] = "torch.nn.modules.linear.Identity".into();
    });
    for name in [
        "config_sentence_transformers.json",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let model = CrossEncoder::load(dir.path(), tch::Device::Cpu).unwrap();
    assert_eq!(model.activation(), ScoreActivation::Identity);
    let diff = max_abs_diff(&model.predict(&pairs(&refs), 8).unwrap(), &want);
    assert!(diff <= 1e-4, "legacy folder: max abs diff {diff}");

    // A path outside torch is not trusted (as in Python): the default, Sigmoid, applies.
    let dir = edited_fixture("config_sentence_transformers.json", |v| {
        v["activation_fn"] = "my_package.MyActivation".into();
    });
    let model = CrossEncoder::load(dir.path(), tch::Device::Cpu).unwrap();
    assert_eq!(model.activation(), ScoreActivation::Sigmoid);

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
        v["model_type"] = "distilbert".into();
        v["architectures"] = serde_json::json!(["DistilBertForSequenceClassification"]);
    });
    let err = load_error(dir.path());
    assert!(err.contains("a distilbert cross-encoder"), "{err}");

    let dir = edited_fixture("config.json", |_| {});
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("model.safetensors is missing"), "{err}");

    let err = load_error(Path::new("/nonexistent/cross-encoder"));
    assert!(err.contains("does not exist"), "{err}");
}

// `sparq score` end to end.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::corpus::{text_for, write_batch};
use common::process::{children_of, kill9, wait_for};

fn sparq() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(common::root()).env_remove("SPARQ_MODEL");
    c
}

fn score_args<'a>(input: &'a Path, output: &'a Path) -> Vec<&'a str> {
    vec![
        "score",
        "--model",
        "tests/fixtures/models/cross-encoder-tiny",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--threads",
        "1",
    ]
}

fn score(input: &Path, output: &Path, extra: &[&str]) -> Output {
    sparq()
        .args(score_args(input, output))
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no summary; stderr: {}", stderr(out)));
    serde_json::from_str(line).unwrap()
}

/// Writes pairs with int64 ids from `first_id`: columns id, query, text (and `question`, a
/// copy of `query`), in row groups of `group` rows.
fn write_pairs(path: &Path, first_id: i64, pairs: &[(String, Option<String>)], group: usize) {
    let ids: Vec<i64> = (first_id..first_id + pairs.len() as i64).collect();
    let queries: Vec<&str> = pairs.iter().map(|(q, _)| q.as_str()).collect();
    let texts: Vec<Option<&str>> = pairs.iter().map(|(_, t)| t.as_deref()).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("query", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("question", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)) as ArrayRef,
            Arc::new(StringArray::from(queries.clone())),
            Arc::new(StringArray::from(texts)),
            Arc::new(StringArray::from(queries)),
        ],
    )
    .unwrap();
    write_batch(path, batch, group);
}

/// Every committed part of a score output: (id, score) in part order.
fn read_scores(dir: &Path) -> Vec<(i64, f32)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-") && n.ends_with(".parquet"))
        .collect();
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        let file = std::fs::File::open(dir.join(name)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(
            reader
                .schema()
                .field_with_name("score")
                .unwrap()
                .data_type(),
            &DataType::Float32
        );
        assert_eq!(reader.schema().fields().len(), 2, "{:?}", reader.schema());
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch["id"].as_any().downcast_ref::<Int64Array>().unwrap();
            let scores = batch["score"]
                .as_any()
                .downcast_ref::<Float32Array>()
                .unwrap();
            assert_eq!(scores.null_count(), 0);
            rows.extend(
                ids.values()
                    .iter()
                    .copied()
                    .zip(scores.values().iter().copied()),
            );
        }
    }
    rows
}

/// Asserts each id of `want` occurs once with its score (within `tol`), and nothing else.
fn assert_exactly_once(rows: &[(i64, f32)], want: &BTreeMap<i64, f32>, tol: f32) {
    let mut seen = BTreeMap::new();
    for &(id, s) in rows {
        assert!(seen.insert(id, s).is_none(), "id {id} written twice");
    }
    assert_eq!(seen.len(), want.len(), "ids missing or extra");
    for (id, w) in want {
        let got = seen.get(id).unwrap_or_else(|| panic!("id {id} missing"));
        assert!((got - w).abs() <= tol, "id {id}: {got} vs {w}");
    }
}

#[test]
fn sparq_score_writes_predict_scores_exactly_once_and_a_rerun_resumes() {
    let refs = references();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let pairs: Vec<(String, Option<String>)> = refs
        .iter()
        .map(|r| (r.query.clone(), Some(r.text.clone())))
        .collect();
    write_pairs(&input.join("a.parquet"), 0, &pairs[..12], 5);
    write_pairs(&input.join("b.parquet"), 12, &pairs[12..], 5);
    let output = dir.path().join("out");
    let out = score(&input, &output, &["--workers", "2", "--shard-rows", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["docs"], 20, "{s}");
    assert!(s["committed_shards"].as_u64() >= Some(5), "{s}");
    // Every pair's tokens are counted, special tokens included.
    let tokens: usize = refs.iter().map(|r| r.input_ids.len()).sum();
    assert_eq!(s["tokens"].as_u64(), Some(tokens as u64), "{s}");
    assert!(output.join("_SUCCESS").is_file() && output.join("_manifest.json").is_file());
    let want: BTreeMap<i64, f32> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| (i as i64, r.score))
        .collect();
    let rows = read_scores(&output);
    assert_exactly_once(&rows, &want, 1e-4);

    // The same command again commits nothing new and changes nothing.
    let again = score(&input, &output, &["--workers", "2", "--shard-rows", "4"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let committed = s["committed_shards"].as_u64();
    let s = summary(&again);
    assert_eq!(
        (s["committed_shards"].as_u64(), s["skipped_shards"].as_u64()),
        (Some(0), committed)
    );
    assert_eq!(read_scores(&output), rows);

    // Another query column is another output: refused, naming the setting.
    let other = score(&input, &output, &["--query-column", "question"]);
    assert_eq!(other.status.code(), Some(1));
    assert!(
        stderr(&other).contains("scores of `query` (--query-column)"),
        "{}",
        stderr(&other)
    );
}

#[test]
fn kill_9_of_score_then_rerun_gives_every_id_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let n = 4000;
    let pairs: Vec<(String, Option<String>)> = (0..n)
        .map(|i| {
            let q = text_for(i * 7 + 1).unwrap_or_else(|| "empty".into());
            (
                q.chars().take(60).collect(),
                text_for(i).or(Some(String::new())),
            )
        })
        .collect();
    write_pairs(&input.join("a.parquet"), 0, &pairs, 100);
    let output = dir.path().join("out");
    let mut child = sparq()
        .args(score_args(&input, &output))
        .args(["--workers", "2", "--shard-rows", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let parts = |dir: &Path| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
                .count()
        })
    };
    wait_for("a committed part", || parts(&output) >= 2);
    let workers = children_of(child.id());
    kill9(child.id());
    let _ = child.wait();
    for w in workers {
        wait_for("workers to exit", || {
            std::fs::read_to_string(format!("/proc/{w}/stat")).map_or(true, |s| s.contains(") Z "))
        });
    }
    assert!(
        !output.join("_SUCCESS").exists(),
        "the kill came too late to test anything"
    );
    let done_before = parts(&output);
    let out = score(&input, &output, &["--workers", "2", "--shard-rows", "200"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        summary(&out)["skipped_shards"].as_u64(),
        Some(done_before as u64)
    );
    // One thread: the workers' scores are the reference here, and a loaded machine's cores
    // oversubscribed cost this test ten times its time.
    tch::set_num_threads(1);
    let model = CrossEncoder::load(&fixture(), tch::Device::Cpu).unwrap();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(q, t)| (q.as_str(), t.as_deref().unwrap()))
        .collect();
    let want: BTreeMap<i64, f32> = model
        .predict(&refs, 64)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, s)| (i as i64, s))
        .collect();
    assert_exactly_once(&read_scores(&output), &want, 1e-5);
}

#[test]
fn bad_input_is_refused_naming_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<(String, Option<String>)> = (0..6)
        .map(|i| (format!("query {i}"), (i != 4).then(|| format!("text {i}"))))
        .collect();
    let input = dir.path().join("nulls");
    write_pairs(&input.join("a.parquet"), 0, &pairs, 3);

    // A missing column: nothing is written.
    let out = score(&input, &dir.path().join("o1"), &["--query-column", "q"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no column `q`"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--query-column"), "{}", stderr(&out));
    assert!(!dir.path().join("o1").join("_SUCCESS").exists());

    // A null text fails its shard, naming the row; the other shard is committed.
    let out = score(&input, &dir.path().join("o2"), &["--shard-rows", "3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("a.parquet, row 4, column `text`: null"),
        "{err}"
    );
    assert_eq!(read_scores(&dir.path().join("o2")).len(), 3);

    // A text column that is not text.
    let out = score(
        &input,
        &dir.path().join("o3"),
        &["--text-column", "id", "--id-column", "query"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("column `id` is Int64, not a string"),
        "{}",
        stderr(&out)
    );

    // An id column the output would overwrite; a model that is not a cross-encoder.
    let out = score(&input, &dir.path().join("o4"), &["--id-column", "score"]);
    assert!(
        stderr(&out).contains("--id-column `score`"),
        "{}",
        stderr(&out)
    );
    let out = sparq()
        .args(["score", "--model", "models/splade-bert-tiny-nq", "--input"])
        .args([
            input.to_str().unwrap(),
            "--output",
            dir.path().join("o5").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a cross-encoder"),
        "{}",
        stderr(&out)
    );
}

// Text inputs: the pairs as JSON lines (plain, gzip, zstd), TSV and CSV.

/// A score output's rows by string id: the score's bits (each id once).
fn read_scores_by_id(dir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !(name.starts_with("part-") && name.ends_with(".parquet")) {
            continue;
        }
        let file = std::fs::File::open(dir.join(&name)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch["id"].as_any().downcast_ref::<StringArray>().unwrap();
            let scores = batch["score"]
                .as_any()
                .downcast_ref::<Float32Array>()
                .unwrap();
            for i in 0..batch.num_rows() {
                let id = ids.value(i).to_string();
                let bits = scores.value(i).to_bits();
                assert!(out.insert(id.clone(), bits).is_none(), "{id} written twice");
            }
        }
    }
    out
}

/// The reference pairs twice over (40 rows, ids `p-N`), a quote and a comma in some.
fn text_pairs() -> Vec<(String, String, String)> {
    let refs = references();
    (0..40)
        .map(|i| {
            let r = &refs[i % refs.len()];
            let text = if i % 7 == 3 {
                format!("{}, she said \"twice\"", r.text)
            } else {
                r.text.clone()
            };
            (format!("p-{i}"), r.query.clone(), text)
        })
        .collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("_manifest.json")).unwrap()).unwrap()
}

#[test]
fn text_pairs_score_as_the_same_rows_in_parquet_bit_for_bit() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let rows = text_pairs();
    let column = |f: fn(&(String, String, String)) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let batch = RecordBatch::try_from_iter([
        ("id", column(|r| &r.0)),
        ("query", column(|r| &r.1)),
        ("text", column(|r| &r.2)),
    ])
    .unwrap();
    let parquet = dir.path().join("pairs.parquet");
    write_batch(&parquet, batch, 7);
    // One pair per forward pass: every score is computed alone, whatever the shards.
    let flags = ["--batch-size", "1", "--shard-rows", "3"];
    let base = dir.path().join("out-parquet");
    let out = score(&parquet, &base, &flags);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = read_scores_by_id(&base);
    assert_eq!(want.len(), rows.len());

    let mut jsonl = Vec::new();
    for (id, query, text) in &rows {
        let line = serde_json::json!({"id": id, "query": query, "text": text, "label": 1});
        writeln!(jsonl, "{line}").unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&jsonl).unwrap();
    let tsv: Vec<u8> = rows
        .iter()
        .flat_map(|(id, q, t)| format!("{q}\t{id}\t{t}\n").into_bytes())
        .collect();
    let mut csv = b"text,id,query\n".to_vec();
    for (id, q, t) in &rows {
        writeln!(csv, "{},{id},{}", csv_field(t), csv_field(q)).unwrap();
    }
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("pairs.jsonl", jsonl.clone(), vec![]),
        ("pairs.jsonl.gz", gz.finish().unwrap(), vec![]),
        (
            "pairs.jsonl.zst",
            zstd::encode_all(&jsonl[..], 3).unwrap(),
            vec![],
        ),
        ("pairs.tsv", tsv, vec!["--columns", "query,id,text"]),
        ("pairs.csv", csv, vec![]),
    ];
    for (name, bytes, extra) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let out_dir = dir.path().join(format!("out-{name}"));
        let mut args = flags.to_vec();
        args.extend(extra);
        args.extend(["--workers", "2"]);
        let out = score(&path, &out_dir, &args);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(read_scores_by_id(&out_dir), want, "{name}: other scores");
        // Row identity: each part's byte range, tiling the file.
        let m = manifest(&out_dir);
        assert_eq!(m["rows"], rows.len() as u64, "{name}");
        let parts = m["files"].as_array().unwrap();
        let mut next_byte = 0;
        for p in parts {
            assert_eq!(p["bytes"][0], next_byte, "{name}: ranges tile the file");
            next_byte = p["bytes"][1].as_u64().unwrap();
        }
        assert_eq!(next_byte, bytes.len() as u64, "{name}");
        let compressed = name.ends_with(".gz") || name.ends_with(".zst");
        assert_eq!(
            parts.len() == 1,
            compressed,
            "{name}: {} parts",
            parts.len()
        );
    }
}

#[test]
fn a_bad_pair_line_names_file_line_and_column_or_is_skipped_and_counted() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let rows = text_pairs();
    let mut jsonl = Vec::new();
    for (k, (id, query, text)) in rows[..12].iter().enumerate() {
        if k == 9 {
            writeln!(
                jsonl,
                r#"{{"id": "{id}", "query": "{query}", "text": "open}}"#
            )
            .unwrap();
        } else {
            let line = serde_json::json!({"id": id, "query": query, "text": text});
            writeln!(jsonl, "{line}").unwrap();
        }
    }
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, &jsonl).unwrap();
    let out = score(&path, &dir.path().join("out"), &["--shard-rows", "3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}, line 10, column", path.display()))
            && err.contains("--bad-lines skip"),
        "{err}"
    );

    let out_dir = dir.path().join("out-skip");
    let out = score(
        &path,
        &out_dir,
        &["--shard-rows", "3", "--bad-lines", "skip"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&out_dir);
    assert_eq!(m["summary"]["skipped_lines"], 1, "{m}");
    let example = m["summary"]["skipped_line_examples"][0].as_str().unwrap();
    assert!(example.contains("bad.jsonl, line 10, column"), "{example}");
    let got = read_scores_by_id(&out_dir);
    assert_eq!(got.len(), 11);
    assert!(!got.contains_key("p-9") && got.contains_key("p-10"));

    // A null query is named by the row's id (a text shard cannot count rows from the file's
    // start); a TSV without the query column is refused before any work.
    let path = dir.path().join("null.jsonl");
    std::fs::write(
        &path,
        "{\"id\": \"a\", \"query\": \"q\", \"text\": \"t\"}\n{\"id\": \"b\", \"query\": null, \"text\": \"t\"}\n",
    )
    .unwrap();
    let out = score(&path, &dir.path().join("out-null"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("null.jsonl, the row with id `b`, column `query`: null"),
        "{}",
        stderr(&out)
    );
    let path = dir.path().join("two.tsv");
    std::fs::write(&path, "id\ttext\na\tt\n").unwrap();
    let out = score(&path, &dir.path().join("out-tsv"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no column `query`"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("out-tsv").join("_SUCCESS").exists());
}
