//! `sparq train` as a user runs it: real processes, files on disk, kills, resumes, two ranks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, ListArray, RecordBatch, StringArray};
use arrow::datatypes::Float32Type;
use arrow::datatypes::{DataType, Field, Schema};
use common::corpus::{text_for, write_batch};
use common::process::{kill9, wait_for};
use common::weights::{max_diff, weights};
use common::{copy_dir, tiny_model};

const SPARQ: &str = env!("CARGO_BIN_EXE_sparq");

/// `n` (query, answer, negative) rows.
fn write_pairs(path: &Path, n: i64, with_null_at: Option<usize>) {
    let words = |i: i64| {
        text_for(i + 5000)
            .unwrap_or_else(|| format!("Passage {i}: a fallback text"))
            .split(' ')
            .take(6)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut queries: Vec<Option<String>> =
        (0..n).map(|i| Some(format!("q{i} {}", words(i)))).collect();
    if let Some(row) = with_null_at {
        queries[row] = None;
    }
    let answers: Vec<String> = (0..n)
        .map(|i| {
            text_for(i * 3 + 1).unwrap_or_else(|| format!("Answer {i}")) + &format!(" answer {i}")
        })
        .collect();
    let negatives: Vec<String> = (0..n)
        .map(|i| {
            text_for(i * 3 + 2).unwrap_or_else(|| format!("Other {i}")) + &format!(" other {i}")
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("query", DataType::Utf8, true),
        Field::new("answer", DataType::Utf8, false),
        Field::new("negative", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(queries)) as ArrayRef,
            Arc::new(StringArray::from(answers)) as ArrayRef,
            Arc::new(StringArray::from(negatives)) as ArrayRef,
        ],
    )
    .unwrap();
    write_batch(path, batch, 64);
}

fn pairs(dir: &Path) -> PathBuf {
    let path = dir.join("pairs.parquet");
    if !path.exists() {
        write_pairs(&path, 96, None);
    }
    path
}

fn train_cmd(data: &Path, out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut cmd = Command::new(SPARQ);
    cmd.args(["train", "--model"])
        .arg(tiny_model())
        .arg("--train-data")
        .arg(data)
        .arg("--output")
        .arg(out)
        .args([
            "--max-steps",
            &steps.to_string(),
            "--batch-size",
            "4",
            "--threads",
            "1",
        ]);
    // Defaults of these tests, unless the caller sets the flag (or a config file does).
    for (flag, value) in [
        ("--learning-rate", "1e-3"),
        ("--save-steps", "2"),
        ("--logging-steps", "1"),
    ] {
        if !extra.contains(&flag) && !extra.contains(&"--config") {
            cmd.args([flag, value]);
        }
    }
    cmd.args(extra).env("RAYON_NUM_THREADS", "1");
    cmd
}

fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn log_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn resumed_training_equals_uninterrupted_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs(tmp.path());
    let whole = tmp.path().join("whole");
    let log = log_lines(&run_ok(train_cmd(&data, &whole, 6, &[])));
    let steps: Vec<u64> = log.iter().filter_map(|l| l["step"].as_u64()).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    assert!(log[0]["loss"].as_f64().unwrap() > 0.0);
    assert!(whole.join("checkpoint-4/_COMPLETE").is_file());
    assert!(whole.join("checkpoint-4/optimizer.safetensors").is_file());

    // K steps, then a resume from a folder holding nothing but checkpoint-2.
    let part = tmp.path().join("part");
    std::fs::create_dir_all(&part).unwrap();
    copy_dir(&whole.join("checkpoint-2"), &part.join("checkpoint-2"));
    let resumed = log_lines(&run_ok(train_cmd(&data, &part, 6, &["--resume"])));
    let steps: Vec<u64> = resumed.iter().filter_map(|l| l["step"].as_u64()).collect();
    assert_eq!(steps, [3, 4, 5, 6]);
    assert_eq!(
        resumed.last().unwrap()["train_summary"]["resumed_from"].as_u64(),
        Some(2)
    );
    // Same data order, same dropout masks, same optimizer state: the same weights.
    let diff = max_diff(&weights(&whole), &weights(&part));
    assert!(diff <= 1e-6, "resumed weights differ by {diff}");
    let loss_whole: Vec<f64> = log.iter().filter_map(|l| l["loss"].as_f64()).collect();
    let loss_resumed: Vec<f64> = resumed.iter().filter_map(|l| l["loss"].as_f64()).collect();
    assert_eq!(loss_whole[2..], loss_resumed[..]);

    // Without --resume an output holding checkpoints is refused.
    let out = train_cmd(&data, &part, 6, &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
}

/// `n` (query, answer, negative) rows plus teacher scores: a float64 `score` column (the
/// gold margin) or a list<float32> `label` column ([positive, negative] scores).
fn write_scored_pairs(path: &Path, n: i64, list: bool) {
    write_pairs(path, n, None);
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let score = |i: i64| ((i * 37) % 11) as f64 * 0.5;
    let (field, labels): (Field, ArrayRef) = if list {
        let rows =
            (0..n).map(|i| Some(vec![Some(score(i) as f32 + 2.0), Some(score(i + 3) as f32)]));
        (
            Field::new(
                "label",
                DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
                false,
            ),
            Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>(rows)),
        )
    } else {
        (
            Field::new("score", DataType::Float64, false),
            Arc::new(Float64Array::from_iter_values((0..n).map(score))),
        )
    };
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(field);
    let mut columns = batch.columns().to_vec();
    columns.push(labels);
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    write_batch(path, batch, 64);
}

