//! Reading jobs back: one job or a page of them from the per-job counters (never scanning
//! shards), shards only when asked for, and everything a finisher needs once a job's shards
//! have all ended.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Row};
use serde_json::Value;

use super::{now, Db, DbResult};
use crate::encode::settings::EncodeSettings;
use crate::encode::shard::{ShardReport, ShardSpec};
use crate::job::plan::EncodePlan;
use crate::job::ShardFailure;
use crate::serve::wire::{Causes, JobKind, JobPage, JobState, JobView, ShardState, ShardView};

/// Most shards `ShardFilter::Causes` returns.
const CAUSES_LIMIT: i64 = 1000;

/// Which shards a job view carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardFilter {
    /// None: the counters say enough.
    #[default]
    None,
    /// Those with a failed attempt (the first thousand).
    Causes,
    /// Every shard.
    All,
}

/// A job whose shards have all ended.
pub struct ToFinish {
    /// Job id.
    pub id: String,
    /// What it runs.
    pub kind: JobKind,
    /// The plan (encode), its shards restored from the table; `Err` if the stored plan is
    /// unreadable.
    pub plan: Result<Option<EncodePlan>, String>,
    /// Reports of the shards this run committed.
    pub reports: BTreeMap<usize, ShardReport>,
    /// Failed shards and unreadable files.
    pub failures: Vec<ShardFailure>,
    /// Seconds since the job started.
    pub seconds: f64,
    /// The train summary (train jobs).
    pub train_summary: Option<Value>,
}

const JOB_COLUMNS: &str = "seq, id, kind, state, created, started, finished, error, summary, name,
    n_pending, n_leased, n_done, n_skipped, n_failed, n_cancelled, rows_total, rows_done,
    rows_skipped, attempts, retries";

/// A jobs row (`JOB_COLUMNS`) as a view, counters only.
fn job_row(r: &Row<'_>) -> rusqlite::Result<(i64, JobView, u64)> {
    let counter = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    // n_pending, n_leased, n_done, n_skipped, n_failed, n_cancelled.
    let mut states = [0u64; 6];
    for (k, n) in states.iter_mut().enumerate() {
        *n = counter(10 + k)?;
    }
    let [_, leased, done, skipped, failed, _] = states;
    let rows_done = counter(17)?;
    let rows_skipped = counter(18)?;
    let view = JobView {
        id: r.get(1)?,
        kind: r.get(2)?,
        state: r.get(3)?,
        created: r.get(4)?,
        started: r.get(5)?,
        finished: r.get(6)?,
        error: r.get(7)?,
        summary: r
            .get::<_, Option<String>>(8)?
            .and_then(|s| serde_json::from_str(&s).ok()),
        name: r.get(9)?,
        shards_total: states.iter().sum(),
        shards_done: done + skipped,
        shards_failed: failed,
        shards_running: leased,
        rows_total: counter(16)?,
        rows_done: rows_done + rows_skipped,
        rows_committed: rows_done + rows_skipped,
        attempts: counter(19)?,
        retries: counter(20)?,
        ..Default::default()
    };
    Ok((r.get(0)?, view, rows_done))
}

