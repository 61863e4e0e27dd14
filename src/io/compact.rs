//! Compact outputs: the type a vector's weights are stored as (`--weight-type`), and post-hoc
//! pruning of each finished vector (`--prune`, OpenSearch neural-sparse's prune types), shared
//! by `sparq encode` (before the weights are stored) and `sparq export`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::types::SparseVector;

/// How weights are stored in the `sparse` column.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum WeightType {
    /// float32, exact (today's schema).
    #[default]
    F32,
    /// Arrow Float16 (parquet FLOAT16), round to nearest even.
    F16,
    /// float32 rounded to bfloat16 (round to nearest even, low 16 bits zero), stored with
    /// BYTE_STREAM_SPLIT so the zero bytes compress away: every reader sees float32.
    Bf16,
    /// uint8 `q`, weight ≈ q × scale, `q = round(w / scale)` clamped to 255; entries whose `q`
    /// is 0 are dropped. The scale is in the weight field's metadata and in the manifest.
    U8,
}

impl WeightType {
    /// Whether it is the default (f32).
    pub fn is_f32(&self) -> bool {
        *self == WeightType::F32
    }
}

impl fmt::Display for WeightType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::Bf16 => "bf16",
            WeightType::U8 => "u8",
        })
    }
}

/// The default `--weight-scale` of `--weight-type u8`: q = 255 means 255 × 0.02 = 5.1. Measured
/// on the bundled model over `bench/make_corpus.py`'s 100k-document corpus: its largest
/// document weight is 2.72, so nothing clamps, and the step (0.02) keeps nDCG@10 within 1%
/// (bench/RESULTS.md, "Compact outputs").
pub const DEFAULT_WEIGHT_SCALE: f32 = 0.02;

/// Key of the weight field's metadata holding the u8 scale.
pub const SCALE_KEY: &str = "sparq.weight_scale";
/// Key of the weight field's metadata naming the weight type (bf16 is stored as float32).
pub const TYPE_KEY: &str = "sparq.weight_type";

/// A post-hoc pruning of a finished vector (the kept entries stay sorted by id).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Prune {
    /// `top-k:N`: the N largest weights (ties: smaller id first).
    TopK(usize),
    /// `mass:A` (0 < A ≤ 1): the largest weights (weight desc, then id asc) until their sum
    /// reaches A × the vector's total.
    Mass(f64),
    /// `ratio:R` (0 ≤ R < 1): drops weights below R × the vector's largest weight.
    Ratio(f64),
}

impl FromStr for Prune {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "--prune `{s}`: {why}; expected top-k:N (N ≥ 1), mass:A (0 < A ≤ 1) or \
                 ratio:R (0 ≤ R < 1), e.g. --prune mass:0.9"
            )
        };
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| bad("no `:` between the kind and its value"))?;
        let number = || {
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(&format!("`{value}` is not a number")))
        };
        match kind.trim() {
            "top-k" | "top_k" => match value.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Prune::TopK(n)),
                _ => Err(bad(&format!("`{value}` is not a count of at least 1"))),
            },
            "mass" => match number()? {
                a if a > 0.0 && a <= 1.0 => Ok(Prune::Mass(a)),
                a => Err(bad(&format!("mass {a} is outside (0, 1]"))),
            },
            "ratio" => match number()? {
                r if (0.0..1.0).contains(&r) => Ok(Prune::Ratio(r)),
                r => Err(bad(&format!("ratio {r} is outside [0, 1)"))),
            },
            other => Err(bad(&format!("unknown kind `{other}`"))),
        }
    }
}

impl TryFrom<String> for Prune {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Prune> for String {
    fn from(p: Prune) -> String {
        p.to_string()
    }
}

impl fmt::Display for Prune {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prune::TopK(n) => write!(f, "top-k:{n}"),
            Prune::Mass(a) => write!(f, "mass:{a}"),
            Prune::Ratio(r) => write!(f, "ratio:{r}"),
        }
    }
}

