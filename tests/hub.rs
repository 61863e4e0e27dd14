//! `--model owner/name[@revision]`: hub ids resolved from a Hugging Face cache built here in
//! the layout `huggingface_hub` documents (blobs, snapshot links, refs), offline; and
//! downloaded from a local server that answers the hub's endpoints (no network), into a cache
//! Python's `huggingface_hub` reads too.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use common::corpus::{read_output, write_corpus};
use common::*;

const REPO: &str = "sparse-encoder-testing/splade-bert-tiny-nq";
const COMMIT_A: &str = "aaaaaaaaaa0123456789abcdef0123456789abcd";
const COMMIT_B: &str = "bbbbbbbbbb0123456789abcdef0123456789abcd";
const TOKEN: &str = "hf_test_token";

/// sparq with a clean Hugging Face environment: the cache under `home`, no proxy, no token.
fn sparq(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparq"));
    c.current_dir(root()).env_remove("SPARQ_MODEL");
    for var in [
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(var);
    }
    c.env("HF_HOME", home.join("hf"))
        .env("XDG_CACHE_HOME", home.join("xdg"));
    c
}

/// `encode-text` of the fixture texts; the output (exit code, stdout, stderr).
fn encode_text(mut cmd: Command, model: &str) -> Output {
    let texts: String = fixture_texts()
        .iter()
        .map(|t| serde_json::to_string(t).unwrap() + "\n")
        .collect();
    cmd.args(["encode-text", "--threads", "1", "--model", model]);
    common::process::output_with_stdin(cmd, texts.as_bytes())
}

/// The stdout of a run that must succeed.
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sparq failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The stderr of a run that must fail with exit code 1.
fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    stderr
}

/// The files of a model folder and its module folders, by path relative to it.
fn model_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                let sub = f.file_name().to_string_lossy().into_owned();
                out.insert(format!("{name}/{sub}"), std::fs::read(f.path()).unwrap());
            }
        } else {
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The repo's folder in the cache, as `huggingface_hub.file_download.repo_folder_name`.
fn repo_dir(cache: &Path) -> PathBuf {
    cache.join(format!("models--{}", REPO.replace('/', "--")))
}

/// Adds a snapshot to a cache by hand, in the layout huggingface_hub documents: each file's
/// content in `blobs/<sha256>` and `snapshots/<commit>/<file>` a relative link to it.
fn add_snapshot(cache: &Path, commit: &str, files: &BTreeMap<String, Vec<u8>>) -> PathBuf {
    let repo = repo_dir(cache);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    for (rel, bytes) in files {
        let blob = repo.join("blobs").join(sha256(bytes));
        std::fs::write(&blob, bytes).unwrap();
        let link = repo.join("snapshots").join(commit).join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(2 + rel.matches('/').count());
        std::os::unix::fs::symlink(format!("{up}blobs/{}", sha256(bytes)), &link).unwrap();
    }
    repo.join("snapshots").join(commit)
}

/// Points `refs/<name>` at `commit`.
fn set_ref(cache: &Path, name: &str, commit: &str) {
    let refs = repo_dir(cache).join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join(name), commit).unwrap();
}

/// The tiny model with sum pooling: other vectors, to tell revisions apart.
fn sum_pooling_files() -> BTreeMap<String, Vec<u8>> {
    let mut files = model_files(&tiny_model());
    let pooling = files.get_mut("1_SpladePooling/config.json").unwrap();
    let text = String::from_utf8(pooling.clone()).unwrap();
    assert!(text.contains("\"max\""));
    *pooling = text.replace("\"max\"", "\"sum\"").into_bytes();
    files
}

