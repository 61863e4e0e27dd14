//! The service's HTTP client, the options of the commands built on it (`submit`, `status`,
//! `cancel`; `cli::service` runs them), and reading job spec files.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use reqwest::blocking::Client as Http;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::token::{DEFAULT_TOKEN_FILE, TOKEN_FILE_VAR};
use super::wire::{JobPage, JobView};
use super::{COORDINATOR_VAR, DEFAULT_COORDINATOR, TOKEN_VAR};

/// Environment variable naming a PEM CA certificate to trust (`--ca-cert`).
pub const CA_CERT_VAR: &str = "SPARQ_CA_CERT";

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
    /// The client's settings cannot be used (URL, token file, CA certificate).
    #[error("{0}")]
    Settings(String),
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

/// Where a client's bearer token comes from.
#[derive(Clone)]
enum Token {
    /// SPARQ_TOKEN.
    Given(String),
    /// A token file, read at the first request that finds it (a service started a moment ago
    /// writes it before it listens).
    File(PathBuf, Arc<OnceLock<String>>),
    /// None (a remote coordinator without SPARQ_TOKEN or a token file).
    Absent,
}

/// A client of one coordinator.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Token,
    http: Http,
}

impl Client {
    /// A client of the coordinator `arg` names: its token from SPARQ_TOKEN, else the token file
    /// (`--token-file`, or `sparq.db.token` here for a loopback coordinator); plain http only
    /// to loopback; the CA of `--ca-cert` trusted on top of the system's.
    pub fn new(arg: &CoordinatorArg) -> Result<Self, ClientError> {
        let url = arg.coordinator.as_str();
        let loopback = check_scheme(url)?;
        let mut builder = Http::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &arg.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| ClientError::Settings(format!("--ca-cert {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    ClientError::Settings(format!(
                        "--ca-cert {}: no PEM certificate in it: give the CA certificate that \
                         signed the coordinator's --tls-cert, as a `-----BEGIN CERTIFICATE-----` \
                         block",
                        ca.display()
                    ))
                })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| {
            ClientError::Settings(format!(
                "setting up the client of {url}: {}",
                root_cause(&e)
            ))
        })?;
        let token = match std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty()) {
            Some(t) => Token::Given(t),
            None => match (&arg.token_file, loopback) {
                (Some(file), _) => Token::File(file.clone(), Arc::default()),
                (None, true) => Token::File(DEFAULT_TOKEN_FILE.into(), Arc::default()),
                (None, false) => Token::Absent,
            },
        };
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The bearer token to send, if one is known yet.
    fn bearer(&self) -> Result<Option<String>, ClientError> {
        match &self.token {
            Token::Given(t) => Ok(Some(t.clone())),
            Token::Absent => Ok(None),
            Token::File(path, cached) => {
                if let Some(t) = cached.get() {
                    return Ok(Some(t.clone()));
                }
                match super::token::read(path).map_err(ClientError::Settings)? {
                    Some(t) => Ok(Some(cached.get_or_init(|| t).clone())),
                    None => Ok(None),
                }
            }
        }
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
        if let Some(token) = self.bearer()? {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().map_err(|e| {
            let mut cause = root_cause(&e);
            if cause.contains("certificate") {
                cause.push_str(
                    "; if a private CA signed the coordinator's certificate, trust it with \
                     --ca-cert or SPARQ_CA_CERT",
                );
            }
            ClientError::Unreachable {
                url: self.base.clone(),
                cause,
                connect: e.is_connect(),
            }
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
                        tracing::info!("{e}; retrying");
                        warned = true;
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                other => {
                    if warned && other.is_ok() {
                        tracing::info!("the coordinator at {} answers again", self.base);
                    }
                    return other;
                }
            }
        }
    }

    /// A job's view, with the shards `shards` asks for (`none`, `causes`, `all`).
    pub fn job(&self, id: &str, shards: &str) -> Result<JobView, ClientError> {
        let v = self.call(Method::GET, &format!("/v1/jobs/{id}?shards={shards}"), None)?;
        serde_json::from_value(v.unwrap_or(Value::Null)).map_err(|e| ClientError::Api {
            status: StatusCode::OK,
            message: format!("unexpected answer: {e}"),
        })
    }
}

impl Client {
    /// Every job the coordinator holds, oldest first, following its pages.
    pub fn jobs(&self) -> Result<Vec<JobView>, ClientError> {
        let mut jobs = Vec::new();
        let mut after = String::new();
        loop {
            let v = self.call(Method::GET, &format!("/v1/jobs?after={after}"), None)?;
            let page: JobPage =
                serde_json::from_value(v.unwrap_or(Value::Null)).map_err(|e| ClientError::Api {
                    status: StatusCode::OK,
                    message: format!("unexpected answer: {e}"),
                })?;
            jobs.extend(page.jobs);
            match page.next {
                Some(next) => after = next,
                None => return Ok(jobs),
            }
        }
    }
}

/// Refuses a URL that is not `https://`, or `http://` to loopback (where a token sent in the
/// clear stays on the machine). Returns whether the host is loopback.
fn check_scheme(url: &str) -> Result<bool, ClientError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        ClientError::Settings(format!(
            "--coordinator {url}: {e}: give a URL such as https://HOST:7070"
        ))
    })?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(loopback),
        "http" if loopback => Ok(true),
        "http" => Err(ClientError::Settings(format!(
            "refusing plain http to the coordinator at {url}: the token and job specs would \
             cross the network in the clear. Use https://{host}:{}: start `sparq serve` with \
             --tls-cert and --tls-key (and give clients --ca-cert for a private CA); plain \
             http is for a coordinator on this machine only (127.0.0.1, ::1, localhost)",
            parsed.port_or_known_default().unwrap_or(80),
        ))),
        other => Err(ClientError::Settings(format!(
            "--coordinator {url}: `{other}://` is not a coordinator URL: use https://HOST:PORT"
        ))),
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

/// `--coordinator` and how to trust it, shared by the client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorArg {
    /// The coordinator's URL: https://HOST:PORT, or http:// on loopback only.
    #[arg(long, env = COORDINATOR_VAR, default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,
    /// File holding the bearer token when SPARQ_TOKEN is unset (mode 0600). Default for a
    /// loopback coordinator: `sparq.db.token` here, the file `sparq serve` writes by default.
    #[arg(long, env = TOKEN_FILE_VAR, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust besides the system's (a private CA that signed the
    /// coordinator's --tls-cert).
    #[arg(long, env = CA_CERT_VAR, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
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
pub fn read_spec(path: &std::path::Path) -> Result<Value, SpecFileError> {
    let bad = |detail: String| SpecFileError {
        path: path.to_path_buf(),
        detail,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read the job spec: {e}")))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")));
    }
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| bad(e.to_string().trim().to_string()))?;
    // JSON has no NaN or infinity: serde would send them as null, which reads as "not set".
    for (key, value) in &table {
        if let Some(f) = non_finite(value) {
            return Err(bad(format!(
                "`{key}` = {f}: job settings must be finite numbers"
            )));
        }
    }
    serde_json::to_value(table).map_err(|e| bad(e.to_string()))
}

/// A job spec file that cannot be sent.
#[derive(Debug, thiserror::Error)]
#[error("{}: {detail}", path.display())]
pub struct SpecFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub detail: String,
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
