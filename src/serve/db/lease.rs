//! The lease protocol on the database: granting the next pending shard, heartbeats, reports,
//! and taking back leases whose worker went quiet or stopped getting anywhere. Each call is a
//! few indexed row reads and writes, whatever the size of the job.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use super::{now, Db, DbResult};
use crate::encode::settings::EncodeSettings;
use crate::encode::shard::ShardSpec;
use crate::job::plan::EncodePlan;
use crate::serve::wire::{
    Causes, FailureCause, JobKind, JobState, LeaseGrant, LeaseReply, ShardState, Work,
};

/// Jobs or shards found unreadable in one `lease` call before it gives up for this call.
const MAX_UNREADABLE: usize = 64;

/// What every lease of a job carries, decoded once from the stored plan or spec.
#[derive(Clone)]
pub(super) enum JobWork {
    Encode(Arc<EncodeSettings>),
    Train(Arc<Value>),
}

/// Decoded work per job id.
pub(super) type SettingsCache = HashMap<String, JobWork>;

/// A lease that ran out.
pub struct Expired {
    /// Job.
    pub job: String,
    /// Shard.
    pub shard: usize,
    /// Worker that held it.
    pub worker: String,
    /// Why it was taken back.
    pub cause: FailureCause,
    /// Whether the shard failed for good (attempts exhausted).
    pub failed: bool,
}

impl Db {
    /// The job's work settings, from the cache or decoded from what was stored.
    fn job_work(&mut self, id: &str, kind: JobKind) -> DbResult<Result<JobWork, String>> {
        if let Some(work) = self.settings.get(id) {
            return Ok(Ok(work.clone()));
        }
        let (plan, spec): (Option<String>, String) = self.conn.query_row(
            "SELECT plan, spec FROM jobs WHERE id = ?1",
            params![id],
            |r| r.try_into(),
        )?;
        let work = match kind {
            JobKind::Train => serde_json::from_str(&spec)
                .map(|v| JobWork::Train(Arc::new(v)))
                .map_err(|e| format!("the stored spec of this job is unreadable ({e})")),
            JobKind::Encode => match plan.as_deref().map(serde_json::from_str::<EncodePlan>) {
                Some(Ok(plan)) => Ok(JobWork::Encode(Arc::new(plan.settings))),
                Some(Err(e)) => Err(format!("the stored plan of this job is unreadable ({e})")),
                None => Err("the job is running but has no stored plan".into()),
            },
        };
        if let Ok(w) = &work {
            self.settings.insert(id.to_string(), w.clone());
        }
        Ok(work)
    }

