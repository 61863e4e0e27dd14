//! Compact outputs (#28 items 3 and 4): `encode --weight-type f16|bf16|u8` stores each f32
//! weight converted exactly as documented, `--prune` keeps what each kind says (checked against
//! a computation written here), the manifest's bytes per document are the parts' bytes over
//! the rows, and `export`, `inspect`, `decode` and `eval --corpus-vectors` read every type.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const SPARQ: &str = env!("CARGO_BIN_EXE_sparq");
const BEIR: &str = "tests/fixtures/beir-small";

/// (id, weight) pairs by row id.
type Vectors = BTreeMap<String, Vec<(u32, f32)>>;

/// A stored weight from the f32 one (`None`: the entry is dropped).
type Convert = Box<dyn Fn(f32) -> Option<f32>>;

fn sparq(args: &[&str]) -> Output {
    Command::new(SPARQ)
        .current_dir(common::root())
        .env_remove("SPARQ_MODEL")
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// Encodes the BEIR fixture's corpus (JSON lines) into `out` with `extra` flags.
fn encode(out: &Path, extra: &[&str]) -> Output {
    let corpus = format!("{BEIR}/corpus.jsonl");
    let mut args = vec![
        "encode",
        "--input",
        &corpus,
        "--output",
        out.to_str().unwrap(),
        "--id-column",
        "_id",
    ];
    args.extend_from_slice(extra);
    sparq(&args)
}

/// The output's vectors as `sparq export --format jsonl` writes them (weights as f32).
fn exported(out: &Path, extra: &[&str]) -> Vectors {
    let mut args = vec![
        "export",
        "--input",
        out.to_str().unwrap(),
        "--output",
        "-",
        "--format",
        "jsonl",
    ];
    args.extend_from_slice(extra);
    let got = ok(sparq(&args));
    String::from_utf8_lossy(&got.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let pairs = v["indices"]
                .as_array()
                .unwrap()
                .iter()
                .zip(v["values"].as_array().unwrap())
                .map(|(i, w)| (i.as_u64().unwrap() as u32, w.as_f64().unwrap() as f32))
                .collect();
            (v["id"].as_str().unwrap().to_string(), pairs)
        })
        .collect()
}

fn manifest(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).unwrap()).unwrap()
}

/// Each weight mapped by `f`, entries mapped to `None` dropped.
fn mapped(v: &Vectors, f: impl Fn(f32) -> Option<f32>) -> Vectors {
    v.iter()
        .map(|(id, pairs)| {
            let kept = pairs
                .iter()
                .filter_map(|&(i, w)| f(w).map(|w| (i, w)))
                .collect();
            (id.clone(), kept)
        })
        .collect()
}

/// bfloat16 rounding (to nearest, ties to even) by the bits, not by the `half` crate sparq uses.
fn bf16(w: f32) -> f32 {
    let bits = w.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    f32::from_bits(rounded & 0xffff_0000)
}

/// u8 as documented: q = round(w / scale), at most 255, 0 dropped; read back as q × scale.
fn u8_weight(w: f32, scale: f32) -> Option<f32> {
    let q = ((w as f64) / (scale as f64)).round().min(255.0);
    (q >= 1.0).then_some(q as u8 as f32 * scale)
}

fn part_files(out: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("part-") && n.ends_with(".parquet")
        })
        .collect();
    parts.sort();
    parts
}

/// nDCG@10 of `eval --corpus-vectors out` on the BEIR fixture.
fn ndcg(out: &Path) -> f64 {
    let got = ok(sparq(&[
        "eval",
        "--beir",
        BEIR,
        "--corpus-vectors",
        out.to_str().unwrap(),
    ]));
    let stdout = String::from_utf8(got.stdout).unwrap();
    let line: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    line["dot_ndcg@10"]
        .as_f64()
        .unwrap_or_else(|| panic!("no ndcg@10 in {line}"))
}

