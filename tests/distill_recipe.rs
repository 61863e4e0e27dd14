//! The distillation recipe (configs/distill.sh) as it ships: its `sparq mine` step with the
//! committed teacher, then its training config, on a slice of the recipe's own training pairs.
//! The full recipe (and its held-out nDCG@10) takes minutes: README records that run.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use common::corpus::write_batch;
use common::root;

/// The `sparq mine` flags of configs/distill.sh (the test fails if the script changes them).
const MINE_FLAGS: &[&str] = &[
    "--anchor-column",
    "query",
    "--positive-column",
    "answer",
    "--cross-encoder",
    "examples/distill/teacher",
    "--absolute-margin",
    "0",
    "--num-negatives",
    "4",
    "--output-format",
    "n-tuple",
    "--output-scores",
];

fn sparq(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(dir).env_remove("SPARQ_MODEL");
    c
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_parquet(dir: &Path) -> Vec<arrow::array::RecordBatch> {
    let mut batches = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    batches
}

#[test]
fn the_recipe_mines_teacher_scores_and_its_config_trains_margin_mse_on_them() {
    let script = std::fs::read_to_string(root().join("configs/distill.sh")).unwrap();
    let flags = MINE_FLAGS.join(" ");
    let script_flags = script.split_whitespace().collect::<Vec<_>>().join(" ");
    for pair in MINE_FLAGS.chunks(2) {
        assert!(
            script_flags.contains(&pair.join(" ")),
            "configs/distill.sh no longer mines with `{flags}`"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The first 48 of the recipe's training pairs.
    let all = read_parquet(&root().join("examples/distill"));
    let slice = all[0].slice(0, 48);
    write_batch(&dir.join("pairs/pairs.parquet"), slice, 48);

    let mined = dir.join("mined");
    let mut mine = sparq(&root());
    mine.args(["mine", "--dataset"])
        .arg(dir.join("pairs"))
        .args(MINE_FLAGS)
        .arg("--output")
        .arg(&mined);
    ok(mine.output().unwrap());
    let rows = read_parquet(&mined);
    let batch = &rows[0];
    let names: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "query",
            "answer",
            "negative_1",
            "negative_2",
            "negative_3",
            "negative_4",
            "scores"
        ]
    );
    let scores = batch.column_by_name("scores").unwrap().as_list::<i32>();
    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert!(n >= 40, "only {n} of 48 queries kept 4 negatives");
    for r in 0..scores.len() {
        let s = scores.value(r);
        let s = s.as_primitive::<Float64Type>();
        assert_eq!(s.len(), 5);
        // --absolute-margin 0: the teacher puts every kept negative at or below the answer;
        // raw logits ×40 (not a sigmoid in (0, 1)).
        for k in 1..5 {
            assert!(s.value(k) <= s.value(0), "row {r}: {:?}", s.values());
        }
        assert!(
            s.values().iter().any(|v| !(0.0..=1.0).contains(v)),
            "row {r}: {:?} look like sigmoid outputs",
            s.values()
        );
    }

    // The recipe's training config, on those rows, two steps; and with its loss overridden, to
    // show the config's MarginMSE is the loss that ran.
    let train = |out: &str, extra: &[&str]| -> Vec<f64> {
        let stdout = ok(sparq(dir)
            .args(["train", "--config"])
            .arg(root().join("configs/distill-train.toml"))
            .arg("--train-data")
            .arg(&mined)
            .arg("--output")
            .arg(dir.join(out))
            .args([
                "--max-steps",
                "2",
                "--logging-steps",
                "1",
                "--batch-size",
                "4",
            ])
            .args(extra)
            .output()
            .unwrap());
        assert!(dir.join(out).join("config.json").exists(), "{stdout}");
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("base_loss").and_then(|b| b.as_f64()))
            .collect()
    };
    let margin_mse = train("model", &[]);
    let mnrl = train("model-mnrl", &["--loss", "mnrl"]);
    assert_eq!(margin_mse.len(), 2);
    assert!(margin_mse.iter().all(|b| b.is_finite() && *b > 0.0));
    assert!(
        (margin_mse[0] - mnrl[0]).abs() > 1e-3,
        "the config's loss gives the same first-step loss as mnrl: {margin_mse:?} vs {mnrl:?}"
    );
}
