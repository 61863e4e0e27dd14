//! Reading a sentence-transformers `Router` model (and the older `Asym` it replaced): one
//! pipeline per task, chosen by `encode_query` / `encode_document`.
//!
//! Upstream: `sentence_transformers/base/modules/router.py` (6.2). `SparseEncoder.save` writes
//! `modules.json` with a single Router entry and `router_config.json` beside it:
//! `types` (module folder → class), `structure` (route → module folders) and `parameters`
//! (`default_route`, `allow_empty_key`, `route_mappings`). `Asym` saves wrote the same object
//! to `config.json`, which Router still reads. A route is either a `SparseStaticEmbedding`
//! (inference-free, as OpenSearch's `-doc-` models use for queries) or an
//! (MLM)Transformer + SpladePooling pipeline.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::layout::{parse_json, read_saved_settings, ModelLayout, ModuleEntry};
use super::ModelError;
use crate::types::InputKind;

/// Where a `SparseStaticEmbedding` takes its weights from.
#[derive(Debug, Clone)]
pub enum StaticWeights {
    /// `model.safetensors` of the route folder (key `weight`, one value per token id).
    Checkpoint(PathBuf),
    /// A JSON object token string → weight (`idf.json`), mapped through the tokenizer.
    IdfJson(PathBuf),
}

/// A `SparseStaticEmbedding` route: its folder (tokenizer files) and weights.
#[derive(Debug, Clone)]
pub struct StaticLayout {
    /// The route's module folder.
    pub dir: PathBuf,
    /// Where the weights are.
    pub weights: StaticWeights,
    /// Prompt of the task this route serves (prepended before tokenizing, as upstream does).
    pub prompt: Option<String>,
    /// `max_active_dims` saved with the model.
    pub max_active_dims: Option<usize>,
}

/// What one route runs.
#[derive(Debug, Clone)]
pub enum RouteLayout {
    /// A masked-LM backbone with SPLADE pooling.
    Mlm(Box<ModelLayout>),
    /// A static weight per token: no model call.
    Static(StaticLayout),
}

/// The routes of a Router model for sparq's two input kinds.
#[derive(Debug, Clone)]
pub struct RouterLayout {
    /// `router_config.json` (or a legacy Asym's `config.json`).
    pub config: PathBuf,
    /// The route of queries.
    pub query: RouteLayout,
    /// The route of documents.
    pub document: RouteLayout,
    /// Both kinds resolve to the same modules: load them once.
    pub shared: bool,
    /// The query route's name and module folders, as `structure` lists them.
    pub query_route: NamedRoute,
    /// The document route's name and module folders.
    pub document_route: NamedRoute,
}

/// A route as `router_config.json` names it: its key in `structure` and its module folders
/// (sentence-transformers names the parameters `0.sub_modules.<key>.<index>.…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedRoute {
    /// The route's key.
    pub key: String,
    /// Module folders in order.
    pub modules: Vec<String>,
}

#[derive(Deserialize)]
struct RouterConfig {
    types: BTreeMap<String, String>,
    structure: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    parameters: RouterParameters,
}

#[derive(Deserialize, Default)]
struct RouterParameters {
    #[serde(default)]
    route_mappings: Option<BTreeMap<String, String>>,
}

const SUPPORTED: &str = "sparq runs Router routes made of a SparseStaticEmbedding alone, or of an \
                         (MLM)Transformer followed by SpladePooling";

impl ModelLayout {
    /// Reads the layout of the model folder `root`; for a Router model, its document route's
    /// (what needs one transformer: the tokenizer naming dimensions, token estimates).
    ///
    /// Defined here, beside the Router reading it dispatches to, so that `layout` (which the
    /// Router reading builds on) never imports `router`.
    pub fn read(root: &Path) -> Result<Self, ModelError> {
        let modules_path = root.join("modules.json");
        if root.is_dir() && modules_path.is_file() {
            if let Some(router) = RouterLayout::read(root, &modules_path)? {
                return router.into_document_layout();
            }
        }
        Self::read_pipeline(root)
    }
}

