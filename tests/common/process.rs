//! Child processes in tests: finding a coordinator's workers, killing, waiting.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Pids whose parent is `pid` (from /proc/<pid>/stat).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
            // Fields after the parenthesised command: state, ppid, ...
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            if after.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
                out.push(child);
            }
        }
    }
    out
}

/// Polls `cond` every 20 ms for up to two minutes.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGKILL.
pub fn kill9(pid: u32) {
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

/// Runs the sparq binary from the repository root (without `SPARQ_MODEL`, so the bundled
/// model is the default) with `stdin` fed to it, see [`output_with_stdin`].
pub fn run_sparq(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sparq"));
    cmd.args(args)
        .current_dir(super::root())
        .env_remove("SPARQ_MODEL");
    output_with_stdin(cmd, stdin)
}

/// Runs `cmd` with `stdin` fed from a thread, so a run that stops reading early cannot block
/// the test on a full pipe; its output (exit code, stdout, stderr).
pub fn output_with_stdin(mut cmd: std::process::Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}
