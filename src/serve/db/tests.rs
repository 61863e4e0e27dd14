//! The database alone: leases, reports, expiry, cancellation, restart, counters.

use super::*;
use crate::encode::settings::EncodeSettings;
use crate::encode::shard::ShardSpec;
use crate::job::identity::JobIdentity;
use crate::model::Dtype;
use crate::serve::wire::{JobKind, JobState, ShardState};

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
        text: None,
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
            title_column: None,
            max_active_dims: None,
            weight_type: Default::default(),
            weight_scale: None,
            prune: None,
            dtype: Dtype::F32,
            query: false,
            long_docs: Default::default(),
            window_stride: 0,
            shard_rows: 10,
            query_column: None,
            text: None,
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
            title_column: None,
            query: false,
            long_docs: Default::default(),
            window_stride: 0,
            output: "/out".into(),
            allowed_roots: Default::default(),
            task: Default::default(),
            shard_reports: false,
            vectors: Default::default(),
            lock_job: None,
            max_part_bytes: None,
        },
    }
}

fn planned(db: &mut Db, shards: usize, lease_timeout: u64) -> String {
    let id = db
        .insert_job(JobKind::Encode, &Value::Null, (2, lease_timeout), 10, None)
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
        !db.heartbeat(&a.lease, 1, 1, 0).unwrap().keep,
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
    let view = db.job(&job, true, ShardFilter::All).unwrap().unwrap();
    assert_eq!(
        (view.shards_done, view.shards_running, view.retries),
        (1, 1, 1)
    );
    assert!(view.shards[0].causes[0].contains("w1 lost its lease"));
}

#[test]
fn a_cancelled_job_keeps_what_was_committed_and_leases_nothing_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("s.db")).unwrap();
    let job = planned(&mut db, 4, 0);
    let [a, b, c] = ["w1", "w2", "w3"].map(|w| db.lease(w).unwrap().unwrap());
    assert!(db.done(&a.lease, "w1", &Value::Null).unwrap().keep);
    db.cancel(&job).unwrap().unwrap().unwrap();
    let view = db.job(&job, true, ShardFilter::All).unwrap().unwrap();
    assert_eq!(
        (view.state, view.shards_done, view.rows_done),
        (JobState::Cancelled, 1, 10)
    );
    assert!(
        !db.heartbeat(&b.lease, 5, 5, 0).unwrap().keep,
        "told to stop"
    );
    // b committed before it heard; c stops; the fourth shard was never leased.
    assert!(db.done(&b.lease, "w2", &Value::Null).unwrap().keep);
    db.failed(&c.lease, "abandoned", true).unwrap();
    assert!(db.lease("w4").unwrap().is_none());
    let view = db.job(&job, true, ShardFilter::All).unwrap().unwrap();
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
    let view = db.job(&job, true, ShardFilter::All).unwrap().unwrap();
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
            .insert_job(JobKind::Encode, &Value::Null, (2, 30), 10, Some("nightly"))
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
        db.job(&queued, false, ShardFilter::None)
            .unwrap()
            .unwrap()
            .state,
        JobState::Queued
    );
    assert!(
        db.heartbeat(&lease, 5, 50, 0).unwrap().keep,
        "the lease survived"
    );
    let view = db.job(&job, false, ShardFilter::None).unwrap().unwrap();
    assert_eq!((view.state, view.rows_done), (JobState::Running, 5));
    assert_eq!(
        db.insert_job(JobKind::Encode, &Value::Null, (2, 30), 1, None)
            .unwrap(),
        Inserted::Full
    );
    // A named job is found again, even when the queue is full.
    assert_eq!(
        db.insert_job(JobKind::Encode, &Value::Null, (2, 30), 1, Some("nightly"))
            .unwrap(),
        Inserted::Existing {
            id: queued.clone(),
            state: JobState::Queued,
            same: true
        }
    );
    let other = serde_json::json!({"kind": "encode"});
    assert!(matches!(
        db.insert_job(JobKind::Encode, &other, (2, 30), 10, Some("nightly"))
            .unwrap(),
        Inserted::Existing { same: false, .. }
    ));
}

/// Every counter of a job, as the view shows it.
fn counted(db: &Db, job: &str) -> (u64, u64, u64, u64, u64, u64, u64, u64) {
    let v = db.job(job, false, ShardFilter::None).unwrap().unwrap();
    (
        v.shards_total,
        v.shards_done,
        v.shards_failed,
        v.shards_running,
        v.rows_total,
        v.rows_committed,
        v.attempts,
        v.retries,
    )
}

#[test]
fn counters_kept_on_the_job_row_equal_a_count_of_its_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("s.db")).unwrap();
    let job = planned(&mut db, 6, 0);
    let [a, b, c, d] = ["w1", "w2", "w3", "w4"].map(|w| db.lease(w).unwrap().unwrap());
    db.done(&a.lease, "w1", &Value::Null).unwrap();
    db.failed(&b.lease, "boom", true).unwrap();
    db.failed(&c.lease, "bad input", false).unwrap();
    db.heartbeat(&d.lease, 3, 3, 0).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    db.expire().unwrap();
    let e = db.lease("w5").unwrap().unwrap();
    db.done(&e.lease, "w5", &Value::Null).unwrap();
    let kept = counted(&db, &job);
    db.conn.execute_batch(BACKFILL).unwrap();
    assert_eq!(kept, counted(&db, &job), "kept incrementally == recounted");
    assert_eq!(kept, (6, 2, 1, 0, 60, 20, 5, 1));
    db.cancel(&job).unwrap().unwrap().unwrap();
    let kept = counted(&db, &job);
    db.conn.execute_batch(BACKFILL).unwrap();
    assert_eq!(kept, counted(&db, &job));
}

