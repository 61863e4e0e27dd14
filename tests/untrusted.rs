//! Inputs and specs that cannot be trusted, run as a user or an attacker would: links out of the
//! service's allowed roots, non-finite and absurd numbers, diverged models, input files that
//! change, duplicate and null ids, incomplete outputs, a full disk, foreign files in an output,
//! more workers than shards, dictionary-encoded texts, an output path that is a file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::Int32Type;
use common::corpus::*;
use common::process::wait_for;
use common::service::*;
use common::*;
use serde_json::{json, Value};

fn sparq() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL");
    c
}

fn run(args: &[&str]) -> Output {
    sparq().args(args).output().unwrap()
}

fn encode(input: &Path, output: &Path, extra: &[&str]) -> Output {
    sparq()
        .args(["encode", "--threads", "1", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Files under `dir` whose names are parts.
fn parts(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect()
}

/// Every file under `dir`, recursively, as paths relative to it.
fn all_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            // Links are not followed: they point outside on purpose in these tests.
            if e.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(
                    e.path()
                        .strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out
}

/// A corpus whose texts are `secret` words: a file no job may read.
fn write_secret(path: &Path) {
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(vec![900, 901])) as ArrayRef),
        (
            "text",
            Arc::new(StringArray::from(vec!["TOPSECRET alpha", "TOPSECRET beta"])),
        ),
    ])
    .unwrap();
    write_batch(path, batch, 10);
}

/// Flips one byte of a text value inside an uncompressed parquet file: same size, new content.
fn rewrite_same_size(path: &Path, from: &[u8], to: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the text is stored literally");
    bytes[at..at + to.len()].copy_from_slice(to);
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(path, bytes).unwrap();
}

fn submit(service: &Service, spec: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}/v1/jobs", service.url))
        .json(&spec)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn job_error(service: &Service, id: &str) -> String {
    let job = service.wait_final(id);
    assert_eq!(job.state, "failed", "{job:?}");
    let mut text = job.error.clone().unwrap_or_default();
    for shard in &job.shards {
        text.push_str(&shard.causes.join(" | "));
    }
    text
}

