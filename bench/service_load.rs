//! Load on `sparq serve`: one encode job of N one-row shards (a real parquet input of N tiny
//! rows, `shard_rows = 1`), 50 simulated workers leasing, heartbeating and reporting over
//! loopback, a `status --wait`-like poller and a job lister. Prints p50/p99/max of each
//! answer, the service's RSS, and how long the plan took to store, for each binary given, so
//! a baseline build and the current one are measured back to back in one invocation.
//!
//!   cargo run --release --example service_load -- [--seconds S] [--workers W] \
//!       LABEL=PATH/TO/sparq:SHARDS ...
//!
//! e.g. `base=/work/notes/sparq-baseline:100000 new=target/release/sparq:100000
//! new=target/release/sparq:1000000`. Ratios are against the first run of the same size.
//! The simulated workers do no encoding: they report each shard done after two heartbeats,
//! so the service answers as fast as it can; the job never finishes within the run.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use reqwest::blocking::Client;
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

/// Latencies per kind of request, in milliseconds.
#[derive(Default)]
struct Latencies(Mutex<BTreeMap<&'static str, Vec<f64>>>);

impl Latencies {
    fn add(&self, what: &'static str, since: Instant) {
        let ms = since.elapsed().as_secs_f64() * 1e3;
        self.0.lock().unwrap().entry(what).or_default().push(ms);
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A memory line of /proc/PID/status (`VmRSS:` now, `VmHWM:` its peak so far), in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `rows` tiny documents in one parquet file (row groups of 100k rows).
fn write_corpus(path: &Path, rows: usize) -> Result<(), Error> {
    std::fs::create_dir_all(path.parent().unwrap())?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(100_000))
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path)?,
        schema.clone(),
        Some(props),
    )?;
    for start in (0..rows).step_by(100_000) {
        let end = (start + 100_000).min(rows);
        let ids = Int64Array::from_iter_values(start as i64..end as i64);
        let texts = StringArray::from_iter_values((start..end).map(|i| format!("doc {i}")));
        writer.write(&RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(ids), Arc::new(texts)],
        )?)?;
    }
    writer.close()?;
    Ok(())
}

/// The service's bearer token (it always requires one).
const TOKEN: &str = "sparq-load-bench";

fn bearer() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().expect("a valid header"),
    );
    headers
}

struct Service {
    child: Child,
    url: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &Path, dir: &Path, root: &Path) -> Result<Service, Error> {
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir.join("state.db"))
        .arg("--allow-root")
        .arg(dir)
        .current_dir(root)
        .env("SPARQ_TOKEN", TOKEN)
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("serving on ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .map(str::to_string)
        })
        .ok_or("the service printed no address")?;
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    Ok(Service { child, url })
}

