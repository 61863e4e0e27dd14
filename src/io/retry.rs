//! Every S3 request's retries, in one place: the HTTP client `object_store` sends through.
//!
//! `object_store` retries 5xx answers and failures to send, but not a body that breaks off
//! after the headers (a listing, an upload's start or completion), nor a timeout or reset of a
//! request it cannot call idempotent (the create-once commit), and an error answer whose body
//! breaks off loses its status (a 412 becomes a generic error). So sparq turns its retries off
//! and retries here instead, every request alike: an answer is read whole before it is handed
//! on, and any failure to get it (5xx, 429, 408, a reset, a timeout, a stall, a cut body) is
//! retried with exponential backoff. Repeating a request is safe for every request sparq makes:
//! a commit whose first attempt landed gets 412 (already committed, the same bytes), a repeated
//! upload completion is answered as the first (SeaweedFS 4.48, checked), a repeated upload
//! start leaves an unused upload, and the rest are idempotent. Retries
//! are counted by cause for the end-of-run line.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::ClientOptions;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// How S3 requests are retried and timed out (`SPARQ_S3_*`, see [`RetryPolicy::from_env`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries of one request after its first attempt (0: none).
    pub max_retries: u32,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout: Duration,
    /// Wait before the first retry.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Each wait is this many times the one before (then jittered to 50-100 %).
    pub backoff_base: f64,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole attempt, the answer's body included.
    pub request_timeout: Duration,
    /// Time allowed with no byte received: from the request's start to the answer's headers
    /// (an upload's time included: reqwest's read timeout), then between body reads.
    pub stall_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            retry_timeout: Duration::from_secs(120),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(15),
            backoff_base: 2.0,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            // Above the upload time of a large checkpoint file on a slow link.
            stall_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The policy from the `SPARQ_S3_*` variables, each defaulting as in [`Default`].
    pub fn from_env() -> Result<Self, StoreError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The policy from `lookup(name)` (the environment, or a test's map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, StoreError> {
        let d = Self::default();
        let secs = |name: &'static str, default: Duration, zero: bool| {
            let Some(raw) = lookup(name) else {
                return Ok(default);
            };
            let least = if zero { 0.0 } else { f64::MIN_POSITIVE };
            raw.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && (least..=86_400.0).contains(v))
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    let expected = if zero {
                        "a number of seconds from 0 to 86400, such as 0.1"
                    } else {
                        "a number of seconds above 0, up to 86400, such as 30"
                    };
                    bad(name, &raw, expected)
                })
        };
        let max_retries = match lookup("SPARQ_S3_MAX_RETRIES") {
            None => d.max_retries,
            Some(raw) => raw
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 100)
                .ok_or_else(|| {
                    bad(
                        "SPARQ_S3_MAX_RETRIES",
                        &raw,
                        "a whole number of retries from 0 (none) to 100, such as 5",
                    )
                })?,
        };
        let backoff_base = match lookup("SPARQ_S3_BACKOFF_BASE") {
            None => d.backoff_base,
            Some(raw) => raw
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|b| b.is_finite() && (1.0..=10.0).contains(b))
                .ok_or_else(|| {
                    bad(
                        "SPARQ_S3_BACKOFF_BASE",
                        &raw,
                        "a growth factor from 1 (constant waits) to 10, such as 2",
                    )
                })?,
        };
        let policy = Self {
            max_retries,
            retry_timeout: secs("SPARQ_S3_RETRY_TIMEOUT_SECS", d.retry_timeout, false)?,
            backoff_initial: secs("SPARQ_S3_BACKOFF_INITIAL_SECS", d.backoff_initial, true)?,
            backoff_max: secs("SPARQ_S3_BACKOFF_MAX_SECS", d.backoff_max, true)?,
            backoff_base,
            connect_timeout: secs("SPARQ_S3_CONNECT_TIMEOUT_SECS", d.connect_timeout, false)?,
            request_timeout: secs("SPARQ_S3_REQUEST_TIMEOUT_SECS", d.request_timeout, false)?,
            stall_timeout: secs("SPARQ_S3_STALL_TIMEOUT_SECS", d.stall_timeout, false)?,
        };
        if policy.backoff_max < policy.backoff_initial {
            return Err(StoreError::BadSetting {
                name: "SPARQ_S3_BACKOFF_MAX_SECS",
                value: format!("{}", policy.backoff_max.as_secs_f64()),
                detail: format!(
                    "is below SPARQ_S3_BACKOFF_INITIAL_SECS ({}): the longest wait cannot be \
                     shorter than the first",
                    policy.backoff_initial.as_secs_f64()
                ),
            });
        }
        Ok(policy)
    }

    /// The client options these timeouts give (connect, whole attempt, stall).
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_read_timeout(self.stall_timeout)
    }

    /// The wait before retry `n` (1-based): exponential, capped, jittered to 50-100 %.
    fn backoff(&self, n: u32) -> Duration {
        let full = self.backoff_initial.as_secs_f64() * self.backoff_base.powi(n as i32 - 1);
        let capped = full.min(self.backoff_max.as_secs_f64());
        // Jitter spreads the retries of many workers hit by one outage.
        let unit = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
        Duration::from_secs_f64(capped * (0.5 + 0.5 * unit))
    }
}

