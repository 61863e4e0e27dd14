//! A fault-injecting HTTP proxy between sparq and the S3 test server: it forwards each
//! request and, on about `rate` of them, answers 503 `SlowDown` or 500 `InternalError`
//! instead, or forwards it and then resets the connection (the answer lost), stalls before
//! answering, or cuts the answer's body in half.
//!
//! Which requests fail is fixed by the seed: a request (method, path, query without the
//! per-run `uploadId`, range) fails on its n-th arrival when a hash of the seed, the request
//! and n falls under the rate, so a retry draws anew. The faults take the kinds in turn (so a
//! run with as many faults as kinds meets each); only a GET's answer is cut (a cut whose turn
//! falls on another request waits for the next failing GET; an empty answer is reset instead). One request per connection: every answer says `Connection: close`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// 503 with an S3 `SlowDown` error document; the request is not forwarded.
    SlowDown,
    /// 500 with an S3 `InternalError` error document; the request is not forwarded.
    InternalError,
    /// Forwarded, then the client connection is reset (RST) without an answer.
    Reset,
    /// Forwarded, then answered only after the stall.
    Stall,
    /// Forwarded, then answered with the headers and half the body, and closed.
    Truncated,
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Chooses the failing requests.
    pub seed: u64,
    /// Share of requests that fail (0..1).
    pub rate: f64,
    /// How long a stalled answer waits.
    pub stall: Duration,
    /// The kinds the faults take, in turn.
    pub kinds: Vec<Fault>,
    /// Fail only a request's first arrival (its retry goes through).
    pub first_arrival_only: bool,
    /// Answer the first this-many arrivals of each create-once `PUT` (`If-None-Match: *`) of a part with
    /// 409 `ConditionalRequestConflict`, not forwarded: what S3 says while another conditional
    /// write of the key is in flight, and what object_store reports as `AlreadyExists`.
    pub conflict_creates: u64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            seed: 18,
            rate: 0.1,
            stall: Duration::from_secs(5),
            kinds: vec![
                Fault::SlowDown,
                Fault::Reset,
                Fault::Truncated,
                Fault::InternalError,
                Fault::Stall,
            ],
            first_arrival_only: false,
            conflict_creates: 0,
        }
    }
}

