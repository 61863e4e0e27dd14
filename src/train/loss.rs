//! SpladeLoss as sentence-transformers 6.2 defines it: a ranking or distillation loss on the
//! column embeddings plus λ_q·FLOPS(queries) + λ_d·FLOPS(documents), where
//! FLOPS(x) = Σ_vocab (mean over rows of x)² (Paria et al., "Minimizing FLOPs to learn efficient
//! sparse representations", arXiv:2004.05665).
//!
//! The wrapped losses (`sentence_transformers.sparse_encoder.losses`):
//! - SparseMultipleNegativesRankingLoss: dot product, scale 1, each query against every
//!   positive and hard negative of the batch, cross-entropy.
//! - SparseMarginMSELoss: MSE between the student's margins q·p − q·n_k and the gold margins
//!   (labels: one margin per negative, or the teacher's [pos, neg_1, ...] scores).
//! - SparseDistillKLDivLoss: KL(teacher ‖ student) over the candidates [pos, neg_1, ...] with
//!   softmax temperatures, batch-mean, times the student temperature².
//!
//! With several processes every column is gathered from all ranks first, and the regularizers
//! see all gathered rows: N ranks × b rows give exactly the loss of one process with N·b rows.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Kind, TchError, Tensor};

use super::TrainError;

/// The loss SpladeLoss wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LossKind {
    /// SparseMultipleNegativesRankingLoss (in-batch and hard negatives).
    #[default]
    Mnrl,
    /// SparseMarginMSELoss (gold margins or teacher scores as labels).
    MarginMse,
    /// SparseDistillKLDivLoss (teacher scores as labels).
    DistillKl,
}

impl LossKind {
    /// The name sparq writes (`--loss` value).
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Mnrl => "mnrl",
            LossKind::MarginMse => "margin-mse",
            LossKind::DistillKl => "distill-kl",
        }
    }

    /// The sentence-transformers class.
    pub fn class_name(self) -> &'static str {
        match self {
            LossKind::Mnrl => "SparseMultipleNegativesRankingLoss",
            LossKind::MarginMse => "SparseMarginMSELoss",
            LossKind::DistillKl => "SparseDistillKLDivLoss",
        }
    }
}

impl FromStr for LossKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let key = s.to_ascii_lowercase().replace(['-', '_'], "");
        let kind = match key.as_str() {
            "mnrl" | "sparsemultiplenegativesrankingloss" | "multiplenegativesrankingloss" => {
                LossKind::Mnrl
            }
            "marginmse" | "sparsemarginmseloss" | "marginmseloss" => LossKind::MarginMse,
            "distillkl" | "kl" | "sparsedistillkldivloss" | "distillkldivloss" => {
                LossKind::DistillKl
            }
            _ => {
                return Err(format!(
                    "unknown loss `{s}`: use mnrl, margin-mse or distill-kl (or the \
                     sentence-transformers class names SparseMultipleNegativesRankingLoss, \
                     SparseMarginMSELoss, SparseDistillKLDivLoss)"
                ))
            }
        };
        Ok(kind)
    }
}

impl TryFrom<String> for LossKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<LossKind> for String {
    fn from(k: LossKind) -> String {
        k.name().to_string()
    }
}

/// SpladeLoss's settings (everything but the λ schedule). Checkpoints store it: a run resumes
/// only with the same loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossSpec {
    /// The wrapped loss.
    pub kind: LossKind,
    /// Softmax temperature of the student's scores (distill-kl).
    pub student_temperature: f64,
    /// Softmax temperature of the teacher's scores (distill-kl).
    pub teacher_temperature: f64,
    /// Whether the query regularizer is on (sentence-transformers: query weight not None).
    pub query_regularizer: bool,
    /// FLOPS counts only query rows with more active dimensions than this.
    pub query_threshold: Option<u64>,
    /// FLOPS counts only document rows with more active dimensions than this.
    pub document_threshold: Option<u64>,
    /// Every column is a document for the regularizer (no query term).
    pub document_regularizer_only: bool,
}

impl Default for LossSpec {
    fn default() -> Self {
        Self {
            kind: LossKind::Mnrl,
            student_temperature: 2.0,
            teacher_temperature: 2.0,
            query_regularizer: true,
            query_threshold: None,
            document_threshold: None,
            document_regularizer_only: false,
        }
    }
}

