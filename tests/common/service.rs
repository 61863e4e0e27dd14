//! The batch-job service in tests: `sparq serve` and `sparq worker` processes on loopback.
//! Every sparq command gets the token [`TEST_TOKEN`] (the service always requires one), and a
//! service started without `--allow-root` may use the repo, the temp directory (where tests
//! keep their files) and the test S3 bucket.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;
use sparq::serve::api::JobView;

use super::root;

/// The bearer token of the services and clients the tests start.
pub const TEST_TOKEN: &str = "sparq-test-token";

/// An HTTP client sending [`TEST_TOKEN`].
pub fn http() -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TEST_TOKEN}").parse().unwrap(),
    );
    Client::builder().default_headers(headers).build().unwrap()
}

/// A `sparq serve` process on a free loopback port.
pub struct Service {
    pub child: Child,
    pub url: String,
}

impl Service {
    pub fn start(state: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = sparq_cmd(&["serve", "--listen", listen, "--state"]);
        cmd.arg(state);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    /// Starts a `sparq serve` command (with [`allow_test_roots`]) and waits for the address it
    /// prints.
    pub fn spawn(mut cmd: Command) -> Self {
        allow_test_roots(&mut cmd);
        Self::spawn_as_is(cmd)
    }

    /// Starts a `sparq serve` command as it is and waits for the address it prints.
    pub fn spawn_as_is(mut cmd: Command) -> Self {
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                if let Some(addr) = line
                    .strip_prefix("sparq: serving on ")
                    .and_then(|l| l.split(' ').next())
                {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_string());
                    }
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the service printed its address");
        Self { child, url }
    }

    /// Starts a `sparq serve` command as it is and returns it with its start-up line (the
    /// rest of its stderr is read and dropped, so it never blocks on a full pipe).
    pub fn spawn_with_line(mut cmd: Command) -> (Self, String) {
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("serving on"))
            .expect("the service printed its address");
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        let url = line
            .strip_prefix("sparq: serving on ")
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("{line}"))
            .to_string();
        (Self { child, url }, line)
    }

    pub fn port(&self) -> &str {
        self.url.rsplit(':').next().unwrap()
    }

    pub fn job(&self, id: &str) -> JobView {
        let v = get(&self.url, &format!("/v1/jobs/{id}?shards=all"), None);
        serde_json::from_value(v).unwrap()
    }

    pub fn submit(&self, spec: &Value) -> String {
        let r = http()
            .post(format!("{}/v1/jobs", self.url))
            .json(spec)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
        r.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn wait_final(&self, id: &str) -> JobView {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let job = self.job(id);
            if sparq::serve::api::is_final(&job.state) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not end: {job:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `sparq worker` process.
pub struct Worker(pub Child);

impl Worker {
    pub fn start(url: &str, name: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = sparq_cmd(&[
            "worker",
            "--coordinator",
            url,
            "--threads",
            "1",
            "--name",
            name,
            "--poll",
            "0.1",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self(cmd.spawn().unwrap())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Gives a `sparq serve` command without `--allow-root` the folders tests use: the repo, the temp
/// directory (no default of the service) and the test S3 bucket (S3 URLs need a root).
pub fn allow_test_roots(cmd: &mut Command) {
    if !cmd.get_args().any(|a| a == "--allow-root") {
        cmd.arg("--allow-root")
            .arg(root())
            .arg("--allow-root")
            .arg(std::env::temp_dir())
            .arg("--allow-root")
            .arg(format!("s3://{}", super::s3::BUCKET));
    }
}

pub fn sparq_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root())
        .env_remove("SPARQ_MODEL")
        .env("SPARQ_TOKEN", TEST_TOKEN)
        .env_remove("SPARQ_TOKEN_FILE")
        .env_remove("SPARQ_CA_CERT")
        .env_remove("SPARQ_COORDINATOR")
        .args(args);
    c
}

/// A GET with `token` ([`TEST_TOKEN`] when `None`), which must succeed.
pub fn get(url: &str, path: &str, token: Option<&str>) -> Value {
    let r = Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(token.unwrap_or(TEST_TOKEN));
    let r = r.send().unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().unwrap()
}