impl RouterLayout {
    /// Reads the Router of the model folder `root`, or `None` when `modules.json` holds no
    /// Router/Asym module (a plain pipeline).
    pub fn read(root: &Path, modules_path: &Path) -> Result<Option<Self>, ModelError> {
        let modules: Vec<ModuleEntry> = parse_json(modules_path)?;
        let is_router = |m: &ModuleEntry| {
            matches!(
                m.kind.rsplit('.').next().unwrap_or(&m.kind),
                "Router" | "Asym"
            )
        };
        let Some(entry) = modules.iter().find(|m| is_router(m)) else {
            return Ok(None);
        };
        if modules.len() != 1 {
            return Err(ModelError::Unsupported {
                path: modules_path.to_path_buf(),
                what: format!("`{}` combined with other modules", entry.kind),
                hint: "sparq runs a Router as the model's only module (as SparseEncoder.save \
                       writes inference-free and two-encoder SPLADE models)"
                    .into(),
            });
        }
        let dir = root.join(&entry.path);
        let config = ["router_config.json", "config.json"]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| ModelError::MissingFile {
                path: dir.join("router_config.json"),
                hint: format!(
                    "modules.json names a `{}` module, whose routes are listed in \
                     router_config.json (config.json in older saves); restore it from the \
                     model release",
                    entry.kind
                ),
            })?;
        let parsed: RouterConfig = parse_json(&config)?;
        for (id, kind) in &parsed.types {
            check_module(&config, id, kind)?;
        }
        let settings = read_saved_settings(&root.join("config_sentence_transformers.json"))?;
        let (query_key, query_ids) = resolve(&config, &parsed, "query")?;
        let (document_key, document_ids) = resolve(&config, &parsed, "document")?;
        let route = |ids: &[String], prompt: Option<String>| {
            read_route(
                root,
                &dir,
                &config,
                &parsed,
                ids,
                prompt,
                settings.max_active_dims,
            )
        };
        let query = route(query_ids, settings.query_prompt.clone())?;
        let document = route(document_ids, settings.document_prompt.clone())?;
        Ok(Some(Self {
            shared: query_ids == document_ids,
            config,
            query,
            document,
            query_route: NamedRoute {
                key: query_key.to_string(),
                modules: query_ids.to_vec(),
            },
            document_route: NamedRoute {
                key: document_key.to_string(),
                modules: document_ids.to_vec(),
            },
        }))
    }

    /// The route of `kind`.
    pub fn route(&self, kind: InputKind) -> &RouteLayout {
        match kind {
            InputKind::Query => &self.query,
            InputKind::Document => &self.document,
        }
    }

    /// The document route's layout, for what needs one transformer (the tokenizer naming
    /// dimensions, token estimates); an inference-free document route has none.
    pub fn into_document_layout(self) -> Result<ModelLayout, ModelError> {
        match self.document {
            RouteLayout::Mlm(layout) => Ok(*layout),
            RouteLayout::Static(_) => Err(ModelError::Unsupported {
                path: self.config,
                what: "a Router whose document route is a SparseStaticEmbedding".into(),
                hint: "only query routes may be inference-free here; documents need an \
                       (MLM)Transformer + SpladePooling route"
                    .into(),
            }),
        }
    }
}

/// Refuses module types sparq does not run, and module folders outside the model folder.
fn check_module(config: &Path, id: &str, kind: &str) -> Result<(), ModelError> {
    let short = kind.rsplit('.').next().unwrap_or(kind);
    if !matches!(
        short,
        "SparseStaticEmbedding" | "MLMTransformer" | "Transformer" | "SpladePooling"
    ) {
        return Err(ModelError::Unsupported {
            path: config.to_path_buf(),
            what: format!("module type `{kind}` (module `{id}`)"),
            hint: SUPPORTED.into(),
        });
    }
    let inside = Path::new(id)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(ModelError::Config {
            path: config.to_path_buf(),
            detail: format!(
                "module folder `{id}` is not a relative path inside the model folder: \
                 restore the file from the model release"
            ),
        });
    }
    Ok(())
}

