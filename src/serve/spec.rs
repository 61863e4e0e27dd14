//! Job specs: the document `sparq submit` sends (a TOML file, as JSON on the wire) and
//! `sparq serve` checks before queueing it. Its keys are the flags of the job's command
//! (`sparq encode` or `sparq train`) with `_` for `-`; nothing in a spec is executed.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Map, Value};

use crate::io::access::{normalise, resolve_existing};
use crate::io::url::Location;
use crate::io::{AllowedRoots, StoreUrl};
use crate::job::args::EncodeConfig;
use crate::train::TrainArgs;

use super::keys::{check_keys, command_keys};
use super::wire::JobKind;

/// Longest string value accepted in a spec.
const MAX_STRING: usize = 4096;
/// Most keys in a spec.
const MAX_KEYS: usize = 64;
/// Default lease timeout of service jobs: seconds without a heartbeat before a shard is
/// leased to another worker.
pub const DEFAULT_LEASE_TIMEOUT: u64 = 60;

/// Encode keys a service job may not set: each worker chooses them for itself.
const WORKER_KEYS: [&str; 3] = ["devices", "workers", "threads"];
/// Train keys a service job may not set.
const TRAIN_WORKER_KEYS: [&str; 5] = ["device", "threads", "config", "resume", "nproc_per_node"];

/// Where a spec's local paths may point.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The allowed folders (and the default model), as every reader and writer checks them.
    pub access: AllowedRoots,
    /// Where relative paths start (the service's working directory).
    pub base: PathBuf,
    /// The service's default model, allowed wherever it is.
    pub default_model: PathBuf,
    /// The S3 locations specs may use (`--allow-root s3://bucket/prefix`); none: no S3 URL.
    pub s3: Vec<S3Root>,
}

/// An allowed S3 location: a bucket and a key prefix (whole path segments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Root {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, without leading or trailing `/`; empty: the whole bucket.
    pub prefix: String,
}

