//! One job split over the tasks of a scheduler's array (Slurm `--array`, Kubernetes Indexed
//! Jobs, torchrun-style ranks) with no coordinator: every task plans the same shards from the
//! same listing and encodes those it owns, committing with the create-once protocol; a finalize
//! step writes the manifest once every part exists.

use std::fmt;
use std::str::FromStr;

/// `--task-index`: a number, or `auto` (read from the scheduler's variables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskIndex {
    /// This index.
    Given(usize),
    /// From `SLURM_ARRAY_TASK_ID`, `JOB_COMPLETION_INDEX` or `RANK`.
    Auto,
}

impl FromStr for TaskIndex {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(TaskIndex::Auto);
        }
        s.parse()
            .map(TaskIndex::Given)
            .map_err(|_| format!("`{s}` is not a task index: give a number from 0, or `auto`"))
    }
}

/// Which share of the shards this process encodes: shard `s` belongs to task `s % count`
/// (round robin, so tasks get even work whatever the files' sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskShare {
    /// This task, from 0.
    pub index: usize,
    /// Tasks in all.
    pub count: usize,
}

impl TaskShare {
    /// Whether shard `shard` is this task's.
    pub fn owns(&self, shard: usize) -> bool {
        task_of(shard, self.count) == self.index
    }
}

impl fmt::Display for TaskShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {} of {}", self.index, self.count)
    }
}

/// The task that owns shard `shard` among `count`.
pub fn task_of(shard: usize, count: usize) -> usize {
    shard % count.max(1)
}

