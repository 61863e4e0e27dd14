//! The metrics of sentence-transformers' `InformationRetrievalEvaluator` (binary relevance)
//! and the sparsity statistics of `SparseInformationRetrievalEvaluator`, with the same
//! definitions and names (`dot_` prefix, no dataset prefix).

use std::collections::{BTreeMap, HashSet};

use crate::encode::SparseVector;

/// Cut-offs as the reference evaluator's defaults.
pub const ACCURACY_AT: [usize; 4] = [1, 3, 5, 10];
/// Precision and recall cut-offs.
pub const PRECISION_RECALL_AT: [usize; 4] = [1, 3, 5, 10];
/// MRR cut-off.
pub const MRR_AT: usize = 10;
/// nDCG cut-off.
pub const NDCG_AT: usize = 10;
/// MAP cut-off.
pub const MAP_AT: usize = 100;
/// Documents retrieved per query.
pub const MAX_K: usize = 100;

/// Metric name → value, in a stable order.
pub type IrMetrics = BTreeMap<String, f64>;

/// The key of nDCG@10 in [`IrMetrics`] (the metric training keeps the best model by).
pub const NDCG_AT_10: &str = "dot_ndcg@10";

/// Ranking metrics over queries: `rankings[q]` lists the corpus ids retrieved for query `q`,
/// best first; `relevant[q]` its relevant ids.
pub fn ranking_metrics(rankings: &[Vec<&str>], relevant: &[&HashSet<String>]) -> IrMetrics {
    let n = rankings.len() as f64;
    let mut hits_at = [0f64; 4];
    let mut precision = [0f64; 4];
    let mut recall = [0f64; 4];
    let (mut mrr, mut ndcg, mut map) = (0f64, 0f64, 0f64);
    for (top, rel) in rankings.iter().zip(relevant) {
        let is_rel: Vec<bool> = top.iter().map(|d| rel.contains(*d)).collect();
        for (i, &k) in ACCURACY_AT.iter().enumerate() {
            if is_rel.iter().take(k).any(|&r| r) {
                hits_at[i] += 1.0;
            }
        }
        for (i, &k) in PRECISION_RECALL_AT.iter().enumerate() {
            let correct = is_rel.iter().take(k).filter(|&&r| r).count() as f64;
            precision[i] += correct / k as f64;
            recall[i] += correct / rel.len() as f64;
        }
        if let Some(rank) = is_rel.iter().take(MRR_AT).position(|&r| r) {
            mrr += 1.0 / (rank + 1) as f64;
        }
        let dcg: f64 = is_rel
            .iter()
            .take(NDCG_AT)
            .enumerate()
            .filter(|(_, &r)| r)
            .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
            .sum();
        let ideal: f64 = (0..rel.len().min(NDCG_AT))
            .map(|i| 1.0 / ((i + 2) as f64).log2())
            .sum();
        ndcg += dcg / ideal;
        let (mut correct, mut sum_precisions) = (0f64, 0f64);
        for (rank, &r) in is_rel.iter().take(MAP_AT).enumerate() {
            if r {
                correct += 1.0;
                sum_precisions += correct / (rank + 1) as f64;
            }
        }
        map += sum_precisions / MAP_AT.min(rel.len()) as f64;
    }
    let mut m = IrMetrics::new();
    for (i, k) in ACCURACY_AT.iter().enumerate() {
        m.insert(format!("dot_accuracy@{k}"), hits_at[i] / n);
    }
    for (i, k) in PRECISION_RECALL_AT.iter().enumerate() {
        m.insert(format!("dot_precision@{k}"), precision[i] / n);
        m.insert(format!("dot_recall@{k}"), recall[i] / n);
    }
    m.insert(format!("dot_ndcg@{NDCG_AT}"), ndcg / n);
    m.insert(format!("dot_mrr@{MRR_AT}"), mrr / n);
    m.insert(format!("dot_map@{MAP_AT}"), map / n);
    m
}

