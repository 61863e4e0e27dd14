//! Data integrity of `sparq encode`'s output and inputs, with the real binary: no `_SUCCESS`
//! over a missing part, corrupt parquet footers and globs refused by name, an output that
//! cannot take hard links refused up front, parts capped in size.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::corpus::*;
use common::*;

fn sparq() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL");
    c
}

fn encode_args<'a>(input: &'a str, output: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "encode",
        "--input",
        input,
        "--output",
        output,
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

fn encode(input: &Path, output: &Path, extra: &[&str]) -> Output {
    sparq()
        .args(encode_args(
            input.to_str().unwrap(),
            output.to_str().unwrap(),
            extra,
        ))
        .output()
        .unwrap()
}

fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no summary; stderr: {}", stderr(out)));
    serde_json::from_str(line).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn parts(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("part-") && n.ends_with(".parquet"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Item 1: a part deleted after its shard was committed, while the run goes on, fails that
/// shard at the finish: no `_SUCCESS`, a manifest saying incomplete and naming it, exit 2 with
/// the part named; the rerun encodes exactly that part and completes the output.
#[test]
fn a_part_missing_at_the_finish_fails_its_shard_and_the_rerun_encodes_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    write_corpus(&input, 0..2000, 10);
    let out_dir = dir.path().join("out");
    let child = sparq()
        .args(encode_args(
            input.to_str().unwrap(),
            out_dir.to_str().unwrap(),
            &["--shard-rows", "10"],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Delete the first part as soon as it is committed, while ~200 shards are still to go.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (deleted, parts_then) = loop {
        assert!(Instant::now() < deadline, "no part was ever committed");
        if let Some(first) = parts(&out_dir).first().cloned() {
            std::fs::remove_file(out_dir.join(&first)).unwrap();
            break (first, parts(&out_dir).len());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        !out_dir.join("_manifest.json").exists() && parts_then < 150,
        "the run was nearly over when the part was deleted ({parts_then} parts): inconclusive"
    );
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains(&deleted) && err.contains("missing") && err.contains("rerun"),
        "the missing part and what to do are said: {err}"
    );
    assert!(
        !out_dir.join("_SUCCESS").exists(),
        "_SUCCESS written over a missing part"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], false);
    let failed: Vec<&str> = manifest["failed_shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["part"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec![deleted.as_str()]);
    assert!(
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["name"] != deleted.as_str()),
        "the manifest lists the missing part as a file"
    );
    assert_eq!(summary(&out)["failed_shards"], 1);

    // The rerun encodes exactly the missing part, and completes the output.
    let out = encode(&input, &out_dir, &["--shard-rows", "10"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["committed_shards"], 1, "{s}");
    assert_eq!(s["skipped_shards"], 199, "{s}");
    assert!(out_dir.join(&deleted).exists());
    assert!(out_dir.join("_SUCCESS").exists());
    let (rows, names) = read_output(&out_dir);
    assert_eq!(names.len(), 200);
    assert_eq!(rows.len(), 2000);
}

/// Rewrites the footer of the parquet file at `path` with `edit` applied to its row groups
/// (the data pages stay as they are, so their offsets stay right).
fn rewrite_footer(
    path: &Path,
    edit: impl FnOnce(&mut Vec<parquet::file::metadata::RowGroupMetaData>),
) {
    use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};
    let bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let footer_len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let data_end = n - 8 - footer_len;
    let metadata = ParquetMetaDataReader::decode_metadata(&bytes[data_end..n - 8]).unwrap();
    let mut builder = metadata.into_builder();
    let mut groups = builder.take_row_groups();
    edit(&mut groups);
    let metadata = builder.set_row_groups(groups).build();
    let mut out = bytes[..data_end].to_vec();
    ParquetMetaDataWriter::new(&mut out, &metadata)
        .finish()
        .unwrap();
    std::fs::write(path, out).unwrap();
}

/// Replaces the one occurrence of `from` in the file with `to` (same length).
fn patch_once(path: &Path, from: &[u8], to: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at: Vec<usize> = bytes
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "{from:02x?} occurs {} times", at.len());
    bytes[at[0]..at[0] + to.len()].copy_from_slice(to);
    std::fs::write(path, bytes).unwrap();
}

/// Runs `sparq encode`, killing it (and failing) if its memory passes 1.5 GiB or it runs
/// past two minutes. The exit code and stderr.
fn encode_bounded(input: &Path, output: &Path) -> (Option<i32>, String) {
    let mut child = sparq()
        .args(encode_args(
            input.to_str().unwrap(),
            output.to_str().unwrap(),
            &[],
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        if rss_kib > 1536 << 10 || started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sparq encode grew to {rss_kib} KiB in {:?} planning a corrupt file: unbounded",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Item 8a: a footer whose row group claims a negative row count, or whose row groups do not
/// add up to the file's rows, is refused by name before any work, in bounded memory.
#[test]
fn a_footer_with_a_negative_or_inconsistent_row_count_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // Negative: row groups of 60 and 40 rows become -60 and 40.
    let negative = dir.path().join("negative/in.parquet");
    write_corpus(&negative, 0..100, 60);
    rewrite_footer(&negative, |groups| {
        groups[0] = groups[0]
            .clone()
            .into_builder()
            .set_num_rows(-60)
            .build()
            .unwrap();
    });
    let (code, err) = encode_bounded(&negative, &dir.path().join("out-negative"));
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains(negative.to_str().unwrap()) && err.contains("row group 0 claims -60 rows"),
        "the file and its bad row count are named: {err}"
    );
    assert!(!dir.path().join("out-negative/_sparq_job.json").exists());

    // Inconsistent: the file says 101 rows, its row groups hold 100. The footer's num_rows
    // (thrift field 3, i64 zigzag 200 = c8 01) comes right before the row-group list (0x19).
    let mismatch = dir.path().join("mismatch/in.parquet");
    write_corpus(&mismatch, 0..100, 60);
    patch_once(
        &mismatch,
        &[0x16, 0xc8, 0x01, 0x19],
        &[0x16, 0xca, 0x01, 0x19],
    );
    let (code, err) = encode_bounded(&mismatch, &dir.path().join("out-mismatch"));
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains(mismatch.to_str().unwrap())
            && err.contains("says 101 rows but its row groups hold 100"),
        "the file and the mismatch are named: {err}"
    );
}

/// Item 8b: `dir/*.parquet` reads the files in `dir`, not an output folder below it; a glob
/// that would match the output's parts is refused.
#[test]
fn a_glob_stays_in_its_folder_and_may_not_match_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_corpus(&data.join("a.parquet"), 0..30, 30);
    // An earlier output under the data folder: its parts have no `text` column.
    let vectors = data.join("vectors");
    let out = encode(&data.join("a.parquet"), &vectors, &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(!parts(&vectors).is_empty());

    let out_dir = dir.path().join("out");
    let out = encode(&data.join("*.parquet"), &out_dir, &[]);
    assert!(
        out.status.success(),
        "the glob reached the vectors folder: {}",
        stderr(&out)
    );
    assert_eq!(summary(&out)["docs"], 30);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("_manifest.json")).unwrap()).unwrap();
    let sources: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.iter().all(|s| s.ends_with("/data/a.parquet")),
        "{sources:?}"
    );

    // A glob that spans folders would read its own output next time: refused, by name.
    let inside = data.join("more-vectors");
    let out = encode(&data.join("**/*.parquet"), &inside, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("is inside --input") && err.contains("more-vectors"),
        "{err}"
    );
    assert!(!inside.exists(), "nothing is written for a refused output");
}

