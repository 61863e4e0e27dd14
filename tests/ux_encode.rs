//! `sparq encode` as a new user meets it (#15): the same input spelled four ways resumes, an
//! interrupt says what is kept and how to resume, default shards keep every worker busy, job
//! files resolve paths against themselves, `--plan` writes nothing, progress ends with a line
//! that stays.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::corpus::*;
use common::*;

fn sparq(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(dir).env_remove("SPARQ_MODEL");
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_default()
}

fn parts(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_same_input_spelled_four_ways_resumes_and_other_settings_name_both_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("data/docs/a.parquet"), 0..30, 10);
    write_corpus(&dir.join("data/docs/b.parquet"), 30..60, 10);
    let run = |input: &str, extra: &[&str]| {
        sparq(dir)
            .args([
                "encode",
                "--input",
                input,
                "--output",
                "out",
                "--threads",
                "1",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run("data/docs/", &["--shard-rows", "20"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(summary(&first)["committed_shards"], 4);
    let absolute = dir.join("data/docs").display().to_string();
    for spelling in [
        "data/docs",
        "./data/docs/",
        absolute.as_str(),
        "data/docs/*.parquet",
    ] {
        // No --shard-rows: the recorded size is kept.
        let out = run(spelling, &[]);
        assert!(out.status.success(), "{spelling}: {}", stderr(&out));
        assert_eq!(summary(&out)["skipped_shards"], 4, "{spelling}");
        assert_eq!(summary(&out)["docs"], 0, "{spelling}");
        assert!(
            stderr(&out).contains("already complete"),
            "{spelling}: {}",
            stderr(&out)
        );
    }
    // Another setting is refused with its recorded and its new value; nothing is deleted.
    let out = run(
        "data/docs",
        &["--max-active-dims", "7", "--shard-rows", "10"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--max-active-dims: was all, now 7")
            && err.contains("--shard-rows: was 20, now 10"),
        "{err}"
    );
    // Another file list names what changed.
    write_corpus(&dir.join("data/docs/c.parquet"), 60..70, 10);
    let out = run("data/docs", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("was 2 file(s)")
            && stderr(&out).contains("new: ")
            && stderr(&out).contains("c.parquet"),
        "{}",
        stderr(&out)
    );
    assert_eq!(parts(&dir.join("out")), 4, "a refusal deletes nothing");
}

#[test]
fn ctrl_c_keeps_what_is_committed_says_how_to_resume_and_the_rerun_counts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 4,000 rows, 2 CPU workers: the default cuts 8 shards (500 rows each), not 1.
    write_corpus(&dir.join("in/a.parquet"), 0..4000, 500);
    let args = [
        "encode",
        "--input",
        "in",
        "--output",
        "out",
        "--workers",
        "2",
        "--threads",
        "1",
    ];
    let plan = sparq(dir).args(args).arg("--plan").output().unwrap();
    assert!(plan.status.success(), "{}", stderr(&plan));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("shards  8 of at most 500 rows (default for 2 CPU workers)")
            && text.contains("4000 rows")
            && text.contains("nothing written"),
        "{text}"
    );
    assert!(!dir.join("out").exists(), "--plan writes nothing");

    let mut child = sparq(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once at least one shard is committed, well before the end.
    let deadline = Instant::now() + Duration::from_secs(300);
    while parts(&dir.join("out")) < 1 {
        assert!(Instant::now() < deadline, "no shard committed");
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let err = stderr(&out);
    let committed = parts(&dir.join("out"));
    assert!((1..8).contains(&committed), "{committed}");
    assert!(
        err.contains(&format!("interrupted (Ctrl-C): {committed} shard(s)"))
            && err.contains("rerun the same command to resume")
            && err.contains("encode --input in --output out"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The rerun says what it skips and finishes every row exactly once.
    let out = sparq(dir).args(args).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{committed} of 8 shards")),
        "{}",
        stderr(&out)
    );
    assert_eq!(summary(&out)["skipped_shards"], committed);
    let (rows, _) = read_output(&dir.join("out"));
    let mut ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    ids.sort();
    assert_eq!(ids, (0..4000).collect::<Vec<_>>());
    // The progress ends with a line that stays.
    assert!(
        stderr(&out).contains("docs, ") && stderr(&out).contains(" shards in "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_job_file_runs_from_any_directory_with_paths_relative_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("project/data/a.parquet"), 0..20, 10);
    let model = tiny_model();
    std::fs::write(
        dir.join("project/job.toml"),
        format!(
            "kind = \"encode\"\ninput = \"data\"\noutput = \"vectors\"\nmodel = {:?}\nshard_rows = 10\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = sparq(&elsewhere)
        .args([
            "encode",
            "--config",
            "../project/job.toml",
            "--threads",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&out)["committed_shards"], 2);
    assert_eq!(parts(&dir.join("project/vectors")), 2);
    assert!(!elsewhere.join("vectors").exists());
    // Flags win over the file.
    let out = sparq(&elsewhere)
        .args([
            "encode",
            "--config",
            "../project/job.toml",
            "--output",
            "mine",
            "--plan",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("output  mine"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A missing input names the folder it looked in; a misspelt key is named.
    std::fs::write(
        dir.join("project/bad.toml"),
        "input = \"nodata\"\noutput = \"v\"\n",
    )
    .unwrap();
    let out = sparq(&elsewhere)
        .args(["encode", "--config", "../project/bad.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&dir.join("project/nodata").display().to_string()),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        dir.join("project/typo.toml"),
        "input = \"data\"\noutput = \"v\"\nshard_row = 3\n",
    )
    .unwrap();
    let out = sparq(&elsewhere)
        .args(["encode", "--config", "../project/typo.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("typo.toml") && stderr(&out).contains("shard_row"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_train_config_resolves_its_paths_against_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = dir.join("cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::copy(
        root().join("configs/train-quick.toml"),
        cfg.join("train.toml"),
    )
    .unwrap();
    // The shipped config names ../models and ../examples: from a copy elsewhere they are
    // missing, and the error says where it looked.
    let out = sparq(dir)
        .args(["train", "--config", "cfg/train.toml", "--max-steps", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&dir.join("examples/pairs").display().to_string())
            && stderr(&out).matches("no parquet files").count() == 1,
        "{}",
        stderr(&out)
    );
    // The shipped config itself runs from another directory.
    let out = sparq(dir)
        .args([
            "train",
            "--config",
            root().join("configs/train-quick.toml").to_str().unwrap(),
            "--max-steps",
            "1",
            "--output",
            dir.join("run").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        dir.join("run/config.json").exists(),
        "the trained model is in --output"
    );
}

#[test]
fn a_hub_id_is_named_as_one_and_the_bundled_model_is_found_next_to_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    // Offline, with an empty cache: nothing is downloaded (tests/hub.rs covers downloads).
    let out = sparq(tmp.path())
        .args(["encode-text", "--model", "naver/splade-v3"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", tmp.path().join("hf"))
        .env_remove("HF_HUB_CACHE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Hugging Face hub model `naver/splade-v3`")
            && err.contains("hf download naver/splade-v3"),
        "{err}"
    );
    // From a directory without models/, the default model is still found (next to the
    // binary), and --help shows no path of the build machine's source tree unless the binary
    // lives in it.
    let out = sparq(tmp.path())
        .args(["encode-text"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn every_command_help_ends_with_real_examples_using_its_own_flags() {
    let commands = [
        "encode-text",
        "encode",
        "eval",
        "train",
        "export",
        "inspect",
        "decode",
        "serve",
        "submit",
        "status",
        "cancel",
        "worker",
    ];
    for command in commands {
        let out = sparq(&root()).args([command, "--help"]).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let (options, examples) = help
            .rsplit_once("Examples:\n")
            .unwrap_or_else(|| panic!("{command} --help has no examples:\n{help}"));
        let lines: Vec<&str> = examples.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            (2..=3).contains(&lines.len()),
            "{command}: {} examples",
            lines.len()
        );
        for line in lines {
            assert!(
                line.contains(&format!("sparq {command}")),
                "{command}: {line}"
            );
            // Every flag of the example (before any pipe or redirection) is one of the command's.
            let own = line
                .split(['|', '<', '>', '#'])
                .find(|p| p.contains("sparq"))
                .unwrap();
            for flag in own.split_whitespace().filter(|w| w.starts_with("--")) {
                assert!(
                    options.contains(&format!("{flag} ")) || options.contains(&format!("{flag}\n")),
                    "{command}: example flag {flag} is not in its --help"
                );
            }
        }
    }
}
