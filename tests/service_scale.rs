//! The service at scale and under damage, with the real binary on loopback: a job whose stored
//! plan is corrupt fails alone, counters too large for SQLite are refused, a lease whose
//! worker heartbeats without progress is taken back, ended jobs are deleted after
//! `--retention`, and job listings come in pages with shards only on request.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::corpus::*;
use common::process::*;
use common::service::*;
use serde_json::{json, Value};

fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = http()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn get_status(url: &str, path: &str) -> (u16, Value) {
    let r = http().get(format!("{url}{path}")).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// An encode spec of the corpus under `dir/in` into `dir/NAME`.
fn spec(dir: &Path, name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "kind": "encode",
        "input": dir.join("in").display().to_string(),
        "output": dir.join(name).display().to_string(),
        "shard_rows": 10,
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

fn running(service: &Service, id: &str) {
    wait_for("the job to be planned", || {
        service.job(id).state == "running"
    });
}

#[test]
fn a_job_whose_stored_plan_is_corrupt_fails_alone_and_the_next_job_still_leases() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("in/a.parquet"), 0..20, 10);
    let state = dir.path().join("state.db");
    let service = Service::start(&state, "127.0.0.1:0", &[]);
    let broken = service.submit(&spec(dir.path(), "out-a", json!({})));
    let fine = service.submit(&spec(dir.path(), "out-b", json!({})));
    running(&service, &broken);
    running(&service, &fine);
    drop(service);
    let db = rusqlite::Connection::open(&state).unwrap();
    let n = db
        .execute(
            "UPDATE jobs SET plan = '{\"model\": \"/m\", \"trunc' WHERE id = ?1",
            [&broken],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let service = Service::start(&state, "127.0.0.1:0", &[]);
    let (code, grant) = post(
        &service.url,
        "/v1/leases",
        &json!({"worker": "w", "device": "cpu"}),
    );
    assert_eq!(code, 200, "a lease is granted: {grant}");
    assert_eq!(grant["job"], fine.as_str(), "{grant}");
    let view = service.job(&broken);
    assert_eq!(view.state, "failed", "{view:?}");
    let error = view.error.unwrap_or_default();
    assert!(
        error.contains("stored plan of this job is unreadable") && error.contains("submit"),
        "{error}"
    );
}

#[test]
fn heartbeat_counters_beyond_a_signed_64_bit_integer_answer_400() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &[]);
    let big = 1u64 << 63;
    for body in [
        json!({"rows": big, "tokens": 1}),
        json!({"rows": 1, "tokens": u64::MAX}),
        json!({"rows": 1, "tokens": 1, "progress": big}),
    ] {
        let (code, answer) = post(&service.url, "/v1/leases/zzz/heartbeat", &body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("is larger than 9223372036854775807"),
            "{answer}"
        );
    }
}

#[test]
fn a_lease_whose_heartbeats_carry_no_progress_is_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("in/a.parquet"), 0..20, 10);
    let service = Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &[]);
    let id = service.submit(&spec(dir.path(), "out", json!({"lease_timeout": 1})));
    running(&service, &id);
    let worker = json!({"worker": "stuck", "device": "cpu"});
    let (code, grant) = post(&service.url, "/v1/leases", &worker);
    assert_eq!(code, 200, "{grant}");
    let lease = grant["lease"].as_str().unwrap().to_string();
    // The heartbeat thread runs on; the counter stays where it was.
    let started = Instant::now();
    let mut kept = true;
    while kept && started.elapsed() < Duration::from_secs(10) {
        let beat = json!({"rows": 3, "tokens": 30, "progress": 42});
        let (code, reply) = post(
            &service.url,
            &format!("/v1/leases/{lease}/heartbeat"),
            &beat,
        );
        assert_eq!(code, 200, "{reply}");
        kept = reply["keep"] == true;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!kept, "a stalled lease is lost within the lease timeout");
    let shard = &service.job(&id).shards[0];
    assert!(
        shard.causes[0].contains("stuck") && shard.causes[0].contains("no progress for 1s"),
        "{shard:?}"
    );
}

#[test]
fn ended_jobs_are_deleted_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("in/a.parquet"), 0..20, 10);
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--retention", "2s"]);
    cmd.arg("--state").arg(dir.path().join("state.db"));
    let service = Service::spawn(cmd);
    let ended = service.submit(&spec(dir.path(), "out-1", json!({})));
    let kept = service.submit(&spec(dir.path(), "out-2", json!({})));
    running(&service, &ended);
    let (code, _) = post(
        &service.url,
        &format!("/v1/jobs/{ended}/cancel"),
        &json!(null),
    );
    assert_eq!(code, 200);
    let started = Instant::now();
    wait_for("the ended job to be deleted", || {
        get_status(&service.url, &format!("/v1/jobs/{ended}")).0 == 404
    });
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before its time"
    );
    assert_eq!(
        get_status(&service.url, &format!("/v1/jobs/{kept}")).0,
        200,
        "a job still running is kept"
    );
    let out = sparq_cmd(&["serve", "--retention", "7 days"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("s, m, h or d"));
}

#[test]
fn job_listings_come_in_pages_and_shards_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("in/a.parquet"), 0..20, 10);
    let service = Service::start(&dir.path().join("state.db"), "127.0.0.1:0", &[]);
    let ids: Vec<String> = (0..3)
        .map(|i| service.submit(&spec(dir.path(), &format!("out-{i}"), json!({}))))
        .collect();
    for id in &ids {
        running(&service, id);
    }
    let (code, first) = get_status(&service.url, "/v1/jobs?limit=2");
    assert_eq!(code, 200);
    let next = first["next"].as_str().expect("a next page").to_string();
    let (_, second) = get_status(&service.url, &format!("/v1/jobs?limit=2&after={next}"));
    assert!(second["next"].is_null(), "{second}");
    let listed: Vec<&str> = [&first, &second]
        .iter()
        .flat_map(|p| p["jobs"].as_array().unwrap())
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids);
    assert!(
        first["jobs"][0].get("shards").is_none(),
        "no shards in a listing"
    );
    let (_, plain) = get_status(&service.url, &format!("/v1/jobs/{}", ids[0]));
    assert!(plain.get("shards").is_none(), "{plain}");
    assert_eq!(plain["shards_total"], 2);
    let (_, all) = get_status(&service.url, &format!("/v1/jobs/{}?shards=all", ids[0]));
    assert_eq!(all["shards"].as_array().unwrap().len(), 2);
    let (code, bad) = get_status(&service.url, "/v1/jobs?limit=0");
    assert_eq!(code, 400, "{bad}");
    // `sparq status` follows the pages: every job is listed.
    let out = sparq_cmd(&["status", "--coordinator", &service.url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(ids.iter().all(|id| table.contains(id.as_str())), "{table}");
}