/// Item 7: an output whose filesystem refuses hard links (a FUSE mount: fuse-zip) is refused
/// before any work, naming the output and why. Needs root and fuse-zip; skipped otherwise.
#[test]
fn an_output_on_a_filesystem_without_hard_links_is_refused_up_front() {
    let have_fuse_zip = Command::new("fuse-zip").arg("-V").output().is_ok();
    if unsafe { libc::geteuid() } != 0 || !have_fuse_zip || !Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED: needs root, /dev/fuse and fuse-zip (apt-get install fuse-zip)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    write_corpus(&input, 0..20, 20);
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let mounted = Command::new("fuse-zip")
        .arg(dir.path().join("out.zip"))
        .arg(&mount)
        .status()
        .unwrap();
    if !mounted.success() {
        eprintln!("SKIPPED: fuse-zip could not mount (no FUSE here)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount);
    let output = mount.join("vectors");
    let out = encode(&input, &output, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains(output.to_str().unwrap()) && err.contains("refuses hard links"),
        "the output and the reason are named: {err}"
    );
    assert!(
        !output.join("_sparq_job.json").exists() && parts(&output).is_empty(),
        "nothing is written before the refusal"
    );
}

/// `sparq encode` with its S3 requests sent through `proxy`.
fn encode_via(proxy: &str, input: &Path, output: &str, extra: &[&str]) -> Output {
    let mut cmd = sparq();
    common::s3::env(&mut cmd, proxy);
    cmd.args(encode_args(input.to_str().unwrap(), output, extra))
        .output()
        .unwrap()
}

/// Item 3: a create-once write refused with 409 (object_store's `AlreadyExists`) for a part
/// that is not there does not count the shard committed: it writes again, and the part is
/// really written in the end; refused every time, the shard fails and no `_SUCCESS` appears.
#[test]
fn a_409_on_a_part_that_is_not_there_is_not_taken_for_a_commit() {
    use common::s3::{endpoint, read_parts, BUCKET};
    use common::s3_fault_proxy::{FaultPlan, FaultProxy};
    let Some(endpoint) = endpoint() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(common::s3::store(&endpoint));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    write_corpus(&input, 0..40, 20);
    let job = format!("integrity-409-{}", uuid::Uuid::new_v4());

    // Each part's first create-once write is answered 409: the second one lands.
    let once = FaultProxy::start(
        &endpoint,
        FaultPlan {
            rate: 0.0,
            conflict_creates: 1,
            ..FaultPlan::default()
        },
    );
    let output = format!("s3://{BUCKET}/{job}/once");
    let out = encode_via(&once.url, &input, &output, &["--shard-rows", "20"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(once.conflicts() >= 2, "{} conflicts", once.conflicts());
    let (rows, names) = rt.block_on(read_parts(&store, &format!("{job}/once")));
    assert_eq!(
        names.iter().filter(|n| n.starts_with("part-")).count(),
        2,
        "{names:?}"
    );
    assert!(names.contains(&"_SUCCESS".to_string()), "{names:?}");
    let mut ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..40).collect::<Vec<_>>());

    // Every create-once write refused: the shard fails, named, and nothing says complete.
    let always = FaultProxy::start(
        &endpoint,
        FaultPlan {
            rate: 0.0,
            conflict_creates: u64::MAX,
            ..FaultPlan::default()
        },
    );
    let output = format!("s3://{BUCKET}/{job}/always");
    let out = encode_via(
        &always.url,
        &input,
        &output,
        &["--shard-rows", "40", "--max-attempts", "1"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("part-00000-000000000000.parquet") && err.contains("not counted committed"),
        "{err}"
    );
    let (_, names) = rt.block_on(read_parts(&store, &format!("{job}/always")));
    assert!(
        !names.contains(&"_SUCCESS".to_string()) && !names.iter().any(|n| n.starts_with("part-")),
        "{names:?}"
    );
}

/// Item 4: a byte changed in the middle of the weights (more than 8 MiB from either end's
/// 4 MiB, which were all the old fingerprint read) makes another model: the resume of an
/// output encoded with the old weights is refused.
#[test]
fn weights_changed_in_the_middle_are_another_model_and_the_resume_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&tiny_model(), &model);
    let weights = model.join("model.safetensors");
    let input = dir.path().join("in.parquet");
    write_corpus(&input, 0..20, 20);
    let out_dir = dir.path().join("out");
    let run = || {
        let mut cmd = sparq();
        cmd.env("XDG_CACHE_HOME", dir.path().join("cache"))
            .args(encode_args(
                input.to_str().unwrap(),
                out_dir.to_str().unwrap(),
                &["--model", model.to_str().unwrap()],
            ))
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    // Flip the lowest mantissa bit of a float in the middle of the tensor data.
    let mut bytes = std::fs::read(&weights).unwrap();
    assert!(
        bytes.len() > 8 << 20,
        "the middle lies past the 4 MiB at each end"
    );
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data = 8 + header;
    let middle = data + (bytes.len() - data) / 2 / 4 * 4;
    bytes[middle] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let out = run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("already holds output made with other settings") && err.contains("model"),
        "{err}"
    );
    assert!(
        dir.path().join("cache/sparq/model-digests").is_dir(),
        "the digests are cached in the user's cache folder, not in the model folder"
    );
    assert!(std::fs::read_dir(&model).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));
}

