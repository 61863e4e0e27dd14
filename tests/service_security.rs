//! The service's security as its users meet it: HTTPS with a private CA, plain http refused to a
//! remote coordinator, a generated 0600 token required even on loopback, token files others
//! may read refused, and the roots job specs may use (no temp directory by default; S3 URLs
//! only under an `--allow-root s3://...`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::corpus::*;
use common::service::*;
use common::*;
use serde_json::{json, Value};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A private CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files
/// in `dir`: (CA certificate, server certificate, server key).
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sparq test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

/// A request with `token` (none when `None`): status and JSON body.
fn request(url: &str, method: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let mut r = match method {
        "GET" => client.get(format!("{url}{path}")),
        _ => client.post(format!("{url}{path}")).json(body),
    };
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn an_https_service_serves_workers_and_submit_that_trust_its_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--tls-cert"]);
    cmd.arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--state")
        .arg(dir.path().join("state.db"));
    let service = Service::spawn(cmd);
    assert!(
        service.url.starts_with("https://127.0.0.1:"),
        "{}",
        service.url
    );

    write_corpus(&dir.path().join("in/a.parquet"), 0..30, 10);
    let spec = dir.path().join("job.toml");
    let output = dir.path().join("out");
    std::fs::write(
        &spec,
        format!(
            "kind = \"encode\"\ninput = \"{}/in\"\noutput = \"{}\"\nshard_rows = 10\n",
            dir.path().display(),
            output.display()
        ),
    )
    .unwrap();
    let ca_env = ca.to_str().unwrap();
    let _worker = Worker::start(&service.url, "w1", &[("SPARQ_CA_CERT", ca_env)]);
    let out = sparq_cmd(&[
        "submit",
        "--wait",
        "--coordinator",
        &service.url,
        "--ca-cert",
    ])
    .arg(&ca)
    .arg(&spec)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(output.join("_SUCCESS").is_file());
    let (rows, _) = read_output(&output);
    assert_eq!(rows.len(), 30);

    // Without the CA the certificate is refused, and the message says how to trust it.
    let out = sparq_cmd(&["status", "--coordinator", &service.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("certificate") && err.contains("--ca-cert"),
        "{err}"
    );
    // A CA file that holds no certificate is named.
    let out = sparq_cmd(&["status", "--coordinator", &service.url, "--ca-cert"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(key.to_str().unwrap()) && err.contains("no PEM certificate"),
        "{err}"
    );

    // A key that is no key, named.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    let out = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&bad)
        .arg("--state")
        .arg(dir.path().join("state2.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--tls-key") && err.contains(bad.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn plain_http_to_a_coordinator_off_this_machine_is_refused_before_connecting() {
    // 10.255.255.1 answers nothing: a client that tried to connect would wait its timeout.
    for args in [
        &["status"][..],
        &["cancel", "j-1"][..],
        &["worker", "--idle-exit", "1"][..],
    ] {
        let started = Instant::now();
        let out = sparq_cmd(args)
            .args(["--coordinator", "http://10.255.255.1:7070"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("refusing plain http")
                && err.contains("https://10.255.255.1:7070")
                && err.contains("--tls-cert"),
            "{args:?}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{args:?}");
    }
    // Loopback stays plain http: the refusal is of the connection, not of the URL.
    let out = sparq_cmd(&["status", "--coordinator", "http://localhost:1"])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("cannot reach the coordinator"));
}

#[test]
fn without_sparq_token_the_service_makes_a_private_token_file_and_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    // The default --state in the service's folder: `sparq status` run there finds the token.
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.current_dir(dir.path()).env_remove("SPARQ_TOKEN");
    allow_test_roots(&mut cmd);
    let (service, line) = Service::spawn_with_line(cmd);
    let file = dir.path().join("sparq.db.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(token.len() >= 32, "{token}");
    assert!(
        line.contains("bearer token required: in sparq.db.token") && !line.contains(&token),
        "{line}"
    );

    let url = &service.url;
    let (code, body) = request(url, "GET", "/v1/jobs", None, &Value::Null);
    assert_eq!(code, 401, "loopback needs the token too: {body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("missing bearer token"));
    let (code, _) = request(url, "POST", "/v1/leases", Some(TEST_TOKEN), &json!({}));
    assert_eq!(code, 401, "not the harness's token");
    let (code, _) = request(url, "GET", "/v1/jobs", Some(&token), &Value::Null);
    assert_eq!(code, 200);

    // Clients read it: from the default file beside them, or from --token-file.
    let out = sparq_cmd(&["status", "--coordinator", url])
        .current_dir(dir.path())
        .env_remove("SPARQ_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = sparq_cmd(&["status", "--coordinator", url, "--token-file"])
        .arg(&file)
        .env_remove("SPARQ_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = sparq_cmd(&["status", "--coordinator", url])
        .env_remove("SPARQ_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "elsewhere, no token");
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));

    // A restarted service keeps its token, so its workers keep working.
    drop(service);
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.current_dir(dir.path()).env_remove("SPARQ_TOKEN");
    allow_test_roots(&mut cmd);
    let (service, _) = Service::spawn_with_line(cmd);
    let (code, _) = request(&service.url, "GET", "/v1/jobs", Some(&token), &Value::Null);
    assert_eq!(code, 200);

    // A public address needs a token the operator chose.
    let out = sparq_cmd(&["serve", "--listen", "0.0.0.0:0"])
        .current_dir(dir.path())
        .env_remove("SPARQ_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--token-file"), "{}", stderr(&out));
}

#[test]
fn a_token_file_other_users_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "a-token-others-read\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&file)
        .arg("--state")
        .arg(dir.path().join("state.db"))
        .env_remove("SPARQ_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("chmod 600 {}", file.display())) && err.contains("0644"),
        "{err}"
    );
    // A client refuses it too (SPARQ_TOKEN_FILE as well as --token-file), before sending it.
    let out = sparq_cmd(&["status", "--coordinator", "http://127.0.0.1:1"])
        .env_remove("SPARQ_TOKEN")
        .env("SPARQ_TOKEN_FILE", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn job_paths_in_the_temp_directory_need_an_allow_root() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("in/a.parquet"), 0..10, 10);
    let spec = json!({"kind": "encode", "input": dir.path().join("in").display().to_string(),
                      "output": dir.path().join("out").display().to_string()});
    // The defaults: the service's working directory (the repo) only.
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--state"]);
    cmd.arg(dir.path().join("state.db"));
    let service = Service::spawn_as_is(cmd);
    let (code, body) = request(&service.url, "POST", "/v1/jobs", Some(TEST_TOKEN), &spec);
    assert_eq!(code, 400, "{body}");
    let e = body["error"].as_str().unwrap();
    assert!(
        e.contains("outside the folders") && e.contains("--allow-root"),
        "{e}"
    );
    // Named, it is allowed.
    drop(service);
    let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--allow-root"]);
    cmd.arg(dir.path())
        .arg("--state")
        .arg(dir.path().join("state.db"));
    let service = Service::spawn_as_is(cmd);
    let (code, body) = request(&service.url, "POST", "/v1/jobs", Some(TEST_TOKEN), &spec);
    assert_eq!(code, 201, "{body}");
}

#[test]
fn s3_urls_in_job_specs_must_lie_under_an_allowed_s3_root() {
    let dir = tempfile::tempdir().unwrap();
    let spec =
        |output: &str| json!({"kind": "encode", "input": "examples/corpus", "output": output});
    // An accepted job takes its output's lock at once: on the test S3 server when there is one
    // (without, only the refusals are checked, and nothing may reach out: an endpoint that
    // answers nothing).
    let endpoint = common::s3::endpoint();
    let start = |roots: &[&str], state: &str| {
        let mut cmd = sparq_cmd(&["serve", "--listen", "127.0.0.1:0", "--allow-root"]);
        cmd.arg(root()).arg("--state").arg(dir.path().join(state));
        common::s3::env(
            &mut cmd,
            endpoint.as_deref().unwrap_or("http://127.0.0.1:1"),
        );
        for r in roots {
            cmd.args(["--allow-root", r]);
        }
        Service::spawn_as_is(cmd)
    };
    let service = start(&["s3://sparq-test/allowed"], "a.db");
    for refused in [
        "s3://sparq-test/other/out",
        "s3://sparq-test/allowed2/out",
        "s3://another-bucket/allowed/out",
    ] {
        let (code, body) = request(
            &service.url,
            "POST",
            "/v1/jobs",
            Some(TEST_TOKEN),
            &spec(refused),
        );
        assert_eq!(code, 400, "{refused}: {body}");
        let e = body["error"].as_str().unwrap();
        assert!(
            e.contains(refused)
                && e.contains("s3://sparq-test/allowed")
                && e.contains("--allow-root s3://"),
            "{e}"
        );
    }
    if endpoint.is_some() {
        let run = dir
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let (code, body) = request(
            &service.url,
            "POST",
            "/v1/jobs",
            Some(TEST_TOKEN),
            &spec(&format!("s3://sparq-test/allowed/{run}/out")),
        );
        assert_eq!(code, 201, "{body}");
    }
    // No S3 root: no S3 URL.
    let service = start(&[], "b.db");
    let (code, body) = request(
        &service.url,
        "POST",
        "/v1/jobs",
        Some(TEST_TOKEN),
        &spec("s3://sparq-test/allowed/out"),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("allows no S3 location"),
        "{body}"
    );
}
