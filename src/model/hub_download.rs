//! Downloading a hub model into the Hugging Face cache with the `hf-hub` crate: the repo's
//! file list from `/api/models/{id}/revision/{rev}`, then the files the loader reads, each
//! from `/{id}/resolve/{commit}/{file}` into `blobs/` with a link in `snapshots/<commit>/`,
//! and `refs/<branch>`, the layout `huggingface_hub` writes (so Python finds them too).
//!
//! Downloads are pinned to the commit the listing names, so a branch that moves meanwhile
//! cannot mix two commits in one snapshot. `hf-hub` writes each file to a `.sync.part` file
//! and renames it into `blobs/`, so an interrupted download leaves no partial model behind.

use std::collections::BTreeSet;
use std::path::PathBuf;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use super::hub::{is_commit_hash, is_weights, HubEnv, HubId};
use super::ModelError;

/// Downloads what the loader reads of `id` and returns its snapshot folder.
pub(crate) fn download(id: &HubId, env: &HubEnv) -> Result<PathBuf, ModelError> {
    let fail = |e: ApiError| hub_error(id, env, e);
    let api = ApiBuilder::from_cache(Cache::new(env.cache.clone()))
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(false)
        .with_retries(3)
        .build()
        .map_err(fail)?;
    let repo = |rev: &str| Repo::with_revision(id.repo.clone(), RepoType::Model, rev.into());
    let info = api.repo(repo(id.revision())).info().map_err(fail)?;
    if !is_commit_hash(&info.sha) {
        return Err(ModelError::Hub {
            id: id.to_string(),
            detail: format!("{} answered commit `{}`", env.endpoint, info.sha),
            hint: "check HF_ENDPOINT: it must be a Hugging Face hub".into(),
        });
    }
    let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let files = loader_files(&names);
    if !files
        .iter()
        .any(|f| f == "modules.json" || f == "config.json")
    {
        return Err(ModelError::Hub {
            id: id.to_string(),
            detail: "the repo holds no modules.json or config.json".into(),
            hint: "sparq runs sentence-transformers SparseEncoder and Hugging Face \
                   *ForMaskedLM repos"
                .into(),
        });
    }
    let repo_dir = env.repo_dir(id);
    let snapshot = repo_dir.join("snapshots").join(&info.sha);
    let commit_ref = repo_dir.join("refs").join(&info.sha);
    let had_commit_ref = commit_ref.exists();
    let pinned = api.repo(repo(&info.sha));
    for file in &files {
        if snapshot.join(file).is_file() {
            continue;
        }
        tracing::info!("{id}: downloading {file} ({})", &info.sha[..12]);
        pinned.download(file).map_err(fail)?;
    }
    // hf-hub names a ref after the revision it downloaded, here the commit itself;
    // huggingface_hub keeps refs for branches and tags only.
    if !had_commit_ref {
        let _ = std::fs::remove_file(&commit_ref);
    }
    if !is_commit_hash(id.revision()) {
        let branch_ref = repo_dir.join("refs").join(id.revision());
        let written = branch_ref
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&branch_ref, &info.sha));
        written.map_err(|e| ModelError::Io {
            path: branch_ref.clone(),
            source: e,
        })?;
    }
    Ok(snapshot)
}

/// The files of a repo the loader reads: configs, tokenizer files and weights at the top and
/// in module folders one level down (`1_SpladePooling/`, a Router's routes). Not the ONNX or
/// OpenVINO exports, other frameworks' weights, `pytorch_model*.bin` where a folder has
/// safetensors, training state, or docs.
pub(crate) fn loader_files(names: &[String]) -> Vec<String> {
    let folder = |n: &str| n.rsplit_once('/').map_or("", |(d, _)| d).to_string();
    let with_safetensors: BTreeSet<String> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .map(|n| folder(n))
        .collect();
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| {
            let (dir, name) = n.rsplit_once('/').unwrap_or(("", n));
            if dir.contains('/') || matches!(dir, "onnx" | "openvino") || name.starts_with('.') {
                return false;
            }
            let training = ["optimizer", "scheduler", "rng_state", "training_args"];
            if training.iter().any(|t| name.starts_with(t)) {
                return false;
            }
            match name.rsplit_once('.').map_or("", |(_, ext)| ext) {
                "json" | "txt" | "model" | "pt" | "pth" => true,
                "safetensors" => true,
                "bin" => is_weights(name) && !with_safetensors.contains(dir),
                _ => false,
            }
        })
        .cloned()
        .collect();
    out.sort();
    out
}

/// A download failure as the user can act on it.
fn hub_error(id: &HubId, env: &HubEnv, e: ApiError) -> ModelError {
    let (detail, hint) = match &e {
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::Status(401 | 403, _) => (
                format!("{} refused access ({e})", env.endpoint),
                "set HF_TOKEN to a token that may read it (gated repos need their terms \
                 accepted on the hub first)"
                    .to_string(),
            ),
            ureq::Error::Status(404, _) => (
                format!(
                    "there is no folder `{id}` here, and {} has no repo or revision `{id}` ({e})",
                    env.endpoint
                ),
                "check the folder or the hub id and revision".to_string(),
            ),
            ureq::Error::Status(..) => (
                format!("{} failed ({e})", env.endpoint),
                "try again later".to_string(),
            ),
            ureq::Error::Transport(_) => (
                format!("cannot reach {} ({e})", env.endpoint),
                "check the network and HF_ENDPOINT, or download it elsewhere into the cache \
                 (`hf download`) and set HF_HUB_OFFLINE=1"
                    .to_string(),
            ),
        },
        _ => (
            format!("downloading into {} failed ({e})", env.cache.display()),
            "check that the cache folder (HF_HUB_CACHE or HF_HOME) is writable and has space"
                .to_string(),
        ),
    };
    ModelError::Hub {
        id: id.to_string(),
        detail,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_files_skip_exports_and_duplicate_weights() {
        let names: Vec<String> = [
            ".gitattributes",
            "README.md",
            "modules.json",
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "tokenizer.json",
            "vocab.txt",
            "1_SpladePooling/config.json",
            "onnx/model.onnx",
            "onnx/config.json",
            "query_0_SparseStaticEmbedding/pytorch_model.bin",
            "training_args.bin",
            "sparse_linear.pt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            loader_files(&names),
            [
                "1_SpladePooling/config.json",
                "config.json",
                "model.safetensors",
                "modules.json",
                "query_0_SparseStaticEmbedding/pytorch_model.bin",
                "sparse_linear.pt",
                "tokenizer.json",
                "vocab.txt",
            ]
        );
    }
}
