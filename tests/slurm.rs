//! sparq's Slurm launchers against a real Slurm: `make test` starts a one-node cluster
//! (scripts/slurm-test-cluster.sh: this host, its CPUs) and sets SLURM_CONF. Skipped when it is
//! unset, unless SPARQ_REQUIRE_SLURM is set. The tests take turns: they share the node's CPUs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::corpus::{
    assert_exactly_once, read_output, reference_vectors, text_for, write_batch, write_corpus,
};
use common::weights::{max_diff, weights};
use common::{root, tiny_model};
use sparq::encode::SparseVector;

const SPARQ: &str = env!("CARGO_BIN_EXE_sparq");
static NODE: Mutex<()> = Mutex::new(());

/// The cluster, held by this test alone; `None` (skipped) when there is none.
fn cluster() -> Option<MutexGuard<'static, ()>> {
    if std::env::var_os("SLURM_CONF").is_none() {
        assert!(
            std::env::var_os("SPARQ_REQUIRE_SLURM").is_none(),
            "SPARQ_REQUIRE_SLURM is set but SLURM_CONF is not: start scripts/slurm-test-cluster.sh"
        );
        eprintln!("SKIPPED: no Slurm (set SLURM_CONF; `make test` starts one)");
        return None;
    }
    Some(NODE.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A command run from the repo root, the scripts finding this build's sparq.
fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(root())
        .env("SPARQ", SPARQ)
        .env_remove("SPARQ_MODEL");
    cmd
}

/// Runs `cmd` to success; its stdout.
fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Slurm jobs of a test, cancelled when it ends (a failed test leaves nothing queued).
#[derive(Default)]
struct Jobs(Vec<String>);

impl Jobs {
    fn add(&mut self, id: &str) -> String {
        self.0.push(id.to_string());
        id.to_string()
    }

    /// `sbatch --parsable ARGS` with `env`; the job id.
    fn sbatch(&mut self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = command("sbatch");
        cmd.arg("--parsable").args(args).envs(env.iter().copied());
        let out = run(cmd);
        self.add(out.trim().split(';').next().unwrap())
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("scancel").args(&self.0).status();
        }
    }
}

/// `scontrol show job` of `id` (every element of an array), one line each.
fn show(id: &str) -> String {
    run({
        let mut c = command("scontrol");
        c.args(["show", "job", "--oneliner", id]);
        c
    })
}

/// The value of `key` in each line of `scontrol show job`.
fn field(show: &str, key: &str) -> Vec<String> {
    show.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
        })
        .collect()
}

/// Waits for job `id` to end; its final state (COMPLETED, FAILED, CANCELLED, ...).
fn wait_final(id: &str, limit: Duration, mut each_poll: impl FnMut()) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = show(id);
        let states = field(&text, "JobState");
        let running = [
            "PENDING",
            "CONFIGURING",
            "RUNNING",
            "COMPLETING",
            "SUSPENDED",
        ];
        if !states.is_empty() && states.iter().all(|s| !running.contains(&s.as_str())) {
            return states[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "job {id} unfinished after {limit:?}:\n{text}"
        );
        each_poll();
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_service_script_runs_a_job_to_the_end_on_cpu_workers() {
    let Some(_node) = cluster() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_corpus(&dir.join("corpus/a.parquet"), 0..40, 10);
    write_corpus(&dir.join("corpus/b.parquet"), 40..60, 10);
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "kind = \"encode\"\ninput = {:?}\noutput = {:?}\nmodel = {:?}\nshard_rows = 10\n",
            dir.join("corpus"),
            dir.join("out"),
            tiny_model()
        ),
    )
    .unwrap();
    let log = dir.join("slurm.log");
    let mut jobs = Jobs::default();
    let dir_s = dir.to_str().unwrap();
    let id = jobs.sbatch(
        &[
            "--nodes=1",
            "--ntasks-per-node=2",
            "--time=10",
            &format!("--output={}", log.display()),
            "jobs/serve-slurm.sbatch",
            spec.to_str().unwrap(),
        ],
        &[
            ("SPARQ_DEVICE", "cpu"),
            ("SPARQ_IDLE_EXIT", "3"),
            ("SPARQ_RUN_DIR", &format!("{dir_s}/run")),
            ("SPARQ_STATE", &format!("{dir_s}/state.db")),
            ("SPARQ_ALLOW_ROOTS", dir_s),
        ],
    );
    let state = wait_final(&id, Duration::from_secs(150), || {});
    let log = read(&log);
    assert_eq!(state, "COMPLETED", "{log}");
    assert!(log.contains("1 nodes × 2 cpu workers"), "{log}");
    assert!(log.contains("succeeded"), "{log}");
    let out = dir.join("out");
    assert!(out.join("_SUCCESS").is_file());
    let (rows, parts) = read_output(&out);
    assert_eq!(parts.len(), 6, "{parts:?}");
    assert_exactly_once(&rows, &reference_vectors(&(0..60).collect::<Vec<_>>()));
}