impl S3Root {
    /// Whether `key` in `bucket` lies under this root (`a/b` is under `a`, `ab` is not).
    fn contains(&self, bucket: &str, key: &str) -> bool {
        bucket == self.bucket
            && (self.prefix.is_empty()
                || key == self.prefix
                || key
                    .strip_prefix(&self.prefix)
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

impl std::fmt::Display for S3Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl Roots {
    /// Roots of a service: `allowed` folders (relative to `base`), the default model.
    pub fn new(allowed: &[PathBuf], base: PathBuf, default_model: PathBuf) -> Result<Self, String> {
        let absolute: Vec<PathBuf> = allowed.iter().map(|r| base.join(r)).collect();
        let access = AllowedRoots::under("this service", &absolute)
            .map_err(|e| format!("--allow-root: {e}"))?
            .with_model(&base.join(&default_model));
        Ok(Self {
            access,
            base,
            default_model,
            s3: Vec::new(),
        })
    }

    /// These roots plus the S3 locations `urls` (`s3://bucket` or `s3://bucket/prefix`).
    pub fn with_s3(mut self, urls: &[String]) -> Result<Self, String> {
        for raw in urls {
            let url = StoreUrl::parse(raw).map_err(|e| format!("--allow-root {raw}: {e}"))?;
            let Location::S3 { bucket, key } = url.location else {
                return Err(format!("--allow-root {raw}: not an s3:// URL"));
            };
            if has_dot_segment(&key) {
                return Err(format!(
                    "--allow-root {raw}: `.` and `..` are not S3 prefixes; write the prefix out"
                ));
            }
            self.s3.push(S3Root {
                bucket,
                prefix: key.trim_matches('/').to_string(),
            });
        }
        Ok(self)
    }

    /// Checks that `path` (absolute or relative to `base`) lies under an allowed root, by where
    /// it really is; returns it absolute and normalised.
    pub fn check(&self, key: &str, path: &Path) -> Result<PathBuf, String> {
        let absolute = normalise(&self.base.join(path));
        if resolve_existing(&absolute)
            == resolve_existing(&normalise(&self.base.join(&self.default_model)))
        {
            return Ok(absolute);
        }
        self.access
            .check(&absolute)
            .map(|_| absolute)
            .map_err(|e| format!("`{key}`: {e}; or start `sparq serve` with --allow-root"))
    }

    /// Checks a store URL: S3 as is, local paths under the roots (made absolute). For globs the
    /// folder before the first wildcard is checked here; what the glob matches is checked when
    /// it is listed.
    fn check_url(&self, key: &str, raw: &str) -> Result<String, String> {
        let url = StoreUrl::parse(raw).map_err(|e| format!("`{key}`: {e}"))?;
        match url.location {
            Location::S3 {
                bucket,
                key: object,
            } => {
                let allowed = !has_dot_segment(&object)
                    && self.s3.iter().any(|root| root.contains(&bucket, &object));
                if allowed {
                    return Ok(raw.to_string());
                }
                let roots: Vec<String> = self.s3.iter().map(|r| r.to_string()).collect();
                Err(if roots.is_empty() {
                    format!(
                        "`{key}`: {raw}: this service allows no S3 location; start `sparq serve` \
                         with --allow-root s3://{bucket}/PREFIX"
                    )
                } else {
                    format!(
                        "`{key}`: {raw} is outside the S3 locations this service allows ({}); \
                         use one of them, or start `sparq serve` with --allow-root \
                         s3://{bucket}/PREFIX",
                        roots.join(", ")
                    )
                })
            }
            Location::Local(_) => {
                let local = raw.strip_prefix("file://").unwrap_or(raw);
                let Some(wild) = local.find(['*', '?', '[']) else {
                    return Ok(self.check(key, Path::new(local))?.display().to_string());
                };
                let (dir, rest) = match local[..wild].rfind('/') {
                    Some(0) => ("/", &local[1..]),
                    Some(j) => (&local[..j], &local[j + 1..]),
                    None => (".", local),
                };
                let checked = self.check(key, Path::new(dir))?;
                Ok(checked.join(rest).display().to_string())
            }
        }
    }
}

/// Whether an S3 key has a `.` or `..` segment (stores may resolve them; roots are literal).
fn has_dot_segment(key: &str) -> bool {
    key.split('/')
        .any(|segment| segment == "." || segment == "..")
}

/// A checked job: its kind and the normalised spec (local paths absolute).
#[derive(Debug, Clone)]
pub enum JobSpec {
    /// `sparq encode` settings.
    Encode {
        /// The spec with defaults filled in.
        spec: Map<String, Value>,
        /// Parsed settings.
        args: Box<EncodeConfig>,
    },
    /// `sparq train` settings.
    Train {
        /// The spec as given (paths absolute).
        spec: Map<String, Value>,
        /// Parsed settings (resume on).
        args: Box<TrainArgs>,
    },
}

impl JobSpec {
    /// What the job runs.
    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Encode { .. } => JobKind::Encode,
            JobSpec::Train { .. } => JobKind::Train,
        }
    }

    /// The normalised document, `kind` included.
    pub fn document(&self) -> Value {
        let (JobSpec::Encode { spec, .. } | JobSpec::Train { spec, .. }) = self;
        let mut doc = spec.clone();
        doc.insert("kind".into(), self.kind().as_str().into());
        Value::Object(doc)
    }

    /// Shard attempts before a shard fails.
    pub fn max_attempts(&self) -> u32 {
        match self {
            JobSpec::Encode { args, .. } => args.max_attempts,
            JobSpec::Train { .. } => 3,
        }
    }

    /// Seconds without a heartbeat before a lease is lost.
    pub fn lease_timeout(&self) -> u64 {
        match self {
            JobSpec::Encode { args, .. } => args.lease_timeout,
            JobSpec::Train { .. } => DEFAULT_LEASE_TIMEOUT,
        }
    }
}

/// Checks a spec document: its shape, types and sizes, its keys against the command's flags,
/// and its paths against `roots`.
pub fn parse_spec(doc: &Value, roots: &Roots) -> Result<JobSpec, String> {
    let Value::Object(map) = doc else {
        return Err(
            "a job spec is a JSON object (a TOML table): {\"kind\": \"encode\", ...}".into(),
        );
    };
    if map.len() > MAX_KEYS {
        return Err(format!("a job spec has at most {MAX_KEYS} keys"));
    }
    for (k, v) in map {
        check_sizes(k, v)?;
    }
    let mut map = map.clone();
    let kind = match map.remove("kind") {
        Some(Value::String(k)) => k,
        Some(other) => {
            return Err(format!(
                "`kind` must be \"encode\" or \"train\", not {other}"
            ))
        }
        None => {
            return Err("the spec has no `kind`: add kind = \"encode\" or kind = \"train\"".into())
        }
    };
    match kind.parse::<JobKind>() {
        Ok(JobKind::Encode) => parse_encode(map, roots),
        Ok(JobKind::Train) => parse_train(map, roots),
        Err(_) => Err(format!(
            "unknown kind \"{kind}\": a job is kind = \"encode\" or kind = \"train\""
        )),
    }
}

fn check_sizes(key: &str, value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) if s.len() > MAX_STRING => Err(format!(
            "`{key}` is {} bytes long; the limit is {MAX_STRING}",
            s.len()
        )),
        Value::Array(items) if items.len() > MAX_KEYS => Err(format!(
            "`{key}` has {} items; the limit is {MAX_KEYS}",
            items.len()
        )),
        Value::Array(items) => items.iter().try_for_each(|v| check_sizes(key, v)),
        Value::Object(_) => Err(format!("`{key}` is a table; job settings are plain values")),
        // Never "not set": a NaN or infinity becomes null on its way through JSON.
        Value::Null => Err(format!(
            "`{key}` is null: give a value, or leave the key out for the default (NaN and \
             infinity are not job settings)"
        )),
        _ => Ok(()),
    }
}

