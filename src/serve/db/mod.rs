//! The service's state in SQLite: jobs, their shards, and the leases on them. Every change is
//! one transaction, so a coordinator killed at any moment restarts from a consistent queue.
//!
//! Scale: a job's shard counts live on its row, kept by a trigger on every shard state change,
//! so a lease, a status poll or a listing never scans a job's shards (a job may have millions).
//! Writes go through one connection (`Store::write`), each short; reads use their own
//! connections, which WAL lets run beside the writer.

mod lease;
mod store;
#[cfg(test)]
mod tests;
mod view;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

pub use self::store::Store;
pub use self::view::{ShardFilter, ToFinish};
use super::wire::{Causes, FailureCause, JobKind, JobState, ShardState};
use crate::job::plan::EncodePlan;

/// Errors of the state database.
pub type DbResult<T> = Result<T, rusqlite::Error>;

/// Seconds since the epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Shards inserted per transaction while a plan is stored: leases go on between batches.
pub(super) const PLAN_BATCH: usize = 20_000;
/// Shards deleted per transaction when a job passes its retention.
const PURGE_BATCH: usize = 20_000;

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
    progress INTEGER NOT NULL DEFAULT 0,
    stalled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, shard)
);
CREATE INDEX IF NOT EXISTS shards_state ON shards(state, job);
CREATE UNIQUE INDEX IF NOT EXISTS shards_lease ON shards(lease);
";

/// Per-job counters on the jobs row (added to databases of older versions).
const COUNTERS: [&str; 11] = [
    "n_pending",
    "n_leased",
    "n_done",
    "n_skipped",
    "n_failed",
    "n_cancelled",
    "rows_total",
    "rows_done",
    "rows_skipped",
    "attempts",
    "retries",
];

/// Keeps the counters as shards change state or are leased again; the next pending shard of a
/// job is found through `shards_job_state`.
const COUNTER_TRIGGER: &str = "
CREATE INDEX IF NOT EXISTS shards_job_state ON shards(job, state, shard);
CREATE TRIGGER IF NOT EXISTS shards_counters AFTER UPDATE OF state, attempts ON shards
WHEN OLD.state IS NOT NEW.state OR OLD.attempts != NEW.attempts
BEGIN
    UPDATE jobs SET
        n_pending = n_pending + (NEW.state = 'pending') - (OLD.state = 'pending'),
        n_leased = n_leased + (NEW.state = 'leased') - (OLD.state = 'leased'),
        n_done = n_done + (NEW.state = 'done') - (OLD.state = 'done'),
        n_skipped = n_skipped + (NEW.state = 'skipped') - (OLD.state = 'skipped'),
        n_failed = n_failed + (NEW.state = 'failed') - (OLD.state = 'failed'),
        n_cancelled = n_cancelled + (NEW.state = 'cancelled') - (OLD.state = 'cancelled'),
        rows_done = rows_done + (NEW.state = 'done') * NEW.rows - (OLD.state = 'done') * OLD.rows,
        rows_skipped = rows_skipped + (NEW.state = 'skipped') * NEW.rows
            - (OLD.state = 'skipped') * OLD.rows,
        attempts = attempts + NEW.attempts - OLD.attempts,
        retries = retries + MAX(NEW.attempts - 1, 0) - MAX(OLD.attempts - 1, 0)
    WHERE id = NEW.job;
END;
";

/// Recomputes every job's counters from its shards (once, for a database of an older version).
const BACKFILL: &str = "
UPDATE jobs SET
    n_pending = (SELECT COUNT(*) FROM shards s WHERE s.job = jobs.id AND s.state = 'pending'),
    n_leased = (SELECT COUNT(*) FROM shards s WHERE s.job = jobs.id AND s.state = 'leased'),
    n_done = (SELECT COUNT(*) FROM shards s WHERE s.job = jobs.id AND s.state = 'done'),
    n_skipped = (SELECT COUNT(*) FROM shards s WHERE s.job = jobs.id AND s.state = 'skipped'),
    n_failed = (SELECT COUNT(*) FROM shards s WHERE s.job = jobs.id AND s.state = 'failed'),
    n_cancelled = (SELECT COUNT(*) FROM shards s WHERE s.job = jobs.id AND s.state = 'cancelled'),
    rows_total = (SELECT COALESCE(SUM(rows), 0) FROM shards s WHERE s.job = jobs.id),
    rows_done = (SELECT COALESCE(SUM(rows), 0) FROM shards s WHERE s.job = jobs.id AND s.state = 'done'),
    rows_skipped = (SELECT COALESCE(SUM(rows), 0) FROM shards s WHERE s.job = jobs.id AND s.state = 'skipped'),
    attempts = (SELECT COALESCE(SUM(attempts), 0) FROM shards s WHERE s.job = jobs.id),
    retries = (SELECT COALESCE(SUM(MAX(attempts - 1, 0)), 0) FROM shards s WHERE s.job = jobs.id);
