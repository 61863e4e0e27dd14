//! What an output records about the run that made it (`_sparq_job.json`, `_manifest.json`),
//! and so the model and id column `inspect`, `decode` and `export` default to: an output
//! encoded with `--model X --id-column doc_id` reads back without repeating either, and token
//! strings never come from another model than the one that encoded it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::ExportError;
use crate::io::{Committer, StoreUrl};
use crate::job::{JOB_FILE, MANIFEST};
use crate::model::layout::ModelLayout;
use crate::model::tokenizer::SpladeTokenizer;

/// Names the default model (after the one the output records).
pub const MODEL_VAR: &str = "SPARQ_MODEL";

/// What an output records about its run. Each part may be missing: outputs of earlier
/// versions do not name the model's folder, and an interrupted run has no manifest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// Fingerprint of the model that encoded it.
    pub fingerprint: Option<String>,
    /// That model's folder, as it was then.
    pub model_path: Option<PathBuf>,
    /// The id column.
    pub id_column: Option<String>,
}

/// The fields of `_sparq_job.json` (or a manifest's `settings`) readers use, parsed on their
/// own rather than as a whole `JobIdentity`: records of other versions still name their model.
#[derive(Default, Deserialize)]
struct IdentityFields {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    model_path: Option<PathBuf>,
    #[serde(default)]
    id_column: Option<String>,
}

/// The fields of `_manifest.json` readers use.
#[derive(Default, Deserialize)]
struct ManifestFields {
    #[serde(default)]
    model: Option<ManifestModelFields>,
    #[serde(default)]
    settings: Option<IdentityFields>,
}

#[derive(Deserialize)]
struct ManifestModelFields {
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
}

impl Recorded {
    /// Reads the records of the output at `url`: the identity first, then the manifest.
    pub fn read(runtime: &tokio::runtime::Runtime, url: &str) -> Result<Self, ExportError> {
        let committer = Committer::new(&StoreUrl::parse(url)?)?;
        let identity: IdentityFields =
            parse(url, JOB_FILE, runtime.block_on(committer.get(JOB_FILE))?);
        let manifest: ManifestFields =
            parse(url, MANIFEST, runtime.block_on(committer.get(MANIFEST))?);
        let settings = manifest.settings.unwrap_or_default();
        let (fingerprint, path) = manifest
            .model
            .map_or((None, None), |m| (m.fingerprint, m.path));
        Ok(Self {
            fingerprint: identity.model.or(fingerprint).or(settings.model),
            model_path: identity.model_path.or(path).or(settings.model_path),
            id_column: identity.id_column.or(settings.id_column),
        })
    }

    /// The id column: `--id-column` when given, else the recorded one, else `id`.
    pub fn id_column(&self, flag: Option<&str>) -> String {
        flag.or(self.id_column.as_deref())
            .unwrap_or("id")
            .to_string()
    }

    /// Whether a model with this fingerprint may name the output's dimensions (any may when
    /// the output records none).
    fn accepts(&self, dir: &Path, fingerprint: &str) -> bool {
        self.fingerprint
            .as_deref()
            .is_none_or(|f| crate::model::fingerprint::recognizes(dir, fingerprint, f))
    }
}

/// A record, or its default when the file is absent or unreadable (said: a reader still works
/// from its flags).
fn parse<T: DeserializeOwned + Default>(url: &str, name: &str, bytes: Option<Vec<u8>>) -> T {
    match bytes.map(|b| serde_json::from_slice(&b)) {
        None => T::default(),
        Some(Ok(fields)) => fields,
        Some(Err(e)) => {
            tracing::warn!(
                "{url}/{name} is not readable ({e}): the model and id column it records are not \
                 used; pass --model and --id-column"
            );
            T::default()
        }
    }
}

/// The default model when the output's own is not usable: `SPARQ_MODEL`, else the bundled one;
/// with how a message names it.
pub fn default_model() -> (PathBuf, &'static str) {
    match std::env::var_os(MODEL_VAR).filter(|v| !v.is_empty()) {
        Some(dir) => (PathBuf::from(dir), "SPARQ_MODEL"),
        None => (crate::model::default_model_dir(), "the bundled model"),
    }
}

