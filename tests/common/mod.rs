//! Shared helpers for sparq's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sparq::encode::SparseVector;

pub mod corpus;
pub mod process;
pub mod s3;
pub mod s3_fault_proxy;
pub mod service;
pub mod weights;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled model.
pub fn tiny_model() -> PathBuf {
    root().join("models/splade-bert-tiny-nq")
}

/// Fixture texts (JSON strings, one per line).
pub fn fixture_texts() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("tests/fixtures/texts.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Reads `{"indices","values"}` JSON lines.
pub fn read_vectors(path: &Path) -> Vec<SparseVector> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(parse_vector).collect()
}

/// Parses one `{"indices","values"}` JSON object.
pub fn parse_vector(line: &str) -> SparseVector {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    SparseVector {
        indices: v["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect(),
        values: v["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
    }
}

fn as_map(v: &SparseVector) -> BTreeMap<u32, f32> {
    v.indices
        .iter()
        .copied()
        .zip(v.values.iter().copied())
        .collect()
}

/// Asserts equal weights within `tol` and the same non-zero dims, ignoring weights under
/// `ignore_below` on either side (they may round to zero differently).
pub fn assert_close(
    label: &str,
    got: &[SparseVector],
    want: &[SparseVector],
    tol: f32,
    ignore_below: f32,
) {
    assert_eq!(got.len(), want.len(), "{label}: vector count");
    for (n, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.indices.windows(2).all(|p| p[0] < p[1]),
            "{label}[{n}]: indices not ascending"
        );
        let (gm, wm) = (as_map(g), as_map(w));
        for (id, &wv) in &wm {
            let gv = gm.get(id).copied().unwrap_or(0.0);
            if wv < ignore_below && gv < ignore_below {
                continue;
            }
            assert!(
                (gv - wv).abs() <= tol,
                "{label}[{n}] dim {id}: got {gv}, reference {wv}"
            );
        }
        for (id, &gv) in &gm {
            if !wm.contains_key(id) {
                assert!(
                    gv < ignore_below,
                    "{label}[{n}] dim {id}: got {gv}, reference has no such dim"
                );
            }
        }
    }
}

/// Cosine similarity of two sparse vectors (1 for two empty vectors).
pub fn cosine(a: &SparseVector, b: &SparseVector) -> f32 {
    let (na, nb) = (a.dot(a).sqrt(), b.dot(b).sqrt());
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        a.dot(b) / (na * nb)
    }
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
