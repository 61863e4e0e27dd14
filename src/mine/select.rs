//! Which candidates become negatives: sentence-transformers' `mine_hard_negatives` after the
//! similarity search, one query at a time (its tensor code works row by row, so a row's result
//! does not depend on the other rows and queries can be mined in shards).

use super::MineError;
use crate::train::data::SplitMix64;

/// A cross-encoder's scores for (query, document) pairs, in order.
pub type PairScorer<'a> = dyn FnMut(&[(&str, &str)]) -> Result<Vec<f32>, MineError> + 'a;

/// How negatives are picked among the candidates that pass the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// The best-scoring candidates, best first.
    Top,
    /// A uniform sample of the candidates that passed the filters, then sorted by score.
    Random,
}

/// The filters and the pick, as `mine_hard_negatives` takes them (range_max resolved).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Selection {
    /// Candidates ranked above this are skipped.
    pub range_min: usize,
    /// Candidates ranked at or below this are not considered.
    pub range_max: usize,
    /// Candidates scoring above this are dropped.
    pub max_score: Option<f32>,
    /// Candidates scoring below this are dropped.
    pub min_score: Option<f32>,
    /// Dropped when `score + margin > least positive score`.
    pub absolute_margin: Option<f32>,
    /// Dropped when `score > p - |p| * margin`, p the least positive score.
    pub relative_margin: Option<f32>,
    /// Negatives per query.
    pub num_negatives: usize,
    /// How they are picked.
    pub sampling: Sampling,
    /// Keep the positives among the candidates.
    pub include_positives: bool,
    /// Seed of `random` sampling.
    pub seed: u64,
}

/// A candidate document: its corpus position (`None`: the search found fewer documents than
/// asked, ST's index -1) and its score (`-inf`: disqualified).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Corpus position.
    pub doc: Option<u32>,
    /// Score; `f32::NEG_INFINITY` once a filter dropped it.
    pub score: f32,
}

/// Counts of candidates each filter dropped (the statistics ST prints).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Skipped {
    /// By the absolute margin.
    pub absolute_margin: u64,
    /// By the relative margin.
    pub relative_margin: u64,
    /// By max_score.
    pub max_score: u64,
    /// By min_score.
    pub min_score: u64,
}

impl std::ops::AddAssign for Skipped {
    fn add_assign(&mut self, o: Self) {
        self.absolute_margin += o.absolute_margin;
        self.relative_margin += o.relative_margin;
        self.max_score += o.max_score;
        self.min_score += o.min_score;
    }
}

impl Selection {
    /// Whether a cross-encoder rescores the candidates: ST rescores only when a margin or a
    /// score bound is set (otherwise the retriever's scores and order are kept).
    pub fn rescores(&self) -> bool {
        self.absolute_margin.is_some()
            || self.relative_margin.is_some()
            || self.max_score.is_some()
            || self.min_score.is_some()
    }