fn parse_encode(mut map: Map<String, Value>, roots: &Roots) -> Result<JobSpec, String> {
    for key in WORKER_KEYS {
        if map.contains_key(key) {
            return Err(format!(
                "`{key}` is not a job setting: each `sparq worker` picks its own device and threads"
            ));
        }
    }
    check_keys(
        "encode",
        &map,
        &command_keys(EncodeConfig::augment_args, &[]),
    )?;
    map.entry("lease_timeout")
        .or_insert(Value::from(DEFAULT_LEASE_TIMEOUT));
    for key in ["input", "output", "model"] {
        if let Some(Value::String(raw)) = map.get(key) {
            let checked = if key == "model" {
                crate::model::hub::spec_model(raw, roots.check(key, Path::new(raw)))
                    .map(|p| p.display().to_string())?
            } else {
                roots.check_url(key, raw)?
            };
            map.insert(key.into(), Value::String(checked));
        }
    }
    // The default model resolves on the service: pin it, so every worker uses the same folder.
    if !map.contains_key("model") {
        let model = roots.check("model", &crate::model::default_model_dir())?;
        map.insert("model".into(), Value::String(model.display().to_string()));
    }
    let config: EncodeConfig =
        serde_path_to_error::deserialize(Value::Object(map.clone())).map_err(|e| key_error(&e))?;
    crate::job::plan::validate(&config).map_err(|e| flags_as_keys(&e.to_string()))?;
    Ok(JobSpec::Encode {
        spec: map,
        args: Box::new(config),
    })
}

/// A deserialization error with the key it is about, as `` `key`: what is wrong ``.
fn key_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.inner().to_string();
    if path == "." || path.is_empty() {
        format!("{inner} (in the job spec)")
    } else {
        format!("`{path}`: {inner} (in the job spec)")
    }
}

fn parse_train(mut map: Map<String, Value>, roots: &Roots) -> Result<JobSpec, String> {
    for key in TRAIN_WORKER_KEYS {
        if map.contains_key(key) {
            return Err(format!(
                "`{key}` is not a setting of a service job: the worker picks its device and \
                 threads, and a train job always resumes from its newest complete checkpoint"
            ));
        }
    }
    check_keys(
        "train",
        &map,
        &command_keys(TrainArgs::augment_args, &TRAIN_WORKER_KEYS),
    )?;
    for key in ["model", "eval_beir"] {
        if let Some(Value::String(raw)) = map.get(key) {
            let p = match key {
                "model" => crate::model::hub::spec_model(raw, roots.check(key, Path::new(raw)))?,
                _ => roots.check(key, Path::new(raw))?,
            };
            map.insert(key.into(), Value::String(p.display().to_string()));
        }
    }
    for key in ["train_data", "output"] {
        if let Some(Value::String(raw)) = map.get(key) {
            let checked = roots.check_url(key, raw)?;
            map.insert(key.into(), Value::String(checked));
        }
    }
    if !map.contains_key("model") {
        let model = roots.check("model", &crate::model::default_model_dir())?;
        map.insert("model".into(), Value::String(model.display().to_string()));
    }
    let mut args: TrainArgs = serde_json::from_value(Value::Object(map.clone()))
        .map_err(|e| format!("train job: {e} (keys are the flags of `sparq train` with `_`)"))?;
    args.resume = Some(true);
    args.resolve().map_err(|e| e.to_string())?;
    Ok(JobSpec::Train {
        spec: map,
        args: Box::new(args),
    })
}