fn bad(name: &'static str, raw: &str, expected: &str) -> StoreError {
    StoreError::BadSetting {
        name,
        value: raw.to_string(),
        detail: format!("expected {expected} (or unset it for the default)"),
    }
}

/// S3 requests a process made and retried, by cause of the failed attempt
/// (`503`, `500`, ... for statuses; `reset`, `timeout`, `truncated`, `connect`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Requests {
    /// Attempts sent (first attempts and retries).
    pub requests: u64,
    /// Attempts that failed and were retried.
    pub retried: u64,
    /// The retried attempts by cause.
    pub causes: BTreeMap<String, u64>,
}

impl S3Requests {
    /// What happened since `earlier` (a snapshot of the same process).
    pub fn since(&self, earlier: &S3Requests) -> S3Requests {
        S3Requests {
            requests: self.requests - earlier.requests,
            retried: self.retried - earlier.retried,
            causes: self
                .causes
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.causes.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }

    fn add(&mut self, other: &S3Requests) {
        self.requests += other.requests;
        self.retried += other.retried;
        for (k, v) in &other.causes {
            *self.causes.entry(k.clone()).or_default() += v;
        }
    }
}

impl std::fmt::Display for S3Requests {
    /// `1234 S3 requests, 57 retried (503 ×20, 500 ×11, reset ×9, timeout ×8, truncated ×9)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} S3 requests, {} retried", self.requests, self.retried)?;
        if !self.causes.is_empty() {
            let causes: Vec<String> = self
                .causes
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            write!(f, " ({})", causes.join(", "))?;
        }
        Ok(())
    }
}

static TALLY: Mutex<S3Requests> = Mutex::new(S3Requests {
    requests: 0,
    retried: 0,
    causes: BTreeMap::new(),
});

fn tally() -> std::sync::MutexGuard<'static, S3Requests> {
    TALLY.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's S3 requests so far, with those its workers reported ([`add_s3_requests`]).
pub fn s3_requests() -> S3Requests {
    tally().clone()
}

/// Adds a worker process's requests to this process's count.
pub fn add_s3_requests(worker: &S3Requests) {
    tally().add(worker);
}

/// The [`HttpConnector`] of sparq's S3 stores: reqwest, with [`RetryPolicy`]'s retries.
#[derive(Debug)]
pub struct RetryingConnector {
    /// The policy every request follows.
    pub policy: RetryPolicy,
}

impl HttpConnector for RetryingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(RetryingService {
            inner,
            policy: self.policy.clone(),
        }))
    }
}

#[derive(Debug)]
struct RetryingService {
    inner: HttpClient,
    policy: RetryPolicy,
}