/// Trains 4 steps, then again from checkpoint-2 alone: the same weights and losses.
fn assert_resume_is_exact(data: &Path, dir: &Path, extra: &[&str]) {
    let whole = dir.join("whole");
    let log = log_lines(&run_ok(train_cmd(data, &whole, 4, extra)));
    let part = dir.join("part");
    std::fs::create_dir_all(&part).unwrap();
    copy_dir(&whole.join("checkpoint-2"), &part.join("checkpoint-2"));
    let mut resume = extra.to_vec();
    resume.push("--resume");
    let resumed = log_lines(&run_ok(train_cmd(data, &part, 4, &resume)));
    let diff = max_diff(&weights(&whole), &weights(&part));
    assert!(diff <= 1e-6, "{extra:?}: resumed weights differ by {diff}");
    let loss = |l: &[serde_json::Value]| -> Vec<f64> {
        l.iter().filter_map(|x| x["loss"].as_f64()).collect()
    };
    assert_eq!(loss(&log)[2..], loss(&resumed)[..], "{extra:?}");
    assert!(
        loss(&log).iter().all(|x| x.is_finite() && *x > 0.0),
        "{extra:?}"
    );
}

#[test]
fn resume_is_exact_with_margin_mse_distill_kl_and_gradient_caching() {
    let tmp = tempfile::tempdir().unwrap();
    let margins = tmp.path().join("margins.parquet");
    write_scored_pairs(&margins, 48, false);
    let teacher = tmp.path().join("teacher.parquet");
    write_scored_pairs(&teacher, 48, true);
    let plain = pairs(tmp.path());
    let margin_run = tmp.path().join("margin");
    assert_resume_is_exact(&margins, &margin_run, &["--loss", "margin-mse"]);
    assert_resume_is_exact(
        &teacher,
        &tmp.path().join("kl"),
        &[
            "--loss",
            "SparseDistillKLDivLoss",
            "--student-temperature",
            "1.5",
        ],
    );
    assert_resume_is_exact(
        &plain,
        &tmp.path().join("cached"),
        &[
            "--cached-mini-batch-size",
            "3",
            "--query-regularizer-threshold",
            "5",
        ],
    );

    // Two ranks with labels, gathering and caching: replicas stay identical.
    let ddp = tmp.path().join("ddp");
    let stdout = run_ok(train_cmd(
        &teacher,
        &ddp,
        2,
        &[
            "--loss",
            "distill-kl",
            "--nproc-per-node",
            "2",
            "--cached-mini-batch-size",
            "2",
        ],
    ));
    let checked = log_lines(&stdout)
        .iter()
        .filter(|l| l["replicas_identical"].is_string())
        .count();
    assert_eq!(checked, 2, "{stdout}");

    // Another loss cannot continue the run.
    let out = train_cmd(&margins, &margin_run.join("part"), 6, &["--resume"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--loss margin-mse (now --loss mnrl)"), "{err}");
    // A null label is reported with its file, row and column.
    let nulls = tmp.path().join("nulls.parquet");
    let texts = |p: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            (0..8).map(|i| format!("{p} {i}")),
        ))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("query", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("negative", DataType::Utf8, false),
        Field::new("score", DataType::Float64, true),
    ]));
    let scores: ArrayRef = Arc::new(Float64Array::from_iter(
        (0..8).map(|i| (i != 5).then_some(1.5)),
    ));
    let batch =
        RecordBatch::try_new(schema, vec![texts("q"), texts("a"), texts("n"), scores]).unwrap();
    write_batch(&nulls, batch, 4);
    let out = train_cmd(&nulls, &tmp.path().join("y"), 2, &["--loss", "margin-mse"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nulls.parquet: row 5 label column `score` is null"),
        "{err}"
    );

    // A distillation loss without labels says what the data needs.
    let out = train_cmd(&plain, &tmp.path().join("x"), 2, &["--loss", "margin-mse"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SparseMarginMSELoss needs gold margins")
            && err.contains("label, labels, score or scores"),
        "{err}"
    );
}

#[test]
fn sigkill_during_and_between_checkpoints_then_resume_gives_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs(tmp.path());
    let whole = tmp.path().join("whole");
    run_ok(train_cmd(&data, &whole, 8, &[]));
    let reference = weights(&whole);

    for (round, during_write) in [(0, true), (1, false)] {
        let out = tmp.path().join(format!("killed-{round}"));
        let mut child = train_cmd(&data, &out, 8, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        if during_write {
            // Kill while a checkpoint folder is still being written, if caught; else right after.
            wait_for("a checkpoint being written", || {
                std::fs::read_dir(&out).is_ok_and(|d| {
                    d.flatten().any(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.contains(".partial-") || n == "checkpoint-4"
                    })
                })
            });
        } else {
            wait_for("checkpoint-4", || {
                out.join("checkpoint-4/_COMPLETE").exists()
            });
            std::thread::sleep(Duration::from_millis(150));
        }
        kill9(child.id());
        let _ = child.wait();
        assert!(started.elapsed() < Duration::from_secs(120));
        assert!(
            !out.join("model.safetensors").exists(),
            "the run finished before the kill"
        );
        run_ok(train_cmd(&data, &out, 8, &["--resume"]));
        let diff = max_diff(&reference, &weights(&out));
        assert!(diff <= 1e-6, "round {round}: weights differ by {diff}");
        // No half-written checkpoint is left behind.
        for e in std::fs::read_dir(&out).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(!n.contains(".partial-"), "left over: {n}");
            if n.starts_with("checkpoint-") {
                assert!(e.path().join("_COMPLETE").is_file(), "{n} is incomplete");
            }
        }
    }
}

