//! The vocabulary every layer speaks: sparse vectors, devices, precisions, input kinds.
//! Nothing here imports the rest of sparq.

use std::str::FromStr;

use serde::Serialize;

/// A SPLADE vector: non-zero weights by vocabulary id, ids ascending.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SparseVector {
    /// Vocabulary ids, strictly ascending.
    pub indices: Vec<u32>,
    /// Weights (all > 0 for SPLADE), aligned with `indices`.
    pub values: Vec<f32>,
}

impl SparseVector {
    /// Number of non-zero dimensions.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the vector has no non-zero dimension.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Dot product with another sparse vector (merge of two sorted lists).
    pub fn dot(&self, other: &SparseVector) -> f32 {
        let (mut i, mut j, mut sum) = (0, 0, 0.0f32);
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += self.values[i] * other.values[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        sum
    }
}

/// Where the model runs: `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: use cpu, cuda or cuda:N")),
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Precision of the forward pass. Read from its names (`f32`, `fp32`, `bf16`, `bfloat16`, ...)
/// wherever it is given: a flag, a config file, a job spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// fp32: the reference mode, exact to sentence-transformers.
    F32,
    /// bfloat16 weights and activations (pooling output in fp32).
    Bf16,
}

impl<'de> serde::Deserialize<'de> for Dtype {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        })
    }
}

impl FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            _ => Err(format!("`{s}` is not a dtype: use f32 or bf16")),
        }
    }
}

impl Dtype {
    /// bf16 on CUDA, fp32 on CPU.
    pub fn default_for(device: DeviceSpec) -> Self {
        match device {
            DeviceSpec::Cpu => Dtype::F32,
            DeviceSpec::Cuda(_) => Dtype::Bf16,
        }
    }

    /// The libtorch element type.
    pub fn kind(self) -> tch::Kind {
        match self {
            Dtype::F32 => tch::Kind::Float,
            Dtype::Bf16 => tch::Kind::BFloat16,
        }
    }
}

/// Whether texts are queries or documents (selects the prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// `encode_query`.
    Query,
    /// `encode_document`.
    Document,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_products_merge_the_common_dimensions() {
        let a = SparseVector {
            indices: vec![1, 4, 9],
            values: vec![1.0, 2.0, 3.0],
        };
        let b = SparseVector {
            indices: vec![0, 4, 9, 12],
            values: vec![5.0, 0.5, 2.0, 7.0],
        };
        assert_eq!(a.dot(&b), 2.0 * 0.5 + 3.0 * 2.0);
        assert_eq!(a.dot(&SparseVector::default()), 0.0);
        assert_eq!(a.dot(&a), 14.0);
    }

    #[test]
    fn devices_and_dtypes_read_their_names() {
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("BFloat16".parse::<Dtype>(), Ok(Dtype::Bf16));
        let d: Dtype = serde_json::from_str("\"fp32\"").unwrap();
        assert_eq!(d, Dtype::F32);
        assert!(serde_json::from_str::<Dtype>("\"f16\"").is_err());
    }
}
