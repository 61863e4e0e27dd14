//! The local worker process (`sparq encode-worker`, spawned by `sparq encode`'s coordinator):
//! loads the model once, then encodes and commits the shards it is leased over its pipes,
//! heartbeating as it goes. The loop is [`run_leases`]; this file is its pipe transport.
//! (`serve::remote` is the worker of the service, the same loop over HTTP.)

use std::io::{BufRead, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::protocol::{FromWorker, ToWorker};
use super::runner::{run_leases, LeaseTransport, ShardRunner};
use crate::encode::pipeline::ShardProgress;
use crate::encode::settings::EncodeSettings;
use crate::encode::shard::{ShardError, ShardReport, ShardSpec};
use crate::io::retry::{s3_requests, S3Requests};

/// Seconds between heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The shard being run and its live counters, read by the heartbeat thread.
type Current = Arc<Mutex<Option<(usize, Arc<ShardProgress>)>>>;

/// Runs the worker protocol over stdin/stdout until `stop` or end of input. Returns the exit code.
pub fn run_pipe_worker(input: impl BufRead, output: impl Write + Send + 'static) -> i32 {
    let out = Arc::new(Mutex::new(output));
    let send = {
        let out = out.clone();
        move |msg: &FromWorker| {
            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
            let line = serde_json::to_string(msg).expect("messages serialize");
            // A closed pipe means the coordinator is gone; the read loop ends next.
            let _ = writeln!(o, "{line}").and_then(|_| o.flush());
        }
    };
    let mut lines = input.lines();
    let (config, worker) = match lines
        .next()
        .map(|l| l.map(|l| serde_json::from_str::<ToWorker>(&l)))
    {
        Some(Ok(Ok(ToWorker::Init { settings, worker }))) => (*settings, worker),
        _ => {
            send(&FromWorker::Fatal {
                error: "expected an init message first".into(),
            });
            return 2;
        }
    };
    tch::set_num_threads(worker.threads.max(1) as i32);
    // The model and the output are opened before `Ready`: a job that cannot load its model
    // stops at once, with that cause, rather than failing every shard.
    let setup = || -> Result<_, String> {
        let said = |e: ShardError| match e {
            ShardError::Model(e) => e.to_string(),
            e => e.to_string(),
        };
        let mut runner = ShardRunner::new(worker);
        runner.prepare(&config).map_err(said)?;
        runner.committer(&config).map_err(said)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok((runner, runtime))
    };
    let (mut runner, runtime) = match setup() {
        Ok(s) => s,
        Err(error) => {
            send(&FromWorker::Fatal { error });
            return 2;
        }
    };
    send(&FromWorker::Ready);

    // Heartbeat thread: progress of the current shard every second.
    let current: Current = Arc::new(Mutex::new(None));
    // Dropping `stop` ends the heartbeat at once (a sleeping thread would delay exit by up to
    // a heartbeat, and with it the end of every job).
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let heartbeat = {
        let (current, send) = (current.clone(), send.clone());
        std::thread::spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(HEARTBEAT)
            {
                let now = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (shard, progress) = match &now {
                    Some((id, p)) => (Some(*id), Some(p)),
                    None => (None, None),
                };
                let read = |f: fn(&ShardProgress) -> &std::sync::atomic::AtomicU64| {
                    progress.map_or(0, |p| f(p).load(Ordering::Relaxed))
                };
                send(&FromWorker::Progress {
                    shard,
                    rows: read(|p| &p.rows),
                    tokens: read(|p| &p.tokens),
                    work: read(|p| &p.work),
                });
            }
        })
    };
    let mut pipes = PipeTransport {
        lines,
        send,
        config: Arc::new(config),
        current,
        reported: s3_requests(),
    };
    run_leases(&mut pipes, &mut runner, &runtime);
    drop(stop);
    let _ = heartbeat.join();
    if let Some(line) = crate::model::profile::report() {
        tracing::info!("worker on {}: {line}", worker.device);
    }
    0
}

/// Leases from `sparq encode`'s coordinator: shards on stdin, reports on stdout.
struct PipeTransport<L, S> {
    lines: L,
    send: S,
    config: Arc<EncodeSettings>,
    current: Current,
    reported: S3Requests,
}

/// Clears the current shard when its run ends.
struct Running(Current);

impl Drop for Running {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl<L, S> LeaseTransport for PipeTransport<L, S>
where
    L: Iterator<Item = std::io::Result<String>>,
    S: Fn(&FromWorker),
{
    type Lease = usize;
    type Watch = Running;

    fn next_lease(&mut self) -> Option<(usize, Arc<EncodeSettings>, ShardSpec)> {
        let line = self.lines.next()?.ok()?;
        match serde_json::from_str::<ToWorker>(&line) {
            Ok(ToWorker::Shard { shard, .. }) => Some((shard.id, self.config.clone(), shard)),
            Ok(ToWorker::Stop) => None,
            Ok(ToWorker::Init { .. }) | Err(_) => {
                (self.send)(&FromWorker::Fatal {
                    error: format!("unexpected message: {line}"),
                });
                None
            }
        }
    }

    fn watch(&mut self, lease: &usize, progress: &Arc<ShardProgress>) -> Running {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((*lease, progress.clone()));
        Running(self.current.clone())
    }

    fn report(&mut self, lease: usize, outcome: Result<ShardReport, ShardError>) {
        let now = s3_requests();
        if now.requests > self.reported.requests {
            (self.send)(&FromWorker::S3Requests(now.since(&self.reported)));
            self.reported = now;
        }
        match outcome {
            Ok(report) => (self.send)(&FromWorker::Done(report)),
            Err(e) => (self.send)(&FromWorker::Failed {
                shard: lease,
                error: e.to_string(),
                retryable: e.is_retryable(),
                disk_full: e.is_disk_full(),
            }),
        }
    }
}
