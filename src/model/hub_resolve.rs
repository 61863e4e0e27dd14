//! Where a `--model` argument points: a path that exists always wins over a hub id; a hub id's
//! cached snapshot is used without asking the hub (runs are reproducible and need no network);
//! a missing one is downloaded with the `hf-hub` crate into the same layout (so Python finds
//! it too) unless `HF_HUB_OFFLINE` is set.

use std::path::{Path, PathBuf};

use super::hub::{cached_snapshot, Cached, HubEnv, HubId};
use super::ModelError;

/// The model folder `arg` names: itself when it exists (a path always wins), else the cached
/// or downloaded snapshot of the hub id it spells, else itself (the loader then says that the
/// folder is missing and that it is no hub id either).
pub fn resolve_model(arg: &Path) -> Result<PathBuf, ModelError> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    match arg.to_str().and_then(HubId::parse) {
        Some(id) => resolve_hub(&id, &HubEnv::from_env()),
        None => Ok(arg.to_path_buf()),
    }
}

/// The snapshot folder of `id`: from the cache, else downloaded (unless offline).
pub fn resolve_hub(id: &HubId, env: &HubEnv) -> Result<PathBuf, ModelError> {
    match cached_snapshot(id, env) {
        Cached::Complete(dir) => {
            tracing::debug!("{id}: cached snapshot {}", dir.display());
            Ok(dir)
        }
        state if env.offline => Err(offline_error(id, env, &state)),
        _ => super::hub_download::download(id, env),
    }
}

/// The error for a hub id the cache lacks while downloading is off.
fn offline_error(id: &HubId, env: &HubEnv, state: &Cached) -> ModelError {
    let detail = match state {
        Cached::Partial(dir) => format!(
            "the Hugging Face cache holds {} without a config and weights",
            dir.display()
        ),
        _ => format!(
            "revision {} is not in the Hugging Face cache {}",
            id.revision(),
            env.cache.display()
        ),
    };
    let revision = id
        .revision
        .as_ref()
        .map_or(String::new(), |r| format!(" --revision {r}"));
    ModelError::Hub {
        id: id.to_string(),
        detail: format!(
            "{detail}, and HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids downloading"
        ),
        hint: format!(
            "download it where the hub can be reached (`hf download {}{revision}`, or \
             `huggingface-cli download`) into this cache (HF_HUB_CACHE or HF_HOME), or unset \
             HF_HUB_OFFLINE",
            id.repo
        ),
    }
}
