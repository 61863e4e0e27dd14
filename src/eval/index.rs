//! Exact top-k retrieval by dot product through an inverted index, multi-threaded over
//! queries, ranked as sentence-transformers ranks: score descending, then corpus id ascending.

use std::cmp::Ordering;

use crate::encode::SparseVector;

/// Postings per vocabulary id: `(document, weight)`.
pub struct InvertedIndex {
    postings: Vec<Vec<(u32, f32)>>,
    docs: usize,
    /// Rank of each document's id in ascending id order (the tie-break).
    id_rank: Vec<u32>,
    /// Documents in ascending id order (fills the ranking with zero scores).
    by_id: Vec<u32>,
}

/// One retrieved document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Index of the document in the corpus.
    pub doc: u32,
    /// Dot product with the query.
    pub score: f32,
}

impl InvertedIndex {
    /// Indexes `docs`, whose ids are `ids` (same order).
    pub fn build(docs: &[SparseVector], ids: &[String]) -> Self {
        let mut by_id: Vec<u32> = (0..docs.len() as u32).collect();
        by_id.sort_by(|&a, &b| ids[a as usize].cmp(&ids[b as usize]));
        Self::with_tie_order(docs, by_id)
    }

    /// Indexes `docs`; equal scores rank by position in `docs` (`sparq mine`'s corpus order).
    pub fn build_in_order(docs: &[SparseVector]) -> Self {
        Self::with_tie_order(docs, (0..docs.len() as u32).collect())
    }

    fn with_tie_order(docs: &[SparseVector], by_id: Vec<u32>) -> Self {
        let dims = docs
            .iter()
            .flat_map(|d| d.indices.last())
            .max()
            .map_or(0, |&m| m as usize + 1);
        let mut postings: Vec<Vec<(u32, f32)>> = vec![Vec::new(); dims];
        for (d, v) in docs.iter().enumerate() {
            for (&i, &w) in v.indices.iter().zip(&v.values) {
                postings[i as usize].push((d as u32, w));
            }
        }
        let mut id_rank = vec![0u32; docs.len()];
        for (rank, &d) in by_id.iter().enumerate() {
            id_rank[d as usize] = rank as u32;
        }
        Self {
            postings,
            docs: docs.len(),
            id_rank,
            by_id,
        }
    }

    /// Number of indexed documents.
    pub fn len(&self) -> usize {
        self.docs
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.docs == 0
    }

    /// The `k` best documents of each query (fewer only when the corpus is smaller), on
    /// `threads` threads. Documents that share no term with the query score 0 and follow
    /// in id order, as in the reference, which ranks the whole corpus.
    pub fn search(&self, queries: &[SparseVector], k: usize, threads: usize) -> Vec<Vec<Hit>> {
        let threads = threads.max(1).min(queries.len().max(1));
        let chunk = queries.len().div_ceil(threads).max(1);
        let mut out: Vec<Vec<Hit>> = Vec::with_capacity(queries.len());
        std::thread::scope(|scope| {
            let handles: Vec<_> = queries
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut scores = vec![0f32; self.docs];
                        let mut touched: Vec<u32> = Vec::new();
                        part.iter()
                            .map(|q| self.search_one(q, k, &mut scores, &mut touched))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                out.extend(h.join().expect("search thread panicked"));
            }
        });
        out
    }

    fn search_one(
        &self,
        q: &SparseVector,
        k: usize,
        scores: &mut [f32],
        touched: &mut Vec<u32>,
    ) -> Vec<Hit> {
        for (&i, &w) in q.indices.iter().zip(&q.values) {
            let Some(list) = self.postings.get(i as usize) else {
                continue;
            };
            for &(d, dw) in list {
                if scores[d as usize] == 0.0 {
                    touched.push(d);
                }
                scores[d as usize] += w * dw;
            }
        }
        let order = |a: &Hit, b: &Hit| -> Ordering {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(Ordering::Equal)
                .then(self.id_rank[a.doc as usize].cmp(&self.id_rank[b.doc as usize]))
        };
        let mut hits: Vec<Hit> = touched
            .iter()
            .map(|&d| Hit {
                doc: d,
                score: scores[d as usize],
            })
            .filter(|h| h.score > 0.0)
            .collect();
        if hits.len() > k {
            hits.select_nth_unstable_by(k, order);
            hits.truncate(k);
        }
        hits.sort_by(order);
        if hits.len() < k {
            let positive: std::collections::HashSet<u32> = hits.iter().map(|h| h.doc).collect();
            let need = k - hits.len();
            hits.extend(
                self.by_id
                    .iter()
                    .filter(|d| !positive.contains(d))
                    .take(need)
                    .map(|&d| Hit { doc: d, score: 0.0 }),
            );
        }
        for &d in touched.iter() {
            scores[d as usize] = 0.0;
        }
        touched.clear();
        hits
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
    fn ranks_by_score_then_id_and_fills_with_zero_scores_in_id_order() {
        let docs = vec![
            v(&[(1, 1.0)]),
            v(&[(2, 1.0)]),
            v(&[(1, 1.0)]),
            v(&[(3, 5.0)]),
            v(&[]),
        ];
        let ids: Vec<String> = ["d", "c", "b", "a", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let index = InvertedIndex::build(&docs, &ids);
        let hits = index.search(&[v(&[(1, 2.0), (2, 1.0)])], 5, 2);
        let order: Vec<&str> = hits[0]
            .iter()
            .map(|h| ids[h.doc as usize].as_str())
            .collect();
        // b and d tie at 2.0 (b first by id), then c at 1.0, then zero scores by id: a, e.
        assert_eq!(order, ["b", "d", "c", "a", "e"]);
        assert_eq!(hits[0][0].score, 2.0);
        let top2 = index.search(&[v(&[(1, 2.0), (2, 1.0)])], 2, 1);
        assert_eq!(
            top2[0].iter().map(|h| h.doc).collect::<Vec<_>>(),
            vec![2, 0]
        );
    }
}