#[test]
fn every_weight_type_stores_the_f32_weights_converted_and_every_reader_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let f32_out = dir.path().join("f32");
    ok(encode(&f32_out, &[]));
    let exact = exported(&f32_out, &[]);
    assert_eq!(exact.len(), 28);
    let f32_ndcg = ndcg(&f32_out);
    let cases: [(&str, &[&str], Convert); 4] = [
        (
            "f16",
            &["--weight-type", "f16"],
            Box::new(|w| Some(half::f16::from_f32(w).to_f32()).filter(|w| *w != 0.0)),
        ),
        (
            "bf16",
            &["--weight-type", "bf16"],
            Box::new(|w| Some(bf16(w))),
        ),
        (
            "u8",
            &["--weight-type", "u8"],
            Box::new(|w| u8_weight(w, sparq::io::compact::DEFAULT_WEIGHT_SCALE)),
        ),
        (
            "u8",
            &["--weight-type", "u8", "--weight-scale", "0.05"],
            Box::new(|w| u8_weight(w, 0.05)),
        ),
    ];
    for (kind, flags, convert) in cases {
        let out = dir.path().join(flags.join("_"));
        ok(encode(&out, flags));
        let got = exported(&out, &[]);
        let want = mapped(&exact, convert);
        assert_eq!(got, want, "{flags:?}: export reads the stored weights back");
        // The manifest says how the weights are stored, and what they cost.
        let m = manifest(&out);
        let vectors = &m["vectors"];
        assert_eq!(vectors["weight_type"], kind, "{m}");
        assert_eq!(m["settings"]["weight_type"], kind, "{m}");
        let scale = flags
            .iter()
            .position(|f| *f == "--weight-scale")
            .map(|i| flags[i + 1].parse::<f64>().unwrap());
        if kind == "u8" {
            let scale = scale.unwrap_or(sparq::io::compact::DEFAULT_WEIGHT_SCALE as f64);
            assert!(
                (vectors["weight_scale"].as_f64().unwrap() - scale).abs() < 1e-9,
                "{m}"
            );
        } else {
            assert!(vectors.get("weight_scale").is_none(), "{m}");
        }
        let entries: usize = want.values().map(Vec::len).sum();
        let rows = m["rows"].as_u64().unwrap();
        assert_eq!(rows, 28);
        assert!(
            (vectors["entries_per_doc"].as_f64().unwrap() - entries as f64 / rows as f64).abs()
                < 1e-9,
            "{m}"
        );
        // inspect names the type (and the scale); decode shows the stored weights.
        let report: Value = serde_json::from_slice(
            &ok(sparq(&["inspect", out.to_str().unwrap(), "--json"])).stdout,
        )
        .unwrap();
        assert_eq!(report["weight_type"], kind, "{report}");
        assert_eq!(
            report["active_dims"]["mean"].as_f64().unwrap(),
            entries as f64 / 28.0
        );
        let text =
            String::from_utf8(ok(sparq(&["inspect", out.to_str().unwrap()])).stdout).unwrap();
        assert!(text.contains(&format!("weights: {kind}")), "{text}");
        let decoded: Value = serde_json::from_slice(
            &ok(sparq(&[
                "decode",
                out.to_str().unwrap(),
                "--id",
                "whisky-0",
                "--top",
                "3",
            ]))
            .stdout,
        )
        .unwrap();
        let mut top: Vec<f32> = want["whisky-0"].iter().map(|p| p.1).collect();
        top.sort_by(|a, b| b.total_cmp(a));
        let shown: Vec<f32> = decoded["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[1].as_f64().unwrap() as f32)
            .collect();
        assert_eq!(shown, top[..3], "{decoded}");
        // Retrieval reads the stored weights: the quality stays where f32's is.
        let got_ndcg = ndcg(&out);
        assert!(
            (got_ndcg - f32_ndcg).abs() < 0.02,
            "{flags:?}: nDCG@10 {got_ndcg}, f32 {f32_ndcg}"
        );
    }
}

/// What `--prune` keeps, computed here from the f32 weights.
fn pruned(pairs: &[(u32, f32)], kind: &str, value: f64) -> Vec<(u32, f32)> {
    let mut order: Vec<(u32, f32)> = pairs.to_vec();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<(u32, f32)> = match kind {
        "top-k" => order.into_iter().take(value as usize).collect(),
        "mass" => {
            let total: f64 = order.iter().map(|p| p.1 as f64).sum();
            let mut sum = 0.0;
            let mut kept = Vec::new();
            for p in order {
                if sum >= value * total {
                    break;
                }
                sum += p.1 as f64;
                kept.push(p);
            }
            kept
        }
        "ratio" => {
            let max = order.first().map_or(0.0, |p| p.1) as f64;
            order
                .into_iter()
                .filter(|p| p.1 as f64 >= value * max)
                .collect()
        }
        _ => unreachable!(),
    };
    kept.sort_by_key(|p| p.0);
    kept
}

