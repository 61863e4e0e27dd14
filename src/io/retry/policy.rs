//! The retry policy of S3 requests: how often, how long to wait between attempts, and the
//! timeouts that end an attempt, from the `SPARQ_S3_*` variables (README, "S3 retries").

use std::time::Duration;

use object_store::ClientOptions;

use crate::io::StoreError;

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
    pub(super) fn backoff(&self, n: u32) -> Duration {
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
}
