//! The service's state in SQLite: jobs, their shards, and the leases on them. Every change is
//! one transaction, so a coordinator killed at any moment restarts from a consistent queue.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::wire::{JobState, JobView, LeaseGrant, LeaseReply, ShardState, ShardView, Work};
use crate::encode::shard::{ShardReport, ShardSpec};
use crate::job::plan::EncodePlan;
use crate::job::ShardFailure;

/// Errors of the state database.
pub type DbResult<T> = Result<T, rusqlite::Error>;

/// Seconds since the epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    summary TEXT,
    plan TEXT,
    max_attempts INTEGER NOT NULL,
    lease_timeout INTEGER NOT NULL,
    name TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS shards (
    job TEXT NOT NULL,
    shard INTEGER NOT NULL,
    spec TEXT NOT NULL,
    rows INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    causes TEXT NOT NULL DEFAULT '[]',
    lease TEXT,
    worker TEXT,
    expires REAL,
    progress_rows INTEGER NOT NULL DEFAULT 0,
    progress_tokens INTEGER NOT NULL DEFAULT 0,
    report TEXT,
    PRIMARY KEY (job, shard)
);
CREATE INDEX IF NOT EXISTS shards_state ON shards(state, job);
CREATE UNIQUE INDEX IF NOT EXISTS shards_lease ON shards(lease);
";

/// What `insert_job` did.
#[derive(Debug, PartialEq)]
pub enum Inserted {
    /// Queued under this id.
    New(String),
    /// A job of that name exists: its id, state, and whether its spec is the same.
    Existing {
        /// Its id.
        id: String,
        /// Its state.
        state: JobState,
        /// Whether the spec equals the one submitted now.
        same: bool,
    },
    /// Too many jobs are waiting.
    Full,
}

/// A job ready to be planned.
pub struct ToPlan {
    /// Job id.
    pub id: String,
    /// Its spec document.
    pub spec: Value,
}

/// A job whose shards have all ended.
pub struct ToFinish {
    /// Job id.
    pub id: String,
    /// `encode` or `train`.
    pub kind: String,
    /// The plan (encode), its shards restored from the table.
    pub plan: Option<EncodePlan>,
    /// Reports of the shards this run committed.
    pub reports: BTreeMap<usize, ShardReport>,
    /// Failed shards and unreadable files.
    pub failures: Vec<ShardFailure>,
    /// Seconds since the job started.
    pub seconds: f64,
    /// The train summary (train jobs).
    pub train_summary: Option<Value>,
}

/// A lease that ran out.
pub struct Expired {
    /// Job.
    pub job: String,
    /// Shard.
    pub shard: usize,
    /// Worker that held it.
    pub worker: String,
    /// Whether the shard failed for good (attempts exhausted).
    pub failed: bool,
}

/// The state database.
pub struct Db {
    conn: Connection,
}

