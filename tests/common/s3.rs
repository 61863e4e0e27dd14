//! The S3 test server (`make test` starts SeaweedFS on 127.0.0.1): endpoint, client, and the
//! environment a sparq process needs to reach it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::corpus::read_part;

/// The bucket the server is started with.
pub const BUCKET: &str = "sparq-test";

/// The server's endpoint, or `None` (the test is skipped) when none is configured; with
/// `SPARQ_REQUIRE_S3` set, a missing server fails the test instead.
pub fn endpoint() -> Option<String> {
    match std::env::var("SPARQ_TEST_S3_ENDPOINT") {
        Ok(e) => Some(e),
        Err(_) if std::env::var_os("SPARQ_REQUIRE_S3").is_some() => {
            panic!("SPARQ_REQUIRE_S3 is set but SPARQ_TEST_S3_ENDPOINT is not: start scripts/s3-test-server.sh")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: no S3 server (set SPARQ_TEST_S3_ENDPOINT; `make test` starts SeaweedFS)"
            );
            None
        }
    }
}

/// A client of the test bucket.
pub fn store(endpoint: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testkey")
        .with_secret_access_key("testsecret")
        .build()
        .unwrap()
}

/// Points a sparq process at the test server.
pub fn env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ACCESS_KEY_ID", "testkey")
        .env("AWS_SECRET_ACCESS_KEY", "testsecret")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1");
}

/// Uploads a local file to `key`.
pub async fn upload(store: &Arc<dyn ObjectStore>, local: &Path, key: &str) {
    store
        .put(
            &ObjectPath::from(key),
            PutPayload::from(std::fs::read(local).unwrap()),
        )
        .await
        .unwrap();
}

/// The rows of every part under `prefix`, and the names of every object there.
pub async fn read_parts(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> (Vec<(i64, Option<sparq::encode::SparseVector>)>, Vec<String>) {
    use futures::TryStreamExt;
    let listed: Vec<_> = store
        .list(Some(&ObjectPath::from(prefix)))
        .try_collect()
        .await
        .unwrap();
    let mut names: Vec<String> = listed
        .iter()
        .map(|m| m.location.filename().unwrap().to_string())
        .collect();
    names.sort();
    let mut rows = Vec::new();
    for m in listed
        .iter()
        // Parts only: `_reports/<part>.json` (kept by workers for `--finalize`) is no part.
        .filter(|m| {
            let name = m.location.filename().unwrap();
            name.starts_with("part-") && name.ends_with(".parquet")
        })
    {
        let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        rows.extend(read_part(&bytes));
    }
    (rows, names)
}