#[derive(Default)]
struct State {
    requests: u64,
    seen: HashMap<String, u64>,
    turn: usize,
    owed_cuts: u64,
    injected: BTreeMap<Fault, u64>,
    creates: HashMap<String, u64>,
    conflicts: u64,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL`.
    pub url: String,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) on a free local port.
    pub fn start(upstream: &str, plan: FaultPlan) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let plan = Arc::new(plan);
        let shared = state.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, plan, state) = (upstream.clone(), plan.clone(), shared.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &plan, &state).await;
                });
            }
        });
        Self {
            url,
            state,
            runtime: Some(runtime),
        }
    }

    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// Create-once writes answered 409.
    pub fn conflicts(&self) -> u64 {
        self.state.lock().unwrap().conflicts
    }

    /// Faults injected, by kind.
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.state.lock().unwrap().injected.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One request: read it, decide, forward or not, answer (or not).
async fn serve(
    mut client: TcpStream,
    upstream: &str,
    plan: &FaultPlan,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    let Some(request) = read_request(&mut client).await? else {
        return Ok(());
    };
    let head = String::from_utf8_lossy(&request[..request_head_len(&request)]).into_owned();
    if conflict(&head, plan, state) {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\
                    <Code>ConditionalRequestConflict</Code><Message>injected by the test proxy\
                    </Message></Error>";
        let answer = format!(
            "HTTP/1.1 409 Conflict\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(answer.as_bytes()).await?;
        return client.shutdown().await;
    }
    let fault = decide(&head, plan, state);
    let error_answer = |status: &str, code: &str| {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>injected by the test proxy</Message></Error>"
        );
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match fault {
        Some(Fault::SlowDown) => {
            count(state, Fault::SlowDown);
            client
                .write_all(error_answer("503 Slow Down", "SlowDown").as_bytes())
                .await?;
            return client.shutdown().await;
        }
        Some(Fault::InternalError) => {
            count(state, Fault::InternalError);
            client
                .write_all(error_answer("500 Internal Server Error", "InternalError").as_bytes())
                .await?;
            return client.shutdown().await;
        }
        _ => {}
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&with_connection_close(&request)).await?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).await?;
    let body_at = find(&answer, b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
    let fault = match fault {
        Some(Fault::Truncated) if answer.len() - body_at < 2 => Some(Fault::Reset),
        f => f,
    };
    match fault {
        Some(Fault::Reset) => {
            count(state, Fault::Reset);
            client.set_zero_linger()?;
            drop(client);
        }
        Some(Fault::Stall) => {
            count(state, Fault::Stall);
            tokio::time::sleep(plan.stall).await;
            client.write_all(&answer).await?;
            client.shutdown().await?;
        }
        Some(Fault::Truncated) => {
            count(state, Fault::Truncated);
            let cut = body_at + (answer.len() - body_at) / 2;
            client.write_all(&answer[..cut]).await?;
            client.shutdown().await?;
        }
        _ => {
            client.write_all(&answer).await?;
            client.shutdown().await?;
        }
    }
    Ok(())
}

fn count(state: &Mutex<State>, fault: Fault) {
    *state.lock().unwrap().injected.entry(fault).or_default() += 1;
}

/// Whether this request is a create-once `PUT` to answer with 409.
fn conflict(head: &str, plan: &FaultPlan, state: &Mutex<State>) -> bool {
    let lower = head.to_ascii_lowercase();
    let create = lower.starts_with("put ")
        && lower
            .split("\r\n")
            .any(|l| l.replace(' ', "") == "if-none-match:*");
    if !create || plan.conflict_creates == 0 {
        return false;
    }
    let target = head.split(' ').nth(1).unwrap_or("").to_string();
    // Parts only: the output's lock generations are created once too, and a lock that cannot
    // be taken stops the run before any part is written.
    if !target.contains("/part-") {
        return false;
    }
    let mut s = state.lock().unwrap();
    let n = s.creates.entry(target).or_default();
    *n += 1;
    let refuse = *n <= plan.conflict_creates;
    if refuse {
        s.conflicts += 1;
    }
    refuse
}

/// Whether (and how) this request fails: by the seeded hash of its identity and arrival.
fn decide(head: &str, plan: &FaultPlan, state: &Mutex<State>) -> Option<Fault> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("");
    let target = first.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query: Vec<&str> = query
        .split('&')
        .filter(|p| !p.starts_with("uploadId="))
        .collect();
    let range = lines
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("range"))
        })
        .map_or("", |(_, v)| v.trim());
    let key = format!("{method} {path}?{} {range}", query.join("&"));
    let mut s = state.lock().unwrap();
    s.requests += 1;
    let n = s.seen.entry(key.clone()).or_default();
    *n += 1;
    let mut h = DefaultHasher::new();
    (plan.seed, &key, *n).hash(&mut h);
    let draw = (h.finish() % 1_000_000) as f64 / 1_000_000.0;
    if draw >= plan.rate || plan.kinds.is_empty() || (plan.first_arrival_only && *n > 1) {
        return None;
    }
    // Only a GET's answer has a body to cut: a cut whose turn falls on another request is
    // owed to the next failing GET, and that request takes the following kind.
    if method == "GET" && s.owed_cuts > 0 {
        s.owed_cuts -= 1;
        return Some(Fault::Truncated);
    }
    loop {
        let kind = plan.kinds[s.turn % plan.kinds.len()];
        s.turn += 1;
        if kind != Fault::Truncated || method == "GET" {
            return Some(kind);
        }
        s.owed_cuts += 1;
        if plan.kinds.iter().all(|k| *k == Fault::Truncated) {
            return None;
        }
    }
}

/// Reads one request (head and body, `Content-Length` or chunked); `None` at a clean EOF.
async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.split("\r\n")
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .map(|v| v.trim().to_string())
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < head_end + len {
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !chunked_complete(&buf[head_end..]) {
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(Some(buf))
}

/// Whether a chunked body is complete (its last, empty chunk and the blank line read).
fn chunked_complete(mut body: &[u8]) -> bool {
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            return false;
        };
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return false;
        };
        body = &body[line_end + 2..];
        if size == 0 {
            // Trailers (none expected), then the blank line.
            return find(body, b"\r\n").is_some_and(|i| i == 0)
                || find(body, b"\r\n\r\n").is_some();
        }
        if body.len() < size + 2 {
            return false;
        }
        body = &body[size + 2..];
    }
}

/// Length of the request head (through the blank line).
fn request_head_len(request: &[u8]) -> usize {
    find(request, b"\r\n\r\n").map_or(request.len(), |i| i + 4)
}

/// The request with `Connection: close`, so the server ends its answer with EOF.
fn with_connection_close(request: &[u8]) -> Vec<u8> {
    let head_len = request_head_len(request);
    let head = String::from_utf8_lossy(&request[..head_len - 4]);
    let mut out: Vec<String> = head
        .split("\r\n")
        .filter(|l| {
            !l.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        })
        .map(String::from)
        .collect();
    out.push("Connection: close".into());
    let mut bytes = (out.join("\r\n") + "\r\n\r\n").into_bytes();
    bytes.extend_from_slice(&request[head_len..]);
    bytes
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