#[test]
fn two_ranks_keep_identical_parameters_and_match_the_launcher_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs(tmp.path());
    let out = tmp.path().join("ddp");
    let stdout = run_ok(train_cmd(
        &data,
        &out,
        4,
        &["--nproc-per-node", "2", "--save-steps", "0"],
    ));
    let log = log_lines(&stdout);
    let checked: Vec<&str> = log
        .iter()
        .filter_map(|l| l["replicas_identical"].as_str())
        .collect();
    // Every step's parameters were compared bit for bit across the two ranks.
    assert_eq!(checked.len(), 4, "{stdout}");
    assert!(out.join("model.safetensors").is_file());
    // Two ranks see twice the pairs per step: not the same run as one rank.
    let single = tmp.path().join("single");
    run_ok(train_cmd(&data, &single, 4, &["--save-steps", "0"]));
    assert!(max_diff(&weights(&out), &weights(&single)) > 0.0);
    // On the CPU `auto` is the TCP collective: naming it gives the same bits.
    let tcp = tmp.path().join("tcp");
    run_ok(train_cmd(
        &data,
        &tcp,
        4,
        &[
            "--nproc-per-node",
            "2",
            "--save-steps",
            "0",
            "--collective",
            "tcp",
        ],
    ));
    assert_eq!(max_diff(&weights(&out), &weights(&tcp)), 0.0);
}

#[test]
fn nccl_on_cpu_ranks_is_one_clear_error_before_any_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs(tmp.path());
    for ranks in ["1", "2"] {
        let out = train_cmd(
            &data,
            &tmp.path().join(format!("nccl-{ranks}")),
            2,
            &["--nproc-per-node", ranks, "--collective", "nccl"],
        )
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(1), "{ranks} rank(s)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "--collective nccl exchanges tensors between GPUs: use it with --device cuda"
            ),
            "{err}"
        );
        assert!(err.contains("--collective tcp"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("\"step\""));
    }
    let out = train_cmd(&data, &tmp.path().join("bad"), 2, &["--collective", "gloo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use auto, tcp or nccl"), "{err}");
}

