//! Mining one shard of queries: their vectors, the search, the positives' scores, the
//! optional cross-encoder rescoring, the selection and the output rows of the shard.

use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::args::Layout;
use super::data::MiningData;
use super::output::OutputRows;
use super::select::{rescore, Candidate, PairScorer, QueryCandidates, Selection, Skipped};
use super::vectors::{dot, VectorSource};
use super::MineError;
use crate::encode::SparseVector;
use crate::eval::InvertedIndex;
use crate::model::InputKind;

/// What mining one shard needs.
pub(crate) struct Shard<'a> {
    pub(crate) data: &'a MiningData,
    pub(crate) docs: &'a [SparseVector],
    pub(crate) index: &'a InvertedIndex,
    pub(crate) selection: &'a Selection,
    pub(crate) layout: Layout,
    pub(crate) threads: usize,
}

impl Shard<'_> {
    /// The output rows of the unique queries `range`, and how many of them were short of
    /// negatives.
    pub(crate) fn mine(
        &self,
        range: std::ops::Range<usize>,
        queries: &mut VectorSource<'_>,
        cross_encoder: Option<&mut PairScorer<'_>>,
        skipped: &mut Skipped,
    ) -> Result<(OutputRows, usize), MineError> {
        let data = self.data;
        let sel = self.selection;
        let texts: Vec<&str> = data.queries[range.clone()]
            .iter()
            .map(String::as_str)
            .collect();
        let vectors = queries.vectors(&texts, InputKind::Query, "query")?;
        // ST retrieves range_max + max_positives candidates (room for the positives), fewer
        // when the corpus is smaller, padded with index -1.
        let width = sel.range_max + data.max_positives;
        let hits = self.index.search(&vectors, width, self.threads);
        let mut rows = OutputRows::new(
            self.layout.format,
            self.layout.scores,
            sel.num_negatives,
            (data.anchor_column.clone(), data.positive_column.clone()),
        );
        let mut found: Vec<QueryCandidates<'_>> = range
            .clone()
            .enumerate()
            .map(|(k, q)| {
                let mut candidates: Vec<Candidate> = hits[k]
                    .iter()
                    .map(|h| Candidate {
                        doc: Some(h.doc),
                        score: h.score,
                    })
                    .collect();
                candidates.resize(
                    width,
                    Candidate {
                        doc: None,
                        score: f32::NEG_INFINITY,
                    },
                );
                let positives = &data.positives[q];
                QueryCandidates {
                    query: &data.queries[q],
                    candidates,
                    positives: positives
                        .iter()
                        .map(|&p| data.corpus[p as usize].as_str())
                        .collect(),
                    positive_scores: positives
                        .iter()
                        .map(|&p| dot(&vectors[k], &self.docs[p as usize]))
                        .collect(),
                }
            })
            .collect();
        if let Some(score) = cross_encoder {
            if sel.rescores() {
                rescore(&mut found, &data.corpus, score)?;
            }
        }
        let mut short = 0;
        for (q, found) in range.zip(found) {
            let QueryCandidates {
                candidates,
                positive_scores,
                ..
            } = found;
            let positives = &data.positives[q];
            let negatives =
                sel.negatives(candidates, positives, &positive_scores, q as u64, skipped);
            if negatives.iter().any(|n| n.score == f32::NEG_INFINITY) {
                short += 1;
            }
            let text = |c: &Candidate| data.corpus[c.doc.expect("found") as usize].as_str();
            let negatives: Vec<(&str, f32)> = negatives
                .iter()
                .map(|c| match c.doc {
                    Some(_) if c.score != f32::NEG_INFINITY => (text(c), c.score),
                    _ => ("", f32::NEG_INFINITY),
                })
                .collect();
            let positives: Vec<(&str, f32)> = positives
                .iter()
                .zip(&positive_scores)
                .map(|(&p, &s)| (data.corpus[p as usize].as_str(), s))
                .collect();
            rows.add(&data.queries[q], &positives, &negatives);
        }
        Ok((rows, short))
    }
}

/// One part's parquet bytes.
pub(crate) fn parquet_bytes(rows: &OutputRows) -> Result<Vec<u8>, String> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let batch = rows.batch().map_err(|e| e.to_string())?;
    let mut writer =
        ArrowWriter::try_new(Vec::new(), rows.schema(), Some(props)).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.into_inner().map_err(|e| e.to_string())
}
