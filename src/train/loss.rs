//! SpladeLoss as sentence-transformers defines it: SparseMultipleNegativesRankingLoss (dot
//! product, scale 1, each query against every positive and hard negative of the batch,
//! cross-entropy) plus λ_q·FLOPS(queries) + λ_d·FLOPS(positives and negatives), where
//! FLOPS(x) = Σ_vocab (mean over rows of x)² (Paria et al., "Minimizing FLOPs to learn efficient
//! sparse representations", arXiv:2004.05665).

use tch::{Kind, Tensor};

/// The loss and its parts (the regularizer terms already multiplied by their λ, as the
/// reference reports them).
pub struct LossParts {
    /// base + query term + document term.
    pub total: Tensor,
    /// The ranking loss.
    pub base: Tensor,
    /// λ_q · FLOPS(queries).
    pub query_regularizer: Tensor,
    /// λ_d · FLOPS(documents).
    pub document_regularizer: Tensor,
}

/// FLOPS regularizer: `Σ_vocab (mean_rows x)²`.
pub fn flops(x: &Tensor) -> Result<Tensor, tch::TchError> {
    x.f_mean_dim([0i64].as_slice(), false, Kind::Float)?
        .f_square()?
        .f_sum(Kind::Float)
}

/// SpladeLoss of `queries` `[b, vocab]` against `documents` (positives first, then each
/// hard-negative column, each `[b, vocab]`). With `offset`, the queries are rows
/// `offset..offset + b` of a larger gathered batch whose positives are the first block of
/// `documents` (sentence-transformers' `gather_across_devices`); the regularizers see only the
/// local rows `local` of queries and documents.
pub fn splade_loss(
    queries: &Tensor,
    documents: &[Tensor],
    scale: f64,
    lambda_query: f64,
    lambda_document: f64,
    local: Option<(i64, i64)>,
) -> Result<LossParts, tch::TchError> {
    let all_docs = Tensor::f_cat(documents, 0)?;
    let (local_queries, offset) = match local {
        Some((offset, rows)) => (queries.f_narrow(0, offset, rows)?, offset),
        None => (queries.shallow_clone(), 0),
    };
    let rows = local_queries.size()[0];
    let scores = local_queries
        .f_matmul(&all_docs.f_transpose(0, 1)?)?
        .f_mul_scalar(scale)?;
    let labels = Tensor::f_arange_start(offset, offset + rows, (Kind::Int64, queries.device()))?;
    // -(s_ii - logsumexp_j s_ij), averaged: the reference's own formulation.
    let positive = scores
        .f_gather(1, &labels.f_unsqueeze(1)?, false)?
        .f_squeeze_dim(1)?;
    let log_z = scores.f_logsumexp([1i64].as_slice(), false)?;
    let base = positive.f_sub(&log_z)?.f_mean(Kind::Float)?.f_neg()?;
    let (reg_queries, reg_docs) = match local {
        Some((offset, rows)) => (
            local_queries.shallow_clone(),
            Tensor::f_cat(
                &documents
                    .iter()
                    .map(|d| d.f_narrow(0, offset, rows))
                    .collect::<Result<Vec<_>, _>>()?,
                0,
            )?,
        ),
        None => (queries.shallow_clone(), all_docs),
    };
    let query_regularizer = flops(&reg_queries)?.f_mul_scalar(lambda_query)?;
    let document_regularizer = flops(&reg_docs)?.f_mul_scalar(lambda_document)?;
    let total = base
        .f_add(&query_regularizer)?
        .f_add(&document_regularizer)?;
    Ok(LossParts {
        total,
        base,
        query_regularizer,
        document_regularizer,
    })
}

/// λ at `step` (0-based, the step about to run): quadratic ramp from 0 over the first
/// `warmup` steps, as sentence-transformers' `SpladeRegularizerWeightSchedulerCallback`
/// (warm-up = ⌊total/3⌋, at least 1).
pub fn lambda_at(max: f64, step: u64, total_steps: u64) -> f64 {
    let warmup = (total_steps / 3).max(1);
    if step >= warmup {
        max
    } else {
        let r = step as f64 / warmup as f64;
        max * r * r
    }
}
