//! Worker processes: spawning (the same binary, `encode-worker`), their message streams
//! merged into one channel, killing, and reaping on drop.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

use crossbeam_channel::{Receiver, Sender};

use super::protocol::{FromWorker, ToWorker};
use crate::encode::settings::{EncodeSettings, WorkerSettings};

/// Something a worker did.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A message from worker `slot` (spawn generation `generation`).
    Message {
        /// Slot index.
        slot: usize,
        /// Spawn generation of the slot (stale events are ignored).
        generation: u64,
        /// The message.
        message: FromWorker,
    },
    /// The worker's stdout closed: it exited or was killed.
    Exited {
        /// Slot index.
        slot: usize,
        /// Spawn generation.
        generation: u64,
    },
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    generation: u64,
}

/// One worker process per slot, respawnable.
pub struct WorkerPool {
    processes: Vec<Option<Process>>,
    generations: Vec<u64>,
    events_tx: Sender<WorkerEvent>,
    /// Events of every worker.
    pub events: Receiver<WorkerEvent>,
}

impl WorkerPool {
    /// A pool of `slots` empty slots.
    pub fn new(slots: usize) -> Self {
        let (events_tx, events) = crossbeam_channel::unbounded();
        Self {
            processes: (0..slots).map(|_| None).collect(),
            generations: vec![0; slots],
            events_tx,
            events,
        }
    }

    /// Starts a worker in `slot` with the job's `settings` and its own `worker` settings;
    /// returns its generation.
    pub fn spawn(
        &mut self,
        slot: usize,
        settings: &EncodeSettings,
        worker: &WorkerSettings,
    ) -> std::io::Result<u64> {
        self.kill(slot);
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .arg("encode-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // The tokenizer's thread pool gets the worker's share of cores, as libtorch does:
        // with every worker sized for the whole machine they oversubscribe it.
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            command.env("RAYON_NUM_THREADS", worker.threads.max(1).to_string());
        }
        if std::env::var_os(crate::model::encoder::ONEDNN_CACHE_VAR).is_none() {
            command.env(
                crate::model::encoder::ONEDNN_CACHE_VAR,
                crate::model::encoder::onednn_cache_capacity(worker.device, settings.dtype),
            );
        }
        // SAFETY: prctl and setpgid are async-signal-safe. PDEATHSIG makes the worker die with
        // the coordinator, so a killed coordinator leaves no worker committing behind a rerun's
        // back. Its own process group keeps a terminal's Ctrl-C from reaching it: the
        // coordinator decides (it stops the workers and says what is committed).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        self.generations[slot] += 1;
        let generation = self.generations[slot];
        let tx = self.events_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(message) = serde_json::from_str::<FromWorker>(&line) {
                    if tx
                        .send(WorkerEvent::Message {
                            slot,
                            generation,
                            message,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let _ = tx.send(WorkerEvent::Exited { slot, generation });
        });
        let init = serde_json::to_string(&ToWorker::Init {
            settings: Box::new(settings.clone()),
            worker: *worker,
        })
        .expect("serializable");
        // A worker that dies at once shows up as an Exited event; ignore the write error here.
        let _ = writeln!(stdin, "{init}").and_then(|_| stdin.flush());
        self.processes[slot] = Some(Process {
            child,
            stdin,
            generation,
        });
        Ok(generation)
    }

    /// Sends a message to the worker in `slot`; false if it is gone.
    pub fn send(&mut self, slot: usize, message: &ToWorker) -> bool {
        let Some(p) = self.processes[slot].as_mut() else {
            return false;
        };
        let line = serde_json::to_string(message).expect("serializable");
        writeln!(p.stdin, "{line}")
            .and_then(|_| p.stdin.flush())
            .is_ok()
    }

    /// Whether `generation` is the live process of `slot`.
    pub fn is_current(&self, slot: usize, generation: u64) -> bool {
        self.processes[slot]
            .as_ref()
            .is_some_and(|p| p.generation == generation)
    }

    /// Reaps the exited worker of `slot` and describes how it ended.
    pub fn reap(&mut self, slot: usize) -> String {
        match self.processes[slot].take() {
            Some(mut p) => {
                let status = p.child.wait();
                match status {
                    Ok(s) => describe(s),
                    Err(e) => format!("worker lost ({e})"),
                }
            }
            None => "worker gone".into(),
        }
    }

    /// Kills the worker of `slot` (SIGKILL) and reaps it.
    pub fn kill(&mut self, slot: usize) {
        if let Some(mut p) = self.processes[slot].take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Sends SIGKILL to the worker of `slot` without reaping (its Exited event follows).
    pub fn signal_kill(&mut self, slot: usize) {
        if let Some(p) = self.processes[slot].as_mut() {
            let _ = p.child.kill();
        }
    }

    /// Kills every worker now (an interrupt: their shards in progress are not committed).
    pub fn kill_all(&mut self) {
        for slot in 0..self.processes.len() {
            self.kill(slot);
        }
    }

    /// Asks every worker to stop, waits briefly, then kills what is left.
    pub fn shutdown(&mut self) {
        for slot in 0..self.processes.len() {
            self.send(slot, &ToWorker::Stop);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for p in self.processes.iter_mut().flatten() {
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = p.child.try_wait() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        for slot in 0..self.processes.len() {
            self.kill(slot);
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        for slot in 0..self.processes.len() {
            self.kill(slot);
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("worker exited with code {code}"),
        (None, Some(9)) => "worker was killed (SIGKILL: out of memory, or killed by hand)".into(),
        (None, Some(sig)) => format!("worker died from signal {sig}"),
        _ => "worker ended".into(),
    }
}
