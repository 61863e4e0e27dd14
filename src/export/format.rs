//! The line formats of `sparq export`, and the per-vector filters applied before them.

use serde_json::{json, Map, Value};

use crate::encode::SparseVector;
use crate::io::compact::Prune;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Anserini/Lucene JsonVectorCollection: `{"id", "contents": "", "vector": {token: int}}`.
    Anserini,
    /// Qdrant sparse vectors: `{"id", "vector": {"indices": [...], "values": [...]}}`; ids
    /// that are unsigned integers or UUIDs (others refused, or `--qdrant-ids uuid5`).
    Qdrant,
    /// Elasticsearch/OpenSearch bulk: an action line, then `{"<field>": {token: weight}}`.
    Elasticsearch,
    /// `{"id", "indices", "values"}` (and `"tokens"` with --tokens).
    Jsonl,
}

impl Format {
    /// Whether lines name dimensions by token string.
    pub fn needs_tokens(self) -> bool {
        matches!(self, Format::Anserini | Format::Elasticsearch)
    }
}

/// Top-k, minimum weight, pruning and quantization, applied in that order.
#[derive(Debug, Clone, Copy, Default)]
pub struct VectorFilter {
    /// Keep the k largest weights (ties: smaller id first).
    pub top_k: Option<usize>,
    /// Drop weights below this.
    pub min_weight: Option<f32>,
    /// `--prune`, as encode applies it.
    pub prune: Option<Prune>,
    /// Integer weights `round(w × factor)`, zeros dropped.
    pub quantize: Option<f64>,
}

/// A weight after filtering: float, or quantized integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weight {
    /// Unquantized.
    Float(f32),
    /// `round(w × factor)`, never 0.
    Int(i64),
}

impl Weight {
    fn json(self) -> Value {
        match self {
            Weight::Float(w) => json!(w),
            Weight::Int(q) => json!(q),
        }
    }
}

impl VectorFilter {
    /// The kept `(id, weight)` pairs, in increasing id order.
    pub fn apply(&self, v: &SparseVector) -> Vec<(u32, Weight)> {
        let mut pairs: Vec<(u32, f32)> = v
            .indices
            .iter()
            .copied()
            .zip(v.values.iter().copied())
            .filter(|&(_, w)| w != 0.0 && self.min_weight.is_none_or(|m| w >= m))
            .collect();
        if let Some(k) = self.top_k {
            if pairs.len() > k {
                pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                pairs.truncate(k);
            }
        }
        pairs.sort_by_key(|p| p.0);
        if let Some(prune) = &self.prune {
            let (indices, values) = pairs.into_iter().unzip();
            let kept = prune.apply(SparseVector { indices, values });
            pairs = kept.indices.into_iter().zip(kept.values).collect();
        }
        pairs
            .into_iter()
            .filter_map(|(i, w)| match self.quantize {
                Some(f) => {
                    let q = (w as f64 * f).round() as i64;
                    (q != 0).then_some((i, Weight::Int(q)))
                }
                None => Some((i, Weight::Float(w))),
            })
            .collect()
    }
}

/// Elasticsearch field names may not contain `.` (it means an object path): it becomes `_`.
pub fn es_token(token: &str) -> String {
    token.replace('.', "_")
}

/// The lines of one row (Elasticsearch writes two: action and document).
pub fn lines(
    format: Format,
    id: &Value,
    pairs: &[(u32, Weight)],
    token: &dyn Fn(u32) -> String,
    with_tokens: bool,
    es: (&str, Option<&str>),
) -> Vec<Value> {
    match format {
        Format::Anserini => {
            let mut vector = Map::new();
            for &(i, w) in pairs {
                vector.insert(token(i), w.json());
            }
            let id = match id {
                Value::String(s) => Value::String(s.clone()),
                other => Value::String(other.to_string()),
            };
            vec![json!({ "id": id, "contents": "", "vector": vector })]
        }
        Format::Qdrant => vec![json!({
            "id": id,
            "vector": {
                "indices": pairs.iter().map(|p| p.0).collect::<Vec<_>>(),
                "values": pairs.iter().map(|p| p.1.json()).collect::<Vec<_>>(),
            }
        })],
        Format::Elasticsearch => {
            // Distinct tokens can meet after the `.` replacement: keep the larger weight.
            let mut features = Map::new();
            for &(i, w) in pairs {
                let key = es_token(&token(i));
                let keep = match (features.get(&key), w) {
                    (Some(old), Weight::Float(w)) => old.as_f64().is_none_or(|o| (w as f64) > o),
                    (Some(old), Weight::Int(q)) => old.as_i64().is_none_or(|o| q > o),
                    (None, _) => true,
                };
                if keep {
                    features.insert(key, w.json());
                }
            }
            let id = match id {
                Value::String(s) => Value::String(s.clone()),
                other => Value::String(other.to_string()),
            };
            let mut action = json!({ "_id": id });
            if let Some(index) = es.1 {
                action["_index"] = index.into();
            }
            vec![
                json!({ "index": action }),
                json!({ es.0: Value::Object(features) }),
            ]
        }
        Format::Jsonl => {
            let mut line = json!({
                "id": id,
                "indices": pairs.iter().map(|p| p.0).collect::<Vec<_>>(),
                "values": pairs.iter().map(|p| p.1.json()).collect::<Vec<_>>(),
            });
            if with_tokens {
                line["tokens"] = pairs.iter().map(|p| token(p.0)).collect::<Vec<_>>().into();
            }
            vec![line]
        }
    }
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
    fn filters_apply_in_order_and_drop_zero_impacts() {
        let x = v(&[(5, 0.5), (2, 2.0), (9, 0.004), (7, 2.0), (1, 1.0)]);
        let f = VectorFilter {
            top_k: Some(3),
            min_weight: None,
            prune: None,
            quantize: Some(100.0),
        };
        // Top 3 by weight (ties by id): 2, 7, 1; ids ascending; quantized.
        assert_eq!(
            f.apply(&x),
            vec![
                (1, Weight::Int(100)),
                (2, Weight::Int(200)),
                (7, Weight::Int(200))
            ]
        );
        let f = VectorFilter {
            top_k: None,
            min_weight: Some(0.5),
            prune: None,
            quantize: None,
        };
        assert_eq!(f.apply(&x).len(), 4);
        let f = VectorFilter {
            quantize: Some(100.0),
            ..Default::default()
        };
        // 0.004 × 100 rounds to 0: dropped.
        assert!(f.apply(&x).iter().all(|p| p.0 != 9));
    }

    #[test]
    fn elasticsearch_keys_have_no_dots_and_merge_by_max() {
        let pairs = [(1, Weight::Float(0.5)), (2, Weight::Float(0.9))];
        let token = |i: u32| {
            if i == 1 {
                "a.b".to_string()
            } else {
                "a_b".to_string()
            }
        };
        let out = lines(
            Format::Elasticsearch,
            &json!(7),
            &pairs,
            &token,
            false,
            ("f", Some("ix")),
        );
        assert_eq!(out[0], json!({"index": {"_id": "7", "_index": "ix"}}));
        assert_eq!(out[1], json!({"f": {"a_b": 0.9f32}}));
    }
}
