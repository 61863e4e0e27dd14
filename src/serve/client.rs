//! The service's HTTP client, and the commands built on it: `submit`, `status`, `cancel`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::blocking::Client as Http;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::wire::{JobState, JobView};
use super::{COORDINATOR_VAR, DEFAULT_COORDINATOR, TOKEN_VAR};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection.
    #[error("cannot reach the coordinator at {url} ({cause}): is `sparq serve` running there? Name it with --coordinator or {COORDINATOR_VAR}")]
    Unreachable {
        /// Its URL.
        url: String,
        /// Cause.
        cause: String,
        /// Whether no connection was made (the request surely did not arrive).
        connect: bool,
    },
    /// The service answered with an error.
    #[error("the coordinator answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
}

impl ClientError {
    /// Whether the request surely did not reach the coordinator.
    pub fn never_arrived(&self) -> bool {
        matches!(self, ClientError::Unreachable { connect: true, .. })
    }

    /// Whether the coordinator could not be reached (worth retrying).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
            || matches!(self, ClientError::Api { status, .. } if status.is_server_error())
    }
}

/// A client of one coordinator.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: Http,
}

impl Client {
    /// A client of `url`, with the token from SPARQ_TOKEN.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let http = Http::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: url.into(),
                cause: e.to_string(),
                connect: true,
            })?;
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            token: std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The coordinator's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// One request; `Ok(None)` for 204.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ClientError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            cause: root_cause(&e),
            connect: e.is_connect(),
        })?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let text = response.text().map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            cause: root_cause(&e),
            connect: false,
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(Some(value))
        } else {
            Err(ClientError::Api {
                status,
                message: value["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| value.to_string()),
            })
        }
    }

    /// Like `call`, retrying while the coordinator is unreachable, for up to `patience`.
    pub fn call_retrying(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        patience: Duration,
    ) -> Result<Option<Value>, ClientError> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(200);
        let mut warned = false;
        loop {
            match self.call(method.clone(), path, body) {
                Err(e) if e.is_unreachable() && start.elapsed() < patience => {
                    if !warned {
                        eprintln!("sparq: {e}; retrying");
                        warned = true;
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                other => {
                    if warned && other.is_ok() {
                        eprintln!("sparq: the coordinator at {} answers again", self.base);
                    }
                    return other;
                }
            }
        }
    }

    /// A job's view.
    pub fn job(&self, id: &str) -> Result<JobView, ClientError> {
        let v = self.call(Method::GET, &format!("/v1/jobs/{id}"), None)?;
        serde_json::from_value(v.unwrap_or(Value::Null)).map_err(|e| ClientError::Api {
            status: StatusCode::OK,
            message: format!("unexpected answer: {e}"),
        })
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    cause
}

/// `--coordinator`, shared by the client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorArg {
    /// The coordinator's URL.
    #[arg(long, env = COORDINATOR_VAR, default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,
}

/// Options of `sparq submit`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// Job spec: a TOML file with `kind = "encode"` or `"train"` and that command's flags as
    /// keys (see jobs/). Relative local paths are resolved by the service, against its working
    /// directory.
    pub spec: PathBuf,
    /// The coordinator to talk to.
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
    /// Follow the job until it ends; exit 0 if it succeeded, 1 if it failed, 3 if cancelled.
    #[arg(long)]
    pub wait: bool,
    /// Submit under this name: submitting the same spec under the same name again finds the
    /// first job instead of queueing another (safe to retry).
    #[arg(long)]
    pub name: Option<String>,
}

/// Options of `sparq status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// One job (default: every job).
    pub job: Option<String>,
    /// The coordinator to talk to.
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
    /// Print the JSON the service returns.
    #[arg(long)]
    pub json: bool,
    /// Follow JOB until it ends; exit 0 if it succeeded, 1 if it failed, 3 if cancelled.
    #[arg(long, requires = "job")]
    pub wait: bool,
}

/// Options of `sparq cancel`.
#[derive(Debug, Clone, clap::Args)]
pub struct CancelArgs {
    /// Job id.
    pub job: String,
    /// The coordinator to talk to.
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
}