/// Non-zero counts per vocabulary dim and vector counts, for sparsity stats and FLOPS.
#[derive(Debug, Clone, Default)]
pub struct SparsityCounts {
    /// Vocabulary size.
    pub dims: usize,
    /// Query vectors seen.
    pub queries: usize,
    /// Document vectors seen.
    pub docs: usize,
    query_nnz: u64,
    doc_nnz: u64,
    query_count: Vec<u64>,
    doc_count: Vec<u64>,
}

impl SparsityCounts {
    /// Counts over `queries` and `docs` in a `dims`-dimensional space.
    pub fn new(dims: usize, queries: &[SparseVector], docs: &[SparseVector]) -> Self {
        let mut s = Self {
            dims,
            query_count: vec![0; dims],
            doc_count: vec![0; dims],
            ..Default::default()
        };
        s.add(queries, docs);
        s
    }

    /// Adds more vectors (datasets of a multi-dataset run).
    pub fn add(&mut self, queries: &[SparseVector], docs: &[SparseVector]) {
        for (vectors, nnz, count, n) in [
            (
                queries,
                &mut self.query_nnz,
                &mut self.query_count,
                &mut self.queries,
            ),
            (docs, &mut self.doc_nnz, &mut self.doc_count, &mut self.docs),
        ] {
            *n += vectors.len();
            for v in vectors {
                *nnz += v.len() as u64;
                for &i in &v.indices {
                    if let Some(c) = count.get_mut(i as usize) {
                        *c += 1;
                    }
                }
            }
        }
    }

    /// Merges another dataset's counts.
    pub fn merge(&mut self, other: &SparsityCounts) {
        self.queries += other.queries;
        self.docs += other.docs;
        self.query_nnz += other.query_nnz;
        self.doc_nnz += other.doc_nnz;
        for (a, b) in self.query_count.iter_mut().zip(&other.query_count) {
            *a += b;
        }
        for (a, b) in self.doc_count.iter_mut().zip(&other.doc_count) {
            *a += b;
        }
    }

    /// `query_active_dims`, `query_sparsity_ratio`, `corpus_active_dims`,
    /// `corpus_sparsity_ratio`, `avg_flops` as the reference computes them (FLOPS: the dot
    /// product of the mean query and mean document non-zero indicator vectors).
    pub fn metrics(&self) -> IrMetrics {
        let mean = |nnz: u64, n: usize| if n == 0 { 0.0 } else { nnz as f64 / n as f64 };
        let (q, d) = (
            mean(self.query_nnz, self.queries),
            mean(self.doc_nnz, self.docs),
        );
        let flops: f64 = if self.queries == 0 || self.docs == 0 {
            0.0
        } else {
            self.query_count
                .iter()
                .zip(&self.doc_count)
                .map(|(&a, &b)| (a as f64 / self.queries as f64) * (b as f64 / self.docs as f64))
                .sum()
        };
        let mut m = IrMetrics::new();
        m.insert("query_active_dims".into(), q);
        m.insert("query_sparsity_ratio".into(), 1.0 - q / self.dims as f64);
        m.insert("corpus_active_dims".into(), d);
        m.insert("corpus_sparsity_ratio".into(), 1.0 - d / self.dims as f64);
        m.insert("avg_flops".into(), flops);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        let rel: HashSet<String> = ["a", "c"].iter().map(|s| s.to_string()).collect();
        let m = ranking_metrics(&[vec!["b", "a", "d", "c"]], &[&rel]);
        assert_eq!(m["dot_accuracy@1"], 0.0);
        assert_eq!(m["dot_accuracy@3"], 1.0);
        assert_eq!(m["dot_precision@3"], 1.0 / 3.0);
        assert_eq!(m["dot_recall@5"], 1.0);
        assert_eq!(m["dot_mrr@10"], 0.5);
        // AP = (1/2 + 2/4) / min(100, 2).
        assert!((m["dot_map@100"] - 0.5).abs() < 1e-12);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!((m["dot_ndcg@10"] - dcg / idcg).abs() < 1e-12);
    }
}
