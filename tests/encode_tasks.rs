//! `sparq encode` split over the tasks of a scheduler's array with no coordinator
//! (`--task-index/--task-count`), `--plan-only` and `--finalize`: the tasks' parts, finalized,
//! are the parts of one plain `sparq encode`, byte for byte, whatever the order, reruns and
//! duplicated tasks. (The same under a real Slurm: tests/slurm.rs.)

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::corpus::*;
use common::*;

fn sparq(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL");
    for k in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
        "RANK",
        "WORLD_SIZE",
        "SPARQ_TASK_INDEX",
        "SPARQ_TASK_COUNT",
    ] {
        c.env_remove(k);
    }
    c.args(args).envs(env.iter().copied());
    c
}

fn job<'a>(input: &'a str, output: &'a str) -> Vec<&'a str> {
    vec![
        "encode",
        "--input",
        input,
        "--output",
        output,
        "--shard-rows",
        "40",
        "--threads",
        "1",
    ]
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    sparq(args, env).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} failed: {}", stderr(out));
}

/// Every file of a local output but the manifest and leftovers, with its bytes.
fn parts(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn tasks_in_any_order_with_a_duplicate_then_finalize_equal_one_plain_encode() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..150, 50);
    write_corpus(&input.join("b.parquet"), 150..230, 30);
    let input = input.to_str().unwrap().to_string();
    let plain = dir.path().join("plain");
    let tasks = dir.path().join("tasks");
    let (plain_s, tasks_s) = (plain.to_str().unwrap(), tasks.to_str().unwrap());

    assert_ok("plain encode", &run(&job(&input, plain_s), &[]));
    let want = parts(&plain);

    // --plan-only: the shard count alone on stdout, nothing written.
    let mut plan_only = job(&input, tasks_s);
    plan_only.push("--plan-only");
    let out = run(&plan_only, &[]);
    assert_ok("--plan-only", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want.len().to_string()
    );
    assert!(!tasks.exists(), "--plan-only wrote {}", tasks.display());

    // Task 2 first, by number; then task 0 from a Slurm array's variables, twice at once.
    let mut task2 = job(&input, tasks_s);
    task2.extend(["--task-index", "2", "--task-count", "3"]);
    assert_ok("task 2", &run(&task2, &[]));
    let mut auto = job(&input, tasks_s);
    auto.extend(["--task-index", "auto"]);
    let slurm = [
        ("SLURM_ARRAY_TASK_ID", "10"),
        ("SLURM_ARRAY_TASK_MIN", "10"),
        ("SLURM_ARRAY_TASK_MAX", "12"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ];
    let twins: Vec<_> = (0..2)
        .map(|_| {
            sparq(&auto, &slurm)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for twin in twins {
        let out = twin.wait_with_output().unwrap();
        assert_ok("task 0 (twice at once)", &out);
    }

    // Finalize with task 1 missing: names its parts and the task, exits 3, writes nothing.
    let mut finalize = job(&input, tasks_s);
    finalize.extend(["--finalize", "--task-count", "3"]);
    let out = run(&finalize, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    let task1: Vec<&str> = want
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 1)
        .map(|(_, (n, _))| n.as_str())
        .collect();
    assert!(
        err.contains(&format!(
            "{} of {} parts are missing",
            task1.len(),
            want.len()
        )),
        "{err}"
    );
    for name in &task1 {
        assert!(
            err.contains(name) && err.contains("task 1"),
            "{name}: {err}"
        );
    }
    assert!(err.contains("rerun task(s) 1 "), "{err}");
    assert!(!tasks.join("_SUCCESS").exists() && !tasks.join("_manifest.json").exists());

    // Task 1 as a torchrun-style rank; then the whole "array" again: finished tasks are
    // no-ops; finalize succeeds.
    assert_ok("rank 1", &run(&auto, &[("RANK", "1"), ("WORLD_SIZE", "3")]));
    for i in ["0", "1", "2"] {
        let out = run(
            &auto,
            &[("JOB_COMPLETION_INDEX", i), ("SPARQ_TASK_COUNT", "3")],
        );
        assert_ok("rerun", &out);
        let summary: serde_json::Value =
            serde_json::from_slice(out.stdout.trim_ascii_end()).unwrap();
        assert_eq!(summary["committed_shards"], 0, "task {i} encoded again");
    }
    let out = run(&finalize, &[]);
    assert_ok("finalize", &out);
    assert!(tasks.join("_SUCCESS").exists());

    // The parts are the plain run's, byte for byte; every id once.
    let got = parts(&tasks);
    assert_eq!(
        got.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        want.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((name, a), (_, b)) in got.iter().zip(&want) {
        assert!(a == b, "{name} differs from the plain encode's");
    }
    let (rows, _) = read_output(&tasks);
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    assert_exactly_once(&rows, &reference_vectors(&ids));
    assert_eq!(rows.len(), 230);

    // The manifest holds the whole output, with the tasks' reports summed.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tasks.join("_manifest.json")).unwrap()).unwrap();
    let plain_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plain.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["rows"], 230);
    assert_eq!(manifest["files"], plain_manifest["files"]);
    assert_eq!(manifest["summary"]["docs"], 230);
    assert_eq!(
        manifest["summary"]["tokens"],
        plain_manifest["summary"]["tokens"]
    );
    assert_eq!(manifest["summary"]["duplicate_ids"], 0);
}

#[test]
fn task_flags_that_cannot_work_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..20, 10);
    let (input, output) = (
        input.to_str().unwrap().to_string(),
        dir.path().join("out").to_str().unwrap().to_string(),
    );
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--task-index", "0"], vec![], "--task-count"),
        (vec!["--task-count", "2"], vec![], "--task-index"),
        (
            vec!["--task-index", "2", "--task-count", "2"],
            vec![],
            "0 to 1",
        ),
        (vec!["--task-index", "auto"], vec![], "found no scheduler"),
        (
            vec!["--task-index", "auto"],
            vec![("JOB_COMPLETION_INDEX", "1")],
            "completions",
        ),
        (
            vec!["--task-index", "0", "--task-count", "2", "--overwrite"],
            vec![],
            "--overwrite cannot be used with --task-index",
        ),
    ];
    for (flags, env, message) in cases {
        let mut args = job(&input, &output);
        args.extend(flags.iter().copied());
        let out = run(&args, &env);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(message),
            "{flags:?}: {}",
            stderr(&out)
        );
    }
    assert!(
        !Path::new(&output).exists(),
        "a refused task wrote its output"
    );
}