/// A command's message with its `--flag-name`s written as spec keys (`flag_name`).
fn flags_as_keys(message: &str) -> String {
    let words: Vec<String> = message
        .split(' ')
        .map(|w| match w.strip_prefix("--") {
            Some(flag) => format!("`{}`", flag.replace('-', "_")),
            None => w.to_string(),
        })
        .collect();
    format!("{} (in the job spec)", words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roots() -> Roots {
        let base = std::env::temp_dir().canonicalize().unwrap();
        Roots::new(
            std::slice::from_ref(&base),
            base.clone(),
            crate::model::default_model_dir(),
        )
        .unwrap()
        .with_s3(&["s3://b".to_string(), "s3://c/jobs/".to_string()])
        .unwrap()
    }

    #[test]
    fn s3_urls_must_lie_under_an_allowed_s3_root() {
        let r = roots();
        let spec = |output: &str| json!({"kind": "encode", "input": "in", "output": output});
        for ok in ["s3://b/out", "s3://c/jobs/x/y", "s3://c/jobs"] {
            parse_spec(&spec(ok), &r).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for refused in [
            "s3://c/jobsx/y",
            "s3://c/other",
            "s3://d/jobs/x",
            "s3://c/jobs/../x",
        ] {
            let e = parse_spec(&spec(refused), &r).unwrap_err();
            assert!(
                e.contains(refused) && e.contains("--allow-root s3://"),
                "{refused}: {e}"
            );
        }
        let local_only = Roots::new(
            std::slice::from_ref(&r.base),
            r.base.clone(),
            r.default_model.clone(),
        )
        .unwrap();
        let e = parse_spec(&spec("s3://b/out"), &local_only).unwrap_err();
        assert!(e.contains("allows no S3 location"), "{e}");
    }

    #[test]
    fn encode_spec_becomes_encode_args() {
        let spec = json!({"kind": "encode", "input": "in", "output": "s3://b/out",
            "shard_rows": 10, "keep_columns": ["a", "b"], "query": true, "dtype": "bf16"});
        let JobSpec::Encode { args, spec } = parse_spec(&spec, &roots()).unwrap() else {
            panic!("not encode")
        };
        assert_eq!(args.shard_rows, Some(10));
        assert_eq!(args.keep_columns, vec!["a", "b"]);
        assert!(args.query);
        assert_eq!(args.lease_timeout, DEFAULT_LEASE_TIMEOUT);
        assert_eq!(args.output, "s3://b/out");
        assert!(Path::new(&args.input).is_absolute());
        assert!(spec["model"].as_str().unwrap().starts_with('/'));
    }

    #[test]
    fn unknown_keys_are_named_once_with_the_nearest_key() {
        let r = roots();
        let e = parse_spec(
            &json!({"kind": "encode", "input": "a", "output": "b", "shard-rows": 1,
                "bach_tokens": 1, "zzz": 1}),
            &r,
        )
        .unwrap_err();
        assert!(
            e.contains("unknown keys `bach_tokens` (did you mean `batch_tokens`?), `shard-rows` (did you mean `shard_rows`?) and `zzz` in"),
            "{e}"
        );
        let e = parse_spec(
            &json!({"kind": "train", "train_data": "a", "output": "b", "learning_rat": 1}),
            &r,
        )
        .unwrap_err();
        assert!(
            e.contains("unknown key `learning_rat` (did you mean `learning_rate`?)"),
            "{e}"
        );
        assert!(
            !e.contains("threads") && !e.contains("events"),
            "worker-only and hidden flags are not keys: {e}"
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let r = roots();
        let err = |v: Value| parse_spec(&v, &r).unwrap_err();
        assert!(err(json!({"input": "a"})).contains("no `kind`"));
        assert!(err(json!({"kind": "x"})).contains("unknown kind"));
        assert!(
            err(json!({"kind": "encode", "input": "a", "output": "b", "shard_rowz": 1}))
                .contains("unknown key `shard_rowz`")
        );
        let e = err(json!({"kind": "encode", "input": "a", "output": "b", "shard_rows": "x"}));
        assert!(e.contains("shard_rows"), "{e}");
        assert!(
            err(json!({"kind": "encode", "input": "/etc", "output": "b"}))
                .contains("outside the folders")
        );
        assert!(
            err(json!({"kind": "encode", "input": "../../../etc/x", "output": "b"}))
                .contains("outside the folders")
        );
        assert!(
            err(json!({"kind": "encode", "input": "a", "output": "http://x/y"}))
                .contains("not supported")
        );
        assert!(
            err(json!({"kind": "encode", "input": "a", "output": "b", "devices": "cpu"}))
                .contains("not a job setting")
        );
        let e = err(json!({"kind": "encode", "output": "b"}));
        assert!(e.contains("`input`"), "{e}");
        let e = err(json!({"kind": "encode", "input": "a", "output": "b", "batch_tokens": -1}));
        assert!(e.contains("`batch_tokens`"), "{e}");
        assert!(
            err(json!({"kind": "train", "train_data": "a", "output": "b", "device": "cpu"}))
                .contains("not a setting")
        );
        assert!(
            err(json!({"kind": "train", "train_data": "a", "output": "b", "lr": 1}))
                .contains("unknown key `lr`")
        );
        assert!(
            err(json!({"kind": "encode", "input": "a".repeat(5000), "output": "b"}))
                .contains("limit")
        );
    }
}
