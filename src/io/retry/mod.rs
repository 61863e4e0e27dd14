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
//! start leaves an unused upload, and the rest are idempotent. Retries are counted by cause
//! for the end-of-run line (`tally`); the policy's settings are `policy`'s.

mod policy;
mod tally;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::ClientOptions;

pub use policy::RetryPolicy;
pub use tally::{add_s3_requests, s3_requests, S3Requests};

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
            tally::count_request();
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
            tally::count_retry(cause);
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
