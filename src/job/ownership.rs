//! Which job owns an output, as the job layer decides it over the output's lock
//! ([`crate::io::lock`]): a `sparq encode` run and the tasks of an array are their job's
//! identity (a rerun, or a second task, is the same job and shares the lock), a service job is
//! its id. Taken at planning, before the output's identity is read or anything deleted;
//! checked before every commit; released when the job ends.

use crate::io::lock::{Acquired, HolderKind, LockError, LockHolder, OutputLock};
use crate::io::{AllowedRoots, StoreUrl};

use super::identity::JobIdentity;
use super::JobError;

/// Who asks for an output at planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest {
    /// The kind of run.
    pub kind: HolderKind,
    /// The job's id; `None`: the output's identity (same settings, same job).
    pub job: Option<String>,
}

impl LockRequest {
    /// A `sparq encode` (or `score`) run on this machine.
    pub const CLI: LockRequest = LockRequest {
        kind: HolderKind::Cli,
        job: None,
    };
    /// A task of an array: the tasks share the lock through the job's identity.
    pub const TASK: LockRequest = LockRequest {
        kind: HolderKind::TaskArray,
        job: None,
    };

    /// The service's job `id`.
    pub fn service(id: &str) -> Self {
        Self {
            kind: HolderKind::Service,
            job: Some(service_job(id)),
        }
    }
}

/// The job name a service job's lock holds.
pub fn service_job(id: &str) -> String {
    format!("serve-{id}")
}

/// An output taken at planning: released again if planning fails after it (a service lives on,
/// and its pid would keep the output), kept with [`Claim::keep`] once the plan stands.
pub struct Claim<'a> {
    output: &'a StoreUrl,
    roots: &'a AllowedRoots,
    runtime: &'a tokio::runtime::Runtime,
    job: String,
    taken: bool,
}

impl<'a> Claim<'a> {
    /// Takes the output for the request's job (`overwrite`: no other live process of it may
    /// write).
    pub fn take(
        runtime: &'a tokio::runtime::Runtime,
        output: &'a StoreUrl,
        roots: &'a AllowedRoots,
        request: &LockRequest,
        identity: &JobIdentity,
        overwrite: bool,
    ) -> Result<Self, JobError> {
        let job = request.job.clone().unwrap_or_else(|| identity.key());
        let me = LockHolder::this_process(&job, request.kind);
        let acquired = runtime.block_on(OutputLock::new(output, roots)?.acquire(&me, overwrite))?;
        let taken = match acquired {
            Acquired::Taken => {
                tracing::debug!("{}: locked for job {job}", output.raw);
                true
            }
            Acquired::Shared(holder) => {
                tracing::info!(
                    "{}: shared with {holder} (the same job: commits are create-once)",
                    output.raw
                );
                false
            }
        };
        Ok(Self {
            output,
            roots,
            runtime,
            job,
            taken,
        })
    }

    /// The plan stands: the job name every commit checks the lock against.
    pub fn keep(mut self) -> String {
        self.taken = false;
        std::mem::take(&mut self.job)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.taken {
            self.runtime
                .block_on(release(&self.output.raw, self.roots, &self.job, false));
        }
    }
}

/// Releases the output held for `job` (see [`OutputLock::release`]); a failure is only said
/// (the next run finds the holder gone and takes over).
pub async fn release(output: &str, roots: &AllowedRoots, job: &str, whole_job: bool) {
    let released = match StoreUrl::parse(output).and_then(|u| OutputLock::new(&u, roots)) {
        Ok(lock) => lock.release(job, whole_job).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = released {
        tracing::warn!("{output}: releasing the lock of job {job}: {e}");
    }
}

/// Takes the output a service job holds as `job` back for this process (a restarted service,
/// for a job it was running): see [`OutputLock::retake`].
pub async fn retake(output: &str, roots: &AllowedRoots, job: &str) -> Result<Acquired, LockError> {
    let me = LockHolder::this_process(job, HolderKind::Service);
    OutputLock::new(&StoreUrl::parse(output)?, roots)?
        .retake(&me)
        .await
}

/// Refuses a new job on an output a live job holds (a service at submission, naming it).
pub async fn refuse_if_held(output: &str, roots: &AllowedRoots) -> Result<(), LockError> {
    OutputLock::new(&StoreUrl::parse(output)?, roots)?
        .refuse_if_held("a new job was refused")
        .await
}

/// Releases the output of the service's job `id` given its spec (`output`), at cancel.
pub async fn release_spec(spec: Option<&serde_json::Value>, roots: &AllowedRoots, id: &str) {
    if let Some(output) = spec.and_then(|s| s.get("output")).and_then(|o| o.as_str()) {
        release(output, roots, &service_job(id), true).await;
    }
}

/// Releases the output when dropped: a run lets go of its
/// output however it ends (done, failed, interrupted); a process killed outright leaves a
/// holder the next run finds gone.
pub struct Held<'a> {
    runtime: &'a tokio::runtime::Runtime,
    output: String,
    roots: AllowedRoots,
    job: Option<String>,
    whole_job: bool,
}

impl<'a> Held<'a> {
    /// The output `output` held for `job` (`None`: nothing to release).
    pub fn new(
        runtime: &'a tokio::runtime::Runtime,
        output: &str,
        roots: &AllowedRoots,
        job: Option<String>,
        whole_job: bool,
    ) -> Self {
        Self {
            runtime,
            output: output.to_string(),
            roots: roots.clone(),
            job,
            whole_job,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(job) = &self.job {
            self.runtime
                .block_on(release(&self.output, &self.roots, job, self.whole_job));
        }
    }
}
