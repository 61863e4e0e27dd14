//! The README's `encode-text` examples, run by bash as written with the bundled model: each
//! command's output must be what the README shows under it. Numbers shown with fewer digits
//! match within half a unit of their last digit; `...` in an array or object stands for the
//! rest of it.

mod common;

use std::process::Command;

use serde_json::Value;

use common::root;

/// A value as the README shows it: numbers keep their digits, `...` marks an elided rest.
#[derive(Debug)]
enum Shown {
    Number(String),
    Other(Value),
    Array(Vec<Shown>, bool),
    Object(Vec<(String, Shown)>, bool),
}

/// Parses one shown line (JSON, plus `...` as the last item of an array or object).
fn parse_shown(text: &str) -> Shown {
    let mut parser = Parser {
        text: text.as_bytes(),
        at: 0,
    };
    let value = parser.value();
    parser.space();
    assert_eq!(
        parser.at,
        text.len(),
        "trailing text in README line: {text}"
    );
    value
}

struct Parser<'t> {
    text: &'t [u8],
    at: usize,
}

impl Parser<'_> {
    fn space(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> u8 {
        self.space();
        *self.text.get(self.at).expect("README line ends early")
    }

    fn elided(&mut self) -> bool {
        self.space();
        let rest = &self.text[self.at..];
        rest.starts_with(b"...") && {
            self.at += 3;
            true
        }
    }

    /// Items up to `close`; whether the last was `...`.
    fn items<T>(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> T) -> (Vec<T>, bool) {
        self.at += 1;
        let mut out = Vec::new();
        let mut elided = false;
        if self.peek() != close {
            loop {
                if self.elided() {
                    elided = true;
                } else {
                    out.push(item(self));
                }
                match self.peek() {
                    b',' if !elided => self.at += 1,
                    c if c == close => break,
                    c => panic!("unexpected `{}` in a README line", c as char),
                }
            }
        }
        self.at += 1;
        (out, elided)
    }

    fn string(&mut self) -> String {
        let start = self.at;
        self.at += 1;
        while self.text[self.at] != b'"' {
            self.at += if self.text[self.at] == b'\\' { 2 } else { 1 };
        }
        self.at += 1;
        serde_json::from_slice(&self.text[start..self.at]).unwrap()
    }

    fn value(&mut self) -> Shown {
        match self.peek() {
            b'[' => {
                let (items, elided) = self.items(b']', Self::value);
                Shown::Array(items, elided)
            }
            b'{' => {
                let (fields, elided) = self.items(b'}', |p| {
                    p.peek();
                    let key = p.string();
                    assert_eq!(p.peek(), b':');
                    p.at += 1;
                    (key, p.value())
                });
                Shown::Object(fields, elided)
            }
            b'"' => Shown::Other(Value::String(self.string())),
            _ => {
                let start = self.at;
                while self
                    .text
                    .get(self.at)
                    .is_some_and(|c| !b",]} \t".contains(c))
                {
                    self.at += 1;
                }
                let word = std::str::from_utf8(&self.text[start..self.at]).unwrap();
                match word {
                    "null" | "true" | "false" => Shown::Other(serde_json::from_str(word).unwrap()),
                    _ => Shown::Number(word.to_string()),
                }
            }
        }
    }
}

/// Checks `actual` against what the README shows; `at` names the place for messages.
fn compare(shown: &Shown, actual: &Value, at: &str) {
    match (shown, actual) {
        (Shown::Number(raw), Value::Number(n)) => {
            let want: f64 = raw.parse().unwrap_or_else(|_| panic!("{at}: `{raw}`"));
            let got = n.as_f64().unwrap();
            let digits = raw
                .split(['e', 'E'])
                .next()
                .and_then(|m| m.split_once('.'))
                .map_or(0, |(_, d)| d.len());
            // Half a unit of the last digit shown, and a little for float noise across machines.
            let tolerance = 0.5 * 10f64.powi(-(digits as i32)) + 1e-5 * got.abs().max(1.0);
            assert!(
                (got - want).abs() <= tolerance,
                "{at}: README shows {raw}, sparq prints {got}"
            );
        }
        (Shown::Other(want), got) => assert_eq!(want, got, "{at}"),
        (Shown::Array(items, elided), Value::Array(got)) => {
            if *elided {
                assert!(got.len() >= items.len(), "{at}: {} items", got.len());
            } else {
                assert_eq!(
                    items.len(),
                    got.len(),
                    "{at}: README shows {} items",
                    items.len()
                );
            }
            for (i, (s, g)) in items.iter().zip(got).enumerate() {
                compare(s, g, &format!("{at}[{i}]"));
            }
        }
        (Shown::Object(fields, elided), Value::Object(got)) => {
            if !elided {
                let mut shown: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
                let mut keys: Vec<&str> = got.keys().map(String::as_str).collect();
                shown.sort();
                keys.sort();
                assert_eq!(shown, keys, "{at}: keys");
            }
            for (k, s) in fields {
                let g = got
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}: sparq prints no `{k}`"));
                compare(s, g, &format!("{at}.{k}"));
            }
        }
        (s, g) => panic!("{at}: README shows {s:?}, sparq prints {g}"),
    }
}

/// The `sh` blocks of a README section: each command line with the output lines under it.
fn examples(section: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for block in section.split("```sh\n").skip(1) {
        let block = block.split("```").next().unwrap();
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            if line.starts_with('{') || line.starts_with('[') {
                out.last_mut()
                    .expect("output shown before any command")
                    .1
                    .push(line.to_string());
            } else {
                out.push((line.to_string(), Vec::new()));
            }
        }
    }
    out
}

#[test]
fn readme_encode_text_examples_print_what_the_readme_shows() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("## Encoding texts: `sparq encode-text`")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has the encode-text section");
    let examples = examples(section);
    assert!(
        examples.len() >= 2 && examples.iter().all(|(_, shown)| !shown.is_empty()),
        "each example shows its output: {examples:?}"
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_sparq"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (command, shown) in &examples {
        assert!(command.contains("sparq encode-text"), "{command}");
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", command])
            .current_dir(root())
            .env("PATH", &path)
            .env_remove("SPARQ_MODEL")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            printed.len(),
            shown.len(),
            "{command}: lines printed\n{stdout}"
        );
        for (n, (want, got)) in shown.iter().zip(printed).enumerate() {
            let got: Value = serde_json::from_str(got).unwrap();
            compare(
                &parse_shown(want),
                &got,
                &format!("`{command}` line {}", n + 1),
            );
        }
    }
}

#[test]
fn shown_values_are_compared_to_their_digits() {
    let got: Value = serde_json::from_str(r#"{"a":[1,2,3],"v":[1.234,0.5]}"#).unwrap();
    compare(
        &parse_shown(r#"{"a":[1,2,...],"v":[1.23,0.50]}"#),
        &got,
        "ok",
    );
    for wrong in [
        r#"{"a":[1,2],"v":[1.23,0.5]}"#, // an array shown whole must be whole
        r#"{"a":[1,3,...],"v":[1.23,0.5]}"#, // a wrong item
        r#"{"a":[1,...],"v":[1.22,0.5]}"#, // a number beyond its digits
        r#"{"a":[1,...]}"#,              // a missing key
    ] {
        let shown = parse_shown(wrong);
        let failed = std::panic::catch_unwind(|| compare(&shown, &got, "wrong")).is_err();
        assert!(failed, "{wrong} must not match");
    }
}
