//! `sparq encode-text` input formats, output kept up to a bad line, and a closed stdout, as a
//! user meets them: stdin, stdout, exit code, message.

mod common;

use std::process::{Command, Output};

use common::*;

fn sparq(args: &[&str], stdin: &[u8]) -> Output {
    let args: Vec<&str> = std::iter::once("encode-text")
        .chain(args.iter().copied())
        .collect();
    common::process::run_sparq(&args, stdin)
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn vectors(lines: &[String]) -> Vec<sparq::encode::SparseVector> {
    lines.iter().map(|l| parse_vector(l)).collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Short texts of varied lengths, so the model's length sorting inside a block would show as
/// reordered output if order were lost.
fn varied_texts(n: usize) -> Vec<String> {
    const WORDS: [&str; 6] = ["scotch", "whisky", "river", "bridge", "coffee", "museum"];
    (0..n)
        .map(|i| {
            let words: Vec<&str> = (0..1 + i % 9).map(|k| WORDS[(i + k) % 6]).collect();
            format!("text {i}: {}", words.join(" "))
        })
        .collect()
}

fn as_jsonl(texts: &[String]) -> String {
    texts
        .iter()
        .map(|t| serde_json::to_string(t).unwrap() + "\n")
        .collect()
}

#[test]
fn text_lines_are_texts_as_is_and_blank_lines_keep_their_place() {
    let texts = [
        "scotch \"whisky\" {not json}",
        "",
        "   ",
        "how much alcohol is in scotch?",
    ];
    let input: String = texts.iter().map(|t| format!("{t}\n")).collect();
    let out = sparq(&["--input-format", "text"], input.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let got = lines(&out);
    assert_eq!(got.len(), 4, "one output line per input line");
    let empty = r#"{"indices":[],"values":[]}"#;
    assert_eq!((got[1].as_str(), got[2].as_str()), (empty, empty));
    // The same texts as JSON strings give the same vectors.
    let as_json = format!(
        "{}\n{}\n",
        serde_json::to_string(texts[0]).unwrap(),
        serde_json::to_string(texts[3]).unwrap()
    );
    let want = vectors(&[got[0].clone(), got[3].clone()]);
    let out = sparq(&[], as_json.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_close("jsonl", &vectors(&lines(&out)), &want, 1e-5, 1e-5);
    // No newline after the last line, and CRLF line ends, read the same.
    let out = sparq(
        &["--input-format", "text"],
        b"scotch \"whisky\" {not json}\r\nhow much alcohol is in scotch?",
    );
    assert_close("crlf", &vectors(&lines(&out)), &want, 1e-5, 1e-5);
}

#[test]
fn json_lines_stay_the_default_and_point_plain_text_to_the_text_format() {
    let out = sparq(&[], b"\"fine\"\nplain words\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("stdin line 2")
            && err.contains("not valid JSON")
            && err.contains("--input-format text"),
        "{err}"
    );
    assert_eq!(lines(&out).len(), 1, "line 1 is written");
    let out = sparq(&[], b"\"fine\"\n\n\"also fine\"\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("stdin line 2") && err.contains("blank line"),
        "{err}"
    );
}

#[test]
fn an_error_keeps_the_earlier_lines_output_in_order() {
    // More lines than one block (2,048), so a bad line can fall in the second block.
    let texts = varied_texts(2100);
    let with_bad_line = |bad_line: usize| {
        let mut input = as_jsonl(&texts[..bad_line - 1]);
        input.push_str("not json\n");
        input.push_str(&as_jsonl(&texts[bad_line..]));
        let out = sparq(&[], input.as_bytes());
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains(&format!("stdin line {bad_line}:")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        vectors(&lines(&out))
    };
    // The last line bad: every line before it is written (the first block and a partial one).
    let before_last = with_bad_line(2100);
    assert_eq!(before_last.len(), 2099);
    // In input order: sampled lines equal the library's vectors of their texts.
    let encoder =
        sparq::model::SpladeEncoder::load(&tiny_model(), sparq::model::DeviceSpec::Cpu, None)
            .unwrap();
    let sample: Vec<usize> = (0..2099).step_by(97).chain([2047, 2048, 2098]).collect();
    let refs: Vec<Option<&str>> = sample.iter().map(|&i| Some(texts[i].as_str())).collect();
    let want = encoder
        .encode(
            &refs,
            sparq::model::InputKind::Document,
            sparq::model::EncodeOptions::default(),
        )
        .unwrap();
    let got: Vec<_> = sample.iter().map(|&i| before_last[i].clone()).collect();
    assert_close("sampled lines", &got, &want, 1e-5, 1e-5);
    // A bad line early in the first block, and the first line of the second.
    for bad_line in [4, 2049] {
        assert_close(
            &format!("before line {bad_line}"),
            &with_bad_line(bad_line),
            &before_last[..bad_line - 1],
            1e-5,
            1e-5,
        );
    }
    // Invalid UTF-8 in plain text: the same, naming the line.
    let mut input = b"first text\nsecond text\n".to_vec();
    input.extend_from_slice(b"bad \xff bytes\nlast\n");
    let out = sparq(&["--input-format", "text"], &input);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("stdin line 3") && err.contains("UTF-8"),
        "{err}"
    );
    assert_eq!(lines(&out).len(), 2);
}

#[test]
fn a_closed_stdout_ends_quietly_with_success() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.jsonl");
    // Output well beyond the pipe's and the writer's buffers (~1 KiB a line).
    std::fs::write(&input, as_jsonl(&varied_texts(400))).unwrap();
    let bin = env!("CARGO_BIN_EXE_sparq");
    for format in ["jsonl", "text"] {
        // As a user types it; pipefail makes the status sparq's (head exits 0).
        let out = Command::new("bash")
            .args([
                "-o",
                "pipefail",
                "-c",
                &format!("'{bin}' encode-text --input-format {format} < texts.jsonl | head -1"),
            ])
            .current_dir(dir.path())
            .env("SPARQ_MODEL", tiny_model())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{format}: {err}");
        assert!(err.is_empty(), "{format}: nothing on stderr: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
}
