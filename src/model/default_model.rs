//! Where the default model is: `SPARQ_MODEL`, else the bundled model beside the binary or the
//! working directory; and what to say when a model folder does not exist.

use std::path::{Path, PathBuf};

/// Where the bundled model is looked for: `models/splade-bert-tiny-nq` next to the running
/// binary or in one of the three folders above it (a deployed `bin/sparq` beside `models/`, or
/// `target/release/sparq` in a checkout), then under the working directory. `SPARQ_MODEL` and
/// `--model` come first (clap); never a path of the machine that built the binary.
pub fn default_model_candidates() -> Vec<PathBuf> {
    const BUNDLED: &str = "models/splade-bert-tiny-nq";
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let exe = exe.canonicalize().unwrap_or(exe);
        out.extend(exe.ancestors().skip(1).take(4).map(|d| d.join(BUNDLED)));
    }
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join(BUNDLED));
    }
    out
}

/// The default model: `SPARQ_MODEL`, else the bundled model's folder (see
/// [`default_model_candidates`]; the first candidate when none exists, so that the error names
/// where it was looked for).
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPARQ_MODEL").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let candidates = default_model_candidates();
    candidates
        .iter()
        .find(|d| d.is_dir())
        .or(candidates.first())
        .cloned()
        .unwrap_or_else(|| PathBuf::from(BUNDLED_FALLBACK))
}

/// What to do about a model folder that does not exist: a Hugging Face hub id (`owner/name`)
/// is named as one (commands that take `--model` resolve hub ids before loading, see
/// [`super::hub`]; a path that reaches here was meant as a folder); the bundled default says
/// where it was sought.
pub(crate) fn missing_folder_hint(root: &Path) -> String {
    let text = root.to_string_lossy();
    if let Some(id) = super::hub::HubId::parse(&text) {
        let name = id.repo.rsplit('/').next().unwrap_or(&id.repo);
        return format!(
            "`{text}` looks like a Hugging Face hub id, which this setting does not resolve; \
             download it first with `hf download {} --local-dir models/{name}` (or \
             `huggingface-cli download`), then pass models/{name}",
            id.repo
        );
    }
    if default_model_candidates().iter().any(|c| c == root) {
        let looked: Vec<String> = default_model_candidates()
            .iter()
            .map(|c| c.display().to_string())
            .collect();
        return format!(
            "the bundled model was looked for in {}; pass --model DIR or set SPARQ_MODEL",
            looked.join(", ")
        );
    }
    "it is neither a folder nor a Hugging Face hub id (owner/name[@revision]); pass --model \
     with a sentence-transformers SparseEncoder folder, a Hugging Face *ForMaskedLM folder, or \
     a hub id"
        .into()
}

const BUNDLED_FALLBACK: &str = "models/splade-bert-tiny-nq";