impl Db {
    /// Up to `limit` jobs after the cursor `after` (a previous page's `next`), oldest first.
    pub fn jobs_page(&self, after: Option<i64>, limit: usize) -> DbResult<JobPage> {
        let rows: Vec<(i64, JobView, u64)> = {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after.unwrap_or(0), limit as i64], job_row)?;
            rows.collect::<DbResult<_>>()?
        };
        let full = rows.len() == limit;
        let mut page = JobPage::default();
        let mut last = None;
        for (seq, mut view, encoded) in rows {
            self.complete(&mut view, encoded)?;
            page.jobs.push(view);
            last = Some(seq);
        }
        if full {
            page.next = last.map(|s| s.to_string());
        }
        Ok(page)
    }

    /// Every job, oldest first, without details.
    pub fn jobs(&self) -> DbResult<Vec<JobView>> {
        Ok(self.jobs_page(None, i64::MAX as usize)?.jobs)
    }

    /// One job; with `detail`, its spec, and the shards `shards` asks for.
    pub fn job(&self, id: &str, detail: bool, shards: ShardFilter) -> DbResult<Option<JobView>> {
        let found = self
            .conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                job_row,
            )
            .optional()?;
        let Some((_, mut view, encoded)) = found else {
            return Ok(None);
        };
        self.complete(&mut view, encoded)?;
        if detail {
            let spec: String =
                self.conn
                    .query_row("SELECT spec FROM jobs WHERE id = ?1", params![id], |r| {
                        r.get(0)
                    })?;
            view.spec = serde_json::from_str(&spec).ok();
        }
        let query = match shards {
            ShardFilter::None => return Ok(Some(view)),
            ShardFilter::All => {
                "SELECT shard, rows, state, attempts, causes, worker FROM shards
                 WHERE job = ?1 ORDER BY shard LIMIT -1"
            }
            ShardFilter::Causes => {
                "SELECT shard, rows, state, attempts, causes, worker FROM shards
                 WHERE job = ?1 AND causes != '[]' ORDER BY shard LIMIT ?2"
            }
        };
        let mut stmt = self.conn.prepare(query)?;
        let map = |r: &Row<'_>| {
            Ok(ShardView {
                shard: r.get::<_, i64>(0)? as usize,
                rows: r.get(1)?,
                state: r.get(2)?,
                attempts: r.get(3)?,
                causes: r.get::<_, Causes>(4)?.texts(),
                worker: r.get(5)?,
            })
        };
        view.shards = match shards {
            ShardFilter::Causes => stmt.query_map(params![id, CAUSES_LIMIT], map)?,
            _ => stmt.query_map(params![id], map)?,
        }
        .collect::<DbResult<_>>()?;
        Ok(Some(view))
    }

    /// Adds what the counters do not hold: the progress of leased shards, a train job's steps,
    /// the rate and the time left.
    fn complete(&self, view: &mut JobView, mut encoded: u64) -> DbResult<()> {
        if view.shards_running > 0 {
            let progress: i64 = self.conn.query_row(
                "SELECT COALESCE(SUM(progress_rows), 0) FROM shards WHERE job = ?1 AND state = ?2",
                params![view.id, ShardState::Leased],
                |r| r.get(0),
            )?;
            view.rows_done += progress.max(0) as u64;
            encoded += progress.max(0) as u64;
        }
        if view.kind == JobKind::Train && view.shards_done > 0 {
            let report: Option<String> = self
                .conn
                .query_row(
                    "SELECT report FROM shards WHERE job = ?1 AND state = ?2 LIMIT 1",
                    params![view.id, ShardState::Done],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            let steps = report
                .and_then(|r| serde_json::from_str::<Value>(&r).ok())
                .and_then(|r| r["steps"].as_u64())
                .unwrap_or(0);
            (view.rows_done, view.rows_total, view.rows_committed) = (steps, steps, steps);
        }
        let end = view.finished.unwrap_or_else(now);
        if let Some(start) = view.started {
            let seconds = (end - start).max(1e-3);
            view.docs_per_s = encoded as f64 / seconds;
            if view.finished.is_none() && view.docs_per_s > 0.0 && view.kind == JobKind::Encode {
                view.eta_s =
                    Some(view.rows_total.saturating_sub(view.rows_done) as f64 / view.docs_per_s);
            }
        }
        Ok(())
    }

    /// Running encode jobs and the settings of their stored plans (output, roots, the job name
    /// their output's lock holds). A plan that cannot be read is left to the lease path, which
    /// fails its job with that cause.
    pub fn running_encode_jobs(&self) -> DbResult<Vec<(String, EncodeSettings)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, plan FROM jobs WHERE state = ?1 AND kind = ?2 ORDER BY seq")?;
        let rows = stmt.query_map(params![JobState::Running, JobKind::Encode], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, plan) = row?;
            if let Some(plan) = plan.and_then(|p| serde_json::from_str::<EncodePlan>(&p).ok()) {
                out.push((id, plan.settings));
            }
        }
        Ok(out)
    }

    /// Takes the next running job whose shards have all ended, for finishing (the counters
    /// say so; no shard is read). `finishing` then reads what the finisher needs.
    pub fn next_to_finish(&mut self) -> DbResult<Option<(String, JobKind)>> {
        let tx = self.conn.transaction()?;
        let found: Option<(String, JobKind)> = tx
            .query_row(
                "SELECT id, kind FROM jobs WHERE state = ?1 AND n_pending = 0 AND n_leased = 0
                 ORDER BY seq LIMIT 1",
                params![JobState::Running],
                |r| r.try_into(),
            )
            .optional()?;
        let Some((id, kind)) = found else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE jobs SET state = ?1 WHERE id = ?2",
            params![JobState::Finishing, id],
        )?;
        tx.commit()?;
        Ok(Some((id, kind)))
    }

    /// What finishing a job takes: its plan with every shard, reports and failures. Reads only
    /// (a job being finished changes no more), so it runs beside the writer.
    pub fn finishing(&self, id: &str, kind: JobKind) -> DbResult<ToFinish> {
        let (plan, started): (Option<String>, Option<f64>) = self.conn.query_row(
            "SELECT plan, started FROM jobs WHERE id = ?1",
            params![id],
            |r| r.try_into(),
        )?;
        let mut plan: Result<Option<EncodePlan>, String> = match (kind, plan) {
            (JobKind::Train, _) => Ok(None),
            (JobKind::Encode, None) => Err("the job has no stored plan".into()),
            (JobKind::Encode, Some(p)) => serde_json::from_str(&p)
                .map(Some)
                .map_err(|e| format!("the stored plan of this job is unreadable ({e})")),
        };
        let mut reports = BTreeMap::new();
        let mut failures = match &plan {
            Ok(Some(p)) => p.failures.clone(),
            _ => Vec::new(),
        };
        let mut train_summary = None;
        let mut stmt = self.conn.prepare(
            "SELECT shard, spec, state, causes, report FROM shards WHERE job = ?1 ORDER BY shard",
        )?;
        let mut rows = stmt.query(params![id])?;
        while let Some(r) = rows.next()? {
            let (shard, spec, state, causes, report): (
                i64,
                String,
                ShardState,
                Causes,
                Option<String>,
            ) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
            if kind == JobKind::Train {
                if state == ShardState::Done {
                    train_summary = report.and_then(|r| serde_json::from_str(&r).ok());
                } else {
                    failures.push(ShardFailure {
                        part: String::new(),
                        file: String::new(),
                        rows: (0, 0),
                        causes: causes.texts(),
                    });
                }
                continue;
            }
            let spec = match serde_json::from_str::<ShardSpec>(&spec) {
                Ok(spec) => spec,
                Err(e) => {
                    failures.push(ShardFailure {
                        part: String::new(),
                        file: String::new(),
                        rows: (0, 0),
                        causes: vec![format!(
                            "the service cannot read the stored spec of shard {shard} ({e})"
                        )],
                    });
                    continue;
                }
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
                    causes: causes.texts(),
                }),
                _ => {}
            }
            if let Ok(Some(p)) = plan.as_mut() {
                if state != ShardState::Skipped {
                    p.pending.push(spec.id);
                }
                p.shards.push(spec);
            }
        }
        Ok(ToFinish {
            id: id.to_string(),
            kind,
            plan,
            reports,
            failures,
            seconds: started.map_or(0.0, |s| now() - s),
            train_summary,
        })
    }
}