#[test]
fn an_unreadable_stored_plan_fails_its_job_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("s.db")).unwrap();
    let broken = planned(&mut db, 2, 30);
    let fine = planned(&mut db, 2, 30);
    db.conn
        .execute(
            "UPDATE jobs SET plan = '{\"model\": 1' WHERE id = ?1",
            params![broken],
        )
        .unwrap();
    let grant = db.lease("w1").unwrap().expect("the other job's shard");
    assert_eq!(grant.job, fine);
    let view = db.job(&broken, false, ShardFilter::None).unwrap().unwrap();
    assert_eq!(view.state, JobState::Failed);
    assert!(
        view.error
            .unwrap()
            .contains("stored plan of this job is unreadable"),
        "names the cause"
    );
    // A shard whose stored spec is unreadable fails alone too.
    db.conn
        .execute(
            "UPDATE shards SET spec = 'x' WHERE job = ?1 AND shard = 1",
            params![fine],
        )
        .unwrap();
    assert!(db.lease("w2").unwrap().is_none());
    let view = db.job(&fine, false, ShardFilter::All).unwrap().unwrap();
    assert_eq!(view.shards[1].state, ShardState::Failed);
    assert!(view.shards[1].causes[0].contains("cannot read the stored spec of shard 1"));
}

#[test]
fn heartbeats_without_progress_lose_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("s.db")).unwrap();
    let job = planned(&mut db, 2, 1);
    let moving = db.lease("w1").unwrap().unwrap();
    let stuck = db.lease("w2").unwrap().unwrap();
    for i in 1..=6 {
        assert!(db.heartbeat(&moving.lease, i, i, i).unwrap().keep);
        db.heartbeat(&stuck.lease, 1, 1, 7).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(250));
        db.expire().unwrap();
    }
    assert!(db.heartbeat(&moving.lease, 9, 9, 9).unwrap().keep);
    assert!(!db.heartbeat(&stuck.lease, 1, 1, 7).unwrap().keep);
    let view = db.job(&job, false, ShardFilter::All).unwrap().unwrap();
    assert_eq!(view.shards[1].state, ShardState::Pending);
    assert!(
        view.shards[1].causes[0].contains("heartbeats but no progress for 1s"),
        "{:?}",
        view.shards[1].causes
    );
}

#[test]
fn pages_of_jobs_follow_each_other_and_ended_jobs_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("s.db")).unwrap();
    let jobs: Vec<String> = (0..5).map(|_| planned(&mut db, 3, 30)).collect();
    let first = db.jobs_page(None, 2).unwrap();
    let after = first.next.as_deref().map(|n| n.parse().unwrap());
    let second = db.jobs_page(after, 2).unwrap();
    let after = second.next.as_deref().map(|n| n.parse().unwrap());
    let third = db.jobs_page(after, 2).unwrap();
    assert!(third.next.is_none());
    assert_eq!(
        (first.jobs.len(), second.jobs.len(), third.jobs.len()),
        (2, 2, 1)
    );
    let ids: Vec<String> = [first, second, third]
        .into_iter()
        .flat_map(|p| p.jobs.into_iter().map(|j| j.id))
        .collect();
    assert_eq!(ids, jobs);
    db.cancel(&jobs[0]).unwrap().unwrap().unwrap();
    assert!(db.expired_jobs(now() - 60.0, 10).unwrap().is_empty());
    let old = db.expired_jobs(now() + 1.0, 10).unwrap();
    assert_eq!(old, [jobs[0].clone()]);
    while !db.purge_step(&old[0]).unwrap() {}
    assert!(db
        .job(&jobs[0], false, ShardFilter::None)
        .unwrap()
        .is_none());
    let left: i64 = db
        .conn
        .query_row("SELECT COUNT(*) FROM shards", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 12);
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
    assert_eq!(db.next_to_finish().unwrap().unwrap().0, job);
    // Shard 1's part is gone: leased again (attempt 2 of 2), then finished again.
    let missing = [(1, "part-00000-000000000010.parquet".to_string())];
    db.requeue(&job, &missing).unwrap();
    let again = db.lease("w").unwrap().unwrap();
    assert_eq!(again.attempt, 2);
    assert!(db.lease("w").unwrap().is_none(), "only the missing shard");
    assert!(db.done(&again.lease, "w", &Value::Null).unwrap().keep);
    let (id, kind) = db.next_to_finish().unwrap().unwrap();
    assert!(db.finishing(&id, kind).unwrap().failures.is_empty());
    // Missing again with its attempts spent: failed for good, with the cause.
    db.requeue(&job, &missing).unwrap();
    assert!(db.lease("w").unwrap().is_none());
    let (id, kind) = db.next_to_finish().unwrap().unwrap();
    let finishing = db.finishing(&id, kind).unwrap();
    assert_eq!(finishing.failures.len(), 1);
    assert!(finishing.failures[0]
        .causes
        .last()
        .unwrap()
        .contains("was missing from the output at the finish"));
}
