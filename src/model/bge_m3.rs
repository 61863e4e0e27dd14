//! BGE-M3's sparse ("lexical") vectors: the weight of each token is
//! `relu(sparse_linear(last_hidden_state))`, a vector keeps the largest weight of each token
//! id of its text, and the cls, eos, pad and unk tokens are dropped.
//!
//! Chen et al., "BGE M3-Embedding" (arXiv:2402.03216); upstream: FlagEmbedding 1.4.2,
//! `inference/embedder/encoder_only/m3.py` (`_process_token_weights`) and
//! `finetune/embedder/encoder_only/m3/modeling.py` (`_sparse_embedding`). The model folder is
//! BAAI/bge-m3's: an `XLMRobertaModel` (`config.json`, weights, tokenizer) beside
//! `sparse_linear.pt` (a `torch.save`d `{weight [1, hidden], bias [1]}`); sparq also reads that
//! state dict from `sparse_linear.safetensors`. The folder is recognised by
//! [`super::layout::ModelLayout::read`].

use std::path::Path;

use serde_json::Value;
use tch::{Kind, Tensor};

use super::layout::parse_json;
use super::packed::PackedBatch;
use super::tokenizer::SpladeTokenizer;
use super::ModelError;

/// BGE-M3's `sparse_linear` weight `[1, hidden]` and bias `[1]`, from the folder `dir`.
pub fn read_sparse_linear(dir: &Path, hidden: i64) -> Result<(Tensor, Tensor), ModelError> {
    let Some(path) = super::layout::sparse_linear_file(dir) else {
        return Err(ModelError::MissingFile {
            path: dir.join("sparse_linear.pt"),
            hint: "a BGE-M3 folder needs the sparse head of its release (sparse_linear.pt)".into(),
        });
    };
    let convert = format!(
        "convert it once with `python -c \"import torch, safetensors.torch as s; \
         s.save_file(torch.load('{pt}', map_location='cpu', weights_only=True), '{st}')\"`",
        pt = dir.join("sparse_linear.pt").display(),
        st = dir.join("sparse_linear.safetensors").display(),
    );
    let tensors = if path.extension().is_some_and(|e| e == "pt") {
        super::pickle::read_state_dict(&path, &convert)?
    } else {
        Tensor::read_safetensors(&path).map_err(|e| ModelError::Corrupt {
            path: path.clone(),
            detail: super::clean_tch_error(&e.to_string()),
        })?
    };
    let take = |key: &str, shape: &[i64]| -> Result<Tensor, ModelError> {
        let found = tensors.iter().position(|(k, _)| k == key);
        let Some(t) = found.map(|i| tensors[i].1.shallow_clone()) else {
            return Err(ModelError::MissingWeight {
                path: path.clone(),
                key: key.into(),
            });
        };
        if t.size() != shape {
            return Err(ModelError::WeightShape {
                path: path.clone(),
                key: key.into(),
                expected: shape.to_vec(),
                found: t.size(),
            });
        }
        Ok(t.contiguous())
    };
    Ok((take("weight", &[1, hidden])?, take("bias", &[1])?))
}

/// Pools token weights into `[sequences, vocab]` vectors by token id, as FlagEmbedding does.
pub struct TokenWeightPooling {
    /// Ids of the cls, eos, pad and unk tokens, `[n]` int64 (on the CPU).
    dropped: Tensor,
}

impl TokenWeightPooling {
    /// The ids FlagEmbedding drops: those of `special_tokens_map`'s cls, eos, pad and unk
    /// tokens (`tokenizer_config.json`, else XLMRobertaTokenizer's defaults).
    pub fn new(dir: &Path, tokenizer: &SpladeTokenizer) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer_config.json");
        let config: Value = if path.is_file() {
            parse_json(&path)?
        } else {
            Value::Null
        };
        let defaults = [
            ("cls_token", "<s>"),
            ("eos_token", "</s>"),
            ("pad_token", "<pad>"),
            ("unk_token", "<unk>"),
        ];
        let ids: Vec<i64> = defaults
            .iter()
            .filter_map(|(key, default)| {
                let token = match config.get(key) {
                    Some(Value::String(s)) => s.as_str(),
                    Some(Value::Object(o)) => o.get("content").and_then(Value::as_str)?,
                    _ => default,
                };
                tokenizer.inner().token_to_id(token).map(i64::from)
            })
            .collect();
        Ok(Self {
            dropped: Tensor::from_slice(&ids),
        })
    }

    /// `[sequences, vocab]` fp32: for each sequence of `batch` and each token id in it, the
    /// largest `relu(hidden · weight + bias)` over its occurrences (0 where none is positive);
    /// `hidden` is the last hidden state `[tokens, hidden]`, `head` the `sparse_linear`.
    pub fn pool(
        &self,
        hidden: &Tensor,
        batch: &PackedBatch,
        head: (&Tensor, &Tensor),
        vocab: i64,
    ) -> Result<Tensor, tch::TchError> {
        let device = hidden.device();
        let real = batch.real;
        let weights = hidden
            .f_narrow(0, 0, real)?
            .f_linear(head.0, Some(head.1))?
            .f_relu()?
            .f_to_kind(Kind::Float)?
            .f_reshape([real])?;
        let ids = batch.ids.f_narrow(0, 0, real)?;
        let kept = Tensor::f_isin(&ids, &self.dropped.f_to_device(device)?, false, true)?
            .f_to_kind(Kind::Float)?;
        let rows: Vec<i64> = (0i64..)
            .zip(&batch.lengths)
            .flat_map(|(r, &n)| std::iter::repeat_n(r * vocab, n as usize))
            .collect();
        let index = Tensor::from_slice(&rows).f_to_device(device)?.f_add(&ids)?;
        let sequences = batch.lengths.len() as i64;
        // Weights are ≥ 0, so a max starting from 0 keeps exactly the positive ones.
        Tensor::f_zeros([sequences * vocab], (Kind::Float, device))?
            .f_index_reduce(0, &index, &weights.f_mul(&kept)?, "amax", true)?
            .f_reshape([sequences, vocab])
    }
}