#[test]
fn a_killed_rank_makes_the_other_exit_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs(tmp.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rank = |r: usize, out: &str| {
        let mut cmd = train_cmd(
            &data,
            &tmp.path().join(out),
            10_000,
            &["--collective-timeout", "20"],
        );
        cmd.env("RANK", r.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let mut zero = rank(0, "r0");
    let mut one = rank(1, "r1");
    // Wait for the first logged step, then kill rank 1.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(zero.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("\"step\""), "{first}");
    kill9(one.id());
    let _ = one.wait();
    let started = Instant::now();
    let status = zero.wait().unwrap();
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(30), "rank 0 hung");
    let mut err = String::new();
    std::io::Read::read_to_string(zero.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("rank 1"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_training_data_is_reported_with_file_row_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let nulls = tmp.path().join("nulls.parquet");
    write_pairs(&nulls, 20, Some(7));
    let out = train_cmd(&nulls, &tmp.path().join("o1"), 2, &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nulls.parquet") && err.contains("row 7") && err.contains("`query`"),
        "{err}"
    );

    let data = pairs(tmp.path());
    let out = train_cmd(
        &data,
        &tmp.path().join("o2"),
        2,
        &["--columns", "question,answer"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no column `question`") && err.contains("query, answer, negative"),
        "{err}"
    );

    let cfg = tmp.path().join("train.toml");
    std::fs::write(&cfg, "learning_rat = 1e-3\n").unwrap();
    let out = train_cmd(
        &data,
        &tmp.path().join("o3"),
        2,
        &["--config", cfg.to_str().unwrap()],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("train.toml") && err.contains("learning_rat"),
        "{err}"
    );
}

#[test]
fn config_file_values_apply_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs(tmp.path());
    let cfg = tmp.path().join("train.toml");
    std::fs::write(
        &cfg,
        "max_steps = 3\nlogging_steps = 3\nlearning_rate = 0.5\n",
    )
    .unwrap();
    let log = log_lines(&run_ok(train_cmd(
        &data,
        &tmp.path().join("o"),
        2,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--logging-steps",
            "1",
            "--warmup-ratio",
            "0",
        ],
    )));
    // --max-steps 2 and --logging-steps 1 (flags) win over the file; the file's learning rate
    // applies: linear decay from 0.5 without warm-up gives 0.5 then 0.25.
    let lrs: Vec<f64> = log
        .iter()
        .filter_map(|l| l["learning_rate"].as_f64())
        .collect();
    assert_eq!(lrs, [0.5, 0.25]);
}

#[test]
fn data_and_checkpoints_on_s3_resume_from_s3() {
    use object_store::{ObjectStore, ObjectStoreExt};
    let Some(endpoint) = common::s3::endpoint() else {
        return;
    };
    let store = common::s3::store(&endpoint);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let local_data = pairs(tmp.path());
    let prefix = format!("train-{}", uuid::Uuid::new_v4());
    rt.block_on(store.put(
        &object_store::path::Path::from(format!("{prefix}/data/pairs.parquet")),
        std::fs::read(&local_data).unwrap().into(),
    ))
    .unwrap();
    let s3 = |cmd: &mut Command| common::s3::env(cmd, &endpoint);
    let local = tmp.path().join("local");
    run_ok(train_cmd(&local_data, &local, 4, &["--save-steps", "1"]));

    let data_url = format!("s3://sparq-test/{prefix}/data");
    let out_url = format!("s3://sparq-test/{prefix}/out");
    let remote = |extra: &[&str]| {
        let mut args = vec!["--save-steps", "1", "--save-total-limit", "2"];
        args.extend(extra);
        let mut cmd = train_cmd(Path::new(&data_url), Path::new(&out_url), 4, &args);
        s3(&mut cmd);
        cmd
    };
    run_ok(remote(&[]));
    let list = |rt: &tokio::runtime::Runtime| -> Vec<String> {
        rt.block_on(async {
            use futures::TryStreamExt;
            store
                .list(Some(&object_store::path::Path::from(format!(
                    "{prefix}/out"
                ))))
                .map_ok(|m| m.location.to_string())
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        })
    };
    let names = list(&rt);
    let complete: Vec<&String> = names.iter().filter(|n| n.ends_with("/_COMPLETE")).collect();
    // Steps 1, 2, 3 were saved; --save-total-limit 2 keeps the newest two.
    assert_eq!(complete.len(), 2, "{names:?}");
    assert!(names
        .iter()
        .any(|n| n.ends_with("out/checkpoint-3/_COMPLETE")));
    assert!(names.iter().any(|n| n.ends_with("out/model.safetensors")));
    // Resume from the S3 checkpoint: steps 4 again, same model as the local run.
    run_ok(remote(&["--resume"]));
    let bytes = rt
        .block_on(async {
            store
                .get(&object_store::path::Path::from(format!(
                    "{prefix}/out/model.safetensors"
                )))
                .await?
                .bytes()
                .await
        })
        .unwrap();
    let fetched = tmp.path().join("fetched");
    std::fs::create_dir_all(&fetched).unwrap();
    std::fs::write(fetched.join("model.safetensors"), bytes).unwrap();
    let diff = max_diff(&weights(&local), &weights(&fetched));
    assert!(diff <= 1e-6, "S3 run differs from the local one by {diff}");
}

#[test]
fn evaluation_during_training_and_the_best_model_at_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs(tmp.path());
    let out = tmp.path().join("eval");
    let beir = common::root().join("tests/fixtures/beir-small");
    // A learning rate this high wrecks the model: the first evaluation is the best one.
    let stdout = run_ok(train_cmd(
        &data,
        &out,
        4,
        &[
            "--eval-beir",
            beir.to_str().unwrap(),
            "--eval-steps",
            "2",
            "--load-best-at-end",
            "--save-steps",
            "0",
            "--learning-rate",
            "0.05",
            "--warmup-ratio",
            "0",
        ],
    ));
    let log = log_lines(&stdout);
    let evals: Vec<(u64, f64)> = log
        .iter()
        .filter(|l| l.get("eval").is_some())
        .map(|l| {
            (
                l["step"].as_u64().unwrap(),
                l["eval"]["dot_ndcg@10"].as_f64().unwrap(),
            )
        })
        .collect();
    // Steps 2 and 4 (the end), each once, with `sparq eval`'s metric names.
    assert_eq!(
        evals.iter().map(|e| e.0).collect::<Vec<_>>(),
        [2, 4],
        "{stdout}"
    );
    let best = evals
        .iter()
        .cloned()
        .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
    let summary = &log.last().unwrap()["train_summary"];
    assert_eq!(summary["best"][1].as_u64(), Some(best.0), "{stdout}");
    // The final model is the best checkpoint's: evaluating it gives the best score.
    let out_eval = Command::new(SPARQ)
        .args(["eval", "--model"])
        .arg(&out)
        .arg("--beir")
        .arg(&beir)
        .output()
        .unwrap();
    assert!(out_eval.status.success());
    let metrics: serde_json::Value =
        serde_json::from_slice(out_eval.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    let ndcg = metrics["dot_ndcg@10"].as_f64().unwrap();
    assert!(
        (ndcg - best.1).abs() < 1e-9,
        "final {ndcg} vs best {best:?}"
    );
}

#[test]
fn a_trained_model_loads_in_sentence_transformers_with_the_same_vectors() {
    let python = common::root().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("SKIPPED: no .venv with sentence-transformers (make reference-env)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = pairs(tmp.path());
    let out = tmp.path().join("trained");
    run_ok(train_cmd(&data, &out, 3, &["--save-steps", "0"]));
    let texts = common::root().join("tests/fixtures/texts.jsonl");
    let ours = Command::new(SPARQ)
        .args(["encode-text", "--model"])
        .arg(&out)
        .stdin(std::fs::File::open(&texts).unwrap())
        .output()
        .unwrap();
    assert!(ours.status.success());
    let ours_path = tmp.path().join("ours.jsonl");
    std::fs::write(&ours_path, &ours.stdout).unwrap();
    let script = r#"
import json, sys, torch
from sentence_transformers import SparseEncoder
model_dir, texts_path, ours_path, original = sys.argv[1:5]
texts = [json.loads(l) for l in open(texts_path)]
m = SparseEncoder(model_dir, device="cpu")
ref = m.encode_document(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
worst = 0.0
for i, line in enumerate(open(ours_path)):
    v = json.loads(line); g = torch.zeros(ref.shape[1]); g[v["indices"]] = torch.tensor(v["values"])
    worst = max(worst, (g - ref[i]).abs().max().item())
base = SparseEncoder(original, device="cpu").encode_document(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
print(json.dumps({"max_diff": worst, "moved": (base - ref).abs().max().item()}))
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&out)
        .arg(&texts)
        .arg(&ours_path)
        .arg(tiny_model())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert!(r["max_diff"].as_f64().unwrap() <= 1e-4, "{r}");
    // Training changed the model (the comparison is not trivially of the bundled model).
    assert!(r["moved"].as_f64().unwrap() > 1e-3, "{r}");
}
