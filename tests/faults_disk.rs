//! A local output on a filesystem that fills up (a small tmpfs, mounted by the test: needs
//! root, as in CI; `SPARQ_REQUIRE_ROOT=1` makes a missing mount a failure instead of a skip):
//! the job stops at once with an error naming the path, what it committed stays intact, and a
//! rerun once space is freed completes the output exactly once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::corpus::*;
use common::*;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, bytes: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn encode(input: &Path, output: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparq"))
        .current_dir(root())
        .env_remove("SPARQ_MODEL")
        .args(["encode", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--shard-rows", "40", "--workers", "1", "--threads", "1"])
        .output()
        .unwrap()
}

fn part_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_full_disk_stops_the_job_naming_the_path_and_a_rerun_after_freeing_space_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..480, 40);

    // How big the parts are: from a run on the ordinary disk.
    let sized = dir.path().join("sized");
    let out = encode(&input, &sized);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sizes: Vec<u64> = part_names(&sized)
        .iter()
        .map(|n| std::fs::metadata(sized.join(n)).unwrap().len())
        .collect();
    assert_eq!(sizes.len(), 12);
    // Room for the job file and three parts (tmpfs counts whole pages), not four.
    let page = |b: u64| b.div_ceil(4096) * 4096;
    let room = 4096 + sizes[..3].iter().map(|&b| page(b)).sum::<u64>() + page(sizes[3]) / 2;

    let Some(disk) = Tmpfs::mount(&dir.path().join("small"), room) else {
        assert!(
            std::env::var("SPARQ_REQUIRE_ROOT").as_deref() != Ok("1"),
            "mounting a tmpfs failed, and SPARQ_REQUIRE_ROOT=1 (run as root)"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let output = disk.0.join("out");
    let started = std::time::Instant::now();
    let out = encode(&input, &output);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("no space left for {}", output.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("writing {}/part-", output.display())),
        "the error names the part it wrote: {err}"
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("rerun the same command"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    // It stops at the first full write instead of retrying every shard.
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );

    // What was committed is whole and stays; nothing half-written is left.
    let committed = part_names(&output);
    assert!(
        !committed.is_empty() && committed.len() < 12,
        "{committed:?}"
    );
    for name in &committed {
        let rows = read_part(&std::fs::read(output.join(name)).unwrap());
        assert_eq!(rows.len(), 40, "{name}");
    }
    let kept: Vec<Vec<u8>> = committed
        .iter()
        .map(|n| std::fs::read(output.join(n)).unwrap())
        .collect();
    assert!(!output.join("_SUCCESS").exists());
    let leftovers: Vec<_> = std::fs::read_dir(output.join("_attempts"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Space freed: the rerun resumes, keeps the committed parts, and finishes exactly once.
    disk.resize(64 << 20);
    let out = encode(&input, &output);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii_end()).unwrap();
    assert_eq!(summary["skipped_shards"], committed.len());
    assert_eq!(summary["committed_shards"], 12 - committed.len());
    for (name, bytes) in committed.iter().zip(&kept) {
        assert!(
            &std::fs::read(output.join(name)).unwrap() == bytes,
            "{name} changed"
        );
    }
    assert!(output.join("_SUCCESS").exists());
    let (rows, names) = read_output(&output);
    assert_eq!(names, part_names(&sized));
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    assert_exactly_once(&rows, &reference_vectors(&ids));
    assert_eq!(rows.len(), 480);
}