/// A training config of a few quick CPU steps on the example pairs.
fn train_config(dir: &Path) -> PathBuf {
    let path = dir.join("train.toml");
    std::fs::write(
        &path,
        format!(
            "model = {:?}\ntrain_data = {:?}\nmax_steps = 3\nbatch_size = 4\n\
             learning_rate = 1e-3\nsave_steps = 0\nlogging_steps = 1\n",
            tiny_model(),
            root().join("examples/pairs/pairs.parquet")
        ),
    )
    .unwrap();
    path
}

/// Per logged step: the loss and the parameters' hash every rank agreed on.
fn steps(stdout: &str) -> Vec<(f64, String)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["step"].is_u64())
        .map(|l| {
            let hash = l["replicas_identical"].as_str();
            (l["loss"].as_f64().unwrap(), hash.unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn torchrun_and_the_training_script_in_an_allocation_equal_nproc_per_node() {
    let Some(_node) = cluster() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = train_config(dir);
    let train = |out: &str| {
        let mut cmd = command(SPARQ);
        cmd.args(["train", "--config"])
            .arg(&config)
            .arg("--output")
            .arg(dir.join(out))
            .args(["--threads", "1"]);
        cmd
    };
    let mut reference = train("reference");
    reference.args(["--nproc-per-node", "2"]);
    let want = steps(&run(reference));
    assert_eq!(want.len(), 3, "{want:?}");
    assert!(want.iter().all(|(_, hash)| hash.len() == 16), "{want:?}");
    let want_weights = weights(&dir.join("reference"));

    // torch's own launcher, as one task of two CPUs: its agent serves a store on the master
    // port, the ranks meet on the next one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .min(65000)
        .to_string();
    let launched = train("torchrun");
    let mut srun = command("srun");
    srun.args(["--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--time=10"])
        .arg(root().join(".venv/bin/torchrun"))
        .args([
            "--no-python",
            "--nproc-per-node",
            "2",
            "--master-port",
            &port,
        ])
        .arg(launched.get_program())
        .args(launched.get_args());
    let got = steps(&run(srun));
    assert_eq!(got, want, "torchrun's ranks against --nproc-per-node 2");
    let diff = max_diff(&weights(&dir.join("torchrun")), &want_weights);
    assert_eq!(diff, 0.0, "torchrun's model differs by {diff}");

    // jobs/train-slurm.sbatch in CPU mode: one rank per Slurm task.
    let log = dir.join("train-slurm.log");
    let mut jobs = Jobs::default();
    let out = dir.join("script");
    let id = jobs.sbatch(
        &[
            "--nodes=1",
            "--ntasks-per-node=2",
            "--time=10",
            &format!("--output={}", log.display()),
            "jobs/train-slurm.sbatch",
            config.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[("SPARQ_DEVICE", "cpu")],
    );
    let state = wait_final(&id, Duration::from_secs(120), || {});
    let log = read(&log);
    assert_eq!(state, "COMPLETED", "{log}");
    assert_eq!(steps(&log), want, "train-slurm.sbatch's ranks: {log}");
    let diff = max_diff(&weights(&out), &want_weights);
    assert_eq!(diff, 0.0, "train-slurm.sbatch's model differs by {diff}");
}

/// Array tasks: more than the node's CPUs, so they queue.
const TASKS: usize = 6;
/// Twelve shards, two per task: task t encodes shards t and t + 6.
const SHARDS: usize = 12;
const SHARD_ROWS: usize = 50;

/// A corpus whose rows join five `text_for` passages (~200 tokens), so that one shard keeps a
/// CPU busy for a second or two.
fn write_long_corpus(path: &Path) {
    let ids: Vec<i64> = (0..(SHARDS * SHARD_ROWS) as i64).collect();
    let texts: Vec<String> = ids
        .iter()
        .map(|&i| {
            let passages: Vec<String> = (0..5).filter_map(|k| text_for(i * 5 + k + 1000)).collect();
            passages.join(" ")
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)) as ArrayRef,
            Arc::new(StringArray::from(texts)),
        ],
    )
    .unwrap();
    write_batch(path, batch, SHARD_ROWS);
}

/// CPU seconds used so far by the live processes of task `task` of array job `array` (sparq
/// and its worker processes inherit the task's environment).
fn task_cpu_seconds(array: &str, task: usize) -> f64 {
    let want = [
        format!("SLURM_ARRAY_JOB_ID={array}"),
        format!("SLURM_ARRAY_TASK_ID={task}"),
    ];
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        if !want.iter().all(|w| vars.contains(&w.as_bytes())) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // After the parenthesised command: state is field 0, utime 11, stime 12.
            let after: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            ticks += after[11].parse::<u64>().unwrap() + after[12].parse::<u64>().unwrap();
        }
    }
    // SAFETY: sysconf only reads a system constant.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Every (id, vector) of a local output, sorted by id.
fn sorted_output(dir: &Path) -> Vec<(i64, SparseVector)> {
    let (rows, _) = read_output(dir);
    let mut rows: Vec<(i64, SparseVector)> = rows
        .into_iter()
        .map(|(id, v)| (id, v.unwrap_or_default()))
        .collect();
    rows.sort_by_key(|r| r.0);
    rows
}

#[test]
fn an_array_with_a_cancelled_task_finalizes_after_a_rerun_to_plain_encodes_output() {
    let Some(_node) = cluster() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_long_corpus(&dir.join("corpus/a.parquet"));
    // Relative paths in a job file are relative to its folder.
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "input = \"corpus\"\noutput = \"out\"\nmodel = {:?}\nshard_rows = {SHARD_ROWS}\n",
            tiny_model()
        ),
    )
    .unwrap();
    let logs = dir.join("logs");
    let submit = || {
        let mut cmd = command("jobs/encode-array.sbatch");
        cmd.args(["submit", job.to_str().unwrap(), &TASKS.to_string()])
            .env("SPARQ_DEVICE", "cpu")
            .env("SPARQ_LOG_DIR", &logs)
            .env("SPARQ_SBATCH_FLAGS", "--cpus-per-task=1 --time=10");
        let out = run(cmd);
        let ids: Vec<String> = out.split_whitespace().map(str::to_string).collect();
        assert_eq!(
            ids.len(),
            2,
            "submit prints the array's and finalize's ids: {out}"
        );
        (ids[0].clone(), ids[1].clone())
    };
    let mut jobs = Jobs::default();
    let (array, finalize) = submit();
    jobs.add(&array);
    jobs.add(&finalize);

    // Task 1 is cancelled once it has spent more CPU than loading the model takes (0.6 s here):
    // in its first shard (1), or on a fast machine its second (7).
    let started = Instant::now();
    while task_cpu_seconds(&array, 1) < 1.0 {
        let states = field(&show(&format!("{array}_1")), "JobState");
        assert!(
            states.iter().all(|s| s == "PENDING" || s == "RUNNING"),
            "task 1 ended before it could be cancelled: {states:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "task 1 never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run({
        let mut c = command("scancel");
        c.arg(format!("{array}_1"));
        c
    });
    // The other tasks queue: never more running than the node has CPUs.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let (mut most_running, mut saw_pending) = (0, false);
    let state = wait_final(&finalize, Duration::from_secs(120), || {
        let states = field(&show(&array), "JobState");
        let running = states.iter().filter(|s| *s == "RUNNING").count();
        most_running = most_running.max(running);
        saw_pending |= running > 0 && states.iter().any(|s| s == "PENDING");
    });
    assert!(
        most_running <= cpus,
        "{most_running} tasks ran at once on {cpus} CPUs"
    );
    assert!(saw_pending || cpus >= TASKS, "no task waited for a CPU");
    let tasks = field(&show(&array), "JobState");
    assert_eq!(tasks.len(), TASKS, "{tasks:?}");
    assert_eq!(
        tasks.iter().filter(|s| *s == "CANCELLED").count(),
        1,
        "{tasks:?}"
    );
    let out = dir.join("out");
    let log = read(&logs.join(format!("sparq-finalize-{finalize}.log")));
    assert_eq!(
        state, "FAILED",
        "finalize with task 1's shards missing: {log}"
    );
    // Task 1's shard 7 is missing (and 1 unless it was committed before the cancel), named
    // with its index; nothing else is.
    for shard in 0..SHARDS {
        let named = log.contains(&format!("(shard {shard}, task {})", shard % TASKS));
        if shard == 7 || shard % TASKS != 1 {
            assert_eq!(named, shard == 7, "shard {shard}: {log}");
        }
    }
    assert!(log.contains("rerun task(s) 1 "), "{log}");
    assert!(!out.join("_SUCCESS").exists() && !out.join("_manifest.json").exists());

    // The same submission again: finished tasks have nothing to do, task 1 encodes its shards.
    let (array, finalize) = submit();
    jobs.add(&array);
    jobs.add(&finalize);
    let state = wait_final(&finalize, Duration::from_secs(120), || {});
    let log = read(&logs.join(format!("sparq-finalize-{finalize}.log")));
    assert_eq!(state, "COMPLETED", "{log}");
    let tasks = field(&show(&array), "JobState");
    assert!(tasks.iter().all(|s| s == "COMPLETED"), "{tasks:?}");
    assert!(out.join("_SUCCESS").is_file());
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&out.join("_manifest.json"))).unwrap();
    assert!(manifest.to_string().contains("part-"), "{manifest}");

    // Every id once, equal to one `sparq encode` of the same corpus.
    let plain = dir.join("plain");
    let mut cmd = command(SPARQ);
    cmd.args(["encode", "--input"])
        .arg(dir.join("corpus"))
        .arg("--output")
        .arg(&plain)
        .args([
            "--shard-rows",
            &SHARD_ROWS.to_string(),
            "--workers",
            "2",
            "--threads",
            "1",
        ]);
    run(cmd);
    let (got, want) = (sorted_output(&out), sorted_output(&plain));
    let ids: Vec<i64> = got.iter().map(|r| r.0).collect();
    assert_eq!(ids, (0..(SHARDS * SHARD_ROWS) as i64).collect::<Vec<_>>());
    assert_eq!(ids, want.iter().map(|r| r.0).collect::<Vec<_>>());
    let (got, want): (Vec<SparseVector>, Vec<SparseVector>) = got
        .into_iter()
        .zip(want)
        .map(|((_, g), (_, w))| (g, w))
        .unzip();
    common::assert_close("array vs plain encode", &got, &want, 1e-6, 0.0);
}
