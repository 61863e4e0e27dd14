//! `SparseStaticEmbedding`: an inference-free sparse encoder, one static weight (e.g. IDF) per
//! vocabulary token; a text's vector holds the weight of each token it contains.
//!
//! Geng et al., "Towards Competitive Search Relevance For Inference-Free Learned Sparse
//! Representations" (arXiv:2411.04403), the query side of OpenSearch's
//! `opensearch-neural-sparse-encoding-doc-*` models. Upstream:
//! `sentence_transformers/sparse_encoder/modules/sparse_static_embedding.py` (6.2): tokenize
//! without special tokens (truncated to the tokenizer's `model_max_length`), mark each token
//! present once, multiply by the weights. Done here on the host: a lookup per token, no
//! libtorch call.

use std::path::{Path, PathBuf};

use tch::Kind;

use super::router::{StaticLayout, StaticWeights};
use super::tokenizer::SpladeTokenizer;
use super::weights::WeightMap;
use super::ModelError;
use crate::types::SparseVector;

/// A loaded `SparseStaticEmbedding` route.
pub struct SparseStaticEmbedding {
    tokenizer: SpladeTokenizer,
    weights: Vec<f32>,
    dir: PathBuf,
}

impl SparseStaticEmbedding {
    /// Loads the tokenizer and the weights of a static route.
    pub fn load(layout: &StaticLayout) -> Result<Self, ModelError> {
        let tokenizer = SpladeTokenizer::load_without_special_tokens(&layout.dir)?;
        let weights = match &layout.weights {
            StaticWeights::Checkpoint(dir) => read_checkpoint(dir)?,
            StaticWeights::IdfJson(path) => read_idf_json(path, &tokenizer)?,
        };
        let model_path = || match &layout.weights {
            StaticWeights::Checkpoint(dir) => dir.join("model.safetensors"),
            StaticWeights::IdfJson(path) => path.clone(),
        };
        if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
            return Err(ModelError::NonFinite {
                path: model_path(),
                detail: format!("the static weight of token id {i} is {}", weights[i]),
            });
        }
        let vocab = tokenizer.inner().get_vocab_size(true);
        if vocab > weights.len() {
            return Err(ModelError::VocabMismatch {
                path: layout.dir.join("tokenizer.json"),
                tokenizer: vocab,
                model: weights.len() as i64,
            });
        }
        Ok(Self {
            tokenizer,
            weights,
            dir: layout.dir.clone(),
        })
    }

    /// The route's tokenizer (no special tokens).
    pub fn tokenizer(&self) -> &SpladeTokenizer {
        &self.tokenizer
    }

    /// Output dimension: one weight per token id.
    pub fn dimension(&self) -> i64 {
        self.weights.len() as i64
    }

    /// The route folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The static weights, one per token id.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// The vector of one tokenized text (see [`static_vector`]).
    pub fn vector(&self, ids: &[u32], max_active_dims: Option<usize>) -> SparseVector {
        static_vector(&self.weights, ids, max_active_dims)
    }
}

/// The vector of one tokenized text under `weights`: each distinct token's weight (zero weights
/// left out), then the `max_active_dims` largest, as upstream's top-k keeps them.
pub fn static_vector(weights: &[f32], ids: &[u32], max_active_dims: Option<usize>) -> SparseVector {
    let mut indices: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&i| weights.get(i as usize).is_some_and(|w| *w != 0.0))
        .collect();
    indices.sort_unstable();
    indices.dedup();
    if let Some(k) = max_active_dims.filter(|&k| k < indices.len()) {
        // Largest first; among equal weights the lower id, as torch.topk on CPU keeps it.
        indices.sort_by(|&a, &b| {
            weights[b as usize]
                .total_cmp(&weights[a as usize])
                .then(a.cmp(&b))
        });
        indices.truncate(k);
        indices.sort_unstable();
    }
    let values = indices.iter().map(|&i| weights[i as usize]).collect();
    SparseVector { indices, values }
}

/// The `weight` tensor of the route's checkpoint, as stored: upstream multiplies by it as is.
fn read_checkpoint(dir: &Path) -> Result<Vec<f32>, ModelError> {
    let mut map = WeightMap::load(dir)?;
    let path = dir.join("model.safetensors");
    let tensor = map
        .take("weight")
        .ok_or_else(|| ModelError::MissingWeight {
            path: path.clone(),
            key: "weight".into(),
        })?;
    if tensor.dim() != 1 {
        return Err(ModelError::WeightShape {
            path,
            key: "weight".into(),
            expected: vec![tensor.numel() as i64],
            found: tensor.size(),
        });
    }
    let tensor = tensor.f_to_kind(Kind::Float)?.f_contiguous()?;
    Ok(Vec::<f32>::try_from(&tensor)?)
}

/// `SparseStaticEmbedding.from_json`: a weight per token string, zero for the rest; the
/// vector is as long as the tokenizer's vocabulary (added tokens included). A token the
/// vocabulary lacks lands on the unknown token, and a later entry overwrites an earlier one
/// with the same id, as `convert_tokens_to_ids` and the upstream loop do.
fn read_idf_json(path: &Path, tokenizer: &SpladeTokenizer) -> Result<Vec<f32>, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let corrupt = |detail: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let entries: OrderedEntries =
        serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let inner = tokenizer.inner();
    let unk = unknown_token_id(inner);
    let mut weights = vec![0f32; inner.get_vocab_size(true)];
    for (token, weight) in entries.0 {
        let Some(id) = inner.token_to_id(&token).or(unk) else {
            return Err(corrupt(format!(
                "token `{token}` is not in the vocabulary and the tokenizer has no unknown token"
            )));
        };
        if let Some(slot) = weights.get_mut(id as usize) {
            *slot = weight;
        }
    }
    Ok(weights)
}

fn unknown_token_id(tokenizer: &tokenizers::Tokenizer) -> Option<u32> {
    let json = serde_json::to_value(tokenizer.get_model()).ok()?;
    let unk = json.get("unk_token")?.as_str()?;
    tokenizer.token_to_id(unk)
}

/// A JSON object's entries in file order (serde_json's map would sort them).
struct OrderedEntries(Vec<(String, f32)>);

impl<'de> serde::Deserialize<'de> for OrderedEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of token string → weight")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, f32>()? {
                    out.push(entry);
                }
                Ok(OrderedEntries(out))
            }
        }
        d.deserialize_map(Visit)
    }
}