";

/// The plan's pending shard ids, sorted for lookups by binary search: as planned (in shard
/// order) they are borrowed, not copied into a set (a million ids would be tens of MiB).
pub(super) fn sorted_pending(plan: &EncodePlan) -> Cow<'_, [usize]> {
    if plan.pending.is_sorted() {
        Cow::Borrowed(&plan.pending)
    } else {
        let mut ids = plan.pending.clone();
        ids.sort_unstable();
        Cow::Owned(ids)
    }
}

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
    /// Its spec document, or why the stored text is unreadable.
    pub spec: Result<Value, String>,
}

/// One connection to the state database, with what it decoded of each job's plan.
pub struct Db {
    conn: Connection,
    /// Decoded work settings per job, so that a lease does not parse the stored plan again.
    settings: lease::SettingsCache,
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
        let has = |column: &str| -> DbResult<bool> {
            conn.prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = ?1")?
                .exists(params![column])
        };
        if !has("name")? {
            conn.execute_batch("ALTER TABLE jobs ADD COLUMN name TEXT")?;
        }
        let mut backfill = false;
        for column in COUNTERS {
            if !has(column)? {
                conn.execute_batch(&format!(
                    "ALTER TABLE jobs ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
                ))?;
                backfill = true;
            }
        }
        for column in ["progress", "stalled"] {
            let present = conn
                .prepare("SELECT 1 FROM pragma_table_info('shards') WHERE name = ?1")?
                .exists(params![column])?;
            if !present {
                conn.execute_batch(&format!(
                    "ALTER TABLE shards ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
                ))?;
            }
        }
        conn.execute_batch("CREATE UNIQUE INDEX IF NOT EXISTS jobs_name ON jobs(name)")?;
        conn.execute_batch(COUNTER_TRIGGER)?;
        if backfill {
            conn.execute_batch(BACKFILL)?;
        }
        let db = Self::with(conn);
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

