//! The model being trained: the inference model's layers with gradients on, named parameters
//! (Hugging Face state-dict names), and saving in the sentence-transformers layout it came in.
//!
//! An inference-free Router model (query route a `SparseStaticEmbedding`, document route an
//! MLM + SpladePooling) trains both: each data column goes through the route sentence-
//! transformers' `router_mapping` gives it (default: the first column the query route, the
//! others the document route), and the saved folder is the same Router layout.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::files::{io_error, read_named};
use super::router_layout::{read_router, router_names, StNames};
use super::static_route::StaticRoute;
use super::TrainError;
use crate::model::attention::AttentionKernel;
use crate::model::config::ArchConfig;
use crate::model::extract::Extraction;
use crate::model::layout::ModelLayout;
use crate::model::mlm::MaskedLm;
use crate::model::packed::PackedBatch;
use crate::model::router::RouteLayout;
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
    pub(super) query: Option<StaticRoute>,
    pub(super) names: StNames,
    /// The route of each data column (set by [`TrainModel::route_columns`]).
    pub(super) column_routes: Vec<InputKind>,
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
            // bf16, as sentence-transformers' trainer with bf16=True (libtorch's CUDA autocast
            // defaults to fp16, which would need a loss scaler): fp32 master weights, bf16
            // matmuls, the pooled output back in fp32 for the loss.
            super::cuda::autocast_to_bf16();
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