/// A model folder's tokenizer and fingerprint.
fn open_model(dir: &Path) -> Result<(SpladeTokenizer, String), ExportError> {
    let layout = ModelLayout::read(dir)?;
    let tokenizer = SpladeTokenizer::load(&layout)?;
    let fingerprint = crate::model::fingerprint(&layout.root)?;
    Ok((tokenizer, fingerprint))
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

/// The tokenizer naming the dimensions of the output at `output` (see [`choose`]); an error
/// telling to pass --model when no model fits.
pub fn tokenizer_for(
    output: &str,
    recorded: &Recorded,
    flag: Option<&Path>,
) -> Result<SpladeTokenizer, ExportError> {
    choose(output, recorded, flag)?.map_err(ExportError::Option)
}

/// The tokenizer naming the dimensions of the output at `output` (see [`choose`]), or `None`
/// after a warning when no model fits (tokens are then shown as `?`).
pub fn tokenizer_if_any(
    output: &str,
    recorded: &Recorded,
    flag: Option<&Path>,
) -> Result<Option<SpladeTokenizer>, ExportError> {
    Ok(match choose(output, recorded, flag)? {
        Ok(tokenizer) => Some(tokenizer),
        Err(why) => {
            tracing::warn!("{why} (tokens are shown as `?`)");
            None
        }
    })
}

/// The first of: `--model` (`flag`; an error when the output records another model), the
/// model folder the output records, and the default model (`SPARQ_MODEL`, else the bundled
/// one) when it is the recorded model or nothing is recorded. `Ok(Err(why))` when none fits.
/// Says on stderr which model it uses when not given.
fn choose(
    output: &str,
    recorded: &Recorded,
    flag: Option<&Path>,
) -> Result<Result<SpladeTokenizer, String>, ExportError> {
    if let Some(given) = flag {
        let (tokenizer, ours) = open_model(given)?;
        return match recorded.fingerprint.as_deref() {
            Some(theirs) if !crate::model::fingerprint::recognizes(given, &ours, theirs) => Err(
                ExportError::Option(another_model(output, recorded, theirs, given, &ours)),
            ),
            _ => Ok(Ok(tokenizer)),
        };
    }
    // Why the choices tried did not serve, in order.
    let mut why = Vec::new();
    if let Some(path) = &recorded.model_path {
        let named = format!(
            "the model folder recorded in the output, {},",
            path.display()
        );
        match open_model(path) {
            Ok((tokenizer, ours)) if recorded.accepts(path, &ours) => {
                tracing::info!("using model {} (recorded in the output)", path.display());
                return Ok(Ok(tokenizer));
            }
            Ok(_) => why.push(format!(
                "{named} has changed since it encoded the output (another fingerprint)"
            )),
            Err(_) if !path.exists() => why.push(format!("{named} no longer exists")),
            Err(e) => why.push(format!("{named} cannot be read ({e})")),
        }
    }
    let (default, source) = default_model();
    match open_model(&default) {
        Ok((tokenizer, ours)) if recorded.accepts(&default, &ours) => {
            let used = format!("using model {} ({source})", default.display());
            if why.is_empty() {
                tracing::info!("{used}");
            } else {
                tracing::info!(
                    "{}; {used}, the model that encoded the output",
                    why.join("; ")
                );
            }
            return Ok(Ok(tokenizer));
        }
        Ok((_, ours)) => why.push(format!(
            "{source}, {}, is another model (fingerprint {}) than the one that encoded it ({})",
            default.display(),
            short(&ours),
            short(recorded.fingerprint.as_deref().unwrap_or_default())
        )),
        Err(e) => why.push(format!("{source} cannot be used ({e})")),
    }
    Ok(Err(format!(
        "{output}: no model to name its dimensions with: {}; pass --model with the model that \
         encoded it",
        why.join("; ")
    )))
}

/// The refusal of a `--model` that did not encode the output: both folders named.
fn another_model(
    output: &str,
    recorded: &Recorded,
    theirs: &str,
    given: &Path,
    ours: &str,
) -> String {
    let same_folder = |p: &Path| match (p.canonicalize(), given.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => p == given,
    };
    let advice = "token strings would name the wrong dimensions";
    match &recorded.model_path {
        Some(p) if same_folder(p) => format!(
            "{output} was encoded with another model than --model {}: that folder has changed \
             since (fingerprint {}, then {}); {advice}. Pass the model that encoded it",
            given.display(),
            short(ours),
            short(theirs)
        ),
        Some(p) => format!(
            "{output} was encoded with another model than --model {} (fingerprint {}): the \
             output records {} (fingerprint {}); {advice}. Pass the model that encoded it{}",
            given.display(),
            short(ours),
            p.display(),
            short(theirs),
            if p.is_dir() {
                ", or leave out --model to use the recorded one"
            } else {
                ""
            }
        ),
        None => format!(
            "{output} was encoded with another model (fingerprint {}; this output, written by an \
             earlier sparq, does not record its folder) than --model {} (fingerprint {}); \
             {advice}. Pass the model that encoded it",
            short(theirs),
            given.display(),
            short(ours)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_records_which_win_over_the_default_column() {
        let recorded = Recorded {
            id_column: Some("doc_id".into()),
            ..Default::default()
        };
        assert_eq!(recorded.id_column(None), "doc_id");
        assert_eq!(recorded.id_column(Some("key")), "key");
        assert_eq!(Recorded::default().id_column(None), "id");
        // A folder with no model files: only the recorded fingerprint itself is recognised.
        let none = Path::new("/nonexistent-model-folder");
        assert!(Recorded::default().accepts(none, "anything"));
        let recorded = Recorded {
            fingerprint: Some("f1".into()),
            ..Default::default()
        };
        assert!(recorded.accepts(none, "f1") && !recorded.accepts(none, "f2"));
    }

    #[test]
    fn a_refused_model_names_both_folders() {
        let recorded = Recorded {
            fingerprint: Some("aaaa".into()),
            model_path: Some("/nowhere/encoded-with".into()),
            id_column: None,
        };
        let text = another_model("out/", &recorded, "aaaa", Path::new("/x/given"), "bbbb");
        assert!(
            text.contains("another model")
                && text.contains("/nowhere/encoded-with")
                && text.contains("/x/given"),
            "{text}"
        );
        // The folder is gone: no advice to use it.
        assert!(!text.contains("leave out --model"), "{text}");
    }
}