/// The snapshot `huggingface_hub` finds for `revision` in `cache` without a network, if the
/// reference Python environment is there (None: it is not, and the check is skipped).
fn python_snapshot(cache: &Path, revision: &str) -> Option<String> {
    let python = root().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("SKIPPED the huggingface_hub cross-check: no .venv/bin/python");
        return None;
    }
    let out = Command::new(python)
        .env("HF_HUB_OFFLINE", "1")
        .args([
            "-c",
            "import sys; from huggingface_hub import snapshot_download as s; \
             print(s(sys.argv[1], revision=sys.argv[2], cache_dir=sys.argv[3], local_files_only=True))",
            REPO,
            revision,
            cache.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "huggingface_hub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_string())
}

#[test]
fn hub_ids_resolve_offline_from_the_cache_by_branch_and_commit() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hf/hub");
    let a = add_snapshot(&cache, COMMIT_A, &model_files(&tiny_model()));
    let b = add_snapshot(&cache, COMMIT_B, &sum_pooling_files());
    set_ref(&cache, "main", COMMIT_A);
    set_ref(&cache, "v2", COMMIT_B);
    // The hand-built cache is the one huggingface_hub reads.
    if let Some(found) = python_snapshot(&cache, "v2") {
        assert_eq!(Path::new(&found), b);
    }
    let sum_model = home.path().join("sum-model");
    copy_dir(&tiny_model(), &sum_model);
    std::fs::write(
        sum_model.join("1_SpladePooling/config.json"),
        &sum_pooling_files()["1_SpladePooling/config.json"],
    )
    .unwrap();

    let offline = || {
        let mut c = sparq(home.path());
        // Any request would fail: nothing listens on port 9.
        c.env("HF_HUB_OFFLINE", "1")
            .env("HF_ENDPOINT", "http://127.0.0.1:9");
        c
    };
    let want_max = ok(&encode_text(offline(), tiny_model().to_str().unwrap()));
    let want_sum = ok(&encode_text(offline(), sum_model.to_str().unwrap()));
    assert_ne!(want_max, want_sum);
    assert_eq!(ok(&encode_text(offline(), REPO)), want_max, "refs/main");
    assert_eq!(
        ok(&encode_text(offline(), &format!("{REPO}@v2"))),
        want_sum,
        "a branch"
    );
    assert_eq!(
        ok(&encode_text(offline(), &format!("{REPO}@{COMMIT_A}"))),
        want_max,
        "a full commit hash"
    );
    // TRANSFORMERS_OFFLINE counts as HF_HUB_OFFLINE, and a cached id needs no network anyway.
    let mut c = sparq(home.path());
    c.env("TRANSFORMERS_OFFLINE", "1");
    assert_eq!(ok(&encode_text(c, REPO)), want_max);
    // An existing folder of that name wins over the hub id.
    let shadow = home.path().join("work");
    copy_dir(&sum_model, &shadow.join(REPO));
    let mut c = offline();
    c.current_dir(&shadow);
    assert_eq!(ok(&encode_text(c, REPO)), want_sum, "a folder wins");
    assert!(a.is_dir());
}

#[test]
fn missing_hub_ids_offline_and_non_ids_say_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hf/hub");
    let mut c = sparq(home.path());
    c.env("HF_HUB_OFFLINE", "1");
    let err = failed(&encode_text(c, &format!("{REPO}@v9")));
    assert!(err.contains(&format!("`{REPO}@v9`")), "{err}");
    assert!(
        err.contains("revision v9 is not in the Hugging Face cache"),
        "{err}"
    );
    assert!(err.contains(&cache.display().to_string()), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(
        err.contains(&format!("hf download {REPO} --revision v9")),
        "{err}"
    );

    // A snapshot holding only a config (as AutoConfig leaves it) is not a model.
    let mut files = BTreeMap::new();
    files.insert("config.json".to_string(), b"{}".to_vec());
    add_snapshot(&cache, COMMIT_A, &files);
    set_ref(&cache, "main", COMMIT_A);
    let mut c = sparq(home.path());
    c.env("HF_HUB_OFFLINE", "1");
    let err = failed(&encode_text(c, REPO));
    assert!(err.contains("without a config and weights"), "{err}");

    let err = failed(&encode_text(sparq(home.path()), "no/such/model-folder"));
    assert!(
        err.contains("neither a folder nor a Hugging Face hub id"),
        "{err}"
    );
}

