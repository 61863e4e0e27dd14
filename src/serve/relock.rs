//! A restarted service takes back the output locks of the jobs it was running. The lock names
//! the service's pid, so while the service was down its outputs looked abandoned; after the
//! restart they are guarded again (a `sparq encode` on one is refused, naming the job). A job
//! whose output another job took over meanwhile fails, naming that job: going on would mix two
//! jobs' vectors in one output.

use crate::io::lock::{Acquired, LockError};
use crate::job::ownership;

use super::db::Store;

/// Retakes the lock of every running encode job (before the service answers anyone).
pub(super) fn retake_output_locks(store: &Store, runtime: &tokio::runtime::Runtime) {
    let jobs = match store.read(|db| db.running_encode_jobs()) {
        Ok(jobs) => jobs,
        Err(e) => return tracing::error!("state database: reading the running jobs: {e}"),
    };
    for (id, settings) in jobs {
        let Some(job) = settings.lock_job.as_deref() else {
            continue; // Planned by a version without output locks.
        };
        let output = &settings.output;
        match runtime.block_on(ownership::retake(output, &settings.allowed_roots, job)) {
            Ok(Acquired::Taken) => {
                tracing::info!("job {id}: took back the lock of its output {output}")
            }
            Ok(Acquired::Shared(holder)) => tracing::warn!(
                "job {id}: its output {output} is held by {holder}, a live process of the same \
                 job (another service on this state database?); left to it"
            ),
            Err(e @ LockError::Lost { .. }) => {
                let error = format!(
                    "while the service was down another job took over the output: {e}; submit \
                     this job again once that job has ended"
                );
                tracing::error!("job {id}: {error}");
                if let Err(e) = store.write(|db| db.fail_job(&id, &error)) {
                    tracing::error!("job {id}: state database: {e}");
                }
            }
            Err(e) => tracing::warn!(
                "job {id}: could not take back the lock of its output {output} ({e}); the job \
                 goes on, and its workers check the lock before every commit"
            ),
        }
    }
}