/// Why an attempt failed, and what to hand on if it is the last.
enum Failure {
    Answer(&'static str, HttpResponse),
    Transport(&'static str, HttpError),
}

impl RetryingService {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let started = Instant::now();
        let mut retries = 0;
        loop {
            let mut attempt = HttpRequest::new(body.clone());
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.version_mut() = parts.version;
            *attempt.headers_mut() = parts.headers.clone();
            *attempt.extensions_mut() = parts.extensions.clone();
            tally().requests += 1;
            let failure = match self.attempt(attempt, parts.method.as_str()).await {
                Ok(response) => return Ok(response),
                Err(f) => f,
            };
            let (cause, give_up) = match &failure {
                Failure::Answer(c, _) | Failure::Transport(c, _) => (
                    *c,
                    retries >= self.policy.max_retries
                        || started.elapsed() > self.policy.retry_timeout,
                ),
            };
            if give_up {
                return match failure {
                    Failure::Answer(_, response) => Ok(response),
                    Failure::Transport(_, e) if retries == 0 => Err(e),
                    Failure::Transport(_, e) => Err(HttpError::new(
                        e.kind(),
                        GaveUp {
                            retries,
                            seconds: started.elapsed().as_secs_f64(),
                            last: e,
                        },
                    )),
                };
            }
            retries += 1;
            {
                let mut t = tally();
                t.retried += 1;
                *t.causes.entry(cause.to_string()).or_default() += 1;
            }
            let wait = self.policy.backoff(retries);
            tracing::debug!(
                "S3 {} {}: {cause}; retry {retries} of {} in {:.2}s",
                parts.method,
                parts.uri.path(),
                self.policy.max_retries,
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt, its answer read whole (so a body that breaks off is retried too).
    async fn attempt(&self, request: HttpRequest, method: &str) -> Result<HttpResponse, Failure> {
        let response = self
            .inner
            .execute(request)
            .await
            .map_err(|e| Failure::Transport(transport_cause(e.kind(), false), e))?;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = body
            .bytes()
            .await
            .map_err(|e| Failure::Transport(transport_cause(e.kind(), true), e))?;
        let cause = match status {
            500 => Some("500"),
            502 => Some("502"),
            503 => Some("503"),
            504 => Some("504"),
            429 => Some("429"),
            408 => Some("408"),
            s if s >= 500 => Some("5xx"),
            // S3 can answer 200 with an error document (CompleteMultipartUpload, CopyObject).
            s if (200..300).contains(&s) && method != "GET" && error_document(&body) => Some("500"),
            _ => None,
        };
        let response = HttpResponse::from_parts(parts, body.into());
        match cause {
            Some(c) => Err(Failure::Answer(c, response)),
            None => Ok(response),
        }
    }
}

/// The last transport error of a request whose retries ran out, saying so.
#[derive(Debug)]
struct GaveUp {
    retries: u32,
    seconds: f64,
    last: HttpError,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // What reqwest said, without a second "HTTP error: " (the wrapping HttpError says it).
        match std::error::Error::source(&self.last) {
            Some(cause) => write!(f, "{cause}")?,
            None => write!(f, "{}", self.last)?,
        }
        write!(
            f,
            " (gave up after {} retries in {:.1}s; SPARQ_S3_MAX_RETRIES and \
             SPARQ_S3_RETRY_TIMEOUT_SECS set the limits)",
            self.retries, self.seconds
        )
    }
}

impl std::error::Error for GaveUp {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last)
    }
}

impl HttpService for RetryingService {
    fn call<'a, 'b>(
        &'a self,
        request: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.send(request))
    }
}

/// The cause a transport error is counted under.
fn transport_cause(kind: HttpErrorKind, in_body: bool) -> &'static str {
    match kind {
        HttpErrorKind::Timeout => "timeout",
        HttpErrorKind::Connect => "connect",
        _ if in_body => "truncated",
        _ => "reset",
    }
}