    /// Another connection to a database `open` prepared, for reads beside the writer.
    pub fn open_reader(path: &Path) -> DbResult<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Self::with(conn))
    }

    fn with(conn: Connection) -> Self {
        Self {
            conn,
            settings: Default::default(),
        }
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
        kind: JobKind,
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
            spec: serde_json::from_str(&spec)
                .map_err(|e| format!("the stored spec of this job is unreadable ({e})")),
        }))
    }

    /// Starts storing a plan: forgets shards a run killed while planning left behind. Returns
    /// false if the job is no longer being planned (cancelled meanwhile).
    pub fn begin_plan(&mut self, id: &str) -> DbResult<bool> {
        let tx = self.conn.transaction()?;
        if !Self::planning(&tx, id)? {
            return Ok(false);
        }
        tx.execute("DELETE FROM shards WHERE job = ?1", params![id])?;
        let zero: Vec<String> = COUNTERS.iter().map(|c| format!("{c} = 0")).collect();
        tx.execute(
            &format!("UPDATE jobs SET {} WHERE id = ?1", zero.join(", ")),
            params![id],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn planning(tx: &Connection, id: &str) -> DbResult<bool> {
        let state: Option<JobState> = tx
            .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(state == Some(JobState::Planning))
    }

    /// Stores a batch of a plan's shards (those committed before are skipped), with their
    /// counts; `pending` is sorted (see [`sorted_pending`]). Returns false if the job is no
    /// longer being planned.
    pub fn add_planned_shards(
        &mut self,
        id: &str,
        shards: &[crate::encode::shard::ShardSpec],
        pending: &[usize],
    ) -> DbResult<bool> {
        let tx = self.conn.transaction()?;
        if !Self::planning(&tx, id)? {
            return Ok(false);
        }
        let (mut n_pending, mut n_skipped, mut rows_total, mut rows_skipped) = (0i64, 0i64, 0, 0);
        {
            let mut insert = tx.prepare(
                "INSERT INTO shards (job, shard, spec, rows, state) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for s in shards {
                let rows = i64::try_from(s.rows).unwrap_or(i64::MAX);
                let state = if pending.binary_search(&s.id).is_ok() {
                    n_pending += 1;
                    ShardState::Pending
                } else {
                    n_skipped += 1;
                    rows_skipped += rows;
                    ShardState::Skipped
                };
                rows_total += rows;
                let spec = serde_json::to_string(s)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
                insert.execute(params![id, s.id as i64, spec, rows, state])?;
            }
        }
        tx.execute(
            "UPDATE jobs SET n_pending = n_pending + ?1, n_skipped = n_skipped + ?2,
             rows_total = rows_total + ?3, rows_skipped = rows_skipped + ?4 WHERE id = ?5",
            params![n_pending, n_skipped, rows_total, rows_skipped, id],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Ends storing a plan: the job runs, its shards become leasable. The plan is stored
    /// without its shard list (the shards table holds it).
    pub fn finish_plan(&mut self, id: &str, plan: &EncodePlan) -> DbResult<()> {
        // Field by field: cloning the plan whole would copy its million shards first.
        let stored = EncodePlan {
            model: plan.model.clone(),
            model_fingerprint: plan.model_fingerprint.clone(),
            identity: plan.identity.clone(),
            shards: Vec::new(),
            pending: Vec::new(),
            failures: plan.failures.clone(),
            settings: plan.settings.clone(),
            estimate: plan.estimate.clone(),
        };
        let text = serde_json::to_string(&stored)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        self.conn.execute(
            "UPDATE jobs SET state = ?1, plan = ?2, started = ?3 WHERE id = ?4 AND state = ?5",
            params![JobState::Running, text, now(), id, JobState::Planning],
        )?;
        Ok(())
    }

    /// Stores an encode plan in batches, each its own transaction.
    pub fn set_planned_encode(&mut self, id: &str, plan: &EncodePlan) -> DbResult<()> {
        if !self.begin_plan(id)? {
            return Ok(());
        }
        let pending = sorted_pending(plan);
        for batch in plan.shards.chunks(PLAN_BATCH) {
            if !self.add_planned_shards(id, batch, &pending)? {
                return Ok(()); // Cancelled meanwhile.
            }
        }
        self.finish_plan(id, plan)
    }

    /// A train job is one lease: the whole run, resumed from its checkpoints when redone.
    pub fn set_planned_train(&mut self, id: &str) -> DbResult<()> {
        if !self.begin_plan(id)? {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE jobs SET state = ?1, started = ?2, n_pending = 1 WHERE id = ?3 AND state = ?4",
            params![JobState::Running, now(), id, JobState::Planning],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT INTO shards (job, shard, spec, rows, state) VALUES (?1, 0, 'null', 0, ?2)",
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

    /// Sends a finishing job back to running with `missing` (shard, part) counted committed but
    /// gone from the output, to encode again, or failed for good once out of attempts.
    pub fn requeue(&mut self, id: &str, missing: &[(usize, String)]) -> DbResult<()> {
        let tx = self.conn.transaction()?;
        let max: u32 = tx.query_row(
            "SELECT max_attempts FROM jobs WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        for (shard, part) in missing {
            let (attempts, mut causes): (u32, Causes) = tx.query_row(
                "SELECT attempts, causes FROM shards WHERE job = ?1 AND shard = ?2",
                params![id, *shard as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            causes
                .0
                .push(FailureCause::MissingAtFinish { part: part.clone() });
            let next = if attempts < max {
                ShardState::Pending
            } else {
                ShardState::Failed
            };
            tx.execute(
                "UPDATE shards SET state = ?1, causes = ?2, lease = NULL, expires = NULL
                 WHERE job = ?3 AND shard = ?4",
                params![next, causes, id, *shard as i64],
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
        self.settings.remove(id);
        Ok(())
    }

    /// Cancels a job that has not ended. Returns `Err(state)` if it had ended, `None` if there
    /// is no such job.
    pub fn cancel(&mut self, id: &str) -> DbResult<Option<Result<(), JobState>>> {
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
        self.settings.remove(id);
        Ok(Some(Ok(())))
    }

    /// Ended jobs that ended before `before` (seconds since the epoch), oldest first, at most
    /// `limit`; jobs with a lease still out are kept until it ends.
    pub fn expired_jobs(&self, before: f64, limit: usize) -> DbResult<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT id FROM jobs WHERE state IN (?1, ?2, ?3) AND finished < ?4 AND n_leased = 0
             ORDER BY seq LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![
                JobState::Succeeded,
                JobState::Failed,
                JobState::Cancelled,
                before,
                limit as i64
            ],
            |r| r.get(0),
        )?;
        rows.collect()
    }

    /// Deletes up to a batch of a job's shards, then the job once it has none. Returns true
    /// when the job is gone.
    pub fn purge_step(&mut self, id: &str) -> DbResult<bool> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM shards WHERE rowid IN (SELECT rowid FROM shards WHERE job = ?1 LIMIT ?2)",
            params![id, PURGE_BATCH as i64],
        )?;
        let gone = n < PURGE_BATCH;
        if gone {
            tx.execute("DELETE FROM jobs WHERE id = ?1", params![id])?;
        }
        tx.commit()?;
        if gone {
            self.settings.remove(id);
        }
        Ok(gone)
    }
}