impl LossSpec {
    /// Checks that `text_columns` columns and a label column of `label_width` values per row
    /// (None: no label column) suit this loss; the error says what the data needs.
    pub fn check_columns(
        &self,
        text_columns: usize,
        label_width: Option<usize>,
    ) -> Result<(), String> {
        let negatives = text_columns.saturating_sub(2);
        let name = self.kind.class_name();
        let label_names = "a float or list<float> column named label, labels, score or scores, \
                           or pick one with --label-column";
        match self.kind {
            LossKind::Mnrl => Ok(()),
            LossKind::MarginMse => {
                if negatives == 0 {
                    return Err(format!(
                        "{name} needs (query, positive, negative[, ...]) text columns, found {text_columns}"
                    ));
                }
                match label_width {
                    None => Err(format!(
                        "{name} needs gold margins as labels: {label_names}"
                    )),
                    Some(w) if w == negatives || w == negatives + 1 => Ok(()),
                    Some(w) => Err(format!(
                        "{name}: the labels hold {w} value(s) per row; with {negatives} negative \
                         column(s) give {negatives} margin(s) (positive − negative score) or \
                         {} teacher scores [positive, negative_1, ...]",
                        negatives + 1
                    )),
                }
            }
            LossKind::DistillKl => {
                if negatives == 0 {
                    return Err(format!(
                        "{name} needs at least 3 text columns (query, positive, negative_1, ...): \
                         a softmax over one candidate is constant"
                    ));
                }
                match label_width {
                    None => Err(format!(
                        "{name} needs teacher scores as labels: {label_names}"
                    )),
                    Some(w) if w == negatives + 1 => Ok(()),
                    Some(w) => Err(format!(
                        "{name}: the labels hold {w} value(s) per row; give {} teacher scores \
                         [positive, negative_1, ...], one per candidate column",
                        negatives + 1
                    )),
                }
            }
        }
    }
}

/// The loss and its parts (the regularizer terms already multiplied by their λ, as the
/// reference reports them).
pub struct LossParts {
    /// base + query term + document term.
    pub total: Tensor,
    /// The wrapped loss.
    pub base: Tensor,
    /// λ_q · FLOPS(queries); None when the query regularizer is off.
    pub query_regularizer: Option<Tensor>,
    /// λ_d · FLOPS(documents).
    pub document_regularizer: Tensor,
}

/// FLOPS regularizer: `Σ_vocab (mean_rows x)²`, rows with `threshold` or fewer active
/// dimensions zeroed first (still counted in the mean, as sentence-transformers' FlopsLoss).
pub fn flops(x: &Tensor, threshold: Option<u64>) -> Result<Tensor, tch::TchError> {
    let x = match threshold {
        None => x.shallow_clone(),
        Some(t) => {
            let active = x
                .f_ne(0.0)?
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
            let keep = active.f_gt(t as f64)?.f_to_kind(x.kind())?.f_unsqueeze(1)?;
            x.f_mul(&keep)?
        }
    };
    x.f_mean_dim([0i64].as_slice(), false, Kind::Float)?
        .f_square()?
        .f_sum(Kind::Float)
}

/// SpladeLoss of the column embeddings `columns` (queries, positives, then each hard-negative
/// column, each `[rows, vocab]`) with `labels` `[local rows, width]` for the distillation losses.
/// `local` = (offset, count) names this process's rows when the columns were gathered from
/// several processes (None: all rows are local). λ_q and λ_d weigh the regularizers.
pub fn splade_loss(
    columns: &[Tensor],
    labels: Option<&Tensor>,
    spec: &LossSpec,
    lambda_query: f64,
    lambda_document: f64,
    local: Option<(i64, i64)>,
) -> Result<LossParts, TrainError> {
    if columns.len() < 2 {
        return Err(TrainError::Data(format!(
            "SpladeLoss needs at least 2 columns (query, positive), found {}",
            columns.len()
        )));
    }
    let rows = columns[0].size()[0];
    let (offset, count) = local.unwrap_or((0, rows));
    let mine = |t: &Tensor| t.f_narrow(0, offset, count);
    let base = match spec.kind {
        LossKind::Mnrl => ranking(&mine(&columns[0])?, &columns[1..], offset)?,
        LossKind::MarginMse | LossKind::DistillKl => {
            let labels = labels.ok_or_else(|| {
                TrainError::Data(format!("{} needs labels", spec.kind.class_name()))
            })?;
            let local_columns = columns.iter().map(mine).collect::<Result<Vec<_>, _>>()?;
            if spec.kind == LossKind::MarginMse {
                margin_mse(&local_columns, labels)?
            } else {
                distill_kl(&local_columns, labels, spec)?
            }
        }
    };
    let documents = if spec.document_regularizer_only {
        Tensor::f_cat(columns, 0)?
    } else {
        Tensor::f_cat(&columns[1..], 0)?
    };
    let document_regularizer =
        flops(&documents, spec.document_threshold)?.f_mul_scalar(lambda_document)?;
    let query_regularizer = if spec.query_regularizer && !spec.document_regularizer_only {
        Some(flops(&columns[0], spec.query_threshold)?.f_mul_scalar(lambda_query)?)
    } else {
        None
    };
    let mut total = base.f_add(&document_regularizer)?;
    if let Some(q) = &query_regularizer {
        total = total.f_add(q)?;
    }
    Ok(LossParts {
        total,
        base,
        query_regularizer,
        document_regularizer,
    })
}

