//! Long documents as windows (`--long-docs window`): a text longer than the model's maximum
//! length is cut into windows of that length, each window is encoded on its own, and the
//! window vectors are max-pooled into one vector per document.
//!
//! The windows are Hugging Face tokenizers' overflowing tokens: `tokenizer(text,
//! max_length=L, truncation=True, stride=S, return_overflowing_tokens=True)` in Python, each
//! window wrapped in the model's special tokens and sharing `S` tokens with the one before.
//! SPLADE pools a sequence by the maximum over its tokens, so the elementwise maximum over the
//! windows is what one pass over the whole text would give if attention reached that far.
//! `max_active_dims` applies to the pooled vector, not to each window.

use crate::types::SparseVector;

/// How texts longer than the model's maximum length are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LongDocs {
    /// Cut at the maximum length (sentence-transformers' behaviour).
    #[default]
    Truncate,
    /// Every window of the maximum length, `stride` tokens shared by consecutive windows,
    /// max-pooled into one vector.
    Window {
        /// Tokens each window repeats from the one before.
        stride: usize,
    },
}

impl LongDocs {
    /// Builds the setting from `--long-docs` and `--window-stride`.
    pub fn new(mode: LongDocsMode, stride: usize) -> Self {
        match mode {
            LongDocsMode::Truncate => LongDocs::Truncate,
            LongDocsMode::Window => LongDocs::Window { stride },
        }
    }

    /// The stride windows are cut with, if texts are windowed.
    pub fn stride(self) -> Option<usize> {
        match self {
            LongDocs::Truncate => None,
            LongDocs::Window { stride } => Some(stride),
        }
    }
}

/// The value of `--long-docs`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LongDocsMode {
    /// Keep the first window only (the reference's behaviour).
    #[default]
    Truncate,
    /// Encode every window and keep the elementwise maximum.
    Window,
}

impl std::fmt::Display for LongDocsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LongDocsMode::Truncate => "truncate",
            LongDocsMode::Window => "window",
        })
    }
}

/// The top-k windows are encoded with: none (every weight is kept until a text's windows are
/// pooled, then the pooled vector keeps its top-k).
pub const KEEP_ALL: Option<usize> = Some(usize::MAX);

/// The elementwise maximum of sparse vectors (indices ascending in each, and in the result).
pub fn max_pool(vectors: &[SparseVector]) -> SparseVector {
    match vectors {
        [] => SparseVector::default(),
        [one] => one.clone(),
        _ => {
            let mut pairs: Vec<(u32, f32)> = vectors
                .iter()
                .flat_map(|v| v.indices.iter().copied().zip(v.values.iter().copied()))
                .collect();
            pairs.sort_unstable_by_key(|&(id, _)| id);
            let mut out = SparseVector::default();
            for (id, value) in pairs {
                match out.indices.last() {
                    Some(&last) if last == id => {
                        let slot = out.values.last_mut().expect("aligned with indices");
                        // NaN stays NaN (and is refused later), never hidden by a maximum.
                        if value > *slot || value.is_nan() {
                            *slot = value;
                        }
                    }
                    _ => {
                        out.indices.push(id);
                        out.values.push(value);
                    }
                }
            }
            out
        }
    }
}

/// [`max_pool`] of owned vectors: a single vector is returned as it is, not copied.
pub fn max_pool_owned(mut vectors: Vec<SparseVector>) -> SparseVector {
    if vectors.len() == 1 {
        return vectors.pop().unwrap_or_default();
    }
    max_pool(&vectors)
}

/// Keeps the `k` largest weights of `v` (by absolute value, as the device's top-k does),
/// indices ascending.
pub fn top_k(v: SparseVector, k: usize) -> SparseVector {
    if v.len() <= k {
        return v;
    }
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_unstable_by(|&a, &b| v.values[b].abs().total_cmp(&v.values[a].abs()));
    order.truncate(k);
    order.sort_unstable();
    SparseVector {
        indices: order.iter().map(|&i| v.indices[i]).collect(),
        values: order.iter().map(|&i| v.values[i]).collect(),
    }
}

/// Vectors of windows (in order, `counts[d]` of them for text `d`) pooled per text, each kept
/// to its `k` largest weights if `k` is set.
pub fn pool_per_text(
    windows: Vec<SparseVector>,
    counts: &[usize],
    k: Option<usize>,
) -> Vec<SparseVector> {
    let mut out = Vec::with_capacity(counts.len());
    let mut start = 0;
    for &n in counts {
        let pooled = max_pool(&windows[start..start + n]);
        start += n;
        out.push(match k {
            Some(k) => top_k(pooled, k),
            None => pooled,
        });
    }
    out
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
    fn max_pool_takes_the_elementwise_maximum_over_the_union_of_dims() {
        let a = v(&[(1, 0.5), (4, 2.0), (9, 1.0)]);
        let b = v(&[(0, 3.0), (4, 1.0), (9, 1.5), (12, 0.25)]);
        assert_eq!(
            max_pool(&[a.clone(), b]),
            v(&[(0, 3.0), (1, 0.5), (4, 2.0), (9, 1.5), (12, 0.25)])
        );
        assert_eq!(max_pool(std::slice::from_ref(&a)), a);
        assert_eq!(max_pool(&[]), SparseVector::default());
    }

    #[test]
    fn a_nan_in_any_window_survives_pooling() {
        let pooled = max_pool(&[v(&[(3, 1.0)]), v(&[(3, f32::NAN)]), v(&[(3, 2.0)])]);
        assert!(pooled.values[0].is_nan());
    }

    #[test]
    fn top_k_keeps_the_largest_in_id_order() {
        let x = v(&[(1, 0.5), (4, 2.0), (9, 1.0), (12, 3.0)]);
        assert_eq!(top_k(x.clone(), 2), v(&[(4, 2.0), (12, 3.0)]));
        assert_eq!(top_k(x.clone(), 10), x);
    }

    #[test]
    fn windows_pool_per_text_in_order() {
        let windows = vec![v(&[(1, 1.0)]), v(&[(1, 2.0), (5, 1.0)]), v(&[(7, 4.0)])];
        let out = pool_per_text(windows, &[2, 0, 1], Some(1));
        assert_eq!(
            out,
            vec![v(&[(1, 2.0)]), SparseVector::default(), v(&[(7, 4.0)])]
        );
    }
}