/// One measured run; returns the printed row's figures.
fn run(
    label: &str,
    binary: &Path,
    shards: usize,
    seconds: u64,
    workers: usize,
    root: &Path,
) -> Result<BTreeMap<String, f64>, Error> {
    let dir = tempfile::Builder::new().prefix("sparq-load-").tempdir()?;
    let input = dir.path().join("in/docs.parquet");
    write_corpus(&input, shards)?;
    let service = start(binary, dir.path(), root)?;
    let pid = service.child.id();
    let http = Client::builder()
        .default_headers(bearer())
        .timeout(Duration::from_secs(600))
        .build()?;
    let spec = json!({
        "kind": "encode",
        "input": input.display().to_string(),
        "output": dir.path().join("out").display().to_string(),
        "shard_rows": 1,
        "lease_timeout": 60,
    });
    let t = Instant::now();
    let answer: Value = http
        .post(format!("{}/v1/jobs", service.url))
        .json(&spec)
        .send()?
        .json()?;
    let id = answer["id"].as_str().ok_or("no job id")?.to_string();
    // Planned when it runs; /healthz counts states without reading shards on either build.
    let mut peak_rss = 0f64;
    loop {
        peak_rss = peak_rss.max(rss_mib(pid));
        let health: Value = http
            .get(format!("{}/healthz", service.url))
            .send()?
            .json()?;
        if health["jobs"]["running"] == 1 {
            break;
        }
        if health["jobs"]["failed"] == 1 {
            return Err(format!("the job failed to plan: {health}").into());
        }
        if t.elapsed() > Duration::from_secs(1800) {
            return Err("planning took over 30 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let plan_s = t.elapsed().as_secs_f64();
    // The planner hands the plan's memory back just after the job runs.
    std::thread::sleep(Duration::from_secs(1));
    let rss_planned = rss_mib(pid);
    let rss_hwm = status_mib(pid, "VmHWM:");
    let lat = Arc::new(Latencies::default());
    let stop = Arc::new(AtomicBool::new(false));
    let granted = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..workers {
        let (lat, stop, granted, url) = (
            lat.clone(),
            stop.clone(),
            granted.clone(),
            service.url.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let http = Client::builder()
                .default_headers(bearer())
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap();
            let worker = json!({"worker": format!("sim-{w}"), "device": "cpu"});
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let Ok(r) = http.post(format!("{url}/v1/leases")).json(&worker).send() else {
                    continue;
                };
                lat.add("lease", t);
                if r.status() != 200 {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                granted.fetch_add(1, Ordering::Relaxed);
                let grant: Value = r.json().unwrap_or(Value::Null);
                let lease = grant["lease"].as_str().unwrap_or_default().to_string();
                for beat in 1..=2u64 {
                    std::thread::sleep(Duration::from_millis(50));
                    let t = Instant::now();
                    let body = json!({"rows": 0, "tokens": 0, "progress": beat});
                    let _ = http
                        .post(format!("{url}/v1/leases/{lease}/heartbeat"))
                        .json(&body)
                        .send()
                        .and_then(|r| r.bytes());
                    lat.add("heartbeat", t);
                }
                let t = Instant::now();
                let done = json!({"worker": format!("sim-{w}"), "report": {}});
                let _ = http
                    .post(format!("{url}/v1/leases/{lease}/done"))
                    .json(&done)
                    .send()
                    .and_then(|r| r.bytes());
                lat.add("done", t);
            }
        }));
    }
    // `status --wait` polls the job twice a second; `sparq status` lists every job.
    for (what, path, every) in [
        ("status", format!("/v1/jobs/{id}"), 500u64),
        ("list", "/v1/jobs".to_string(), 2000),
    ] {
        let (lat, stop, url) = (lat.clone(), stop.clone(), service.url.clone());
        threads.push(std::thread::spawn(move || {
            let http = Client::builder()
                .default_headers(bearer())
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _ = http
                    .get(format!("{url}{path}"))
                    .send()
                    .and_then(|r| r.bytes());
                lat.add(what, t);
                std::thread::sleep(Duration::from_millis(every));
            }
        }));
    }
    let load = Instant::now();
    let mut peak_load_rss = 0f64;
    while load.elapsed() < Duration::from_secs(seconds) {
        peak_load_rss = peak_load_rss.max(rss_mib(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let rss_end = rss_mib(pid);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let mut row = BTreeMap::new();
    row.insert("plan_s".into(), plan_s);
    row.insert("rss_peak_plan".into(), peak_rss.max(rss_hwm));
    row.insert("rss_planned".into(), rss_planned);
    row.insert("rss_peak_load".into(), peak_load_rss);
    row.insert("rss_end".into(), rss_end);
    row.insert(
        "leases_per_s".into(),
        granted.load(Ordering::Relaxed) as f64 / load.elapsed().as_secs_f64(),
    );
    for (what, mut ms) in std::mem::take(&mut *lat.0.lock().unwrap()) {
        ms.sort_by(f64::total_cmp);
        row.insert(format!("{what}_n"), ms.len() as f64);
        row.insert(format!("{what}_p50"), quantile(&ms, 0.5));
        row.insert(format!("{what}_p99"), quantile(&ms, 0.99));
        row.insert(format!("{what}_max"), quantile(&ms, 1.0));
    }
    eprintln!("{label} ({shards} shards): {row:?}");
    Ok(row)
}

fn main() -> Result<(), Error> {
    let mut seconds = 30u64;
    let mut workers = 50usize;
    let mut runs: Vec<(String, PathBuf, usize)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().ok_or("--seconds N")?.parse()?,
            "--workers" => workers = args.next().ok_or("--workers N")?.parse()?,
            run => {
                let (label, rest) = run.split_once('=').ok_or("LABEL=PATH:SHARDS")?;
                let (path, shards) = rest.rsplit_once(':').ok_or("LABEL=PATH:SHARDS")?;
                runs.push((label.into(), PathBuf::from(path), shards.parse()?));
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    println!(
        "| run | shards | plan s | RSS MiB peak planning / under load (peak, end) | leases/s | lease p50 / p99 / max ms | heartbeat p50 / p99 ms | done p99 ms | status p50 / p99 ms | list p50 / max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut first_p99: BTreeMap<usize, f64> = BTreeMap::new();
    for (label, binary, shards) in runs {
        let r = match run(&label, &binary, shards, seconds, workers, &root) {
            Ok(r) => r,
            Err(e) => {
                println!("| {label} | {shards} | failed: {e} | | | | | | | |");
                continue;
            }
        };
        let g = |k: &str| r.get(k).copied().unwrap_or(f64::NAN);
        let base = *first_p99.entry(shards).or_insert(g("lease_p99"));
        println!(
            "| {label} | {shards} | {:.1} | {:.0} / {:.0}, {:.0} | {:.0} | {:.1} / {:.1} / {:.1} ({:.2}x) | {:.1} / {:.1} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
            g("plan_s"),
            g("rss_peak_plan"),
            g("rss_peak_load"),
            g("rss_end"),
            g("leases_per_s"),
            g("lease_p50"),
            g("lease_p99"),
            g("lease_max"),
            base / g("lease_p99"),
            g("heartbeat_p50"),
            g("heartbeat_p99"),
            g("done_p99"),
            g("status_p50"),
            g("status_p99"),
            g("list_p50"),
            g("list_max"),
        );
    }
    Ok(())
}
