//! Storage URLs: local files, folders and globs, or `s3://bucket/prefix` through
//! `object_store`, configured by the standard AWS variables.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use super::retry::{RetryPolicy, RetryingConnector};
use super::StoreError;

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local path (file, folder or glob), made absolute.
    Local(PathBuf),
    /// An S3 bucket and key prefix (no leading or trailing `/`).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key or key prefix.
        key: String,
    },
}

/// A parsed storage URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The URL as the user wrote it.
    pub raw: String,
    /// What it points to.
    pub location: Location,
}

impl StoreUrl {
    /// Parses a local path, `file://` URL or `s3://bucket/prefix`.
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        let bad = |detail: &str| StoreError::BadUrl {
            url: raw.to_string(),
            detail: detail.to_string(),
        };
        let location = if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name: write s3://bucket/prefix"));
            }
            Location::S3 {
                bucket: bucket.to_string(),
                key: key.trim_matches('/').to_string(),
            }
        } else if let Some((scheme, _)) = raw.split_once("://").filter(|(s, _)| *s != "file") {
            return Err(bad(&format!(
                "scheme `{scheme}://` is not supported: use a local path or s3://bucket/prefix \
                 (S3-compatible stores through AWS_ENDPOINT_URL)"
            )));
        } else {
            let path = PathBuf::from(raw.strip_prefix("file://").unwrap_or(raw));
            if path.as_os_str().is_empty() {
                return Err(bad("empty path"));
            }
            let absolute = std::path::absolute(&path).map_err(|e| StoreError::Io {
                op: "resolving",
                path: path.clone(),
                source: e,
            })?;
            // `..` removed lexically: object paths refuse it, and `a/../b` is `b` to a user.
            Location::Local(super::access::normalise(&absolute))
        };
        Ok(Self {
            raw: raw.to_string(),
            location,
        })
    }

    /// The location spelled one way: an absolute local path without `.` parts or a trailing
    /// slash, or `s3://bucket/key` without a trailing slash.
    pub fn normalized(&self) -> String {
        match &self.location {
            Location::Local(p) => p.display().to_string(),
            Location::S3 { bucket, key } if key.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }

    /// Whether this is an S3 URL.
    pub fn is_s3(&self) -> bool {
        matches!(self.location, Location::S3 { .. })
    }

    /// The object store holding this URL, and the object path of the URL within it.
    pub fn store(&self) -> Result<(Arc<dyn ObjectStore>, ObjectPath), StoreError> {
        match &self.location {
            Location::Local(path) => {
                let object =
                    ObjectPath::from_absolute_path(path).map_err(|e| StoreError::BadUrl {
                        url: self.raw.clone(),
                        detail: e.to_string(),
                    })?;
                Ok((Arc::new(LocalFileSystem::new()), object))
            }
            Location::S3 { bucket, key } => {
                Ok((s3_store(&self.raw, bucket)?, ObjectPath::from(key.as_str())))
            }
        }
    }

    /// The URL of `child` (a `/`-separated relative name) under this URL.
    pub fn join(&self, child: &str) -> String {
        format!("{}/{}", self.raw.trim_end_matches('/'), child)
    }
}

/// An S3 client from the standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...), retrying and timing out requests
/// as the `SPARQ_S3_*` variables say ([`RetryPolicy`]; `object_store`'s own retries are off,
/// see `io::retry` for why).
pub fn s3_store(url: &str, bucket: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let policy = RetryPolicy::from_env()?;
    let allow_http =
        std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_client_options(policy.client_options().with_allow_http(allow_http))
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 0,
            retry_timeout: policy.retry_timeout,
        })
        .with_http_connector(RetryingConnector { policy });
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    let store = builder.build().map_err(|e| StoreError::BadUrl {
        url: url.to_string(),
        detail: format!("{e} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for non-AWS stores)"),
    })?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_local_paths_or_s3_buckets_and_keys() {
        let u = StoreUrl::parse("s3://bucket/a/b/").unwrap();
        assert_eq!(
            u.location,
            Location::S3 {
                bucket: "bucket".into(),
                key: "a/b".into()
            }
        );
        assert!(u.is_s3());
        assert_eq!(u.join("part-1"), "s3://bucket/a/b/part-1");
        assert_eq!(
            StoreUrl::parse("s3://bucket").unwrap().location,
            Location::S3 {
                bucket: "bucket".into(),
                key: String::new()
            }
        );
        let local = StoreUrl::parse("file:///tmp/x").unwrap();
        assert_eq!(local.location, Location::Local("/tmp/x".into()));
        let relative = StoreUrl::parse("data/x").unwrap();
        assert!(matches!(relative.location, Location::Local(p) if p.is_absolute()));
        for bad in ["s3://", "gs://b/k", "https://x/y", ""] {
            let e = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(StoreUrl::parse("gs://b/k")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}
