//! The trainable `SparseStaticEmbedding` of an inference-free Router model: a weight per
//! token id, a text's vector the weight of each token it contains.
//!
//! Computed as upstream's forward (`sentence_transformers/sparse_encoder/modules/
//! sparse_static_embedding.py`, 6.2): the texts are tokenized without special tokens (truncated
//! to `model_max_length`), a presence matrix is scattered from the ids with the attention mask
//! as values, and multiplied by the weight vector — no activation, so the gradient of a vector
//! entry with respect to its token's weight is the presence (1 or 0).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::files::{io_error, read_named};
use super::TrainError;
use crate::model::router::{StaticLayout, StaticWeights};
use crate::model::static_embedding::{static_vector, SparseStaticEmbedding};
use crate::model::tokenizer::SpladeTokenizer;
use crate::types::SparseVector;

/// A `SparseStaticEmbedding` query route being trained.
pub struct StaticRoute {
    tokenizer: SpladeTokenizer,
    /// `[vocab]` fp32; requires a gradient unless the route is frozen.
    pub weight: Tensor,
    /// The route's `config.json` says `"frozen": true`: its weights are not trained.
    pub frozen: bool,
    /// The route folder, relative to the model folder (e.g. `query_0_SparseStaticEmbedding`).
    pub folder: PathBuf,
    /// The weights came from an `idf.json` the route's config.json names.
    from_json: Option<PathBuf>,
    pad_id: Option<u32>,
    prompt: Option<String>,
    max_active_dims: Option<usize>,
}

impl StaticRoute {
    /// Loads the route of `layout` (inside the model folder `root`) onto `device`.
    pub fn load(root: &Path, layout: &StaticLayout, device: Device) -> Result<Self, TrainError> {
        let embedding = SparseStaticEmbedding::load(layout)?;
        let config_path = layout.dir.join("config.json");
        let frozen = if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| io_error(&config_path, e))?;
            let config: Value = serde_json::from_str(&text).map_err(|e| TrainError::Io {
                path: config_path.clone(),
                detail: format!("not valid JSON ({e}): restore the file from the model release"),
            })?;
            config
                .get("frozen")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        } else {
            false
        };
        let weight = Tensor::from_slice(embedding.weights()).f_to_device(device)?;
        let weight = weight.set_requires_grad(!frozen);
        let tokenizer = SpladeTokenizer::load_without_special_tokens(&layout.dir)?;
        let pad_id = tokenizer
            .inner()
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| pad_token_id(&layout.dir, &tokenizer));
        Ok(Self {
            tokenizer,
            weight,
            frozen,
            folder: layout
                .dir
                .strip_prefix(root)
                .unwrap_or(&layout.dir)
                .to_path_buf(),
            from_json: match &layout.weights {
                StaticWeights::IdfJson(p) => Some(p.clone()),
                StaticWeights::Checkpoint(_) => None,
            },
            pad_id,
            prompt: layout.prompt.clone(),
            max_active_dims: layout.max_active_dims,
        })
    }

    /// Output dimension.
    pub fn dimension(&self) -> i64 {
        self.weight.size()[0]
    }

    /// The vectors `[n, vocab]` of `texts` (differentiable in the weights).
    pub fn forward(&self, texts: &[&str]) -> Result<Tensor, TrainError> {
        let ids = self
            .tokenizer
            .encode_batch(texts.iter().map(|t| t.to_string()).collect())?;
        let vocab = self.dimension();
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut presence = vec![0f32; ids.len() * vocab as usize];
        for (row, seq) in ids.iter().enumerate() {
            let slots = &mut presence[row * vocab as usize..(row + 1) * vocab as usize];
            for &id in seq {
                let slot = slots.get_mut(id as usize).ok_or_else(|| {
                    TrainError::Data(format!(
                        "token id {id} is beyond the {vocab} static weights of {}",
                        self.folder.display()
                    ))
                })?;
                *slot = 1.0;
            }
            // Upstream scatters the attention mask: a padded row's pad positions write 0 at the
            // pad id after its real tokens, so a literal pad token in a shorter text counts 0.
            if let Some(pad) = self.pad_id.filter(|_| seq.len() < longest) {
                if let Some(slot) = slots.get_mut(pad as usize) {
                    *slot = 0.0;
                }
            }
        }
        let presence = Tensor::from_slice(&presence)
            .f_view([ids.len() as i64, vocab])?
            .f_to_device(self.weight.device())?;
        Ok(presence.f_mul(&self.weight)?)
    }

    /// Vectors of `texts` as `encode_query` gives them (prompt, `max_active_dims`), no gradient.
    pub fn encode(
        &self,
        texts: &[Option<&str>],
        max_active_dims: Option<usize>,
    ) -> Result<Vec<SparseVector>, TrainError> {
        let weights = Vec::<f32>::try_from(
            self.weight
                .detach()
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?,
        )?;
        let prompt = self.prompt.as_deref().unwrap_or("");
        let present: Vec<String> = texts
            .iter()
            .flatten()
            .map(|t| format!("{prompt}{t}"))
            .collect();
        let mut ids = self.tokenizer.encode_batch(present)?.into_iter();
        let k = max_active_dims.or(self.max_active_dims);
        Ok(texts
            .iter()
            .map(|t| match t.and_then(|_| ids.next()) {
                Some(seq) => static_vector(&weights, &seq, k),
                None => SparseVector::default(),
            })
            .collect())
    }

    /// Writes the weights into the route folder under `dir` as upstream's save does
    /// (`model.safetensors`, key `weight`); a route read from an idf.json gets upstream's
    /// config (`{"frozen": …}`) so the saved weights, not the stale file, are loaded.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let folder = dir.join(&self.folder);
        std::fs::create_dir_all(&folder).map_err(|e| io_error(&folder, e))?;
        let host = self.weight.detach().to_device(Device::Cpu).contiguous();
        let path = folder.join("model.safetensors");
        Tensor::write_safetensors(&[("weight", host)], &path).map_err(|e| TrainError::Io {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if let Some(json) = &self.from_json {
            if let Some(name) = json.file_name() {
                let copied = folder.join(name);
                if copied.is_file() {
                    std::fs::remove_file(&copied).map_err(|e| io_error(&copied, e))?;
                }
            }
            let config = folder.join("config.json");
            let text = format!("{{\n    \"frozen\": {}\n}}", self.frozen);
            std::fs::write(&config, text).map_err(|e| io_error(&config, e))?;
        }
        Ok(())
    }

    /// Replaces the weights with those saved in the route folder under `dir`.
    pub fn load_saved(&self, dir: &Path) -> Result<(), TrainError> {
        let file = dir.join(&self.folder).join("model.safetensors");
        let values = read_named(&file)?;
        let v = values.get("weight").ok_or_else(|| TrainError::Checkpoint {
            path: file.clone(),
            detail: "has no tensor `weight`".into(),
        })?;
        tch::no_grad(|| self.weight.shallow_clone().f_copy_(v).map(|_| ()))?;
        Ok(())
    }
}

/// The id of the tokenizer config's `pad_token` (what upstream pads with).
fn pad_token_id(dir: &Path, tokenizer: &SpladeTokenizer) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let config: Value = serde_json::from_str(&text).ok()?;
    tokenizer
        .inner()
        .token_to_id(config.get("pad_token")?.as_str()?)
}