/// The route of `task` as `Router._resolve_route` finds it for text: `route_mappings` for
/// (task, "text"), (task, None), (None, "text"), (None, None), then the route named `task`.
/// With a task given, upstream never falls back to `default_route`: neither does sparq.
/// Returns the route's key and module folders.
fn resolve<'a>(
    config: &Path,
    parsed: &'a RouterConfig,
    task: &'a str,
) -> Result<(&'a str, &'a [String]), ModelError> {
    let mappings: BTreeMap<(Option<String>, Option<String>), &String> = parsed
        .parameters
        .route_mappings
        .iter()
        .flatten()
        .filter_map(|(key, route)| parse_mapping_key(key).map(|k| (k, route)))
        .collect();
    let (t, text) = (Some(task.to_string()), Some("text".to_string()));
    let name = [
        (t.clone(), text.clone()),
        (t, None),
        (None, text),
        (None, None),
    ]
    .iter()
    .find_map(|k| mappings.get(k).map(|r| r.as_str()))
    .or_else(|| parsed.structure.contains_key(task).then_some(task));
    let routes: Vec<&String> = parsed.structure.keys().collect();
    let Some(name) = name else {
        return Err(ModelError::Config {
            path: config.to_path_buf(),
            detail: format!(
                "no route for task `{task}` (routes: {routes:?}): sparq encodes queries with the \
                 `query` route and documents with the `document` route; add a route_mappings \
                 entry such as \"('{task}', None)\": \"ROUTE\""
            ),
        });
    };
    parsed
        .structure
        .get(name)
        .map(|ids| (name, ids.as_slice()))
        .ok_or_else(|| ModelError::Config {
            path: config.to_path_buf(),
            detail: format!("route_mappings names route `{name}`, which is not among {routes:?}"),
        })
}

/// Parses a `route_mappings` key as Python's `str((task, modality))` writes it:
/// `('query', 'text')`, `(None, 'text')`, `('query', None)`. Tuples of modalities never match
/// text alone and are skipped, as unparsable keys are upstream.
fn parse_mapping_key(key: &str) -> Option<(Option<String>, Option<String>)> {
    let inner = key.trim().strip_prefix('(')?.strip_suffix(')')?;
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    let [task, modality] = parts.as_slice() else {
        return None;
    };
    let item = |s: &str| -> Option<Option<String>> {
        if s == "None" {
            return Some(None);
        }
        let quoted = s
            .strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
        Some(Some(quoted.to_string()))
    };
    Some((item(task)?, item(modality)?))
}

fn read_route(
    root: &Path,
    dir: &Path,
    config: &Path,
    parsed: &RouterConfig,
    ids: &[String],
    prompt: Option<String>,
    max_active_dims: Option<usize>,
) -> Result<RouteLayout, ModelError> {
    let mut modules = Vec::new();
    for id in ids {
        let kind = parsed.types.get(id).ok_or_else(|| ModelError::Config {
            path: config.to_path_buf(),
            detail: format!(
                "`structure` lists module `{id}`, which `types` does not name: restore the file \
                 from the model release"
            ),
        })?;
        modules.push((kind.clone(), dir.join(id)));
    }
    let is_static = |(kind, _): &(String, PathBuf)| kind.ends_with("SparseStaticEmbedding");
    match modules.as_slice() {
        [only] if is_static(only) => Ok(RouteLayout::Static(read_static(
            &only.1,
            prompt,
            max_active_dims,
        )?)),
        _ if modules.iter().any(is_static) => Err(ModelError::Unsupported {
            path: config.to_path_buf(),
            what: format!("a route mixing SparseStaticEmbedding with other modules ({ids:?})"),
            hint: SUPPORTED.into(),
        }),
        _ => Ok(RouteLayout::Mlm(Box::new(ModelLayout::from_modules(
            root, config, &modules,
        )?))),
    }
}

/// A `SparseStaticEmbedding` folder: its `config.json` `path` names an idf.json (resolved
/// against the route folder, then the model folder; upstream resolves it against the working
/// directory or the hub), else the weights are the route's `model.safetensors`.
fn read_static(
    dir: &Path,
    prompt: Option<String>,
    max_active_dims: Option<usize>,
) -> Result<StaticLayout, ModelError> {
    let config_path = dir.join("config.json");
    let config: Value = if config_path.is_file() {
        parse_json(&config_path)?
    } else {
        Value::Null
    };
    let json = config
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| p.ends_with(".json"));
    let weights = match json {
        Some(path) => {
            let candidates = [dir.join(path), dir.parent().unwrap_or(dir).join(path)];
            let found = candidates.iter().find(|p| p.is_file()).cloned();
            StaticWeights::IdfJson(found.ok_or_else(|| ModelError::MissingFile {
                path: candidates[0].clone(),
                hint: format!(
                    "{} names its weights file `{path}`; put that token → weight JSON in the \
                     route folder",
                    config_path.display()
                ),
            })?)
        }
        None => StaticWeights::Checkpoint(dir.to_path_buf()),
    };
    Ok(StaticLayout {
        dir: dir.to_path_buf(),
        weights,
        prompt: prompt.filter(|p| !p.is_empty()),
        max_active_dims,
    })
}
