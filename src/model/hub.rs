//! `--model owner/name[@revision]`: a Hugging Face hub id resolved to a snapshot folder of the
//! Hugging Face cache, as `huggingface_hub` lays it out and reads it offline
//! (`huggingface_hub/file_download.py`, `constants.py`):
//!
//! ```text
//! $HF_HUB_CACHE/models--owner--name/refs/main            the commit a branch or tag points at
//! $HF_HUB_CACHE/models--owner--name/snapshots/<commit>/  the repo's files: links into blobs/
//! $HF_HUB_CACHE/models--owner--name/blobs/<etag>         the contents
//! ```
//!
//! This file reads ids, the environment and the cache; `hub_resolve.rs` decides between the
//! cache and a download (`hub_download.rs`).

use std::path::{Path, PathBuf};

/// The default hub.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A hub model id with an optional revision (branch, tag or full commit hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `owner/name`.
    pub repo: String,
    /// The revision after `@`, if given.
    pub revision: Option<String>,
}

impl HubId {
    /// Parses `owner/name[@revision]` with the hub's repo id grammar (`huggingface_hub`'s
    /// `validate_repo_id`): letters, digits, `-`, `_`, `.`; each part starts and ends with a
    /// letter, digit or `_`; no `--` or `..`; at most 96 characters. None for anything else.
    pub fn parse(text: &str) -> Option<HubId> {
        let (repo, revision) = match text.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (text, None),
        };
        let (owner, name) = repo.split_once('/')?;
        let part_ok = |p: &str| {
            let edge = |c: char| c.is_ascii_alphanumeric() || c == '_';
            p.chars().next().is_some_and(edge)
                && p.chars().last().is_some_and(edge)
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !(part_ok(owner) && part_ok(name))
            || repo.len() > 96
            || repo.contains("--")
            || repo.contains("..")
        {
            return None;
        }
        // A revision names a file under refs/ (branches may hold `/`, as `refs/pr/1` does):
        // nothing that could leave that folder.
        if let Some(rev) = revision {
            let bad = |c: &str| c.is_empty() || c == "." || c == "..";
            if rev.split('/').any(bad) || rev.contains(['\\', '\0']) {
                return None;
            }
        }
        Some(HubId {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    /// The revision asked for: the given one, else `main`.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repo's folder in the cache (`models--owner--name`).
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// The Hugging Face settings from the environment, read as `huggingface_hub` reads them.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// The cache: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE` (else `TRANSFORMERS_OFFLINE`) is 1, ON, YES or TRUE: cache only.
    pub offline: bool,
    /// `HF_ENDPOINT` without a trailing `/`, else `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the file at `HF_TOKEN_PATH` (default
    /// `HF_HOME/token`, where `hf auth login` writes it).
    pub token: Option<String>,
}

impl HubEnv {
    /// The settings of this process's environment.
    pub fn from_env() -> HubEnv {
        HubEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// The settings `var` gives (a lookup of environment variables).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> HubEnv {
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        let home_dir = || set("HOME").map(PathBuf::from).unwrap_or_default();
        let expand = |v: String| match v.strip_prefix("~/") {
            Some(rest) => home_dir().join(rest),
            None if v == "~" => home_dir(),
            None => PathBuf::from(v),
        };
        let hf_home = set("HF_HOME").map(expand).unwrap_or_else(|| {
            let xdg = set("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home_dir().join(".cache"));
            xdg.join("huggingface")
        });
        let cache = set("HF_HUB_CACHE")
            .or_else(|| set("HUGGINGFACE_HUB_CACHE"))
            .map(expand)
            .unwrap_or_else(|| hf_home.join("hub"));
        // As constants.py: the first of the two that is set decides, whatever its value.
        let offline = set("HF_HUB_OFFLINE")
            .or_else(|| set("TRANSFORMERS_OFFLINE"))
            .is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.to_uppercase().as_str()));
        let endpoint = set("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = set("HF_TOKEN")
            .or_else(|| set("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let file = set("HF_TOKEN_PATH")
                    .map(expand)
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(file).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        HubEnv {
            cache: std::path::absolute(&cache).unwrap_or(cache),
            offline,
            endpoint,
            token,
        }
    }

    /// The repo's folder in the cache.
    pub fn repo_dir(&self, id: &HubId) -> PathBuf {
        self.cache.join(id.folder_name())
    }
}

/// Where a hub snapshot came from, as an output's manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HubOrigin {
    /// `owner/name`.
    pub id: String,
    /// The commit hash of the snapshot.
    pub revision: String,
}

/// What the cache holds of a hub id.
#[derive(Debug)]
pub(crate) enum Cached {
    /// No ref or no snapshot for the revision.
    Absent,
    /// A snapshot without the files a model needs (e.g. only `config.json`, as
    /// `AutoConfig.from_pretrained` leaves it).
    Partial(PathBuf),
    /// A snapshot with a config and weights.
    Complete(PathBuf),
}

/// Looks `id` up as `try_to_load_from_cache` does: a full commit hash names its snapshot, any
/// other revision is read from `refs/<revision>`.
pub(crate) fn cached_snapshot(id: &HubId, env: &HubEnv) -> Cached {
    let repo_dir = env.repo_dir(id);
    let rev = id.revision();
    let commit = if is_commit_hash(rev) {
        rev.to_string()
    } else {
        match std::fs::read_to_string(repo_dir.join("refs").join(rev)) {
            Ok(c) => c.trim().to_string(),
            Err(_) => return Cached::Absent,
        }
    };
    if !is_commit_hash(&commit) {
        return Cached::Absent;
    }
    let dir = repo_dir.join("snapshots").join(&commit);
    if !dir.is_dir() {
        Cached::Absent
    } else if holds_model(&dir) {
        Cached::Complete(dir)
    } else {
        Cached::Partial(dir)
    }
}

/// Whether a snapshot holds a model: a `modules.json` or `config.json`, and weights in it or
/// in one of its module folders.
fn holds_model(dir: &Path) -> bool {
    let weights = |d: &Path| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                e.path().is_file() && is_weights(&name)
            })
    };
    let config = dir.join("modules.json").is_file() || dir.join("config.json").is_file();
    config
        && (weights(dir)
            || std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.path().is_dir() && weights(&e.path())))
}