/// Reads a spec file (TOML, or JSON for `.json`) as the JSON document the API takes.
pub fn read_spec(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the job spec {}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", path.display()));
    }
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))?;
    // JSON has no NaN or infinity: serde would send them as null, which reads as "not set".
    for (key, value) in &table {
        if let Some(bad) = non_finite(value) {
            anyhow::bail!(
                "{}: `{key}` = {bad}: job settings must be finite numbers",
                path.display()
            );
        }
    }
    Ok(serde_json::to_value(table)?)
}

/// The first NaN or infinite float in a TOML value, if any.
fn non_finite(value: &toml::Value) -> Option<f64> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => Some(*f),
        toml::Value::Array(items) => items.iter().find_map(non_finite),
        toml::Value::Table(t) => t.values().find_map(non_finite),
        _ => None,
    }
}

/// `sparq submit`: prints the job id; with `--wait`, follows it. Returns the exit code.
pub fn submit(args: &SubmitArgs) -> anyhow::Result<u8> {
    let spec = read_spec(&args.spec)?;
    let client = Client::new(&args.coordinator.coordinator)?;
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
    .map_err(|e| anyhow::anyhow!("{}: {e}", args.spec.display()))?
    .unwrap_or(Value::Null);
    let id = answer["id"].as_str().unwrap_or_default().to_string();
    println!("{id}");
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
pub fn wait_for(client: &Client, id: &str) -> anyhow::Result<u8> {
    let mut last = String::new();
    loop {
        let job = match client.call_retrying(
            Method::GET,
            &format!("/v1/jobs/{id}"),
            None,
            Duration::from_secs(600),
        )? {
            Some(v) => serde_json::from_value::<JobView>(v)?,
            None => anyhow::bail!("empty answer for job {id}"),
        };
        let line = progress_line(&job);
        if line != last {
            eprintln!("sparq: {id}: {line}");
            last = line;
        }
        if job.state.is_final() {
            if let Some(summary) = &job.summary {
                println!("{summary}");
            }
            if let Some(error) = &job.error {
                eprintln!("sparq: job {id} {}: {error}", job.state);
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
    let unit = if job.kind == "train" { "steps" } else { "rows" };
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
pub fn status(args: &StatusArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.coordinator.coordinator)?;
    if let (true, Some(id)) = (args.wait, &args.job) {
        return wait_for(&client, id);
    }
    let jobs: Vec<JobView> = match &args.job {
        Some(id) => vec![client.job(id)?],
        None => {
            let v = client.call(Method::GET, "/v1/jobs", None)?;
            serde_json::from_value(v.unwrap_or(Value::Null)["jobs"].take())?
        }
    };
    if args.json {
        match &args.job {
            Some(_) => println!("{}", serde_json::to_string_pretty(&jobs[0])?),
            None => println!("{}", serde_json::json!({ "jobs": jobs })),
        }
        return Ok(0);
    }
    println!(
        "{:<16} {:<7} {:<10} {:>13} {:>21} {:>9} {:>8} {:>8}",
        "JOB", "KIND", "STATE", "SHARDS", "ROWS", "DOCS/S", "ETA", "FAILURES"
    );
    for j in &jobs {
        println!(
            "{:<16} {:<7} {:<10} {:>13} {:>21} {:>9.1} {:>8} {:>8}",
            j.id,
            j.kind,
            j.state,
            format!("{}/{}", j.shards_done, j.shards_total),
            format!("{}/{}", j.rows_done, j.rows_total),
            j.docs_per_s,
            j.eta_s.map_or("-".into(), duration),
            format!("{}+{}", j.shards_failed, j.retries),
        );
    }
    if let [job] = jobs.as_slice() {
        if let Some(error) = &job.error {
            println!("error: {error}");
        }
        for s in job.shards.iter().filter(|s| !s.causes.is_empty()) {
            println!(
                "shard {} ({}, {} attempts): {}",
                s.shard,
                s.state,
                s.attempts,
                s.causes.join("; then: ")
            );
        }
        if let Some(summary) = &job.summary {
            println!("summary: {summary}");
        }
    }
    Ok(0)
}

/// `sparq cancel`.
pub fn cancel(args: &CancelArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.coordinator.coordinator)?;
    client.call(
        Method::POST,
        &format!("/v1/jobs/{}/cancel", args.job),
        Some(&Value::Null),
    )?;
    eprintln!(
        "sparq: job {} cancelled; workers stop its shards at their next heartbeat",
        args.job
    );
    Ok(())
}