/// Ids 0..30 in `a.parquet`, 20..40 in `b.parquet`, shards of 10 rows: ids 20..30 twice, in
/// `part-00000-000000000020` and `part-00001-000000000000`; the other three parts hold none.
fn overlapping_corpus(dir: &Path) -> std::path::PathBuf {
    write_corpus(&dir.join("in/a.parquet"), 0..30, 10);
    write_corpus(&dir.join("in/b.parquet"), 20..40, 10);
    dir.join("in")
}

/// The duplicate-id count and examples of a run's summary.
fn duplicates_of(out: &Output) -> (serde_json::Value, serde_json::Value) {
    assert!(out.status.success(), "{}", stderr(out));
    let sum = summary(out);
    (
        sum["duplicate_ids"].clone(),
        sum["duplicate_examples"].clone(),
    )
}

/// Item 14: each committed part has its ids' sorted hashes beside it
/// (`_reports/ids-<part>.bin`), and the duplicate check at the finish merges those instead of
/// reading the parts back: a rerun over parts whose bytes are no parquet any more (same sizes)
/// still finishes, with the same duplicates (main reads every part's id column there, and
/// fails on them).
#[test]
fn the_duplicate_check_at_the_finish_merges_the_parts_id_runs_without_reading_them_back() {
    let tmp = tempfile::tempdir().unwrap();
    let input = overlapping_corpus(tmp.path());
    let output = tmp.path().join("out");
    let first = encode(&input, &output, &["--shard-rows", "10"]);
    let (count, examples) = duplicates_of(&first);
    assert_eq!(count, 10);
    let names = parts(&output);
    assert_eq!(names.len(), 5, "{names:?}");
    for name in &names {
        let sidecar = output.join("_reports").join(format!("ids-{name}.bin"));
        assert!(sidecar.is_file(), "{} has no id sidecar", name);
    }
    // The three parts without duplicates become same-size garbage: only a check that reads
    // them notices.
    let holding = [
        "part-00000-000000000020.parquet",
        "part-00001-000000000000.parquet",
    ];
    for name in names.iter().filter(|n| !holding.contains(&n.as_str())) {
        let path = output.join(name);
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![0u8; size]).unwrap();
    }
    let rerun = encode(&input, &output, &["--shard-rows", "10"]);
    assert_eq!(duplicates_of(&rerun), (count, examples));
    assert!(output.join("_SUCCESS").is_file());
}