/// Weight files the loader reads.
pub(crate) fn is_weights(name: &str) -> bool {
    name.ends_with(".safetensors") || (name.starts_with("pytorch_model") && name.ends_with(".bin"))
}

/// A full commit hash (40 lowercase hex digits).
pub(crate) fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40
        && rev
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether a relative `model` read from a file whose folder is `base` is a hub id: it reads as
/// one and names no folder there (else it is a path, relative to that folder).
pub fn stays_hub_id(base: &Path, model: &Path) -> bool {
    model.is_relative()
        && !base.join(model).exists()
        && model.to_str().and_then(HubId::parse).is_some()
}

/// A service job spec's `model` after the roots check (`checked`): a hub id that names no
/// folder is refused, since a worker downloading whatever a submitter names would make the
/// service's allowed roots meaningless.
pub fn spec_model(raw: &str, checked: Result<PathBuf, String>) -> Result<PathBuf, String> {
    match (&checked, HubId::parse(raw)) {
        (Ok(p), _) if p.exists() => checked,
        (_, Some(id)) => Err(format!(
            "`model`: `{raw}` names no folder of the service, and service jobs take model folders \
             only, not Hugging Face hub ids: download it into an allowed root (`hf download {} \
             --local-dir DIR`) and submit DIR",
            id.repo
        )),
        _ => checked,
    }
}

/// The hub id and commit of a snapshot folder of the cache
/// (`…/models--owner--name/snapshots/<commit>`), for the manifest; None for other folders.
pub fn origin(dir: &Path) -> Option<HubOrigin> {
    let commit = dir.file_name()?.to_str()?;
    let snapshots = dir.parent()?;
    let repo = snapshots.parent()?.file_name()?.to_str()?;
    if snapshots.file_name()? != "snapshots" || !is_commit_hash(commit) {
        return None;
    }
    let (owner, name) = repo.strip_prefix("models--")?.split_once("--")?;
    let id = HubId::parse(&format!("{owner}/{name}"))?;
    Some(HubOrigin {
        id: id.repo,
        revision: commit.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_hub_grammar() {
        let id = HubId::parse("naver/splade-v3@refs/pr/1").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision()),
            ("naver/splade-v3", "refs/pr/1")
        );
        assert_eq!(HubId::parse("naver/splade-v3").unwrap().revision(), "main");
        for bad in [
            "splade",
            "a/b/c",
            "/abs/x",
            "./x",
            "a/-b",
            "a--b/c",
            "a/b.",
            "a/b@",
            "a/b@../../x",
            "a/b@main/",
            "models/my model",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn cache_folder_follows_huggingface_hub() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let env = HubEnv::from_vars(vars(&[("HOME", "/h")]));
        assert_eq!(env.cache, Path::new("/h/.cache/huggingface/hub"));
        assert!(!env.offline);
        assert_eq!(env.endpoint, DEFAULT_ENDPOINT);
        let env = HubEnv::from_vars(vars(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]));
        assert_eq!(env.cache, Path::new("/x/huggingface/hub"));
        let env = HubEnv::from_vars(vars(&[("HF_HOME", "~/hf"), ("HOME", "/h")]));
        assert_eq!(env.cache, Path::new("/h/hf/hub"));
        let env = HubEnv::from_vars(vars(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_TOKEN", "t"),
        ]));
        assert_eq!(env.cache, Path::new("/c"));
        assert!(env.offline);
        assert_eq!(env.endpoint, "http://127.0.0.1:9");
        assert_eq!(env.token.as_deref(), Some("t"));
        // HF_HUB_OFFLINE=0 wins over TRANSFORMERS_OFFLINE=1, as in constants.py.
        let env = HubEnv::from_vars(vars(&[
            ("HF_HUB_OFFLINE", "0"),
            ("TRANSFORMERS_OFFLINE", "1"),
        ]));
        assert!(!env.offline);
        let env = HubEnv::from_vars(vars(&[("TRANSFORMERS_OFFLINE", "1")]));
        assert!(env.offline);
    }

    #[test]
    fn origin_reads_snapshot_folders_only() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let dir = PathBuf::from(format!("/c/models--naver--splade-v3/snapshots/{commit}"));
        assert_eq!(
            origin(&dir),
            Some(HubOrigin {
                id: "naver/splade-v3".into(),
                revision: commit.into()
            })
        );
        assert_eq!(origin(Path::new("models/splade-bert-tiny-nq")), None);
        assert_eq!(
            origin(&PathBuf::from(format!(
                "/c/models--naver--splade-v3/x/{commit}"
            ))),
            None
        );
    }
}
