//! How many S3 requests a process made and retried, by cause: counted by the retrying
//! client, added up across `sparq encode`'s worker processes, said at the end of a run.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

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

/// Counts one attempt sent.
pub(super) fn count_request() {
    tally().requests += 1;
}

/// Counts one failed attempt, retried, under `cause`.
pub(super) fn count_retry(cause: &str) {
    let mut t = tally();
    t.retried += 1;
    *t.causes.entry(cause.to_string()).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