/// Item 14: duplicates across parts are found whether every part has its id sidecar, some do,
/// or none (an output of an earlier sparq), and one that does not fit its part (another
/// part's) is not used: same count, same examples every time.
#[test]
fn duplicates_across_parts_are_found_with_and_without_id_sidecars() {
    let tmp = tempfile::tempdir().unwrap();
    let input = overlapping_corpus(tmp.path());
    let output = tmp.path().join("out");
    let args = ["--shard-rows", "10"];
    let expected = duplicates_of(&encode(&input, &output, &args));
    assert_eq!(expected.0, 10);
    let examples = expected.1.as_array().unwrap();
    assert_eq!(examples.len(), 5);
    for e in examples {
        let parts: Vec<&str> = e["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(
            parts,
            [
                "part-00000-000000000020.parquet",
                "part-00001-000000000000.parquet"
            ],
            "{e}"
        );
    }
    let reports = output.join("_reports");
    let sidecar = |part: &str| reports.join(format!("ids-part-{part}.parquet.bin"));
    // One of the two parts holding the duplicates without its sidecar.
    std::fs::remove_file(sidecar("00001-000000000000")).unwrap();
    assert_eq!(duplicates_of(&encode(&input, &output, &args)), expected);
    // Another part's sidecar in its place: not its part's, so not used.
    std::fs::copy(sidecar("00000-000000000000"), sidecar("00001-000000000000")).unwrap();
    assert_eq!(duplicates_of(&encode(&input, &output, &args)), expected);
    // None at all.
    std::fs::remove_dir_all(&reports).unwrap();
    assert_eq!(duplicates_of(&encode(&input, &output, &args)), expected);
}