#[test]
fn prune_keeps_what_each_kind_says_at_encode_and_at_export() {
    let dir = tempfile::tempdir().unwrap();
    let f32_out = dir.path().join("f32");
    ok(encode(&f32_out, &[]));
    let exact = exported(&f32_out, &[]);
    for (kind, value) in [("top-k", 5.0), ("mass", 0.6), ("ratio", 0.3)] {
        let spec = format!("{kind}:{value}");
        let want: Vectors = exact
            .iter()
            .map(|(id, p)| (id.clone(), pruned(p, kind, value)))
            .collect();
        // Something is pruned, and not everything.
        let (before, after): (usize, usize) = (
            exact.values().map(Vec::len).sum(),
            want.values().map(Vec::len).sum(),
        );
        assert!(after < before && after >= 28, "{spec}: {after} of {before}");
        let out = dir.path().join(kind);
        ok(encode(&out, &["--prune", &spec]));
        assert_eq!(exported(&out, &[]), want, "encode --prune {spec}");
        assert_eq!(manifest(&out)["vectors"]["prune"], spec.as_str());
        assert_eq!(
            exported(&f32_out, &["--prune", &spec]),
            want,
            "export --prune {spec}"
        );
    }
    // Pruned, then quantized: u8 of the kept weights.
    let out = dir.path().join("mass-u8");
    ok(encode(
        &out,
        &["--prune", "mass:0.6", "--weight-type", "u8"],
    ));
    let want: Vectors = exact
        .iter()
        .map(|(id, p)| {
            let kept = pruned(p, "mass", 0.6)
                .into_iter()
                .filter_map(|(i, w)| {
                    u8_weight(w, sparq::io::compact::DEFAULT_WEIGHT_SCALE).map(|w| (i, w))
                })
                .collect();
            (id.clone(), kept)
        })
        .collect();
    assert_eq!(exported(&out, &[]), want);
    // A bad spec names itself and the accepted forms.
    for bad in ["mass:1.5", "top-k:0", "size:3"] {
        let got = encode(&dir.path().join("bad"), &["--prune", bad]);
        assert_eq!(got.status.code(), Some(2), "{bad}");
        assert!(
            stderr(&got).contains(bad) && stderr(&got).contains("mass:A"),
            "{}",
            stderr(&got)
        );
    }
}

#[test]
fn the_manifest_says_the_bytes_per_document_and_resumes_keep_the_format() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("u8");
    ok(encode(
        &out,
        &[
            "--weight-type",
            "u8",
            "--shard-rows",
            "10",
            "--workers",
            "2",
        ],
    ));
    let m = manifest(&out);
    let parts = part_files(&out);
    assert_eq!(parts.len(), 3);
    let bytes: u64 = parts
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let v = &m["vectors"];
    assert_eq!(v["bytes"].as_u64().unwrap(), bytes, "{m}");
    assert_eq!(
        v["bytes_per_doc"].as_f64().unwrap(),
        bytes as f64 / 28.0,
        "{m}"
    );
    assert_eq!(v["codec"], sparq::io::output::PART_CODEC);
    // Worker processes stored u8 too: every part's weight column is uint8 with its scale.
    for p in &parts {
        let file = std::fs::File::open(p).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let sparse = reader.schema().field_with_name("sparse").unwrap().clone();
        assert_eq!(
            sparq::io::output::weight_format(sparse.data_type()),
            Some((
                sparq::io::compact::WeightType::U8,
                Some(sparq::io::compact::DEFAULT_WEIGHT_SCALE)
            )),
            "{}",
            p.display()
        );
    }
    // The same command resumes; another weight type, scale or pruning is refused by name.
    let again = ok(encode(&out, &["--weight-type", "u8"]));
    assert!(
        stderr(&again).contains("already complete"),
        "{}",
        stderr(&again)
    );
    for (flags, says) in [
        (
            &["--weight-type", "f16"][..],
            "--weight-type: was u8, now f16",
        ),
        (
            &["--weight-type", "u8", "--weight-scale", "0.05"][..],
            "--weight-scale: was 0.02, now 0.05",
        ),
        (
            &["--weight-type", "u8", "--prune", "top-k:10"][..],
            "--prune: was none, now top-k:10",
        ),
    ] {
        let got = encode(&out, flags);
        assert_eq!(got.status.code(), Some(1), "{flags:?}: {}", stderr(&got));
        assert!(stderr(&got).contains(says), "{flags:?}: {}", stderr(&got));
    }
    // A scale without u8 is refused before anything is written.
    let got = encode(&dir.path().join("scale"), &["--weight-scale", "0.1"]);
    assert_eq!(got.status.code(), Some(1), "{}", stderr(&got));
    assert!(
        stderr(&got).contains("--weight-scale 0.1 applies to --weight-type u8 only"),
        "{}",
        stderr(&got)
    );
    assert!(!dir.path().join("scale").exists());
}

#[test]
fn u8_weights_past_255_steps_are_clamped_counted_and_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let f32_out = dir.path().join("f32");
    ok(encode(&f32_out, &[]));
    let exact = exported(&f32_out, &[]);
    let scale = 0.005f32;
    let clamped = exact
        .values()
        .flatten()
        .filter(|p| (p.1 as f64 / scale as f64).round() > 255.0)
        .count();
    assert!(
        clamped > 0,
        "the scale must clamp some weights of the fixture"
    );
    let out = dir.path().join("u8");
    let got = ok(encode(
        &out,
        &["--weight-type", "u8", "--weight-scale", "0.005"],
    ));
    assert!(
        stderr(&got).contains(&format!(
            "{clamped} weight(s) were past 255 × --weight-scale"
        )),
        "{}",
        stderr(&got)
    );
    assert_eq!(manifest(&out)["vectors"]["clamped_weights"], clamped);
    assert_eq!(exported(&out, &[]), mapped(&exact, |w| u8_weight(w, scale)));
}
