//! The model being trained: the inference model's layers with gradients on, named parameters
//! (Hugging Face state-dict names), and saving in the sentence-transformers layout it came in.
//!
//! An inference-free Router model (query route a `SparseStaticEmbedding`, document route an
//! MLM + SpladePooling) trains both: each data column goes through the route sentence-
//! transformers' `router_mapping` gives it (default: the first column the query route, the
//! others the document route), and the saved folder is the same Router layout.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::optim::{map_learning_rates, Param};
use super::static_route::StaticRoute;
use super::TrainError;
use crate::model::attention::AttentionKernel;
use crate::model::config::ArchConfig;
use crate::model::extract::Extraction;
use crate::model::layout::ModelLayout;
use crate::model::mlm::MaskedLm;
use crate::model::packed::PackedBatch;
use crate::model::router::{NamedRoute, RouteLayout, RouterLayout};
use crate::model::tokenizer::SpladeTokenizer;
use crate::model::weights::WeightMap;
use crate::model::{EncodeOptions, InputKind, ModelError, SparseEncode};
use crate::types::SparseVector;

/// A trainable SPLADE model on one device (fp32 master weights).
pub struct TrainModel {
    /// The folder layout it was loaded from (pooling, prompts, files to copy on save).
    pub layout: ModelLayout,
    tokenizer: SpladeTokenizer,
    model: MaskedLm,
    /// Parameters of the (document route's) masked-LM model by name, shared with the model.
    pub params: Vec<(String, Tensor)>,
    device: Device,
    autocast: bool,
    /// An inference-free Router's query route.
    query: Option<StaticRoute>,
    names: StNames,
    /// The route of each data column (set by [`TrainModel::route_columns`]).
    column_routes: Vec<InputKind>,
}

/// How sentence-transformers' trainer names this model's parameters (what
/// `learning_rate_mapping` patterns are searched in), and a shorter alias by module folder.
#[derive(Default)]
struct StNames {
    /// Before an MLM parameter's Hugging Face name: `model.0.model.` (plain) or
    /// `model.0.sub_modules.<route>.<i>.model.` (Router).
    mlm_prefix: String,
    /// The MLM module folder (`document_0_MLMTransformer`), empty for a plain model.
    mlm_folder: String,
    /// The static weight's name: `model.0.sub_modules.<route>.0.weight`.
    static_name: String,
}

impl TrainModel {
    /// Loads `dir` onto `device` with gradients on every parameter; `autocast` runs the
    /// forward pass under CUDA bf16 autocast.
    pub fn load(dir: &Path, device: Device, autocast: bool) -> Result<Self, TrainError> {
        let router = read_router(dir)?;
        let layout = ModelLayout::read(dir)?;
        if let ArchConfig::BgeM3(_) = layout.arch {
            // Its token-weight head is trained with BGE-M3's own objectives, not a SPLADE loss.
            return Err(ModelError::Unsupported {
                path: layout.root.join("sparse_linear.pt"),
                what: "training a BGE-M3 model".into(),
                hint: "sparq trains SPLADE (masked-LM) models; BGE-M3 encodes only (use \
                       FlagEmbedding to fine-tune it)"
                    .into(),
            }
            .into());
        }
        if let ArchConfig::ModernBert(_) = layout.arch {
            // Its forward pass matches sentence-transformers, but no training step has been
            // compared with SparseEncoderTrainer's (dropout placements, the local-attention
            // gradients), so a run is refused rather than trusted.
            return Err(ModelError::Unsupported {
                path: layout.transformer_dir.join("config.json"),
                what: "training a ModernBERT model".into(),
                hint: "sparq encodes ModernBERT models but does not train them yet (no training \
                       step has been checked against sentence-transformers'); train it with \
                       SparseEncoderTrainer and encode the result with sparq"
                    .into(),
            }
            .into());
        }
        let tokenizer = SpladeTokenizer::load(&layout)?;
        let mut weights = WeightMap::load(&layout.transformer_dir)?;
        weights.convert(device, Kind::Float)?;
        let mut model = MaskedLm::load(&mut weights, &layout.arch)?;
        model.set_training(true);
        let params = weights.parameters();
        for (_, t) in &params {
            let _ = t.set_requires_grad(true);
        }
        let (query, names) = match &router {
            None => (
                None,
                StNames {
                    mlm_prefix: "model.0.model.".into(),
                    ..StNames::default()
                },
            ),
            Some(r) => {
                let query = match &r.query {
                    RouteLayout::Static(s) if !r.shared => {
                        Some(StaticRoute::load(&layout.root, s, device)?)
                    }
                    _ => None,
                };
                (query, router_names(r, &layout))
            }
        };
        if let Some(q) = &query {
            if q.dimension() != layout.arch.vocab_size() {
                return Err(TrainError::Option(format!(
                    "{}: the query route has {} static weights but the document route's \
                     vocabulary has {} tokens: their vectors must share one dimension",
                    dir.display(),
                    q.dimension(),
                    layout.arch.vocab_size()
                )));
            }
        }
        Ok(Self {
            layout,
            tokenizer,
            model,
            params,
            device,
            autocast,
            query,
            names,
            column_routes: Vec::new(),
        })
    }

