//! `sparq encode-text` as a user runs it: stdin, stdout, exit codes, messages.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;

fn sparq(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparq"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_vectors(out: &Output) -> Vec<sparq::encode::SparseVector> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(parse_vector)
        .collect()
}

#[test]
fn encode_text_matches_reference_for_documents_and_queries() {
    let input = std::fs::read_to_string(root().join("tests/fixtures/texts.jsonl")).unwrap();
    let out = sparq(&["encode-text"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = read_vectors(&root().join("tests/reference/tiny-documents.jsonl"));
    assert_close("documents", &stdout_vectors(&out), &want, 1e-4, 1e-4);
    let out = sparq(&["encode-text", "--query", "--batch-size", "3"], &input);
    let want = read_vectors(&root().join("tests/reference/tiny-queries.jsonl"));
    assert_close("queries", &stdout_vectors(&out), &want, 1e-4, 1e-4);
}

#[test]
fn objects_nulls_and_tokens() {
    let input = "{\"text\": \"scotch whisky\"}\nnull\n{\"text\": null}\n\"scotch whisky\"\n";
    let out = sparq(&["encode-text", "--tokens"], input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[0], lines[3],
        "object and string forms give the same vector"
    );
    assert_eq!(lines[1]["indices"].as_array().unwrap().len(), 0);
    assert_eq!(lines[2]["indices"].as_array().unwrap().len(), 0);
    let tokens: Vec<&str> = lines[0]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tokens.contains(&"scotch"), "{tokens:?}");
    assert_eq!(tokens.len(), lines[0]["indices"].as_array().unwrap().len());
}

#[test]
fn invalid_json_line_is_an_error_naming_the_line() {
    let out = sparq(&["encode-text"], "\"fine\"\n\"also fine\"\nnot json\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("not valid JSON"),
        "{err}"
    );
    let out = sparq(&["encode-text"], "{\"title\": \"x\"}\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}

#[test]
fn missing_model_exits_non_zero_with_one_clear_line() {
    let out = sparq(&["encode-text", "--model", "/no/such/model"], "\"x\"\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/model") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Exception raised from"),
        "{err}"
    );
}

#[test]
fn bad_option_values_are_refused() {
    let out = sparq(&["encode-text", "--device", "tpu"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cpu, cuda or cuda:N"));
    let out = sparq(&["encode-text", "--max-active-dims", "0"], "\"x\"\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-active-dims"));
}

#[test]
fn the_profile_counts_one_host_wait_per_batch() {
    let input = std::fs::read_to_string(root().join("tests/fixtures/texts.jsonl")).unwrap();
    let texts = input.lines().count();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparq"))
        .args(["encode-text", "--batch-size", "4"])
        .env("SPARQ_PROFILE", "1")
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("profile:")).unwrap();
    // "profile: N batches, W host waits (1.00 per batch), S token shapes: ..."
    let batches = texts.div_ceil(4);
    assert!(
        line.contains(&format!(
            "{batches} batches, {batches} host waits (1.00 per batch)"
        )),
        "{line}"
    );
}