/// One request the hub server saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// A local server answering the hub's endpoints for one repo at one commit: the file list
/// (`/api/models/{id}/revision/{rev}`) and ranged file downloads
/// (`/{id}/resolve/{rev}/{file}`) with the headers the hub sends (`X-Repo-Commit`, `ETag`,
/// `X-Linked-Etag`, `Content-Range`); it answers 401 without `Authorization: Bearer TOKEN`.
struct HubServer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    fn start(files: BTreeMap<String, Vec<u8>>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &files, &seen2),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HubServer {
            url,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(stream: TcpStream, files: &BTreeMap<String, Vec<u8>>, seen: &Mutex<Vec<Seen>>) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let authorization = headers.get("authorization").cloned();
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization: authorization.clone(),
    });
    let mut stream = stream;
    let mut send = |status: &str, extra: Vec<(String, String)>, body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    if authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return send(
            "401 Unauthorized",
            vec![],
            b"Invalid credentials in Authorization header",
        );
    }
    let revisions = ["/main".to_string(), format!("/{COMMIT_A}")];
    if let Some(rev) = path.strip_prefix(&format!("/api/models/{REPO}/revision")) {
        if !revisions.iter().any(|r| r == rev) {
            return send("404 Not Found", vec![], b"Revision Not Found");
        }
        let siblings: Vec<_> = files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": REPO, "sha": COMMIT_A, "siblings": siblings });
        let json = ("Content-Type".to_string(), "application/json".to_string());
        return send("200 OK", vec![json], body.to_string().as_bytes());
    }
    let resolved = path
        .strip_prefix(&format!("/{REPO}/resolve"))
        .and_then(|rest| revisions.iter().find_map(|r| rest.strip_prefix(r.as_str())))
        .and_then(|file| files.get(file.trim_start_matches('/')));
    let Some(bytes) = resolved else {
        return send("404 Not Found", vec![], b"Entry not found");
    };
    let start: usize = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let end = match headers.get("range").map(|r| r.ends_with('-')) {
        Some(false) => start + 1, // bytes=0-0
        _ => bytes.len(),
    };
    let etag = format!("\"{}\"", sha256(bytes));
    let headers = vec![
        ("X-Repo-Commit".to_string(), COMMIT_A.to_string()),
        ("ETag".to_string(), etag.clone()),
        ("X-Linked-Etag".to_string(), etag),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
        (
            "Content-Range".to_string(),
            format!("bytes {start}-{}/{}", end - 1, bytes.len()),
        ),
    ];
    send("206 Partial Content", headers, &bytes[start..end]);
}

#[test]
fn a_missing_hub_id_downloads_from_hf_endpoint_with_hf_token_then_runs_offline() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hf/hub");
    let mut files = model_files(&tiny_model());
    // Files the loader does not read: never requested.
    files.insert("onnx/model.onnx".into(), b"not for sparq".to_vec());
    files.insert("pytorch_model.bin".into(), b"safetensors win".to_vec());
    files.insert(
        ".gitattributes".into(),
        b"*.safetensors filter=lfs".to_vec(),
    );
    let server = HubServer::start(files);

    let input = home.path().join("in");
    write_corpus(&input.join("a.parquet"), 0..40, 16);
    let encode = |mut cmd: Command, model: &str, out: &Path| {
        cmd.args(["encode", "--threads", "1", "--model", model])
            .args(["--input", input.to_str().unwrap()])
            .args(["--output", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let online = |token: &str| {
        let mut c = sparq(home.path());
        c.env("HF_ENDPOINT", format!("{}/", server.url))
            .env("HF_TOKEN", token);
        c
    };

    // A wrong token: the hub's 401, and what to do.
    let err = failed(&encode(online("wrong"), REPO, &home.path().join("x")));
    assert!(err.contains("401") && err.contains("HF_TOKEN"), "{err}");

    let local_out = home.path().join("out-local");
    ok(&encode(
        sparq(home.path()),
        tiny_model().to_str().unwrap(),
        &local_out,
    ));
    let hub_out = home.path().join("out-hub");
    ok(&encode(online(TOKEN), REPO, &hub_out));
    assert_eq!(read_output(&hub_out).0, read_output(&local_out).0);

    let manifest = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("_manifest.json")).unwrap()).unwrap()
    };
    let (hub, local) = (manifest(&hub_out), manifest(&local_out));
    assert_eq!(hub["model"]["hub"]["id"], REPO);
    assert_eq!(hub["model"]["hub"]["revision"], COMMIT_A);
    assert_eq!(hub["model"]["fingerprint"], local["model"]["fingerprint"]);
    assert!(local["model"].get("hub").is_none());
    let snapshot = repo_dir(&cache).join("snapshots").join(COMMIT_A);
    assert_eq!(
        Path::new(hub["model"]["path"].as_str().unwrap()),
        snapshot,
        "{hub}"
    );

    // What was asked: the listing for `main`, then each file the loader reads at the commit,
    // every request with the token.
    let seen: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")))
        .collect();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths[0], format!("/api/models/{REPO}/revision/main"));
    for file in model_files(&tiny_model())
        .keys()
        .filter(|f| *f != "README.md")
    {
        let url = format!("/{REPO}/resolve/{COMMIT_A}/{file}");
        assert!(
            paths.contains(&url.as_str()),
            "{file} not fetched: {paths:?}"
        );
    }
    for skipped in [
        "onnx/model.onnx",
        "pytorch_model.bin",
        ".gitattributes",
        "README.md",
    ] {
        assert!(
            !paths.iter().any(|p| p.ends_with(skipped)),
            "{skipped} fetched: {paths:?}"
        );
    }
    assert!(!snapshot.join("pytorch_model.bin").exists());
    // The layout is huggingface_hub's: refs/main names the commit, files link into blobs/.
    assert_eq!(
        std::fs::read_to_string(repo_dir(&cache).join("refs/main")).unwrap(),
        COMMIT_A
    );
    assert!(!repo_dir(&cache).join("refs").join(COMMIT_A).exists());
    let weights = snapshot.join("model.safetensors");
    assert!(weights.symlink_metadata().unwrap().is_symlink());
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        std::fs::read(tiny_model().join("model.safetensors")).unwrap()
    );
    if let Some(found) = python_snapshot(&cache, "main") {
        assert_eq!(Path::new(&found), snapshot);
    }

    // The server is gone: the next run reads the cache, offline.
    drop(server);
    let mut c = sparq(home.path());
    c.env("HF_HUB_OFFLINE", "1");
    let want = ok(&encode_text(
        sparq(home.path()),
        tiny_model().to_str().unwrap(),
    ));
    assert_eq!(ok(&encode_text(c, REPO)), want);
}