    /// Whether this is an inference-free Router model (a static query route).
    pub fn is_inference_free(&self) -> bool {
        self.query.is_some()
    }

    /// The static query route's weight, if this is an inference-free Router model.
    pub fn static_weight(&self) -> Option<&Tensor> {
        self.query.as_ref().map(|q| &q.weight)
    }

    /// Every trainable parameter by sparq's name: the MLM's Hugging Face names, then the
    /// static weight as `<route folder>.weight` unless the route is frozen.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        if let Some(q) = self.query.as_ref().filter(|q| !q.frozen) {
            out.push((self.static_param_name(q), q.weight.shallow_clone()));
        }
        out
    }

    fn static_param_name(&self, q: &StaticRoute) -> String {
        format!("{}.weight", q.folder.to_string_lossy())
    }

    /// The names `learning_rate_mapping` patterns are searched in for the parameter `name`:
    /// sentence-transformers' trainer name (`model.0.sub_modules.query.0.weight`), then an
    /// alias by module folder (`query_0_SparseStaticEmbedding.weight`,
    /// `document_0_MLMTransformer.bert.…`), as the upstream docs' `SparseStaticEmbedding\.*`
    /// pattern expects (upstream's own names never contain the class name).
    pub fn mapping_names(&self, name: &str) -> Vec<String> {
        if let Some(q) = &self.query {
            if name == self.static_param_name(q) {
                return vec![self.names.static_name.clone(), name.to_string()];
            }
        }
        let alias = if self.names.mlm_folder.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.names.mlm_folder)
        };
        vec![format!("{}{name}", self.names.mlm_prefix), alias]
    }

    /// The optimizer's parameters with their AdamW state, each at the learning rate
    /// `learning_rate_mapping` gives it (as sentence-transformers' trainer groups them).
    pub fn optimizer_params(&self, mapping: &[(String, f64)]) -> Result<Vec<Param>, TrainError> {
        let mut params: Vec<Param> = self
            .trainable()
            .iter()
            .map(|(name, t)| Param::new(name, t))
            .collect();
        map_learning_rates(&mut params, mapping, |n| self.mapping_names(n)).map_err(|e| {
            let frozen = self.query.as_ref().is_some_and(|q| q.frozen);
            TrainError::Option(if frozen {
                format!(
                    "{e} (the SparseStaticEmbedding is frozen: its config.json says \
                     \"frozen\": true; set it to false to train the static weights)"
                )
            } else {
                e
            })
        })?;
        Ok(params)
    }

    /// Sets the route of each data column (`names` in order) from `mapping` (column → route),
    /// by default the first column the query route and the others the document route.
    pub fn route_columns(
        &mut self,
        names: &[String],
        mapping: &[(String, InputKind)],
    ) -> Result<(), TrainError> {
        for (column, _) in mapping {
            if !names.contains(column) {
                return Err(TrainError::Option(format!(
                    "--router-mapping names column `{column}`, which the training data does not \
                     have (columns: {}): name one of those",
                    names.join(", ")
                )));
            }
        }
        self.column_routes = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                mapping
                    .iter()
                    .find(|(c, _)| c == name)
                    .map(|(_, r)| *r)
                    .unwrap_or(if i == 0 {
                        InputKind::Query
                    } else {
                        InputKind::Document
                    })
            })
            .collect();
        Ok(())
    }

    /// The vectors of one batch's columns: the anchors `[b, vocab]` and every other column
    /// concatenated `[(k−1)·b, vocab]`, each column through its route (columns of one route
    /// share a forward pass, as sentence-transformers merges them).
    pub fn forward_columns(&self, columns: &[Vec<&str>]) -> Result<(Tensor, Tensor), TrainError> {
        let route = |c: usize| {
            self.column_routes.get(c).copied().unwrap_or(if c == 0 {
                InputKind::Query
            } else {
                InputKind::Document
            })
        };
        let anchors = self.forward_route(&columns[0], route(0))?;
        let rest = &columns[1..];
        let docs = if (1..columns.len()).all(|c| route(c) == route(1)) {
            let merged: Vec<&str> = rest.iter().flatten().copied().collect();
            self.forward_route(&merged, route(1))?
        } else {
            let parts = (1..columns.len())
                .map(|c| self.forward_route(&columns[c], route(c)))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::f_cat(&parts, 0)?
        };
        Ok((anchors, docs))
    }

    /// The vectors of `texts` through the route `kind` (the MLM unless it is an
    /// inference-free model's query route).
    pub fn forward_route(&self, texts: &[&str], kind: InputKind) -> Result<Tensor, TrainError> {
        match (&self.query, kind) {
            (Some(q), InputKind::Query) => q.forward(texts),
            _ => self.forward(&self.tokenize(texts)?),
        }
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Token ids of `texts`, truncated as the model's settings say. Like sentence-transformers'
    /// trainer (without `prompts` in its arguments), training adds no query or document prompt.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TrainError> {
        Ok(self
            .tokenizer
            .encode_batch(texts.iter().map(|t| t.to_string()).collect())?)
    }

    /// Turns dropout on (training, the default) or off (deterministic forward passes).
    pub fn set_dropout(&mut self, on: bool) {
        self.model.set_training(on);
    }

    /// SPLADE vectors `[n, vocab]` (fp32, differentiable) of tokenized sequences, through the
    /// same packed forward pass inference uses.
    pub fn forward(&self, seqs: &[Vec<u32>]) -> Result<Tensor, TrainError> {
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        if refs.iter().any(|s| s.is_empty()) {
            return Err(TrainError::Data("a text tokenized to nothing".into()));
        }
        Ok(self.pooled(&refs)?)
    }

    fn pooled(&self, seqs: &[&[u32]]) -> Result<Tensor, tch::TchError> {
        let real: i64 = seqs.iter().map(|s| s.len() as i64).sum();
        let kernel = AttentionKernel::for_device(self.device);
        let batch = PackedBatch::new(seqs, real, self.device, kernel, 1)?;
        let run = || -> Result<Tensor, tch::TchError> {
            let hidden = self.model.transformed(&batch)?;
            self.layout
                .pooling
                .pool(&hidden, &batch.lengths, self.model.decoder(), 1)
        };
        let pooled = if self.autocast {
            tch::autocast(true, run)
        } else {
            run()
        }?;
        pooled.f_to_kind(Kind::Float)
    }

    /// Writes the model into `dir` in the layout it was loaded from: every file of the source
    /// folder except weights and training state, then `model.safetensors` with the current
    /// parameters (tied weights stored once, as Hugging Face saves them).
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        copy_model_files(&self.layout.root, dir, Path::new(""))?;
        let rel = self
            .layout
            .transformer_dir
            .strip_prefix(&self.layout.root)
            .unwrap_or(Path::new(""));
        let weights_dir = dir.join(rel);
        std::fs::create_dir_all(&weights_dir).map_err(|e| io_error(&weights_dir, e))?;
        let host: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous()))
            .collect();
        let path = weights_dir.join("model.safetensors");
        Tensor::write_safetensors(&host, &path).map_err(|e| TrainError::Io {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        match &self.query {
            Some(q) => q.save(dir),
            None => Ok(()),
        }
    }

    /// Replaces every weight (the static route's too) with those of a folder [`Self::save`]
    /// wrote.
    pub fn load_saved(&self, dir: &Path) -> Result<(), TrainError> {
        let rel = self
            .layout
            .transformer_dir
            .strip_prefix(&self.layout.root)
            .unwrap_or(Path::new(""));
        self.load_values(&dir.join(rel).join("model.safetensors"))?;
        match &self.query {
            Some(q) => q.load_saved(dir),
            None => Ok(()),
        }
    }

    /// Replaces every parameter's values with the tensors of `file` (same names).
    pub fn load_values(&self, file: &Path) -> Result<(), TrainError> {
        let values = read_named(file)?;
        tch::no_grad(|| -> Result<(), TrainError> {
            for (name, t) in &self.params {
                let v = values.get(name).ok_or_else(|| TrainError::Checkpoint {
                    path: file.to_path_buf(),
                    detail: format!("has no tensor `{name}`"),
                })?;
                t.shallow_clone().f_copy_(v)?;
            }
            Ok(())
        })
    }
}