    /// Grants the oldest running job's next pending shard to `worker`. A job whose stored plan
    /// cannot be read fails alone (with that error), and a shard whose stored spec cannot be
    /// read fails alone; the next one is leased instead.
    pub fn lease(&mut self, worker: &str) -> DbResult<Option<LeaseGrant>> {
        for _ in 0..MAX_UNREADABLE {
            let job: Option<(String, JobKind, u64)> = self
                .conn
                .query_row(
                    "SELECT id, kind, lease_timeout FROM jobs WHERE state = ?1 AND n_pending > 0
                     ORDER BY seq LIMIT 1",
                    params![JobState::Running],
                    |r| r.try_into(),
                )
                .optional()?;
            let Some((job, kind, lease_timeout)) = job else {
                return Ok(None);
            };
            let template = match self.job_work(&job, kind)? {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("job {job}: {e}; failing it");
                    self.fail_job(&job, &format!("{e}: submit the job again"))?;
                    continue;
                }
            };
            let tx = self.conn.transaction()?;
            let shard: Option<(i64, String, u32)> = tx
                .query_row(
                    "SELECT shard, spec, attempts FROM shards WHERE job = ?1 AND state = ?2
                     ORDER BY shard LIMIT 1",
                    params![job, ShardState::Pending],
                    |r| r.try_into(),
                )
                .optional()?;
            let Some((shard, shard_spec, attempts)) = shard else {
                return Ok(None); // Counters say pending, the table not: nothing to grant now.
            };
            let work = match template {
                JobWork::Train(spec) => Work::Train {
                    spec: (*spec).clone(),
                },
                JobWork::Encode(settings) => match serde_json::from_str::<ShardSpec>(&shard_spec) {
                    Ok(spec) => Work::Encode {
                        settings: Box::new((*settings).clone()),
                        shard: spec,
                    },
                    Err(e) => {
                        let cause = FailureCause::Unreadable {
                            what: format!("the stored spec of shard {shard} ({e})"),
                        };
                        tracing::error!("job {job}: {cause}; failing the shard");
                        tx.execute(
                            "UPDATE shards SET state = ?1, causes = ?2 WHERE job = ?3 AND shard = ?4",
                            params![ShardState::Failed, Causes(vec![cause]), job, shard],
                        )?;
                        tx.commit()?;
                        continue;
                    }
                },
            };
            let lease = uuid::Uuid::new_v4().simple().to_string();
            tx.execute(
                "UPDATE shards SET state = ?1, lease = ?2, worker = ?3, expires = ?4,
                 attempts = attempts + 1, progress_rows = 0, progress_tokens = 0, progress = 0,
                 stalled = 0
                 WHERE job = ?5 AND shard = ?6",
                params![
                    ShardState::Leased,
                    lease,
                    worker,
                    now() + lease_timeout as f64,
                    job,
                    shard
                ],
            )?;
            tx.commit()?;
            return Ok(Some(LeaseGrant {
                lease,
                job,
                attempt: attempts + 1,
                lease_timeout_s: lease_timeout,
                heartbeat_s: (lease_timeout / 4).clamp(1, 10),
                work,
                // The service fills this in (the database does not know its roots).
                allowed_roots: crate::io::AllowedRoots::anywhere(),
            }));
        }
        Ok(None)
    }

    /// The shard state, job state, lease timeout and last progress counter behind a lease.
    fn held(&self, lease: &str) -> DbResult<Option<(ShardState, JobState, u64, i64)>> {
        self.conn
            .query_row(
                "SELECT s.state, j.state, j.lease_timeout, s.progress
                 FROM shards s JOIN jobs j ON j.id = s.job WHERE s.lease = ?1",
                params![lease],
                |r| r.try_into(),
            )
            .optional()
    }

    /// Records progress and extends the lease; tells the worker to stop if it lost the lease or
    /// the job was cancelled. A heartbeat whose `progress` counter did not move since the last
    /// one does not extend the lease: a worker stuck while its heartbeat thread runs on loses it
    /// after the lease timeout. A `progress` of 0 (a worker that does not send it) extends it
    /// as before. Counters must fit SQLite's i64 (the API refuses larger ones).
    pub fn heartbeat(
        &mut self,
        lease: &str,
        rows: i64,
        tokens: i64,
        progress: i64,
    ) -> DbResult<LeaseReply> {
        match self.held(lease)? {
            Some((ShardState::Leased, JobState::Running, timeout, last)) => {
                if progress == 0 || progress > last {
                    self.conn.execute(
                        "UPDATE shards SET expires = ?1, progress_rows = ?2, progress_tokens = ?3,
                         progress = MAX(progress, ?4), stalled = 0 WHERE lease = ?5",
                        params![now() + timeout as f64, rows, tokens, progress, lease],
                    )?;
                } else {
                    self.conn.execute(
                        "UPDATE shards SET progress_rows = ?1, progress_tokens = ?2, stalled = 1
                         WHERE lease = ?3",
                        params![rows, tokens, lease],
                    )?;
                }
                Ok(LeaseReply::keep())
            }
            Some((_, JobState::Cancelled, _, _)) => Ok(LeaseReply::stop("the job was cancelled")),
            _ => Ok(LeaseReply::stop(
                "the lease was lost (no heartbeat or no progress within the lease timeout); the \
                 shard went to another worker",
            )),
        }
    }

    /// Records a committed shard. A report arriving after the lease was lost still counts while
    /// the shard is not leased again (or failed for good meanwhile): the commit protocol made
    /// the part exactly once either way. So does one arriving after its job was cancelled: the
    /// part is in the output, and the job's status says so.
    pub fn done(&mut self, lease: &str, worker: &str, report: &Value) -> DbResult<LeaseReply> {
        let tx = self.conn.transaction()?;
        let shard: Option<(String, i64, ShardState, JobState)> = tx
            .query_row(
                "SELECT s.job, s.shard, s.state, j.state FROM shards s JOIN jobs j ON j.id = s.job
                 WHERE s.lease = ?1",
                params![lease],
                |r| r.try_into(),
            )
            .optional()?;
        let reply = match shard {
            Some((job, shard, state, job_state))
                if [
                    ShardState::Leased,
                    ShardState::Pending,
                    ShardState::Failed,
                    ShardState::Cancelled,
                ]
                .contains(&state)
                    && [JobState::Running, JobState::Cancelled].contains(&job_state) =>
            {
                tx.execute(
                    "UPDATE shards SET state = ?1, report = ?2, worker = ?3, expires = NULL
                     WHERE job = ?4 AND shard = ?5",
                    params![ShardState::Done, report.to_string(), worker, job, shard],
                )?;
                LeaseReply::keep()
            }
            Some(_) => LeaseReply::stop("the shard had already ended"),
            None => LeaseReply::stop("unknown lease"),
        };
        tx.commit()?;
        Ok(reply)
    }

    /// Records a failed attempt: the shard is leased again, or fails for good after its
    /// attempts (or at once when the cause is not retryable); in a cancelled job it is cancelled.
    pub fn failed(&mut self, lease: &str, error: &str, retryable: bool) -> DbResult<LeaseReply> {
        let tx = self.conn.transaction()?;
        let held: Option<(String, i64, ShardState, u32, Causes, u32, JobState)> = tx
            .query_row(
                "SELECT s.job, s.shard, s.state, s.attempts, s.causes, j.max_attempts, j.state
                 FROM shards s JOIN jobs j ON j.id = s.job WHERE s.lease = ?1",
                params![lease],
                |r| r.try_into(),
            )
            .optional()?;
        let reply = match held {
            Some((job, shard, ShardState::Leased, attempts, mut causes, max, job_state)) => {
                causes.0.push(FailureCause::Reported {
                    error: error.to_string(),
                });
                let next = if job_state == JobState::Cancelled {
                    ShardState::Cancelled
                } else if retryable && attempts < max {
                    ShardState::Pending
                } else {
                    ShardState::Failed
                };
                tx.execute(
                    "UPDATE shards SET state = ?1, causes = ?2, lease = NULL, expires = NULL
                     WHERE job = ?3 AND shard = ?4",
                    params![next, causes, job, shard],
                )?;
                LeaseReply::keep()
            }
            _ => LeaseReply::stop("the lease was no longer held"),
        };
        tx.commit()?;
        Ok(reply)
    }

    /// Takes back leases whose worker went quiet (or sent heartbeats without progress for the
    /// lease timeout): the shard is leased again (or fails after its attempts).
    pub fn expire(&mut self) -> DbResult<Vec<Expired>> {
        let tx = self.conn.transaction()?;
        let t = now();
        let mut out = Vec::new();
        {
            let mut stmt = tx.prepare(
                "SELECT s.job, s.shard, s.attempts, s.causes, COALESCE(s.worker, '?'), s.stalled,
                        j.max_attempts, j.lease_timeout, j.state
                 FROM shards s JOIN jobs j ON j.id = s.job
                 WHERE s.state = ?1 AND s.expires < ?2",
            )?;
            type Row = (String, i64, u32, Causes, String, bool, u32, u64, JobState);
            let rows: Vec<Row> = stmt
                .query_map(params![ShardState::Leased, t], |r| r.try_into())?
                .collect::<DbResult<_>>()?;
            for (job, shard, attempts, mut causes, worker, stalled, max, timeout, job_state) in rows
            {
                let cause = if stalled {
                    FailureCause::Stalled {
                        worker: worker.clone(),
                        timeout_s: timeout,
                    }
                } else {
                    FailureCause::LeaseLost {
                        worker: worker.clone(),
                        timeout_s: timeout,
                    }
                };
                causes.0.push(cause.clone());
                let failed = attempts >= max;
                let next = if job_state == JobState::Cancelled {
                    // Nothing to lease again: the shard ends with its job.
                    ShardState::Cancelled
                } else if failed {
                    ShardState::Failed
                } else {
                    ShardState::Pending
                };
                // The lease id stays until the shard is leased again: a late report of the lost
                // lease still lands (its part is committed, exactly once, either way).
                tx.execute(
                    "UPDATE shards SET state = ?1, causes = ?2, expires = NULL
                     WHERE job = ?3 AND shard = ?4",
                    params![next, causes, job, shard],
                )?;
                if job_state != JobState::Cancelled {
                    out.push(Expired {
                        job,
                        shard: shard as usize,
                        worker,
                        cause,
                        failed,
                    });
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }
}