/// SparseMultipleNegativesRankingLoss: `queries` are rows `offset..` of the batch whose
/// positives are `documents[0]`.
fn ranking(queries: &Tensor, documents: &[Tensor], offset: i64) -> Result<Tensor, TchError> {
    let all_docs = Tensor::f_cat(documents, 0)?;
    let rows = queries.size()[0];
    let scores = queries.f_matmul(&all_docs.f_transpose(0, 1)?)?;
    let labels = Tensor::f_arange_start(offset, offset + rows, (Kind::Int64, queries.device()))?;
    // -(s_ii - logsumexp_j s_ij), averaged: the reference's own formulation.
    let positive = scores
        .f_gather(1, &labels.f_unsqueeze(1)?, false)?
        .f_squeeze_dim(1)?;
    let log_z = scores.f_logsumexp([1i64].as_slice(), false)?;
    positive.f_sub(&log_z)?.f_mean(Kind::Float)?.f_neg()
}

/// `[rows, candidates]`: q·c for each candidate column (pairwise dot products).
fn candidate_scores(columns: &[Tensor]) -> Result<Tensor, TchError> {
    let scores = columns[1..]
        .iter()
        .map(|c| {
            columns[0]
                .f_mul(c)?
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Tensor::f_stack(&scores, 1)
}

/// SparseMarginMSELoss (sentence-transformers' MarginMSELoss with pairwise dot scores).
fn margin_mse(columns: &[Tensor], labels: &Tensor) -> Result<Tensor, TrainError> {
    let scores = candidate_scores(columns)?;
    let negatives = columns.len() as i64 - 2;
    // Margins q·p − q·n_k.
    let margins = scores
        .f_narrow(1, 0, 1)?
        .f_sub(&scores.f_narrow(1, 1, negatives)?)?;
    let labels = labels.f_detach()?;
    let gold = match labels.size()[1] {
        w if w == negatives + 1 => labels
            .f_narrow(1, 0, 1)?
            .f_sub(&labels.f_narrow(1, 1, negatives)?)?,
        w if w == negatives => labels,
        w => {
            return Err(TrainError::Data(format!(
                "SparseMarginMSELoss: labels of width {w} for {negatives} negative column(s)"
            )))
        }
    };
    Ok(margins.f_sub(&gold)?.f_square()?.f_mean(Kind::Float)?)
}

/// SparseDistillKLDivLoss (sentence-transformers' DistillKLDivLoss with pairwise dot scores):
/// KL(softmax(teacher / T_t) ‖ softmax(student / T_s)), batch-mean, times T_s².
fn distill_kl(columns: &[Tensor], labels: &Tensor, spec: &LossSpec) -> Result<Tensor, TrainError> {
    let ways = columns.len() as i64 - 1;
    if labels.size()[1] != ways {
        return Err(TrainError::Data(format!(
            "SparseDistillKLDivLoss: labels of width {} for {ways} candidate column(s)",
            labels.size()[1]
        )));
    }
    let rows = columns[0].size()[0] as f64;
    let student = candidate_scores(columns)?
        .f_div_scalar(spec.student_temperature)?
        .f_log_softmax(1, Kind::Float)?;
    let teacher = labels
        .f_detach()?
        .f_div_scalar(spec.teacher_temperature)?
        .f_softmax(1, Kind::Float)?;
    // nn.KLDivLoss(reduction="batchmean"): Σ t·(log t − s) / rows, with 0·log 0 = 0.
    let pointwise = teacher
        .f_xlogy(&teacher)?
        .f_sub(&teacher.f_mul(&student)?)?;
    Ok(pointwise
        .f_sum(Kind::Float)?
        .f_div_scalar(rows)?
        .f_mul_scalar(spec.student_temperature * spec.student_temperature)?)
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