/// Item 10: `--max-part-bytes` cuts a new output into shards whose parts cannot pass it (the
/// vocabulary's every entry counted), and a part that passes it all the same (an output
/// resumed with the shard size it was planned with) fails its shard, naming the part and the
/// flag, and is not committed.
#[test]
fn max_part_bytes_cuts_smaller_shards_and_a_part_past_it_fails_its_shard_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in/a.parquet");
    write_corpus(&input, 0..500, 50);
    let output = tmp.path().join("out");
    let plan_only = |extra: &[&str]| -> String {
        let mut args = vec!["--plan-only"];
        args.extend_from_slice(extra);
        let out = encode(&input, &output, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // 250 rows per shard by default on a CPU.
    assert_eq!(plan_only(&[]), "2");
    // The tiny model's 30,522 entries × 8 bytes per row: 10 rows fit 2.5 MB, not 11.
    assert_eq!(plan_only(&["--max-part-bytes", "2500000"]), "50");
    assert_eq!(
        plan_only(&["--max-part-bytes", "2500000", "--max-active-dims", "8"]),
        "2"
    );
    let out = encode(&input, &output, &["--max-part-bytes", "1000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--max-part-bytes 1000 is outside"),
        "{}",
        stderr(&out)
    );

    // Task 0 of 2 commits the first 250-row part under the default cap.
    let shards = ["--shard-rows", "250"];
    let task = [&shards[..], &["--task-index", "0", "--task-count", "2"]].concat();
    let out = encode(&input, &output, &task);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = output.join("part-00000-000000000000.parquet");
    let size = std::fs::metadata(&first).unwrap().len();
    assert!(size > 65536, "a 250-row part of {size} bytes");
    // The resumed job keeps 250-row shards; its second part passes a 64 KiB cap.
    let out = encode(
        &input,
        &output,
        &[&shards[..], &["--max-part-bytes", "65536"]].concat(),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("part-00000-000000000250.parquet") && err.contains("--max-part-bytes 65536"),
        "{err}"
    );
    assert_eq!(parts(&output), ["part-00000-000000000000.parquet"]);
    assert!(!output.join("_SUCCESS").exists());
    // Nothing of the refused part is left behind.
    let attempts = std::fs::read_dir(output.join("_attempts")).map_or(0, |d| d.count());
    assert_eq!(attempts, 0);
}