impl Db {
    /// Opens (or creates) the database and recovers from an unclean stop: jobs being planned
    /// are planned again, jobs being finished are finished again, and live leases get a fresh
    /// timeout so that workers still at work can report to the restarted coordinator.
    pub fn open(path: &Path) -> DbResult<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        let has_name: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'name'")?
            .exists([])?;
        if !has_name {
            conn.execute_batch("ALTER TABLE jobs ADD COLUMN name TEXT")?;
        }
        conn.execute_batch("CREATE UNIQUE INDEX IF NOT EXISTS jobs_name ON jobs(name)")?;
        let db = Self { conn };
        let t = now();
        db.conn.execute(
            "UPDATE jobs SET state = ?1 WHERE state = ?2",
            params![JobState::Queued, JobState::Planning],
        )?;
        db.conn.execute(
            "UPDATE jobs SET state = ?1 WHERE state = ?2",
            params![JobState::Running, JobState::Finishing],
        )?;
        db.conn.execute(
            "UPDATE shards SET expires = ?1 + (SELECT lease_timeout FROM jobs WHERE jobs.id = shards.job)
             WHERE state = ?2",
            params![t, ShardState::Leased],
        )?;
        Ok(db)
    }

    /// Jobs by state.
    pub fn count_by_state(&self) -> DbResult<BTreeMap<String, u64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
        rows.collect()
    }

    /// Jobs that have not ended.
    pub fn unfinished_jobs(&self) -> DbResult<u64> {
        self.conn.query_row(
            "SELECT COUNT(*) FROM jobs WHERE state IN (?1, ?2, ?3, ?4)",
            params![
                JobState::Queued,
                JobState::Planning,
                JobState::Running,
                JobState::Finishing
            ],
            |r| r.get(0),
        )
    }

    /// Queues a job. With a `name`, a second submission of the same spec under that name finds
    /// the first job instead of queueing another (retried submissions stay exactly once).
    pub fn insert_job(
        &mut self,
        kind: &str,
        spec: &Value,
        limits: (u32, u64),
        max_queued: u64,
        name: Option<&str>,
    ) -> DbResult<Inserted> {
        let (max_attempts, lease_timeout) = limits;
        let tx = self.conn.transaction()?;
        if let Some(name) = name {
            let existing: Option<(String, JobState, String)> = tx
                .query_row(
                    "SELECT id, state, spec FROM jobs WHERE name = ?1",
                    params![name],
                    |r| r.try_into(),
                )
                .optional()?;
            if let Some((id, state, old)) = existing {
                let same = serde_json::from_str::<Value>(&old).is_ok_and(|old| &old == spec);
                return Ok(Inserted::Existing { id, state, same });
            }
        }
        let waiting: u64 = tx.query_row(
            "SELECT COUNT(*) FROM jobs WHERE state IN (?1, ?2)",
            params![JobState::Queued, JobState::Planning],
            |r| r.get(0),
        )?;
        if waiting >= max_queued {
            return Ok(Inserted::Full);
        }
        let id = format!("j-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        tx.execute(
            "INSERT INTO jobs (id, kind, spec, state, created, max_attempts, lease_timeout, name)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                kind,
                spec.to_string(),
                JobState::Queued,
                now(),
                max_attempts,
                lease_timeout,
                name
            ],
        )?;
        tx.commit()?;
        Ok(Inserted::New(id))
    }

    /// Takes the oldest queued job for planning.
    pub fn next_to_plan(&mut self) -> DbResult<Option<ToPlan>> {
        let tx = self.conn.transaction()?;
        let found: Option<(String, String)> = tx
            .query_row(
                "SELECT id, spec FROM jobs WHERE state = ?1 ORDER BY seq LIMIT 1",
                params![JobState::Queued],
                |r| r.try_into(),
            )
            .optional()?;
        let Some((id, spec)) = found else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE jobs SET state = ?1 WHERE id = ?2",
            params![JobState::Planning, id],
        )?;
        tx.commit()?;
        Ok(Some(ToPlan {
            id,
            spec: serde_json::from_str(&spec).unwrap_or(Value::Null),
        }))
    }

    /// Stores an encode plan: its shards become leasable (those committed before are skipped).
    pub fn set_planned_encode(&mut self, id: &str, plan: &EncodePlan) -> DbResult<()> {
        let tx = self.conn.transaction()?;
        let state: Option<JobState> = tx
            .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        if state != Some(JobState::Planning) {
            return Ok(()); // Cancelled meanwhile.
        }
        {
            let mut insert = tx.prepare(
                "INSERT OR REPLACE INTO shards (job, shard, spec, rows, state) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for s in &plan.shards {
                let state = if plan.pending.contains(&s.id) {
                    ShardState::Pending
                } else {
                    ShardState::Skipped
                };
                insert.execute(params![
                    id,
                    s.id as i64,
                    serde_json::to_string(s).expect("serializable"),
                    s.rows as i64,
                    state
                ])?;
            }
        }
        let stored = EncodePlan {
            shards: Vec::new(),
            ..plan.clone()
        };
        tx.execute(
            "UPDATE jobs SET state = ?1, plan = ?2, started = ?3 WHERE id = ?4",
            params![
                JobState::Running,
                serde_json::to_string(&stored).expect("serializable"),
                now(),
                id
            ],
        )?;
        tx.commit()
    }

    /// A train job is one lease: the whole run, resumed from its checkpoints when redone.
    pub fn set_planned_train(&mut self, id: &str) -> DbResult<()> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE jobs SET state = ?1, started = ?2 WHERE id = ?3 AND state = ?4",
            params![JobState::Running, now(), id, JobState::Planning],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT OR REPLACE INTO shards (job, shard, spec, rows, state) VALUES (?1, 0, 'null', 0, ?2)",
                params![id, ShardState::Pending],
            )?;
        }
        tx.commit()
    }

    /// Ends a job with an error (planning failed, or finishing failed).
    pub fn fail_job(&mut self, id: &str, error: &str) -> DbResult<()> {
        self.conn.execute(
            "UPDATE jobs SET state = ?1, error = ?2, finished = ?3 WHERE id = ?4 AND state != ?5",
            params![JobState::Failed, error, now(), id, JobState::Cancelled],
        )?;
        Ok(())
    }

    /// Grants the oldest running job's next pending shard to `worker`.
    pub fn lease(&mut self, worker: &str) -> DbResult<Option<LeaseGrant>> {
        let tx = self.conn.transaction()?;
        type Row = (
            String,
            i64,
            String,
            u32,
            String,
            Option<String>,
            String,
            u64,
        );
        let found: Option<Row> = tx
            .query_row(
                "SELECT s.job, s.shard, s.spec, s.attempts, j.kind, j.plan, j.spec, j.lease_timeout
                 FROM shards s JOIN jobs j ON j.id = s.job
                 WHERE s.state = ?1 AND j.state = ?2
                 ORDER BY j.seq, s.shard LIMIT 1",
                params![ShardState::Pending, JobState::Running],
                |r| r.try_into(),
            )
            .optional()?;
        let Some((job, shard, shard_spec, attempts, kind, plan, spec, lease_timeout)) = found
        else {
            return Ok(None);
        };
        let work = if kind == "train" {
            Work::Train {
                spec: serde_json::from_str(&spec).unwrap_or(Value::Null),
            }
        } else {
            let plan: EncodePlan = match plan.as_deref().map(serde_json::from_str) {
                Some(Ok(p)) => p,
                _ => return Err(rusqlite::Error::InvalidQuery),
            };
            let shard: ShardSpec =
                serde_json::from_str(&shard_spec).map_err(|_| rusqlite::Error::InvalidQuery)?;
            Work::Encode {
                settings: Box::new(plan.settings),
                shard,
            }
        };
        let lease = uuid::Uuid::new_v4().simple().to_string();
        tx.execute(
            "UPDATE shards SET state = ?1, lease = ?2, worker = ?3, expires = ?4,
             attempts = attempts + 1, progress_rows = 0, progress_tokens = 0
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
        Ok(Some(LeaseGrant {
            lease,
            job,
            attempt: attempts + 1,
            lease_timeout_s: lease_timeout,
            heartbeat_s: (lease_timeout / 4).clamp(1, 10),
            work,
            // The service fills this in (the database does not know its roots).
            allowed_roots: crate::io::AllowedRoots::anywhere(),
        }))
    }

    /// The shard state, job state and lease timeout behind a lease.
    fn held(&self, lease: &str) -> DbResult<Option<(ShardState, JobState, u64)>> {
        self.conn
            .query_row(
                "SELECT s.state, j.state, j.lease_timeout
                 FROM shards s JOIN jobs j ON j.id = s.job WHERE s.lease = ?1",
                params![lease],
                |r| r.try_into(),
            )
            .optional()
    }

    /// Records progress and extends the lease; tells the worker to stop if it lost the lease or
    /// the job was cancelled.
    pub fn heartbeat(&mut self, lease: &str, rows: u64, tokens: u64) -> DbResult<LeaseReply> {
        match self.held(lease)? {
            Some((state, job_state, timeout))
                if state == ShardState::Leased && job_state == JobState::Running =>
            {
                self.conn.execute(
                    "UPDATE shards SET expires = ?1, progress_rows = ?2, progress_tokens = ?3 WHERE lease = ?4",
                    params![now() + timeout as f64, rows as i64, tokens as i64, lease],
                )?;
                Ok(LeaseReply::keep())
            }
            Some((_, JobState::Cancelled, _)) => {
                Ok(LeaseReply::stop("the job was cancelled"))
            }
            _ => Ok(LeaseReply::stop(
                "the lease was lost (no heartbeat within the lease timeout); the shard went to another worker",
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
        let held: Option<(String, i64, ShardState, u32, String, u32, JobState)> = tx
            .query_row(
                "SELECT s.job, s.shard, s.state, s.attempts, s.causes, j.max_attempts, j.state
                 FROM shards s JOIN jobs j ON j.id = s.job WHERE s.lease = ?1",
                params![lease],
                |r| r.try_into(),
            )
            .optional()?;
        let reply = match held {
            Some((job, shard, ShardState::Leased, attempts, causes, max, job_state)) => {
                let mut list: Vec<String> = serde_json::from_str(&causes).unwrap_or_default();
                list.push(error.to_string());
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
                    params![
                        next,
                        serde_json::to_string(&list).expect("serializable"),
                        job,
                        shard
                    ],
                )?;
                LeaseReply::keep()
            }
            _ => LeaseReply::stop("the lease was no longer held"),
        };
        tx.commit()?;
        Ok(reply)
    }

    /// Takes back leases whose worker went quiet: the shard is leased again (or fails after its
    /// attempts).
    pub fn expire(&mut self) -> DbResult<Vec<Expired>> {
        let tx = self.conn.transaction()?;
        let t = now();
        let mut out = Vec::new();
        {
            let mut stmt = tx.prepare(
                "SELECT s.job, s.shard, s.attempts, s.causes, COALESCE(s.worker, '?'), j.max_attempts, j.lease_timeout, j.state
                 FROM shards s JOIN jobs j ON j.id = s.job
                 WHERE s.state = ?1 AND s.expires < ?2",
            )?;
            type Row = (String, i64, u32, String, String, u32, u64, JobState);
            let rows: Vec<Row> = stmt
                .query_map(params![ShardState::Leased, t], |r| r.try_into())?
                .collect::<DbResult<_>>()?;
            for (job, shard, attempts, causes, worker, max, timeout, job_state) in rows {
                let mut list: Vec<String> = serde_json::from_str(&causes).unwrap_or_default();
                list.push(format!(
                    "worker {worker} lost its lease (no heartbeat for {timeout}s)"
                ));
                if job_state == JobState::Cancelled {
                    // Nothing to lease again: the shard ends with its job.
                    tx.execute(
                        "UPDATE shards SET state = ?1, causes = ?2, expires = NULL
                         WHERE job = ?3 AND shard = ?4",
                        params![
                            ShardState::Cancelled,
                            serde_json::to_string(&list).expect("serializable"),
                            job,
                            shard
                        ],
                    )?;
                    continue;
                }
                let failed = attempts >= max;
                // The lease id stays until the shard is leased again: a late report of the lost
                // lease still lands (its part is committed, exactly once, either way).
                tx.execute(
                    "UPDATE shards SET state = ?1, causes = ?2, expires = NULL
                     WHERE job = ?3 AND shard = ?4",
                    params![
                        if failed {
                            ShardState::Failed
                        } else {
                            ShardState::Pending
                        },
                        serde_json::to_string(&list).expect("serializable"),
                        job,
                        shard
                    ],
                )?;
                out.push(Expired {
                    job,
                    shard: shard as usize,
                    worker,
                    failed,
                });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Takes the next running job whose shards have all ended, for finishing.
    pub fn next_to_finish(&mut self) -> DbResult<Option<ToFinish>> {
        let tx = self.conn.transaction()?;
        let found: Option<(String, String, Option<String>, Option<f64>)> = tx
            .query_row(
                "SELECT id, kind, plan, started FROM jobs j WHERE state = ?1
                 AND NOT EXISTS (SELECT 1 FROM shards s WHERE s.job = j.id AND s.state IN (?2, ?3))
                 ORDER BY seq LIMIT 1",
                params![JobState::Running, ShardState::Pending, ShardState::Leased],
                |r| r.try_into(),
            )
            .optional()?;
        let Some((id, kind, plan, started)) = found else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE jobs SET state = ?1 WHERE id = ?2",
            params![JobState::Finishing, id],
        )?;
        let mut plan: Option<EncodePlan> = plan.and_then(|p| serde_json::from_str(&p).ok());
        let mut reports = BTreeMap::new();
        let mut failures = plan
            .as_ref()
            .map(|p| p.failures.clone())
            .unwrap_or_default();
        let mut train_summary = None;
        {
            let mut stmt = tx.prepare(
                "SELECT shard, spec, state, causes, report FROM shards WHERE job = ?1 ORDER BY shard",
            )?;
            let rows: Vec<(i64, String, ShardState, String, Option<String>)> = stmt
                .query_map(params![id], |r| r.try_into())?
                .collect::<DbResult<_>>()?;
            for (shard, spec, state, causes, report) in rows {
                let causes: Vec<String> = serde_json::from_str(&causes).unwrap_or_default();
                if kind == "train" {
                    if state == ShardState::Done {
                        train_summary = report.and_then(|r| serde_json::from_str(&r).ok());
                    } else {
                        failures.push(ShardFailure {
                            part: String::new(),
                            file: String::new(),
                            rows: (0, 0),
                            causes,
                        });
                    }
                    continue;
                }
                let Ok(spec) = serde_json::from_str::<ShardSpec>(&spec) else {
                    continue;
                };
                match state {
                    ShardState::Done => {
                        if let Some(r) = report.and_then(|r| serde_json::from_str(&r).ok()) {
                            reports.insert(shard as usize, r);
                        }
                    }
                    ShardState::Failed | ShardState::Cancelled => failures.push(ShardFailure {
                        part: spec.part.clone(),
                        file: spec.file.clone(),
                        rows: (spec.first_row, spec.rows),
                        causes,
                    }),
                    _ => {}
                }
                if let Some(p) = plan.as_mut() {
                    p.shards.push(spec);
                }
            }
        }
        tx.commit()?;
        Ok(Some(ToFinish {
            id,
            kind,
            plan,
            reports,
            failures,
            seconds: started.map_or(0.0, |s| now() - s),
            train_summary,
        }))
    }

    /// Sends a finishing job back to running with `shards` (counted committed, their parts
    /// missing from the output) to encode again, or failed for good once out of attempts.
    pub fn requeue(&mut self, id: &str, shards: &[usize], cause: &str) -> DbResult<()> {
        let tx = self.conn.transaction()?;
        for &shard in shards {
            tx.execute(
                "UPDATE shards SET state = CASE WHEN attempts >= (SELECT max_attempts FROM jobs
                 WHERE id = ?1) THEN ?2 ELSE ?3 END, causes = json_insert(causes, '$[#]', ?4),
                 expires = NULL WHERE job = ?1 AND shard = ?5",
                params![
                    id,
                    ShardState::Failed,
                    ShardState::Pending,
                    cause,
                    shard as i64
                ],
            )?;
        }
        tx.execute(
            "UPDATE jobs SET state = ?1 WHERE id = ?2 AND state = ?3",
            params![JobState::Running, id, JobState::Finishing],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Ends a finished job.
    pub fn set_finished(
        &mut self,
        id: &str,
        succeeded: bool,
        summary: &Value,
        error: Option<&str>,
    ) -> DbResult<()> {
        self.conn.execute(
            "UPDATE jobs SET state = ?1, summary = ?2, error = ?3, finished = ?4 WHERE id = ?5 AND state = ?6",
            params![
                if succeeded { JobState::Succeeded } else { JobState::Failed },
                summary.to_string(),
                error,
                now(),
                id,
                JobState::Finishing
            ],
        )?;
        Ok(())
    }

    /// Cancels a job that has not ended. Returns the new view; `Err(state)` if it had ended.
    pub fn cancel(&mut self, id: &str) -> DbResult<Option<Result<JobView, JobState>>> {
        let tx = self.conn.transaction()?;
        let state: Option<JobState> = tx
            .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(state) = state else {
            return Ok(None);
        };
        if state.is_final() {
            return Ok(Some(Err(state)));
        }
        tx.execute(
            "UPDATE jobs SET state = ?1, finished = ?2 WHERE id = ?3",
            params![JobState::Cancelled, now(), id],
        )?;
        tx.execute(
            "UPDATE shards SET state = ?1 WHERE job = ?2 AND state = ?3",
            params![ShardState::Cancelled, id, ShardState::Pending],
        )?;
        tx.commit()?;
        // With its shards: what was committed (and is kept) and what is still in progress.
        Ok(self.job(id, true)?.map(Ok))
    }

    /// Every job, oldest first, without details.
    pub fn jobs(&self) -> DbResult<Vec<JobView>> {
        let ids: Vec<String> = {
            let mut stmt = self.conn.prepare("SELECT id FROM jobs ORDER BY seq")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<DbResult<_>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = self.job(&id, false)? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// One job; with `detail`, its spec and every shard.
    pub fn job(&self, id: &str, detail: bool) -> DbResult<Option<JobView>> {
        type Row = (
            String,
            String,
            JobState,
            f64,
            Option<f64>,
            Option<f64>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT kind, spec, state, created, started, finished, error, summary, name FROM jobs WHERE id = ?1",
                params![id],
                |r| r.try_into(),
            )
            .optional()?;
        let Some((kind, spec, state, created, started, finished, error, summary, name)) = row
        else {
            return Ok(None);
        };
        let mut view = JobView {
            id: id.to_string(),
            name,
            kind,
            state,
            created,
            started,
            finished,
            error,
            summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
            ..Default::default()
        };
        let mut stmt = self.conn.prepare(
            "SELECT shard, rows, state, attempts, causes, worker, progress_rows, report FROM shards WHERE job = ?1 ORDER BY shard",
        )?;
        type ShardRow = (
            i64,
            u64,
            ShardState,
            u32,
            String,
            Option<String>,
            u64,
            Option<String>,
        );
        let shards: Vec<ShardRow> = stmt
            .query_map(params![id], |r| r.try_into())?
            .collect::<DbResult<_>>()?;
        let mut encoded_rows = 0u64;
        for (shard, rows, state, attempts, causes, worker, progress, report) in shards {
            view.shards_total += 1;
            view.rows_total += rows;
            view.attempts += attempts as u64;
            view.retries += attempts.saturating_sub(1) as u64;
            let causes: Vec<String> = serde_json::from_str(&causes).unwrap_or_default();
            match state {
                ShardState::Done => {
                    view.shards_done += 1;
                    view.rows_done += rows;
                    encoded_rows += rows;
                    if view.kind == "train" {
                        let steps = report
                            .as_deref()
                            .and_then(|r| serde_json::from_str::<Value>(r).ok())
                            .and_then(|r| r["steps"].as_u64())
                            .unwrap_or(0);
                        view.rows_done = steps;
                        view.rows_total = steps;
                    }
                }
                ShardState::Skipped => {
                    view.shards_done += 1;
                    view.rows_done += rows;
                }
                ShardState::Leased => {
                    view.shards_running += 1;
                    view.rows_done += progress;
                    encoded_rows += progress;
                }
                ShardState::Failed => view.shards_failed += 1,
                _ => {}
            }
            if detail {
                view.shards.push(ShardView {
                    shard: shard as usize,
                    rows,
                    state,
                    attempts,
                    worker,
                    causes,
                });
            }
        }
        let end = view.finished.unwrap_or_else(now);
        if let Some(start) = view.started {
            let seconds = (end - start).max(1e-3);
            view.docs_per_s = encoded_rows as f64 / seconds;
            if view.finished.is_none() && view.docs_per_s > 0.0 && view.kind == "encode" {
                view.eta_s =
                    Some(view.rows_total.saturating_sub(view.rows_done) as f64 / view.docs_per_s);
            }
        }
        if detail {
            view.spec = serde_json::from_str(&spec).ok();
        }
        Ok(Some(view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::settings::EncodeSettings;
    use crate::job::identity::JobIdentity;
    use crate::model::Dtype;

    fn plan(shards: usize) -> EncodePlan {
        let shard = |id: usize| ShardSpec {
            id,
            file: "/in/a.parquet".into(),
            file_size: 1,
            file_version: None,
            first_row: id as u64 * 10,
            rows: 10,
            segments: Vec::new(),
            part: format!("part-00000-{:012}.parquet", id * 10),
        };
        EncodePlan {
            model: "/m".into(),
            model_fingerprint: "f".into(),
            identity: JobIdentity {
                model: "f".into(),
                model_path: None,
                input: "/in".into(),
                input_files: Vec::new(),
                id_column: "id".into(),
                text_column: "text".into(),
                keep_columns: Vec::new(),
                max_active_dims: None,
                dtype: Dtype::F32,
                query: false,
                long_docs: Default::default(),
                window_stride: 0,
                shard_rows: 10,
                query_column: None,
            },
            shards: (0..shards).map(shard).collect(),
            pending: (0..shards).collect(),
            failures: Vec::new(),
            estimate: None,
            settings: EncodeSettings {
                model: "/m".into(),
                dtype: Dtype::F32,
                batch_tokens: Some(1),
                max_active_dims: None,
                id_column: "id".into(),
                text_column: "text".into(),
                keep_columns: Vec::new(),
                query: false,
                long_docs: Default::default(),
                window_stride: 0,
                output: "/out".into(),
                allowed_roots: Default::default(),
                task: Default::default(),
                shard_reports: false,
            },
        }
    }

    fn planned(db: &mut Db, shards: usize, lease_timeout: u64) -> String {
        let id = db
            .insert_job("encode", &Value::Null, (2, lease_timeout), 10, None)
            .unwrap();
        let Inserted::New(id) = id else {
            panic!("{id:?}")
        };
        assert_eq!(db.next_to_plan().unwrap().unwrap().id, id);
        db.set_planned_encode(&id, &plan(shards)).unwrap();
        id
    }

    #[test]
    fn lost_leases_are_redone_and_late_reports_still_land() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("s.db")).unwrap();
        let job = planned(&mut db, 2, 0);
        let a = db.lease("w1").unwrap().unwrap();
        let b = db.lease("w2").unwrap().unwrap();
        assert!(db.lease("w3").unwrap().is_none(), "both shards are leased");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let expired = db.expire().unwrap();
        assert_eq!(expired.len(), 2);
        assert!(
            !db.heartbeat(&a.lease, 1, 1).unwrap().keep,
            "a lost lease is told to stop"
        );
        // w1's shard is leased again; w2's late report lands before its shard is.
        let again = db.lease("w3").unwrap().unwrap();
        assert_eq!(again.attempt, 2);
        assert!(
            db.done(&b.lease, "w2", &serde_json::json!({"shard": 1}))
                .unwrap()
                .keep
        );
        assert!(
            !db.done(&a.lease, "w1", &Value::Null).unwrap().keep,
            "re-leased: ignored"
        );
        assert!(db.lease("w4").unwrap().is_none(), "nothing left to lease");
        let view = db.job(&job, true).unwrap().unwrap();
        assert_eq!(
            (view.shards_done, view.shards_running, view.retries),
            (1, 1, 1)
        );
        assert!(view.shards[0].causes[0].contains("w1 lost its lease"));
    }

    #[test]
    fn a_part_missing_at_the_finish_is_leased_again_until_its_attempts_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("s.db")).unwrap();
        let job = planned(&mut db, 2, 60);
        for _ in 0..2 {
            let grant = db.lease("w").unwrap().unwrap();
            assert!(db.done(&grant.lease, "w", &Value::Null).unwrap().keep);
        }
        assert_eq!(db.next_to_finish().unwrap().unwrap().id, job);
        // Shard 1's part is gone: leased again (attempt 2 of 2), then finished again.
        db.requeue(&job, &[1], "missing").unwrap();
        let again = db.lease("w").unwrap().unwrap();
        assert_eq!(again.attempt, 2);
        assert!(db.lease("w").unwrap().is_none(), "only the missing shard");
        assert!(db.done(&again.lease, "w", &Value::Null).unwrap().keep);
        let finishing = db.next_to_finish().unwrap().unwrap();
        assert!(finishing.failures.is_empty());
        // Missing again with its attempts spent: failed for good, with the cause.
        db.requeue(&job, &[1], "missing").unwrap();
        assert!(db.lease("w").unwrap().is_none());
        let finishing = db.next_to_finish().unwrap().unwrap();
        assert_eq!(finishing.failures.len(), 1);
        assert_eq!(finishing.failures[0].causes.last().unwrap(), "missing");
    }

    #[test]
    fn a_cancelled_job_keeps_what_was_committed_and_leases_nothing_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("s.db")).unwrap();
        let job = planned(&mut db, 4, 0);
        let [a, b, c] = ["w1", "w2", "w3"].map(|w| db.lease(w).unwrap().unwrap());
        assert!(db.done(&a.lease, "w1", &Value::Null).unwrap().keep);
        let view = db.cancel(&job).unwrap().unwrap().unwrap();
        assert_eq!(
            (view.state, view.shards_done, view.rows_done),
            (JobState::Cancelled, 1, 10)
        );
        assert!(!db.heartbeat(&b.lease, 5, 5).unwrap().keep, "told to stop");
        // b committed before it heard; c stops; the fourth shard was never leased.
        assert!(db.done(&b.lease, "w2", &Value::Null).unwrap().keep);
        db.failed(&c.lease, "abandoned", true).unwrap();
        assert!(db.lease("w4").unwrap().is_none());
        let view = db.job(&job, true).unwrap().unwrap();
        assert_eq!((view.shards_done, view.rows_done), (2, 20));
        let states: Vec<ShardState> = view.shards.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [
                ShardState::Done,
                ShardState::Done,
                ShardState::Cancelled,
                ShardState::Cancelled
            ]
        );
        // A lease of a cancelled job that runs out ends cancelled too, never pending.
        let job = planned(&mut db, 1, 0);
        db.lease("w5").unwrap().unwrap();
        db.cancel(&job).unwrap().unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(db.expire().unwrap().is_empty());
        let view = db.job(&job, true).unwrap().unwrap();
        assert_eq!(view.shards[0].state, ShardState::Cancelled);
    }

    #[test]
    fn a_reopened_database_resumes_jobs_and_keeps_leases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (job, lease, queued) = {
            let mut db = Db::open(&path).unwrap();
            let job = planned(&mut db, 3, 30);
            let lease = db.lease("w1").unwrap().unwrap().lease;
            let Inserted::New(queued) = db
                .insert_job("encode", &Value::Null, (2, 30), 10, Some("nightly"))
                .unwrap()
            else {
                panic!("not queued")
            };
            // Killed while planning it.
            assert_eq!(db.next_to_plan().unwrap().unwrap().id, queued);
            (job, lease, queued)
        };
        let mut db = Db::open(&path).unwrap();
        assert_eq!(
            db.job(&queued, false).unwrap().unwrap().state,
            JobState::Queued
        );
        assert!(
            db.heartbeat(&lease, 5, 50).unwrap().keep,
            "the lease survived"
        );
        let view = db.job(&job, false).unwrap().unwrap();
        assert_eq!((view.state, view.rows_done), (JobState::Running, 5));
        assert_eq!(
            db.insert_job("encode", &Value::Null, (2, 30), 1, None)
                .unwrap(),
            Inserted::Full
        );
        // A named job is found again, even when the queue is full.
        assert_eq!(
            db.insert_job("encode", &Value::Null, (2, 30), 1, Some("nightly"))
                .unwrap(),
            Inserted::Existing {
                id: queued.clone(),
                state: JobState::Queued,
                same: true
            }
        );
        let other = serde_json::json!({"kind": "encode"});
        assert!(matches!(
            db.insert_job("encode", &other, (2, 30), 10, Some("nightly"))
                .unwrap(),
            Inserted::Existing { same: false, .. }
        ));
    }
}