#[test]
fn links_out_of_the_allowed_roots_are_refused_however_they_are_reached() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let allowed = tmp.join("allowed");
    let elsewhere = tmp.join("elsewhere");
    write_secret(&elsewhere.join("secret.parquet"));
    write_secret(&elsewhere.join("dir/secret.parquet"));
    let link = |at: &Path, to: &Path| {
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(to, at).unwrap();
    };
    // 1. A link among plain files of a listed folder.
    write_corpus(&allowed.join("in1/real.parquet"), 0..10, 10);
    link(
        &allowed.join("in1/link.parquet"),
        &elsewhere.join("secret.parquet"),
    );
    // 2. A link matched by a glob.
    link(
        &allowed.join("in2/x.parquet"),
        &elsewhere.join("secret.parquet"),
    );
    // 3. A link to a folder.
    write_corpus(&allowed.join("in3/real.parquet"), 0..10, 10);
    link(&allowed.join("in3/sub"), &elsewhere.join("dir"));
    // 4. A plain file, swapped for a link after planning.
    write_corpus(&allowed.join("in4/real.parquet"), 0..10, 10);

    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--allow-root"]);
    cmd.arg(&allowed)
        .arg("--state")
        .arg(allowed.join("state.db"));
    let service = Service::spawn(cmd);
    let job = |input: String, out: &str| {
        json!({"kind": "encode", "input": input, "output": s(&allowed.join(out)),
               "keep_columns": ["text"], "lease_timeout": 5})
    };
    let planned_refusal = |input: String, out: &str, named: &str| {
        let (code, answer) = submit(&service, job(input, out));
        assert_eq!(code, 201, "{answer}");
        let err = job_error(&service, answer["id"].as_str().unwrap());
        assert!(
            err.contains(named)
                && err.contains("outside the folders this service may touch")
                && err.contains(s(&allowed)),
            "{err}"
        );
        assert!(parts(&allowed.join(out)).is_empty());
    };
    planned_refusal(s(&allowed.join("in1")).into(), "out1", "link.parquet");
    planned_refusal(
        format!("{}/*.parquet", s(&allowed.join("in2"))),
        "out2",
        "x.parquet",
    );
    planned_refusal(s(&allowed.join("in3")).into(), "out3", "sub");

    // 4: planned while plain (no worker yet), then swapped; the worker refuses to read it.
    let (code, answer) = submit(&service, job(s(&allowed.join("in4")).into(), "out4"));
    assert_eq!(code, 201, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    wait_for("the job to be planned", || {
        service.job(&id).state == "running"
    });
    std::fs::remove_file(allowed.join("in4/real.parquet")).unwrap();
    link(
        &allowed.join("in4/real.parquet"),
        &elsewhere.join("secret.parquet"),
    );
    let worker = Worker::start(&service.url, "w1", &[]);
    let err = job_error(&service, &id);
    assert!(
        err.contains("real.parquet") && err.contains("outside the folders"),
        "{err}"
    );
    drop(worker);
    // Nothing outside the roots reached any output: no parts, no secret text anywhere.
    for out in ["out1", "out2", "out3", "out4"] {
        assert!(parts(&allowed.join(out)).is_empty(), "{out}");
    }
    for f in all_files(&allowed) {
        if f.ends_with(".db") || f.contains(".db-") {
            continue;
        }
        let bytes = std::fs::read(allowed.join(&f)).unwrap_or_default();
        assert!(
            !bytes.windows(9).any(|w| w == b"TOPSECRET"),
            "{f} holds the secret"
        );
    }

    // A worker with its own roots enforces them too (here the job's folder is outside them).
    write_corpus(&allowed.join("in5/real.parquet"), 0..10, 10);
    let (code, answer) = submit(&service, job(s(&allowed.join("in5")).into(), "out5"));
    assert_eq!(code, 201, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    let mut cmd = sparq_cmd(&[
        "worker",
        "--coordinator",
        &service.url,
        "--threads",
        "1",
        "--poll",
        "0.1",
        "--allow-root",
    ]);
    cmd.arg(&elsewhere);
    let worker = Worker(cmd.spawn().unwrap());
    let err = job_error(&service, &id);
    assert!(err.contains("this worker may touch"), "{err}");
    drop(worker);
}

#[test]
fn a_file_changed_between_planning_and_reading_fails_as_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("in/a.parquet"), 0..10, 10);
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--allow-root"]);
    cmd.arg(dir).arg("--state").arg(dir.join("state.db"));
    let service = Service::spawn(cmd);
    let (code, answer) = submit(
        &service,
        json!({"kind": "encode", "input": s(&dir.join("in")), "output": s(&dir.join("out")),
               "lease_timeout": 5}),
    );
    assert_eq!(code, 201, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    wait_for("the job to be planned", || {
        service.job(&id).state == "running"
    });
    rewrite_same_size(&dir.join("in/a.parquet"), b"Passage 3:", b"Passage 4:");
    let _worker = Worker::start(&service.url, "w1", &[]);
    let err = job_error(&service, &id);
    assert!(
        err.contains("a.parquet") && err.contains("changed during the run"),
        "{err}"
    );
    assert!(parts(&dir.join("out")).is_empty());
}

