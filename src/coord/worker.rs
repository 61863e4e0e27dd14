//! The local worker process (`sparq encode-worker`, spawned by `sparq encode`'s coordinator):
//! loads the model once, then encodes and commits the shards it is leased over its pipes,
//! heartbeating as it goes. (`serve::remote` is the worker of the service, over HTTP.)

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::protocol::{FromWorker, ToWorker};
use super::runner::ShardRunner;
use crate::encode::pipeline::ShardProgress;
use crate::io::retry::s3_requests;

/// Seconds between heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

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
    let setup = || -> Result<_, String> {
        let mut runner = ShardRunner::new(worker);
        runner.prepare(&config).map_err(|e| e.to_string())?;
        runner.committer(&config).map_err(|e| e.to_string())?;
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
    let progress = Arc::new(ShardProgress::default());
    let current = Arc::new(AtomicUsize::new(usize::MAX));
    // Dropping `stop` ends the heartbeat at once (a sleeping thread would delay exit by up to
    // a heartbeat, and with it the end of every job).
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let heartbeat = {
        let (progress, current, send) = (progress.clone(), current.clone(), send.clone());
        std::thread::spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(HEARTBEAT)
            {
                let shard = current.load(Ordering::Relaxed);
                send(&FromWorker::Progress {
                    shard: (shard != usize::MAX).then_some(shard),
                    rows: progress.rows.load(Ordering::Relaxed),
                    tokens: progress.tokens.load(Ordering::Relaxed),
                    work: progress.work.load(Ordering::Relaxed),
                });
            }
        })
    };
    let mut reported = s3_requests();
    for line in lines {
        let Ok(line) = line else { break };
        match serde_json::from_str::<ToWorker>(&line) {
            Ok(ToWorker::Shard { shard, .. }) => {
                progress.rows.store(0, Ordering::Relaxed);
                progress.tokens.store(0, Ordering::Relaxed);
                progress.work.store(0, Ordering::Relaxed);
                current.store(shard.id, Ordering::Relaxed);
                let result = runner.run(&config, &runtime, &shard, &progress);
                current.store(usize::MAX, Ordering::Relaxed);
                let now = s3_requests();
                if now.requests > reported.requests {
                    send(&FromWorker::S3Requests(now.since(&reported)));
                    reported = now;
                }
                match result {
                    Ok(report) => send(&FromWorker::Done(report)),
                    Err(e) => send(&FromWorker::Failed {
                        shard: shard.id,
                        error: e.to_string(),
                        retryable: e.is_retryable(),
                        disk_full: e.is_disk_full(),
                    }),
                }
            }
            Ok(ToWorker::Stop) => break,
            Ok(ToWorker::Init { .. }) | Err(_) => {
                send(&FromWorker::Fatal {
                    error: format!("unexpected message: {line}"),
                });
                break;
            }
        }
    }
    drop(stop);
    let _ = heartbeat.join();
    if let Some(line) = crate::model::profile::report() {
        tracing::info!("worker on {}: {line}", worker.device);
    }
    0
}
