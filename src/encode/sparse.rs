//! Sparse vectors as sparq stores and prints them.

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