/// The tensors of a safetensors file by name.
pub fn read_named(file: &Path) -> Result<std::collections::HashMap<String, Tensor>, TrainError> {
    Ok(Tensor::read_safetensors(file)
        .map_err(|e| TrainError::Checkpoint {
            path: file.to_path_buf(),
            detail: crate::model::clean_tch_error(&e.to_string()),
        })?
        .into_iter()
        .map(|(k, v)| (crate::model::weights::normalize_key(&k), v))
        .collect())
}

/// Files that are weights or training state: never copied into a saved model.
fn skipped(name: &str) -> bool {
    name == "model.safetensors"
        || name == "model.safetensors.index.json"
        || (name.starts_with("model-") && name.ends_with(".safetensors"))
        || name == "pytorch_model.bin"
        || name.starts_with("checkpoint-")
        || name.starts_with(".checkpoint-")
        || name == "optimizer.safetensors"
        || name == "trainer_state.json"
        || name == super::CHECKPOINT_MARKER
}

fn copy_model_files(src: &Path, dst: &Path, rel: &Path) -> Result<(), TrainError> {
    let from = src.join(rel);
    let to = dst.join(rel);
    std::fs::create_dir_all(&to).map_err(|e| io_error(&to, e))?;
    for entry in std::fs::read_dir(&from).map_err(|e| io_error(&from, e))? {
        let entry = entry.map_err(|e| io_error(&from, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if skipped(&name) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_model_files(src, dst, &rel.join(&name))?;
        } else if path.canonicalize().ok() != to.join(&name).canonicalize().ok() {
            std::fs::copy(&path, to.join(&name)).map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(())
}

/// An I/O error on `path`.
pub fn io_error(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::Io {
        path: PathBuf::from(path),
        detail: e.to_string(),
    }
}

/// The model being trained, encoding as `sparq eval` would encode the saved model: prompts,
/// length-sorted batches, the saved `max_active_dims`, no gradients. Dropout is as set: the
/// trainer turns it off around an evaluation.
impl SparseEncode for TrainModel {
    fn encode_texts(
        &self,
        texts: &[Option<&str>],
        kind: InputKind,
        opts: EncodeOptions,
    ) -> Result<Vec<SparseVector>, ModelError> {
        if let (Some(q), InputKind::Query) = (&self.query, kind) {
            return q
                .encode(texts, opts.max_active_dims)
                .map_err(|e| ModelError::Torch(e.to_string()));
        }
        let prompt = match kind {
            InputKind::Query => self.layout.query_prompt.as_deref(),
            InputKind::Document => self.layout.document_prompt.as_deref(),
        }
        .unwrap_or("");
        let present: Vec<String> = texts
            .iter()
            .flatten()
            .map(|t| format!("{prompt}{t}"))
            .collect();
        let mut ids = self.tokenizer.encode_batch(present)?.into_iter();
        let tokenized: Vec<Option<Vec<u32>>> =
            texts.iter().map(|t| t.and_then(|_| ids.next())).collect();
        let mut order: Vec<usize> = (0..texts.len())
            .filter(|&i| tokenized[i].is_some())
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokenized[i].as_ref().map_or(0, Vec::len)));
        let k = opts.max_active_dims.or(self.layout.max_active_dims);
        let extraction = Extraction::new(self.device);
        let mut out = vec![SparseVector::default(); texts.len()];
        for chunk in order.chunks(opts.batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk
                .iter()
                .map(|&i| tokenized[i].as_deref().unwrap_or_default())
                .collect();
            let vectors = tch::no_grad(|| -> Result<Vec<SparseVector>, ModelError> {
                let pooled = self.pooled(&batch)?;
                let launched = extraction.launch(&pooled, k, self.device)?;
                extraction.finish(launched, batch.len())
            })?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn dimension(&self) -> i64 {
        self.layout.arch.vocab_size()
    }
}

/// The Router of `dir`, if it is one sparq trains: an inference-free model (static query
/// route) or routes sharing one MLM; two encoders are refused.
fn read_router(dir: &Path) -> Result<Option<RouterLayout>, ModelError> {
    let modules = dir.join("modules.json");
    if !modules.is_file() {
        return Ok(None);
    }
    let Some(router) = RouterLayout::read(dir, &modules)? else {
        return Ok(None);
    };
    if let (RouteLayout::Mlm(_), RouteLayout::Mlm(_), false) =
        (&router.query, &router.document, router.shared)
    {
        return Err(ModelError::Unsupported {
            path: router.config,
            what: "training a two-encoder Router model (an MLM on each route)".into(),
            hint: "sparq trains inference-free Router models (a SparseStaticEmbedding query \
                   route) and plain SPLADE models; train two encoders with \
                   SparseEncoderTrainer"
                .into(),
        });
    }
    Ok(Some(router))
}

/// sentence-transformers' names for a Router's parameters: `0.sub_modules.<route>.<i>.…`,
/// under the trainer's `model.` (its loss holds the model).
fn router_names(router: &RouterLayout, layout: &ModelLayout) -> StNames {
    let folder = layout
        .transformer_dir
        .strip_prefix(&layout.root)
        .unwrap_or(&layout.transformer_dir)
        .to_string_lossy()
        .into_owned();
    let index = |route: &NamedRoute| route.modules.iter().position(|m| *m == folder);
    StNames {
        mlm_prefix: format!(
            "model.0.sub_modules.{}.{}.model.",
            router.document_route.key,
            index(&router.document_route).unwrap_or(0)
        ),
        mlm_folder: folder.clone(),
        static_name: format!("model.0.sub_modules.{}.0.weight", router.query_route.key),
    }
}
