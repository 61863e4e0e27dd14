//! The one-call GPU measurement (`bench/gpu_all.sh`, issue 29) as a CPU dry run: the same
//! script, the bundled tiny model in place of BERT-base, a few hundred documents and 3 training
//! steps, so the script that a lent card runs once cannot rot between GPU sessions. Needs the
//! Python reference environment (`make test` installs it into `.venv`) and says plainly when it
//! skips.

mod common;

use std::process::Command;

use common::root;
use serde_json::Value;

#[test]
fn gpu_all_dry_run_writes_both_reports_and_the_summary() {
    let venv = root().join(".venv/bin");
    let has_reference = Command::new(venv.join("python"))
        .args(["-c", "import sentence_transformers, datasets, pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_reference {
        eprintln!(
            "SKIPPED gpu_all dry run: no .venv with sentence-transformers; `make test` installs it"
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new("bash")
        .arg(root().join("bench/gpu_all.sh"))
        .env("SPARQ_BENCH_DRY", "1")
        .env("OUT", out.path())
        .env("PATH", path)
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "gpu_all.sh dry run failed:\n{log}");

    let files: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let json = |suffix: &str| -> Vec<Value> {
        let name = files
            .iter()
            .find(|f| f.ends_with(suffix) && f.ends_with(".json"))
            .unwrap_or_else(|| panic!("no *{suffix} among {files:?}\n{log}"));
        serde_json::from_slice(&std::fs::read(out.path().join(name)).unwrap()).unwrap()
    };
    // Encoder rows: encode-text and the encode sweep, ids checked by the script itself.
    let encoder = json("-cpu-dry-run.json");
    let modes: Vec<&str> = encoder.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert!(
        modes.contains(&"encode-text") && modes.contains(&"encode"),
        "{modes:?}"
    );
    for row in &encoder {
        assert!(row["tokens_per_s"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["st_docs_per_s"].as_f64().unwrap() > 0.0, "{row}");
    }
    // Training rows: the single-process run against SparseEncoderTrainer, and two ranks.
    let train = json("-train.json");
    assert!(
        train.iter().any(|r| r["world_size"] == 1
            && r["collective"] == "none"
            && r["st_samples_per_s"].as_f64().is_some_and(|s| s > 0.0)
            && r["sparq_losses"].as_array().is_some_and(|l| l.len() == 3)),
        "{train:?}"
    );
    assert!(train.iter().any(|r| r["world_size"] == 2), "{train:?}");
    let summary = std::fs::read_to_string(out.path().join("gpu_all.md")).unwrap();
    for needle in [
        "| target | goal | measured | verdict |",
        "fraction of the measured bf16 matmul rate",
        "samples/s vs SparseEncoderTrainer, batch 4",
        "--batch-tokens sweep",
        "## One process, 3 steps",
    ] {
        assert!(
            summary.contains(needle),
            "{needle:?} missing from gpu_all.md:\n{summary}"
        );
    }
    assert!(!summary.contains("FAILED"), "{summary}");
}
