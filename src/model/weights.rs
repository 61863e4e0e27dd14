//! Reading checkpoint tensors from `model.safetensors` or a sharded
//! `model.safetensors.index.json`, with Hugging Face key normalisation.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::ModelError;

/// Checkpoint tensors by Hugging Face state-dict key.
pub struct WeightMap {
    tensors: HashMap<String, Tensor>,
    source: PathBuf,
    /// Every tensor a model took as a parameter, by name, in load order (shallow clones: the
    /// same tensors the model holds).
    taken: Vec<(String, Tensor)>,
}

impl WeightMap {
    /// Reads every tensor of the model folder's safetensors file(s).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (files, source) = if single.is_file() {
            (vec![single.clone()], single)
        } else if index.is_file() {
            (shards_of(&index)?, index)
        } else if dir.join("pytorch_model.bin").is_file() {
            return Err(ModelError::Unsupported {
                path: dir.join("pytorch_model.bin"),
                what: "pickled PyTorch weights".into(),
                hint:
                    "convert them once with `model.save_pretrained(dir, safe_serialization=True)` \
                       in Python, then point --model at that folder"
                        .into(),
            });
        } else {
            return Err(ModelError::MissingFile {
                path: single,
                hint: "the model folder needs model.safetensors (or a sharded \
                       model.safetensors.index.json)"
                    .into(),
            });
        };
        let mut tensors = HashMap::new();
        for file in &files {
            let read = Tensor::read_safetensors(file).map_err(|e| ModelError::Corrupt {
                path: file.clone(),
                detail: clean_tch_error(&e.to_string()),
            })?;
            for (name, tensor) in read {
                tensors.insert(normalize_key(&name), tensor);
            }
        }
        Ok(Self {
            tensors,
            source,
            taken: Vec::new(),
        })
    }

    /// The file the weights came from (for error messages).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Removes and returns the tensor named `key` (after normalisation), if present.
    pub fn take(&mut self, key: &str) -> Option<Tensor> {
        self.tensors.remove(key)
    }

    /// Whether a tensor named `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Removes and returns the tensor named `key`, checking its shape.
    pub fn take_shaped(&mut self, key: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let tensor = self.take(key).ok_or_else(|| ModelError::MissingWeight {
            path: self.source.clone(),
            key: key.to_string(),
        })?;
        if tensor.size() != shape {
            return Err(ModelError::WeightShape {
                path: self.source.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: tensor.size(),
            });
        }
        self.record(key, &tensor);
        Ok(tensor)
    }

    /// Records `tensor` as the parameter `key` (for tensors taken with [`Self::take`]).
    pub fn record(&mut self, key: &str, tensor: &Tensor) {
        self.taken.push((key.to_string(), tensor.shallow_clone()));
    }

    /// The parameters taken so far with their names (see [`Self::record`]).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.taken
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect()
    }

    /// Moves and casts every tensor not yet taken (before a model is built from them).
    pub fn convert(&mut self, device: tch::Device, kind: tch::Kind) -> Result<(), ModelError> {
        for t in self.tensors.values_mut() {
            *t = t
                .f_to_device(device)
                .and_then(|t| t.f_to_kind(kind))
                .map_err(|e| ModelError::Corrupt {
                    path: self.source.clone(),
                    detail: clean_tch_error(&e.to_string()),
                })?;
        }
        Ok(())
    }

    /// Keys not consumed so far.
    pub fn remaining(&self) -> BTreeSet<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }
}

/// Maps legacy names to current Hugging Face ones: `LayerNorm.gamma/beta` (TF-era BERT
/// checkpoints) become `LayerNorm.weight/bias`.
pub fn normalize_key(key: &str) -> String {
    if let Some(stem) = key.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = key.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        key.to_string()
    }
}

fn shards_of(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::Io {
        path: index.to_path_buf(),
        source: e,
    })?;
    let parsed: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
            path: index.to_path_buf(),
            detail: e.to_string(),
        })?;
    let map = parsed
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Corrupt {
            path: index.to_path_buf(),
            detail: "no \"weight_map\" object".into(),
        })?;
    let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let dir = index.parent().unwrap_or(Path::new("."));
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelError::MissingFile {
                    path,
                    hint: format!("{} lists this shard", index.display()),
                })
            }
        })
        .collect()
}

/// Keeps the first line of a libtorch error: the rest is a C++ backtrace users can't act on.
pub fn clean_tch_error(message: &str) -> String {
    message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim()
        .to_string()
}