impl Prune {
    /// The kept entries of `v`, sorted by id.
    pub fn apply(&self, v: SparseVector) -> SparseVector {
        let keep: Vec<bool> = match *self {
            Prune::Ratio(r) => {
                let max = v.values.iter().copied().fold(0.0f32, f32::max) as f64;
                v.values.iter().map(|&w| w as f64 >= r * max).collect()
            }
            Prune::TopK(n) if v.len() <= n => return v,
            Prune::TopK(n) => {
                let mut keep = vec![false; v.len()];
                for i in by_weight(&v).into_iter().take(n) {
                    keep[i] = true;
                }
                keep
            }
            Prune::Mass(a) => {
                let order = by_weight(&v);
                // Summed in the order kept, so that mass:1 keeps every entry exactly.
                let total: f64 = order.iter().map(|&i| v.values[i] as f64).sum();
                let mut keep = vec![false; v.len()];
                let mut sum = 0.0f64;
                for i in order {
                    if sum >= a * total {
                        break;
                    }
                    keep[i] = true;
                    sum += v.values[i] as f64;
                }
                keep
            }
        };
        let (indices, values) = v
            .indices
            .iter()
            .zip(&v.values)
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|((&i, &w), _)| (i, w))
            .unzip();
        SparseVector { indices, values }
    }
}

/// Positions of `v`'s entries by weight descending, then id ascending.
fn by_weight(v: &SparseVector) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| {
        v.values[b]
            .total_cmp(&v.values[a])
            .then(v.indices[a].cmp(&v.indices[b]))
    });
    order
}

/// How an output's vectors are stored: pruned, then converted to the weight type.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct VectorFormat {
    /// The stored weight type.
    #[serde(default)]
    pub weight_type: WeightType,
    /// u8's scale (ignored by the other types).
    #[serde(default)]
    pub scale: f32,
    /// Pruning applied before the conversion.
    #[serde(default)]
    pub prune: Option<Prune>,
}

/// A u8 weight: `round(w / scale)`, clamped to 255, and whether it was clamped.
pub fn quantize_u8(w: f32, scale: f32) -> (u8, bool) {
    let q = (w as f64 / scale as f64).round();
    if q > 255.0 {
        (255, true)
    } else {
        (q.max(0.0) as u8, false)
    }
}

/// A u8 weight read back: `q × scale`.
pub fn dequantize_u8(q: u8, scale: f32) -> f32 {
    q as f32 * scale
}

/// A weight rounded to bfloat16 (round to nearest even), as float32.
pub fn round_bf16(w: f32) -> f32 {
    half::bf16::from_f32(w).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(pairs: &[(u32, f32)]) -> SparseVector {
        SparseVector {
            indices: pairs.iter().map(|p| p.0).collect(),
            values: pairs.iter().map(|p| p.1).collect(),
        }
    }

    #[test]
    fn prune_kinds_keep_what_they_say() {
        let x = v(&[(1, 0.5), (4, 2.0), (7, 1.0), (9, 0.5), (12, 0.1)]);
        assert_eq!(
            Prune::TopK(3).apply(x.clone()),
            v(&[(1, 0.5), (4, 2.0), (7, 1.0)])
        );
        // Total 4.1: 2.0 + 1.0 = 3.0 < 3.28, + 0.5 (id 1 before id 9) reaches it.
        assert_eq!(
            Prune::Mass(0.8).apply(x.clone()),
            v(&[(1, 0.5), (4, 2.0), (7, 1.0)])
        );
        assert_eq!(Prune::Mass(1.0).apply(x.clone()), x);
        assert_eq!(
            Prune::Ratio(0.25).apply(x.clone()),
            v(&[(1, 0.5), (4, 2.0), (7, 1.0), (9, 0.5)])
        );
        assert_eq!(Prune::Ratio(0.0).apply(x.clone()), x);
        for s in ["top-k:3", "mass:0.9", "ratio:0.1"] {
            assert_eq!(s.parse::<Prune>().unwrap().to_string(), s);
        }
        for s in [
            "top-k:0",
            "mass:0",
            "mass:1.5",
            "ratio:1",
            "ratio:-0.1",
            "mass",
            "size:3",
        ] {
            let e = s.parse::<Prune>().unwrap_err();
            assert!(e.contains(s) && e.contains("mass:A"), "{e}");
        }
    }

    #[test]
    fn u8_rounds_and_clamps() {
        assert_eq!(quantize_u8(0.029, 0.02), (1, false));
        assert_eq!(quantize_u8(0.009, 0.02), (0, false));
        assert_eq!(quantize_u8(6.0, 0.02), (255, true));
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0).to_bits() & 0xffff, 0);
    }
}
