//! Storage: URLs (local paths and `s3://`), parquet and text input, parquet output and the
//! exactly-once commit protocol.

pub mod access;
pub mod commit;
pub mod compact;
pub mod id_hashes;
pub mod input;
pub mod lock;
pub mod output;
pub mod retry;
pub mod text_input;
pub mod text_rows;
pub mod url;

pub use access::AllowedRoots;
pub use commit::{CommitOutcome, Committer};
pub use url::StoreUrl;

/// Everything that can go wrong talking to storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL cannot be used.
    #[error("`{url}`: {detail}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// No input file matched.
    #[error("no parquet files at `{url}`: give a parquet file, a folder or prefix holding *.parquet files, or a glob such as 'data/*.parquet'")]
    NoInput {
        /// The input URL.
        url: String,
    },
    /// The object store refused or failed an operation.
    #[error("{op} `{location}`: {detail}")]
    Object {
        /// What was attempted.
        op: &'static str,
        /// Where.
        location: String,
        /// What the store said, and what to check.
        detail: String,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Where.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A local path resolves outside the allowed roots.
    #[error("`{path}` resolves to `{real}`, outside the folders {owner} may touch ({roots}): use a path under one of them (links are followed to where they point)")]
    Escape {
        /// The path as met (typed, listed or matched).
        path: std::path::PathBuf,
        /// Where it really is.
        real: std::path::PathBuf,
        /// Who set the roots.
        owner: String,
        /// The allowed folders.
        roots: String,
    },
    /// An input file is not the one that was planned.
    #[error("{url} changed during the run ({detail}): its shards were not encoded; rerun once the file is final")]
    Changed {
        /// The file.
        url: String,
        /// What differs.
        detail: String,
    },
    /// A `SPARQ_S3_*` setting of the retry policy is not usable.
    #[error("{name}={value:?}: {detail}")]
    BadSetting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// A parquet file cannot be decoded.
    #[error("{location}: {detail}")]
    Parquet {
        /// The file (and row group, column where known).
        location: String,
        /// What the decoder said and what to do.
        detail: String,
    },
}

impl StoreError {
    /// Wraps an object_store error with the operation and location, adding a hint for the
    /// failures users can fix (credentials, endpoint, bucket).
    pub fn object(
        op: &'static str,
        location: impl std::fmt::Display,
        e: object_store::Error,
    ) -> Self {
        let text = e.to_string();
        let hint = if text.contains("403")
            || text.contains("AccessDenied")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("InvalidAccessKeyId")
        {
            " (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        } else if text.contains("NoSuchBucket") {
            " (the bucket does not exist: create it or fix the URL)"
        } else if text.contains("error sending request")
            || text.contains("onnect")
            || text.contains("timed out")
        {
            " (is the endpoint reachable? check AWS_ENDPOINT_URL, AWS_ALLOW_HTTP and the network)"
        } else {
            ""
        };
        StoreError::Object {
            op,
            location: location.to_string(),
            detail: format!("{text}{hint}"),
        }
    }
}