#[test]
fn a_rewritten_input_of_the_same_size_is_refused_on_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("in/a.parquet");
    write_corpus(&input, 0..20, 10);
    let size = std::fs::metadata(&input).unwrap().len();
    let out = encode(
        &dir.join("in"),
        &dir.join("out"),
        &["--keep-columns", "text"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    rewrite_same_size(&input, b"Passage 3:", b"Passage 4:");
    assert_eq!(std::fs::metadata(&input).unwrap().len(), size);
    let out = encode(
        &dir.join("in"),
        &dir.join("out"),
        &["--keep-columns", "text"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(s(&input)) && err.contains("--overwrite") && err.contains("another --output"),
        "{err}"
    );
    // The old vectors are kept until the user chooses; --overwrite then encodes the new text.
    assert!(dir.join("out/_SUCCESS").exists());
    let out = encode(
        &dir.join("in"),
        &dir.join("out"),
        &["--keep-columns", "text", "--overwrite"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let texts = kept_texts(&dir.join("out"));
    assert!(
        texts.iter().any(|t| t.starts_with("Passage 4: ")),
        "{texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("Passage 4:")).count(),
        2
    );
}

/// The `text` column kept in a local output.
fn kept_texts(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut names = parts(dir);
    names.sort();
    for name in names {
        let bytes = bytes::Bytes::from(std::fs::read(dir.join(name)).unwrap());
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = batch.column_by_name("text").unwrap();
            let col = col.as_any().downcast_ref::<StringArray>().unwrap();
            out.extend(col.iter().map(|t| t.unwrap_or("").to_string()));
        }
    }
    out
}

#[test]
fn non_finite_and_absurd_numbers_are_refused_with_the_key_and_the_range() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // `submit` refuses NaN and infinity before sending anything (JSON would turn them to null).
    for (line, key) in [
        ("learning_rate = nan", "learning_rate"),
        ("warmup_ratio = inf", "warmup_ratio"),
        ("lambda_query = -inf", "lambda_query"),
    ] {
        let spec = dir.join("t.toml");
        std::fs::write(
            &spec,
            format!("kind = \"train\"\ntrain_data = \"x\"\noutput = \"y\"\n{line}\n"),
        )
        .unwrap();
        let out = run(&["submit", "--coordinator", "http://127.0.0.1:1", s(&spec)]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains("t.toml") && err.contains(key) && err.contains("finite"),
            "{err}"
        );
    }
    // The service refuses null (what NaN becomes in JSON) and values outside a setting's range.
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--allow-root"]);
    cmd.arg(dir)
        .arg("--allow-root")
        .arg(root())
        .arg("--state")
        .arg(dir.join("state.db"));
    let service = Service::spawn(cmd);
    let train = |extra: Value| {
        let mut spec = json!({"kind": "train", "train_data": s(&root().join("examples/pairs/pairs.parquet")),
                              "output": s(&dir.join("model"))});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        submit(&service, spec)
    };
    let (code, answer) = train(json!({"learning_rate": null}));
    assert_eq!(code, 400);
    assert!(
        answer.to_string().contains("`learning_rate` is null"),
        "{answer}"
    );
    let (code, answer) = train(json!({"learning_rate": 1e308}));
    assert_eq!(code, 400);
    let text = answer.to_string();
    assert!(
        text.contains("learning_rate") && text.contains("(0, 1]"),
        "{text}"
    );
    let (code, answer) = train(json!({"lambda_query": -1.0}));
    assert_eq!(code, 400);
    assert!(answer.to_string().contains("lambda_query"), "{answer}");
    let (code, answer) = submit(
        &service,
        json!({"kind": "encode", "input": s(dir), "output": s(&dir.join("o")),
               "batch_tokens": 100_000_000u64}),
    );
    assert_eq!(code, 400);
    assert!(
        answer
            .to_string()
            .contains("`batch_tokens` 100000000 is outside its range"),
        "{answer}"
    );
    // The command line refuses them too, before any work.
    let out = run(&[
        "train",
        "--train-data",
        "examples/pairs/pairs.parquet",
        "--output",
        s(&dir.join("m")),
        "--learning-rate",
        "1e308",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--learning-rate 1e308 is outside its range"));
    assert!(!dir.join("m").exists());
}

/// A copy of the bundled model with a NaN in one weight.
fn nan_model(dir: &Path) -> PathBuf {
    let model = dir.join("nan-model");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(tiny_model()).unwrap().flatten() {
        if e.path().is_dir() {
            let sub = model.join(e.file_name());
            std::fs::create_dir_all(&sub).unwrap();
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                std::fs::copy(f.path(), sub.join(f.file_name())).unwrap();
            }
        } else {
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
        }
    }
    let file = model.join("model.safetensors");
    let mut tensors = tch::Tensor::read_safetensors(&file).unwrap();
    let (name, t) = tensors
        .iter_mut()
        .find(|(n, _)| n.contains("attention.output.dense.weight"))
        .unwrap();
    let _ = t.get(0).get(0).fill_(f64::NAN);
    eprintln!("NaN planted in {name}");
    tch::Tensor::write_safetensors(&tensors, &file).unwrap();
    model
}

#[test]
fn a_diverged_model_is_never_saved_nor_used() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = nan_model(dir);
    // Training from it stops at the first step with the step, the value and what to change.
    let out = run(&[
        "train",
        "--model",
        s(&model),
        "--train-data",
        "examples/pairs/pairs.parquet",
        "--output",
        s(&dir.join("trained")),
        "--max-steps",
        "3",
        "--save-steps",
        "1",
        "--batch-size",
        "4",
        "--threads",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("step 1") && err.contains("NaN") && err.contains("--learning-rate"),
        "{err}"
    );
    assert!(
        !all_files(&dir.join("trained"))
            .iter()
            .any(|f| f.ends_with("model.safetensors")),
        "a diverged model was saved"
    );
    // Encoding with it is refused, naming the model and the weight; nothing is committed.
    write_corpus(&dir.join("in/a.parquet"), 0..10, 10);
    let out = encode(&dir.join("in"), &dir.join("out"), &["--model", s(&model)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("nan-model") && err.contains("attention.output.dense.weight"),
        "{err}"
    );
    assert!(parts(&dir.join("out")).is_empty());
    assert!(!dir.join("out/_SUCCESS").exists());
    let mut child = sparq()
        .args(["encode-text", "--model", s(&model)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\"hello\"\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("NaN"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn duplicate_ids_across_files_and_null_ids_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // ids 0..30 and 20..40: 10 ids twice, in other files and shards.
    write_corpus(&dir.join("in/a.parquet"), 0..30, 10);
    write_corpus(&dir.join("in/b.parquet"), 20..40, 10);
    let out = encode(&dir.join("in"), &dir.join("out"), &["--shard-rows", "10"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sum = summary(&out);
    assert_eq!(sum["duplicate_ids"], 10, "{sum}");
    let examples = sum["duplicate_examples"].as_array().unwrap();
    assert_eq!(examples.len(), 5);
    for e in examples {
        let id: i64 = e["id"].as_str().unwrap().parse().unwrap();
        assert!((20..30).contains(&id));
        // Each example names the two parts (of two files) that hold it.
        let parts = e["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 2, "{e}");
        assert!(parts[0].as_str().unwrap().starts_with("part-00000-"));
        assert!(parts[1].as_str().unwrap().starts_with("part-00001-"));
    }
    assert!(stderr(&out).contains("10 duplicate ids in the output"));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["summary"]["duplicate_ids"], 10);
    // A resumed run (nothing to encode) still counts the whole output.
    let out = encode(&dir.join("in"), &dir.join("out"), &["--shard-rows", "10"]);
    assert_eq!(summary(&out)["duplicate_ids"], 10);

    // Null ids are nulls (with the file and row), not a duplicate "" id.
    let batch = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![Some(1), None, Some(2), None])) as ArrayRef,
        ),
        (
            "text",
            Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
        ),
    ])
    .unwrap();
    write_batch(&dir.join("nulls/n.parquet"), batch, 10);
    let out = encode(&dir.join("nulls"), &dir.join("out-nulls"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sum = summary(&out);
    assert_eq!(sum["duplicate_ids"], 0, "{sum}");
    assert_eq!(sum["null_ids"], 2, "{sum}");
    let err = stderr(&out);
    assert!(
        err.contains("2 rows have a null id")
            && err.contains("n.parquet, row 1")
            && err.contains("row 3"),
        "{err}"
    );
}

#[test]
fn incomplete_outputs_are_not_read_without_allow_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("in/a.parquet"), 0..20, 10);
    // Readable at planning (its footer is intact), failing when its rows are read.
    write_corpus(&dir.join("in/b.parquet"), 20..40, 10);
    corrupt_data_pages(&dir.join("in/b.parquet"));
    let out = encode(&dir.join("in"), &dir.join("out"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let url = dir.join("out");
    let target = dir.join("x.jsonl");
    let commands: [Vec<&str>; 3] = [
        vec!["inspect", s(&url)],
        vec!["decode", s(&url), "--id", "3"],
        vec![
            "export",
            "--format",
            "jsonl",
            "--input",
            s(&url),
            "--output",
            s(&target),
        ],
    ];
    for args in &commands {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("incomplete")
                && err.contains("1 shard(s) failed")
                && err.contains("--allow-incomplete"),
            "{args:?}: {err}"
        );
        assert!(!target.exists());
        let mut args = args.clone();
        args.push("--allow-incomplete");
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("warning"), "{args:?}");
    }
    // An interrupted run (no manifest) says so.
    std::fs::remove_file(dir.join("out/_manifest.json")).unwrap();
    let out = run(&["inspect", s(&url)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
}

/// A small tmpfs mounted for the test (the test machines run as root), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (needs root): {}",
            stderr(&out)
        );
        Self(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[test]
fn a_full_disk_says_why_leaves_no_temporary_files_and_resumes_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("in/a.parquet"), 0..600, 100);
    let disk = Tmpfs::mount(&dir.join("disk"), "96k");
    let out_dir = dir.join("disk/out");
    let args = [
        "--shard-rows",
        "100",
        "--keep-columns",
        "text",
        "--max-attempts",
        "2",
    ];
    let out = encode(&dir.join("in"), &out_dir, &args);
    assert_eq!(out.status.code(), Some(1));
    // One error at the first full write, instead of every shard retried and failed: it names
    // the output and the part it was writing, the cause, and what to do.
    let err = stderr(&out);
    assert!(
        err.contains(&format!("no space left for {}", out_dir.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("writing {}/part-", out_dir.display())),
        "{err}"
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("rerun the same command"), "{err}");
    assert!(!err.contains("sparq: shard part-"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // What was committed is whole and stays; nothing half-written is left.
    let committed = parts(&out_dir);
    assert!(committed.len() < 6, "{err}");
    let kept: Vec<(String, Vec<u8>)> = committed
        .iter()
        .map(|name| (name.clone(), std::fs::read(out_dir.join(name)).unwrap()))
        .collect();
    for (name, bytes) in &kept {
        assert_eq!(read_part(bytes).len(), 100, "{name}");
    }
    assert!(!out_dir.join("_SUCCESS").exists());
    let leftovers: Vec<String> = all_files(&out_dir)
        .into_iter()
        .filter(|f| f.ends_with(".tmp") || f.starts_with("_attempts"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Space freed: the same command finishes, exactly once, and leaves nothing behind.
    disk.resize("16m");
    let out = encode(&dir.join("in"), &out_dir, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&out)["skipped_shards"], committed.len());
    for (name, bytes) in &kept {
        assert!(
            &std::fs::read(out_dir.join(name)).unwrap() == bytes,
            "{name} changed"
        );
    }
    let (rows, _) = read_output(&out_dir);
    let ids: Vec<i64> = (0..600).collect();
    assert_exactly_once(&rows, &reference_vectors(&ids));
    assert!(out_dir.join("_SUCCESS").exists());
    assert!(!all_files(&out_dir)
        .iter()
        .any(|f| f.ends_with(".tmp") || f.starts_with("_attempts")));
}

#[test]
fn output_folders_holding_other_files_or_being_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("in/a.parquet"), 0..20, 10);
    // Unrelated files: refused at planning, before anything is written.
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(dir.join("out/notes.txt"), b"mine").unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let out = encode(&dir.join("in"), &dir.join("out"), extra);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains("notes.txt") && err.contains("did not write"),
            "{err}"
        );
        assert_eq!(all_files(&dir.join("out")), vec!["notes.txt".to_string()]);
    }
    // Readers read the parts only: a foreign parquet file added later is ignored by inspect.
    let out = encode(&dir.join("in"), &dir.join("out2"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    write_corpus(&dir.join("out2/extra.parquet"), 0..5, 5);
    let out = run(&["inspect", "--json", s(&dir.join("out2"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 20);
    let out = encode(&dir.join("in"), &dir.join("out2"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("extra.parquet"));
    // An output path that is a file.
    std::fs::write(dir.join("afile"), b"keep me").unwrap();
    let out = encode(&dir.join("in"), &dir.join("afile"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the output must be a folder"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(dir.join("afile")).unwrap(), b"keep me");
}

#[test]
fn more_workers_than_shards_start_one_per_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("in/a.parquet"), 0..20, 10);
    let out = encode(&dir.join("in"), &dir.join("out"), &["--workers", "64"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 shard(s) to encode: starting 1 of the 64 workers"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read_output(&dir.join("out")).0.len(), 20);
    let out = run(&[
        "encode",
        "--input",
        "x",
        "--output",
        "y",
        "--workers",
        "5000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--workers 5000 is outside its range"));
}

#[test]
fn dictionary_encoded_texts_encode_like_plain_texts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let texts: Vec<&str> = vec!["whisky river", "protein bread", "whisky river", "castle"];
    let ids = Arc::new(Int64Array::from(vec![0, 1, 2, 3])) as ArrayRef;
    let plain = RecordBatch::try_from_iter(vec![
        ("id", ids.clone()),
        (
            "text",
            Arc::new(StringArray::from(texts.clone())) as ArrayRef,
        ),
    ])
    .unwrap();
    let dict: DictionaryArray<Int32Type> = texts.into_iter().collect();
    let dictionary =
        RecordBatch::try_from_iter(vec![("id", ids), ("text", Arc::new(dict) as ArrayRef)])
            .unwrap();
    write_batch(&dir.join("plain/a.parquet"), plain, 10);
    write_batch(&dir.join("dict/a.parquet"), dictionary, 10);
    for name in ["plain", "dict"] {
        let out = encode(&dir.join(name), &dir.join(format!("out-{name}")), &[]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    let (a, _) = read_output(&dir.join("out-plain"));
    let (b, _) = read_output(&dir.join("out-dict"));
    assert_eq!(a, b);
    assert!(a
        .iter()
        .all(|(_, v)| v.as_ref().is_some_and(|v| !v.is_empty())));
}
