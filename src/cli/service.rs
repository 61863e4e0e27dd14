//! `sparq submit`, `status` and `cancel`: what they print and the exit codes they return
//! (0 succeeded, 1 failed, 3 cancelled).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::CliError;
use crate::serve::client::{read_spec, CancelArgs, Client, StatusArgs, SubmitArgs};
use crate::serve::wire::{JobKind, JobState, JobView};

/// One line of results on stdout; a reader that went away ends the command quietly (exit 0).
macro_rules! out {
    ($($arg:tt)*) => {
        super::stdout::print_line(format_args!($($arg)*))?
    };
}

/// `sparq submit`: prints the job id; with `--wait`, follows it. Returns the exit code.
pub fn submit(args: &SubmitArgs) -> Result<u8, CliError> {
    let spec = read_spec(&args.spec)?;
    let client = Client::new(&args.coordinator)?;
    // A service started a moment ago (`sparq serve &`) gets a few seconds to come up. Only a
    // refused connection is retried: a request that may have arrived could queue the job twice.
    let deadline = Instant::now() + Duration::from_secs(5);
    let path = match &args.name {
        // Names are checked by the service; encode the few characters a URL would mangle.
        Some(name) => format!(
            "/v1/jobs?name={}",
            name.replace('%', "%25")
                .replace('&', "%26")
                .replace('#', "%23")
                .replace('+', "%2B")
                .replace(' ', "%20")
        ),
        None => "/v1/jobs".into(),
    };
    let answer = loop {
        match client.call(Method::POST, &path, Some(&spec)) {
            Err(e) if e.never_arrived() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250))
            }
            other => break other,
        }
    }
    .map_err(|e| CliError::Message(format!("{}: {e}", args.spec.display())))?
    .unwrap_or(Value::Null);
    let id = answer["id"].as_str().unwrap_or_default().to_string();
    out!("{id}");
    if answer["existing"] == true {
        eprintln!(
            "sparq: `{}` was submitted before as {id} ({}): not queued again",
            args.name.as_deref().unwrap_or_default(),
            answer["state"].as_str().unwrap_or("?")
        );
    }
    if !args.wait {
        return Ok(0);
    }
    wait_for(&client, &id)
}