#[test]
fn an_unreachable_hub_says_so() {
    let home = tempfile::tempdir().unwrap();
    let mut c = sparq(home.path());
    c.env("HF_ENDPOINT", "http://127.0.0.1:9");
    let err = failed(&encode_text(c, REPO));
    assert!(err.contains("cannot reach http://127.0.0.1:9"), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE=1"), "{err}");
}

#[test]
fn service_job_specs_refuse_hub_ids() {
    use common::service::{http, sparq_cmd, Service};
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--allow-root"]);
    cmd.arg(dir.path())
        .arg("--state")
        .arg(dir.path().join("state.db"));
    let service = Service::spawn(cmd);
    for kind in ["encode", "train"] {
        let spec = serde_json::json!({
            "kind": kind,
            "input": dir.path(),
            "train_data": dir.path(),
            "output": dir.path().join(format!("out-{kind}")),
            "model": REPO,
        });
        let mut spec = spec.as_object().unwrap().clone();
        spec.remove(if kind == "encode" {
            "train_data"
        } else {
            "input"
        });
        let r = http()
            .post(format!("{}/v1/jobs", service.url))
            .json(&spec)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{kind}");
        let text = r.text().unwrap();
        assert!(
            text.contains("not Hugging Face hub ids")
                && text.contains(&format!("hf download {REPO} --local-dir DIR")),
            "{kind}: {text}"
        );
    }
}

#[test]
fn train_starts_from_a_hub_id_in_its_config_file() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hf/hub");
    add_snapshot(&cache, COMMIT_A, &model_files(&tiny_model()));
    set_ref(&cache, "main", COMMIT_A);
    // A relative `model` in a config file is relative to the file's folder, unless it is a hub
    // id that names no folder there.
    let config = home.path().join("train.toml");
    std::fs::write(
        &config,
        format!(
            "model = \"{REPO}\"\ntrain_data = \"{}\"\noutput = \"run\"\nmax_steps = 1\n\
             batch_size = 4\n",
            root().join("examples/pairs/pairs.parquet").display()
        ),
    )
    .unwrap();
    let out = sparq(home.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["train", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&out);
    assert!(home.path().join("run/model.safetensors").is_file());
}

#[test]
fn an_encode_job_file_names_a_hub_id() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hf/hub");
    add_snapshot(&cache, COMMIT_A, &model_files(&tiny_model()));
    set_ref(&cache, "main", COMMIT_A);
    write_corpus(&home.path().join("in/a.parquet"), 0..20, 10);
    let job = home.path().join("job.toml");
    std::fs::write(
        &job,
        format!("model = \"{REPO}\"\ninput = \"in\"\noutput = \"out\"\n"),
    )
    .unwrap();
    let out = sparq(home.path())
        .env("HF_HUB_OFFLINE", "1")
        .args([
            "encode",
            "--threads",
            "1",
            "--config",
            job.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    ok(&out);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.path().join("out/_manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["model"]["hub"]["id"], REPO);
    assert_eq!(manifest["model"]["hub"]["revision"], COMMIT_A);
}
