//! The batch-job service in tests: `sparq serve` and `sparq worker` processes on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;
use sparq::serve::api::JobView;

use super::root;

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

    /// Starts a `sparq serve` command and waits for the address it prints.
    pub fn spawn(mut cmd: Command) -> Self {
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

    pub fn port(&self) -> &str {
        self.url.rsplit(':').next().unwrap()
    }

    pub fn job(&self, id: &str) -> JobView {
        let v = get(&self.url, &format!("/v1/jobs/{id}?shards=all"), None);
        serde_json::from_value(v).unwrap()
    }

    pub fn submit(&self, spec: &Value) -> String {
        let r = Client::new()
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

pub fn sparq_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root())
        .env_remove("SPARQ_MODEL")
        .env_remove("SPARQ_TOKEN")
        .env_remove("SPARQ_COORDINATOR")
        .args(args);
    c
}

pub fn get(url: &str, path: &str, token: Option<&str>) -> Value {
    let mut r = Client::new().get(format!("{url}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().unwrap()
}