    /// The `num_negatives` negatives of one query (`-inf` scores: none found there) from its
    /// `candidates` (search order), its positives' corpus positions and their scores.
    /// `query_index` (the query's position among the unique queries) seeds random sampling,
    /// so the result does not depend on how queries are split into shards.
    pub fn negatives(
        &self,
        mut candidates: Vec<Candidate>,
        positives: &[u32],
        positive_scores: &[f32],
        query_index: u64,
        skipped: &mut Skipped,
    ) -> Vec<Candidate> {
        const DROP: f32 = f32::NEG_INFINITY;
        for c in candidates.iter_mut() {
            if c.doc.is_none() || (!self.include_positives && positives.contains(&c.doc.unwrap())) {
                c.score = DROP;
            }
        }
        // The least positive score: with several positives the harder one sets the margin.
        let least = positive_scores
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min);
        let mut drop_if = |counter: &mut u64, test: &dyn Fn(f32) -> bool| {
            for c in candidates.iter_mut() {
                if test(c.score) {
                    c.score = DROP;
                    *counter += 1;
                }
            }
        };
        if let Some(m) = self.absolute_margin {
            drop_if(&mut skipped.absolute_margin, &|s| s + m > least);
        }
        if let Some(m) = self.relative_margin {
            let threshold = least - least.abs() * m;
            drop_if(&mut skipped.relative_margin, &|s| s > threshold);
        }
        if let Some(max) = self.max_score {
            drop_if(&mut skipped.max_score, &|s| s > max);
        }
        if let Some(min) = self.min_score {
            // -inf < min: ST counts the already-dropped too; so do we.
            drop_if(&mut skipped.min_score, &|s| s < min);
        }
        // torch.topk(scores, range_max): best first; equal scores keep search order (the
        // search ranks ties by corpus position).
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| {
            candidates[b]
                .score
                .partial_cmp(&candidates[a].score)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        let window: Vec<Candidate> = order
            .into_iter()
            .take(self.range_max)
            .skip(self.range_min)
            .map(|i| candidates[i])
            .collect();
        match self.sampling {
            Sampling::Top => window.into_iter().take(self.num_negatives).collect(),
            Sampling::Random => {
                let finite = window.iter().filter(|c| c.score != DROP).count();
                let options = finite.max(self.num_negatives).min(window.len());
                let mut rng =
                    SplitMix64::new(self.seed ^ query_index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                // A partial Fisher–Yates shuffle of 0..options: num_negatives distinct picks.
                let mut pool: Vec<usize> = (0..options).collect();
                for i in 0..self.num_negatives.min(options) {
                    let j = i + rng.below((options - i) as u64) as usize;
                    pool.swap(i, j);
                }
                let mut picked: Vec<Candidate> = pool[..self.num_negatives.min(options)]
                    .iter()
                    .map(|&i| window[i])
                    .collect();
                picked.sort_by(|a, b| {
                    b.score
                        .partial_cmp(&a.score)
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                picked
            }
        }
    }
}

/// One query's candidates and positives, with their scores.
#[derive(Debug, Clone)]
pub struct QueryCandidates<'a> {
    /// The query.
    pub query: &'a str,
    /// Its candidates, in search order.
    pub candidates: Vec<Candidate>,
    /// Its positives' texts.
    pub positives: Vec<&'a str>,
    /// Their scores.
    pub positive_scores: Vec<f32>,
}

/// Replaces the candidate and positive scores of `queries` with a cross-encoder's, as ST does
/// before filtering when `cross_encoder` is given: every candidate (the -1 padding excepted,
/// which is disqualified anyway) and every (query, positive) pair is scored. One call for all
/// the queries, so the model sees full batches (a pair's score does not depend on its batch).
pub fn rescore(
    queries: &mut [QueryCandidates<'_>],
    corpus: &[String],
    score: &mut PairScorer<'_>,
) -> Result<(), MineError> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for q in queries.iter() {
        for c in &q.candidates {
            if let Some(doc) = c.doc {
                pairs.push((q.query, corpus[doc as usize].as_str()));
            }
        }
        pairs.extend(q.positives.iter().map(|p| (q.query, *p)));
    }
    let scores = score(&pairs)?;
    if scores.len() != pairs.len() {
        return Err(MineError::Options(format!(
            "the cross-encoder gave {} scores for {} pairs",
            scores.len(),
            pairs.len()
        )));
    }
    let mut next = scores.into_iter();
    for q in queries.iter_mut() {
        for c in q.candidates.iter_mut().filter(|c| c.doc.is_some()) {
            c.score = next.next().expect("counted");
        }
        for s in q.positive_scores.iter_mut() {
            *s = next.next().expect("counted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(sampling: Sampling) -> Selection {
        Selection {
            range_min: 0,
            range_max: 5,
            max_score: None,
            min_score: None,
            absolute_margin: None,
            relative_margin: None,
            num_negatives: 2,
            sampling,
            include_positives: false,
            seed: 7,
        }
    }

    fn cands(scores: &[f32]) -> Vec<Candidate> {
        scores
            .iter()
            .enumerate()
            .map(|(i, &s)| Candidate {
                doc: Some(i as u32),
                score: s,
            })
            .collect()
    }

    #[test]
    fn the_positive_and_margins_drop_candidates_before_the_top_pick() {
        let mut s = selection(Sampling::Top);
        s.relative_margin = Some(0.1);
        let mut skipped = Skipped::default();
        // doc 0 is the positive (score 10): threshold 9, so doc 1 (9.5) goes, 2 and 3 stay.
        let got = s.negatives(
            cands(&[10.0, 9.5, 8.0, 7.0, 1.0]),
            &[0],
            &[10.0],
            0,
            &mut skipped,
        );
        assert_eq!(
            got.iter().map(|c| c.doc).collect::<Vec<_>>(),
            [Some(2), Some(3)]
        );
        assert_eq!(skipped.relative_margin, 1);
    }

    #[test]
    fn random_sampling_is_seeded_sorted_and_avoids_dropped_candidates() {
        let s = selection(Sampling::Random);
        let mut skipped = Skipped::default();
        let scores = [9.0, 8.0, 7.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let a = s.negatives(cands(&scores), &[], &[10.0], 3, &mut skipped);
        let b = s.negatives(cands(&scores), &[], &[10.0], 3, &mut skipped);
        assert_eq!(a, b);
        assert!(a.iter().all(|c| c.score.is_finite()));
        assert!(a[0].score > a[1].score);
        let seen: std::collections::HashSet<_> = (0..40)
            .map(|q| s.negatives(cands(&scores), &[], &[10.0], q, &mut skipped)[0].doc)
            .collect();
        assert!(seen.len() > 1, "different queries sample differently");
    }

    #[test]
    fn rescoring_replaces_candidate_and_positive_scores() {
        let corpus: Vec<String> = ["a", "bb", "ccc"].iter().map(|s| s.to_string()).collect();
        let query = |q, candidates| QueryCandidates {
            query: q,
            candidates,
            positives: vec!["bb"],
            positive_scores: vec![0.0],
        };
        let mut queries = vec![
            query(
                "q",
                vec![
                    Candidate {
                        doc: Some(2),
                        score: 1.0,
                    },
                    Candidate {
                        doc: None,
                        score: 0.0,
                    },
                ],
            ),
            query(
                "qq",
                vec![Candidate {
                    doc: Some(0),
                    score: 1.0,
                }],
            ),
        ];
        let mut by_length = |pairs: &[(&str, &str)]| -> Result<Vec<f32>, MineError> {
            Ok(pairs
                .iter()
                .map(|(q, d)| (q.len() * 10 + d.len()) as f32)
                .collect())
        };
        rescore(&mut queries, &corpus, &mut by_length).unwrap();
        assert_eq!(queries[0].candidates[0].score, 13.0);
        assert_eq!(queries[0].candidates[1].score, 0.0);
        assert_eq!(queries[0].positive_scores, [12.0]);
        assert_eq!(queries[1].candidates[0].score, 21.0);
        assert_eq!(queries[1].positive_scores, [22.0]);
    }
}
