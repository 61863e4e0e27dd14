//! Fencing of checkpoint writers. A run started for a service lease knows the lease's attempt
//! (`sparq train --attempt N`) and claims the output with a create-once `_fence/attempt-<N>`;
//! before it publishes or deletes a checkpoint it checks that no newer attempt has claimed the
//! output since, so a trainer whose lease went to another worker stops instead of writing
//! beside its successor. Staging folders carry their writer's pid and host, so `prune` removes
//! only its own or those of a process that is provably dead.

use std::path::Path;

use super::files::io_error;
use super::TrainError;

/// The folder of the claims, under the output.
pub const FENCE_DIR: &str = "_fence";

/// The claim file of `attempt`.
pub fn claim_name(attempt: u32) -> String {
    format!("{FENCE_DIR}/attempt-{attempt}")
}

/// The newest attempt among listed output names (`None`: no claim).
pub fn newest_claim<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<u32> {
    names
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix(FENCE_DIR)?
                .strip_prefix("/attempt-")?
                .parse()
                .ok()
        })
        .max()
}

/// Refuses `attempt` when a newer one has claimed `output`.
pub fn check(output: &str, attempt: u32, newest: Option<u32>) -> Result<(), TrainError> {
    match newest {
        Some(n) if n > attempt => Err(TrainError::Superseded(format!(
            "attempt {attempt} of this training job was superseded: attempt {n} claimed {output} \
             (its lease was given to another worker); this run stops without writing"
        ))),
        _ => Ok(()),
    }
}

/// Claims `dir` (a local output folder) for `attempt`; a second claim of the same attempt is
/// no error (a restarted run of the same lease).
pub fn claim_local(dir: &Path, attempt: u32) -> Result<(), TrainError> {
    let fence = dir.join(FENCE_DIR);
    std::fs::create_dir_all(&fence).map_err(|e| io_error(&fence, e))?;
    let path = dir.join(claim_name(attempt));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f.sync_all().map_err(|e| io_error(&path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_error(&path, e)),
    }
    sync_dir(&fence)
}

/// The name of a local staging folder of checkpoint `name`, owned by this process.
pub fn staging_name(name: &str) -> String {
    format!(
        ".{name}.partial-{}@{}@{}",
        std::process::id(),
        host(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The name a local checkpoint takes while it is being deleted (never half-deleted under its
/// own name).
pub fn deleting_name(name: &str) -> String {
    format!(
        ".{name}.deleting-{}@{}@{}",
        std::process::id(),
        host(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Whether a leftover in the output folder may be removed: a staging or deleting folder of
/// this process, or of a dead process on this host. Another host's, or one of an older
/// naming, is left alone: its writer may be alive.
pub fn removable_leftover(file_name: &str) -> bool {
    let Some(rest) = file_name.strip_prefix(".checkpoint-") else {
        return false;
    };
    let Some(owner) = rest
        .split_once(".partial-")
        .or_else(|| rest.split_once(".deleting-"))
        .map(|(_, o)| o)
    else {
        return false;
    };
    let mut parts = owner.split('@');
    let (Some(pid), Some(host_name), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if host_name != host() || pid <= 0 {
        return false;
    }
    pid as u32 == std::process::id() || !alive(pid)
}

/// Whether process `pid` exists on this host.
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// This host's name.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace('@', "_"))
        .unwrap_or_else(|_| "localhost".into())
}

/// Makes a rename or a new entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_live_or_foreign_writers_are_kept() {
        let own = staging_name("checkpoint-3");
        assert!(removable_leftover(&own[..]));
        let live = format!(".checkpoint-3.partial-1@{}@abc", host());
        assert!(!removable_leftover(&live), "pid 1 is alive");
        let foreign = ".checkpoint-3.partial-999999@another-host@abc";
        assert!(!removable_leftover(foreign));
        assert!(!removable_leftover(".checkpoint-3.partial-0123abcd"));
        assert!(!removable_leftover("checkpoint-3"));
    }

    #[test]
    fn only_a_newer_claim_fences() {
        let names = ["_fence/attempt-2", "_fence/attempt-10", "checkpoint-2/x"];
        let newest = newest_claim(names);
        assert_eq!(newest, Some(10));
        assert!(check("out", 10, newest).is_ok());
        let err = check("out", 3, newest).unwrap_err().to_string();
        assert!(
            err.contains("superseded") && err.contains("attempt 10"),
            "{err}"
        );
    }
}