/// Resolves `--task-index` and `--task-count` into a share; `env` reads a variable (the
/// process environment in use, a map in tests). Errors name the flag or variable and say what
/// to do.
///
/// With `auto`, the first scheduler found decides:
/// - Slurm arrays: `SLURM_ARRAY_TASK_ID`. Without `--task-count`, the array is the whole job:
///   index = id − `SLURM_ARRAY_TASK_MIN`, count = `SLURM_ARRAY_TASK_COUNT` (a stepped array is
///   refused). With `--task-count N`, array ids are task indices (0..N), so one task can be
///   rerun alone with `sbatch --array=3`.
/// - Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX`, with `--task-count` (the completions).
/// - torchrun-style launchers: `RANK`, count `WORLD_SIZE` unless `--task-count` is given.
pub fn resolve_share(
    index: Option<TaskIndex>,
    count: Option<usize>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<TaskShare>, String> {
    let number =
        |name: &str| -> Result<Option<usize>, String> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    format!("{name}={v:?} is not a number; --task-index auto reads it")
                }),
            }
        };
    let (index, count) = match (index, count) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(
                "--task-count needs --task-index (a number, or `auto` to read the scheduler's \
                 variables)"
                    .into(),
            )
        }
        (Some(TaskIndex::Given(i)), Some(n)) => (i, n),
        (Some(TaskIndex::Given(_)), None) => {
            return Err(
                "--task-index I needs --task-count N (the tasks in all), or use \
                        --task-index auto inside a Slurm array or an Indexed Job"
                    .into(),
            )
        }
        (Some(TaskIndex::Auto), count) => {
            if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
                match count {
                    Some(n) => (id, n),
                    None => {
                        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                        let n = number("SLURM_ARRAY_TASK_COUNT")?.ok_or(
                            "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: \
                             pass --task-count N",
                        )?;
                        let max = number("SLURM_ARRAY_TASK_MAX")?.unwrap_or(min + n - 1);
                        if max + 1 - min != n {
                            return Err(format!(
                                "the Slurm array is not one contiguous range (ids {min}..={max}, \
                                 {n} tasks): submit --array={min}-{max} with no step, or pass \
                                 --task-count N and use ids 0..N"
                            ));
                        }
                        (
                            id.checked_sub(min)
                                .ok_or("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN")?,
                            n,
                        )
                    }
                }
            } else if let Some(id) = number("JOB_COMPLETION_INDEX")? {
                let n = count.ok_or(
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but the task count is \
                     not: pass --task-count N (or SPARQ_TASK_COUNT), equal to the Job's completions",
                )?;
                (id, n)
            } else if let Some(rank) = number("RANK")? {
                let n = match count {
                    Some(n) => n,
                    None => number("WORLD_SIZE")?
                        .ok_or("RANK is set but WORLD_SIZE is not: pass --task-count N")?,
                };
                (rank, n)
            } else {
                return Err(
                    "--task-index auto found no scheduler: none of SLURM_ARRAY_TASK_ID, \
                            JOB_COMPLETION_INDEX or RANK is set. Give the index itself \
                            (--task-index I --task-count N)"
                        .into(),
                );
            }
        }
    };
    if count == 0 {
        return Err("--task-count must be at least 1".into());
    }
    if index >= count {
        return Err(format!(
            "task index {index} is not below the task count {count}: tasks are numbered 0 to {}",
            count - 1
        ));
    }
    Ok(Some(TaskShare { index, count }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn every_shard_belongs_to_exactly_one_task() {
        for count in 1..7 {
            for shard in 0..50 {
                let owners = (0..count)
                    .filter(|&index| TaskShare { index, count }.owns(shard))
                    .count();
                assert_eq!(owners, 1, "shard {shard} of {count} tasks");
            }
        }
    }

    #[test]
    fn explicit_indices_need_a_count_in_range() {
        let none = env(&[]);
        assert_eq!(resolve_share(None, None, &none), Ok(None));
        assert_eq!(
            resolve_share(Some(TaskIndex::Given(2)), Some(3), &none),
            Ok(Some(TaskShare { index: 2, count: 3 }))
        );
        let e = resolve_share(Some(TaskIndex::Given(3)), Some(3), &none).unwrap_err();
        assert!(e.contains("0 to 2"), "{e}");
        let e = resolve_share(Some(TaskIndex::Given(0)), None, &none).unwrap_err();
        assert!(e.contains("--task-count"), "{e}");
        let e = resolve_share(None, Some(4), &none).unwrap_err();
        assert!(e.contains("--task-index"), "{e}");
        assert!(resolve_share(Some(TaskIndex::Given(0)), Some(0), &none).is_err());
        assert!("x".parse::<TaskIndex>().is_err());
        assert_eq!("auto".parse::<TaskIndex>(), Ok(TaskIndex::Auto));
    }

    #[test]
    fn auto_reads_slurm_arrays_indexed_jobs_and_ranks() {
        let auto = Some(TaskIndex::Auto);
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_MAX", "10"),
            ("SLURM_ARRAY_TASK_COUNT", "6"),
            ("RANK", "0"),
        ]);
        assert_eq!(
            resolve_share(auto, None, &slurm),
            Ok(Some(TaskShare { index: 2, count: 6 }))
        );
        // A rerun of one task: `sbatch --array=3` with the count given.
        let rerun = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
        ]);
        assert_eq!(
            resolve_share(auto, Some(6), &rerun),
            Ok(Some(TaskShare { index: 3, count: 6 }))
        );
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "5"),
        ]);
        let e = resolve_share(auto, None, &stepped).unwrap_err();
        assert!(e.contains("contiguous"), "{e}");

        let k8s = env(&[("JOB_COMPLETION_INDEX", "4")]);
        assert_eq!(
            resolve_share(auto, Some(5), &k8s),
            Ok(Some(TaskShare { index: 4, count: 5 }))
        );
        let e = resolve_share(auto, None, &k8s).unwrap_err();
        assert!(e.contains("completions"), "{e}");

        let ranks = env(&[("RANK", "1"), ("WORLD_SIZE", "2")]);
        assert_eq!(
            resolve_share(auto, None, &ranks),
            Ok(Some(TaskShare { index: 1, count: 2 }))
        );
        let e = resolve_share(auto, None, env(&[])).unwrap_err();
        assert!(e.contains("SLURM_ARRAY_TASK_ID"), "{e}");
        let e = resolve_share(auto, None, env(&[("RANK", "x")])).unwrap_err();
        assert!(e.contains("RANK=\"x\""), "{e}");
    }
}