/// Whether a 2xx body is an S3 error document asking for a retry.
fn error_document(body: &[u8]) -> bool {
    let head = &body[..body.len().min(512)];
    let has = |s: &[u8]| head.windows(s.len()).any(|w| w == s);
    has(b"<Error>") && (has(b"InternalError") || has(b"SlowDown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(vars: &[(&str, &str)]) -> Result<RetryPolicy, StoreError> {
        RetryPolicy::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_policy_defaults_reads_every_variable_and_names_a_bad_one() {
        assert_eq!(policy(&[]).unwrap(), RetryPolicy::default());
        let p = policy(&[
            ("SPARQ_S3_MAX_RETRIES", "9"),
            ("SPARQ_S3_RETRY_TIMEOUT_SECS", "45"),
            ("SPARQ_S3_BACKOFF_INITIAL_SECS", "0"),
            ("SPARQ_S3_BACKOFF_MAX_SECS", "1.5"),
            ("SPARQ_S3_BACKOFF_BASE", "3"),
            ("SPARQ_S3_CONNECT_TIMEOUT_SECS", "2"),
            ("SPARQ_S3_REQUEST_TIMEOUT_SECS", "10"),
            ("SPARQ_S3_STALL_TIMEOUT_SECS", "0.5"),
        ])
        .unwrap();
        assert_eq!(p.max_retries, 9);
        assert_eq!(p.retry_timeout, Duration::from_secs(45));
        assert_eq!(p.backoff_initial, Duration::ZERO);
        assert_eq!(p.backoff_max, Duration::from_millis(1500));
        assert_eq!(p.backoff_base, 3.0);
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.request_timeout, Duration::from_secs(10));
        assert_eq!(p.stall_timeout, Duration::from_millis(500));
        for (name, value) in [
            ("SPARQ_S3_MAX_RETRIES", "-1"),
            ("SPARQ_S3_MAX_RETRIES", "three"),
            ("SPARQ_S3_MAX_RETRIES", "1000"),
            ("SPARQ_S3_STALL_TIMEOUT_SECS", "0"),
            ("SPARQ_S3_REQUEST_TIMEOUT_SECS", "-5"),
            ("SPARQ_S3_RETRY_TIMEOUT_SECS", "inf"),
            ("SPARQ_S3_BACKOFF_INITIAL_SECS", "-0.1"),
            ("SPARQ_S3_BACKOFF_BASE", "0.5"),
            ("SPARQ_S3_CONNECT_TIMEOUT_SECS", "5s"),
        ] {
            let e = policy(&[(name, value)]).unwrap_err().to_string();
            assert!(
                e.contains(name) && e.contains(value) && e.contains("expected"),
                "{name}={value}: {e}"
            );
        }
        let e = policy(&[("SPARQ_S3_BACKOFF_MAX_SECS", "0.01")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SPARQ_S3_BACKOFF_INITIAL_SECS"), "{e}");
    }

    #[test]
    fn backoff_grows_by_the_base_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for n in 1..=10 {
            let full = (0.1 * 2f64.powi(n as i32 - 1)).min(15.0);
            let w = p.backoff(n).as_secs_f64();
            assert!(w >= full * 0.5 - 1e-9 && w <= full + 1e-9, "retry {n}: {w}");
        }
    }

    #[test]
    fn counts_add_subtract_and_read_as_one_line() {
        let mut a = S3Requests::default();
        let b = S3Requests {
            requests: 10,
            retried: 3,
            causes: [("503".to_string(), 2), ("reset".to_string(), 1)].into(),
        };
        a.add(&b);
        a.add(&b);
        assert_eq!(a.requests, 20);
        assert_eq!(a.since(&b), b);
        assert_eq!(
            a.to_string(),
            "20 S3 requests, 6 retried (503 ×4, reset ×2)"
        );
        assert_eq!(
            S3Requests::default().to_string(),
            "0 S3 requests, 0 retried"
        );
    }

    #[test]
    fn error_documents_in_a_2xx_answer_are_recognised() {
        assert!(error_document(
            b"<?xml version=\"1.0\"?><Error><Code>InternalError</Code></Error>"
        ));
        assert!(error_document(b"<Error><Code>SlowDown</Code></Error>"));
        assert!(!error_document(
            b"<CompleteMultipartUploadResult><ETag>x</ETag></CompleteMultipartUploadResult>"
        ));
    }
}