/// Follows a job until it ends, with a progress line on stderr. Returns the exit code.
pub fn wait_for(client: &Client, id: &str) -> Result<u8, CliError> {
    let mut last = String::new();
    loop {
        let job = match client.call_retrying(
            Method::GET,
            &format!("/v1/jobs/{id}"),
            None,
            Duration::from_secs(600),
        )? {
            Some(v) => serde_json::from_value::<JobView>(v)
                .map_err(|e| CliError::Message(format!("unexpected answer for job {id}: {e}")))?,
            None => return Err(CliError::Message(format!("empty answer for job {id}"))),
        };
        let line = progress_line(&job);
        if line != last {
            tracing::info!("{id}: {line}");
            last = line;
        }
        if job.state.is_final() {
            if let Some(summary) = &job.summary {
                out!("{summary}");
            }
            if let Some(error) = &job.error {
                tracing::info!("job {id} {}: {error}", job.state);
            }
            return Ok(match job.state {
                JobState::Succeeded => 0,
                JobState::Cancelled => 3,
                _ => 1,
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn progress_line(job: &JobView) -> String {
    let unit = if job.kind == JobKind::Train {
        "steps"
    } else {
        "rows"
    };
    format!(
        "{} — shards {}/{}{}, {} {}/{}{}",
        job.state,
        job.shards_done,
        job.shards_total,
        if job.shards_failed > 0 {
            format!(" ({} failed)", job.shards_failed)
        } else {
            String::new()
        },
        unit,
        job.rows_done,
        job.rows_total,
        if job.retries > 0 {
            format!(", {} retries", job.retries)
        } else {
            String::new()
        }
    )
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// `sparq status`; returns the exit code.
pub fn status(args: &StatusArgs) -> Result<u8, CliError> {
    let client = Client::new(&args.coordinator)?;
    if let (true, Some(id)) = (args.wait, &args.job) {
        return wait_for(&client, id);
    }
    // One job: with the shards that had a failed attempt (the causes printed below).
    let jobs: Vec<JobView> = match &args.job {
        Some(id) => vec![client.job(id, "causes")?],
        None => client.jobs()?,
    };
    if args.json {
        match &args.job {
            Some(_) => out!(
                "{}",
                serde_json::to_string_pretty(&jobs[0]).expect("serializable")
            ),
            None => out!("{}", serde_json::json!({ "jobs": jobs })),
        }
        return Ok(0);
    }
    // SHARDS and ROWS are done/total (a train job's ROWS are steps); FAILED-SHARDS failed for
    // good, RETRIES are leases after a shard's first (a failed attempt or a lost worker).
    out!(
        "{:<16} {:<7} {:<10} {:>11} {:>17} {:>9} {:>8} {:>13} {:>7}",
        "JOB",
        "KIND",
        "STATE",
        "SHARDS",
        "ROWS",
        "DOCS/S",
        "ETA",
        "FAILED-SHARDS",
        "RETRIES"
    );
    for j in &jobs {
        out!(
            "{:<16} {:<7} {:<10} {:>11} {:>17} {:>9.1} {:>8} {:>13} {:>7}",
            j.id,
            j.kind.as_str(),
            j.state.as_str(),
            format!("{}/{}", j.shards_done, j.shards_total),
            format!("{}/{}", j.rows_done, j.rows_total),
            j.docs_per_s,
            j.eta_s.map_or("-".into(), duration),
            j.shards_failed,
            j.retries,
        );
    }
    if let [job] = jobs.as_slice() {
        if let Some(error) = &job.error {
            out!("error: {error}");
        }
        for s in job.shards.iter().filter(|s| !s.causes.is_empty()) {
            out!(
                "shard {} ({}, {} {}): {}",
                s.shard,
                s.state,
                s.attempts,
                if s.attempts == 1 {
                    "attempt"
                } else {
                    "attempts"
                },
                s.causes.join("; then: ")
            );
        }
        if let Some(summary) = &job.summary {
            out!("summary: {summary}");
        }
    }
    Ok(0)
}

/// `sparq cancel`: prints what it did, on stdout: the job, its state before and after, what
/// was committed (kept) and what was still running (stopped at the workers' next heartbeat).
pub fn cancel(args: &CancelArgs) -> Result<(), CliError> {
    let client = Client::new(&args.coordinator)?;
    // For the message only: the service cancels whatever state the job has reached by then.
    let before = client.job(&args.job, "none")?.state;
    let answer = client.call(
        Method::POST,
        &format!("/v1/jobs/{}/cancel", args.job),
        Some(&Value::Null),
    )?;
    let after: JobView = serde_json::from_value(answer.unwrap_or(Value::Null)).map_err(|e| {
        CliError::Message(format!(
            "job {} was cancelled, but the coordinator's answer is unreadable ({e}): see `sparq status {}`",
            args.job, args.job
        ))
    })?;
    out!("{}", cancelled_line(before, &after));
    Ok(())
}

/// `j-…: running → cancelled; kept …; …` for a job just cancelled.
fn cancelled_line(before: JobState, job: &JobView) -> String {
    let running = job.shards_running;
    let kept = if job.kind == JobKind::Train {
        "checkpoints written so far are kept".to_string()
    } else if job.shards_total == 0 {
        "nothing was planned or encoded yet".to_string()
    } else {
        format!(
            "kept {}/{} shards ({}/{} rows) committed",
            job.shards_done, job.shards_total, job.rows_committed, job.rows_total
        )
    };
    let stopping = match running {
        0 => String::new(),
        1 if job.kind == JobKind::Train => "; the run stops at its worker's next heartbeat".into(),
        1 => "; 1 shard in progress stops at its worker's next heartbeat (kept if it commits \
              first)"
            .into(),
        n => format!(
            "; {n} shards in progress stop at their workers' next heartbeat (kept if they commit \
             first)"
        ),
    };
    format!("{}: {before} → {}; {kept}{stopping}", job.id, job.state)
}
