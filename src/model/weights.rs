//! Reading checkpoint tensors from `model.safetensors`, a sharded
//! `model.safetensors.index.json`, or a `torch.save`d `pytorch_model.bin`, with Hugging Face key
//! normalisation.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use tch::Tensor;

use super::error::{clean_tch_error, ModelError};

/// Checkpoint tensors by Hugging Face state-dict key.
pub struct WeightMap {
    tensors: HashMap<String, Tensor>,
    source: PathBuf,
    /// Memory maps the tensors point into (when loaded with [`WeightMap::load_mapped`]).
    maps: Vec<Arc<Mmap>>,
    /// Every tensor a model took as a parameter, by name, in load order (shallow clones: the
    /// same tensors the model holds).
    taken: Vec<(String, Tensor)>,
}

impl WeightMap {
    /// Reads every tensor of the model folder's safetensors file(s).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::read(dir, false)
    }

    /// Maps the safetensors file(s) read-only and makes tensors that point into the mapping
    /// (copying only misaligned ones): processes that load the same model share one copy of
    /// the weights in the page cache, and in the CPU caches. The tensors must never be written;
    /// keep [`Self::maps`] alive as long as they are used.
    pub fn load_mapped(dir: &Path) -> Result<Self, ModelError> {
        Self::read(dir, true)
    }

    /// The memory maps the tensors point into (empty unless loaded mapped).
    pub fn maps(&self) -> Vec<Arc<Mmap>> {
        self.maps.clone()
    }

    fn read(dir: &Path, mapped: bool) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (files, source) = if single.is_file() {
            (vec![single.clone()], single)
        } else if index.is_file() {
            (shards_of(&index)?, index)
        } else if dir.join("pytorch_model.bin").is_file() {
            // A torch.save'd state dict (BAAI/bge-m3 ships one): read by a reader that builds
            // tensors only (see `pickle`), copied into memory, never mapped.
            let path = dir.join("pytorch_model.bin");
            let hint =
                "convert it once with `model.save_pretrained(dir, safe_serialization=True)` \
                        in Python, then point --model at that folder";
            let tensors = super::pickle::read_state_dict(&path, hint)?
                .into_iter()
                .map(|(name, t)| (normalize_key(&name), t))
                .collect();
            return Ok(Self {
                tensors,
                source: path,
                maps: Vec::new(),
                taken: Vec::new(),
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
        let mut maps = Vec::new();
        for file in &files {
            let read = if mapped {
                let (map, read) = read_mapped(file)?;
                maps.push(map);
                read
            } else {
                Tensor::read_safetensors(file).map_err(|e| ModelError::Corrupt {
                    path: file.clone(),
                    detail: clean_tch_error(&e.to_string()),
                })?
            };
            for (name, tensor) in read {
                tensors.insert(normalize_key(&name), tensor);
            }
        }
        Ok(Self {
            tensors,
            source,
            maps,
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

    /// Fails on the first parameter taken that holds a NaN or an infinity.
    pub fn check_finite(&self, model: &Path) -> Result<(), ModelError> {
        for (name, t) in &self.taken {
            if !t.is_floating_point() {
                continue;
            }
            let finite = t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
            if !finite {
                return Err(ModelError::NonFinite {
                    path: model.to_path_buf(),
                    detail: format!("weight `{name}` holds NaN or infinite values"),
                });
            }
        }
        Ok(())
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

/// Named tensors, as a safetensors file holds them.
type Named = Vec<(String, Tensor)>;

/// Tensors pointing into a read-only memory map of `file`.
fn read_mapped(file: &Path) -> Result<(Arc<Mmap>, Named), ModelError> {
    use safetensors::Dtype as D;
    use tch::Kind;
    let corrupt = |detail: String| ModelError::Corrupt {
        path: file.to_path_buf(),
        detail,
    };
    let handle = std::fs::File::open(file).map_err(|e| ModelError::Io {
        path: file.to_path_buf(),
        source: e,
    })?;
    // SAFETY: the file is mapped read-only and private; sparq never writes model files while
    // encoding with them (replacing one in place would be the user's error, as with any mmap).
    let map = Arc::new(unsafe { Mmap::map(&handle) }.map_err(|e| ModelError::Io {
        path: file.to_path_buf(),
        source: e,
    })?);
    let parsed =
        safetensors::SafeTensors::deserialize(&map[..]).map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in parsed.tensors() {
        let kind = match view.dtype() {
            D::F32 => Kind::Float,
            D::F16 => Kind::Half,
            D::BF16 => Kind::BFloat16,
            D::F64 => Kind::Double,
            D::I64 => Kind::Int64,
            D::I32 => Kind::Int,
            D::I16 => Kind::Int16,
            D::I8 => Kind::Int8,
            D::U8 => Kind::Uint8,
            D::BOOL => Kind::Bool,
            other => {
                return Err(corrupt(format!(
                    "tensor `{name}` has unsupported dtype {other:?}"
                )))
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let data = view.data();
        let tensor = if (data.as_ptr() as usize).is_multiple_of(kind.elt_size_in_bytes()) {
            // SAFETY: `data` lies in `map`, which the caller keeps alive with the tensors; its
            // length is numel × element size (checked by the safetensors parser).
            unsafe { Tensor::from_blob(data.as_ptr(), &shape, &[], kind, tch::Device::Cpu) }
        } else {
            Tensor::f_from_data_size(data, &shape, kind).map_err(|e| corrupt(e.to_string()))?
        };
        out.push((name, tensor));
    }
    Ok((map, out))
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
