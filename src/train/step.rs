//! One training step's forward and backward pass: the column embeddings, gathered from every
//! rank when there are several (sentence-transformers' `gather_across_devices` /
//! `all_gather_with_grad`), SpladeLoss on them, and the gradients back into the parameters,
//! optionally with gradient caching (sentence-transformers' `CachedSpladeLoss`, Gao et al.,
//! "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", arXiv:2101.06983).
//!
//! With gathering or caching the loss runs on detached embedding leaves: its gradient with
//! respect to them is summed over ranks (so each rank's rows receive the contributions of every
//! rank's loss, as all_gather_with_grad's backward does), then pushed through the encoder — in
//! one pass, or mini-batch by mini-batch re-run with the dropout seed of the first pass.

use tch::{Kind, Tensor};

use super::collective::Collective;
use super::loss::{splade_loss, LossSpec};
use super::model::TrainModel;
use super::TrainError;

/// One batch of one process: texts by column (queries, positives, negatives...) and the label
/// rows `[rows, width]` when the data has a label column.
pub struct Batch<'a> {
    /// Texts by column.
    pub columns: Vec<Vec<&'a str>>,
    /// Labels (f32, on the model's device).
    pub labels: Option<Tensor>,
}

/// How a step computes its loss.
pub struct StepOptions<'a> {
    /// SpladeLoss's settings.
    pub spec: &'a LossSpec,
    /// λ_q at this step.
    pub lambda_query: f64,
    /// λ_d at this step.
    pub lambda_document: f64,
    /// Gradient caching: rows per forward pass (None: the whole batch at once).
    pub mini_batch: Option<usize>,
    /// Seed of the dropout masks of this step on this rank.
    pub seed: u64,
}

/// Per-step numbers for the log (over all ranks: what one process with the merged batch
/// computes).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    /// SpladeLoss.
    pub total: f64,
    /// The wrapped loss.
    pub base: f64,
    /// λ_q · FLOPS(queries) (0 when off).
    pub query_regularizer: f64,
    /// λ_d · FLOPS(documents).
    pub document_regularizer: f64,
    /// Mean non-zero dimensions of the queries.
    pub query_active: f64,
    /// Mean non-zero dimensions of the documents.
    pub document_active: f64,
}

/// Forward and backward pass of one batch: adds the gradient of the SpladeLoss to every
/// parameter's `.grad` (zero them first). With `ranks`, the loss is the one of all ranks'
/// batches merged (each rank's gradient is its share: average the gradients over ranks).
pub fn forward_backward(
    model: &TrainModel,
    batch: &Batch,
    options: &StepOptions,
    mut ranks: Option<&mut Collective>,
) -> Result<StepStats, TrainError> {
    let rows = batch.columns[0].len();
    let doc_texts: Vec<&str> = batch.columns[1..].iter().flatten().copied().collect();
    // Queries in one forward pass, every document column in another (as sentence-transformers
    // merges the columns that preprocess alike).
    let passes = [batch.columns[0].clone(), doc_texts];
    let world = ranks.as_ref().map_or(1, |c| c.world());
    let rank = ranks.as_ref().map_or(0, |c| c.rank());
    let loss_of = |columns: &[Tensor], local| {
        splade_loss(
            columns,
            batch.labels.as_ref(),
            options.spec,
            options.lambda_query,
            options.lambda_document,
            local,
        )
    };

    if options.mini_batch.is_none() && world == 1 {
        tch::manual_seed(options.seed as i64);
        let outputs = passes
            .iter()
            .enumerate()
            .map(|(p, texts)| model.forward_route(texts, model.pass_route(p)))
            .collect::<Result<Vec<_>, _>>()?;
        let columns = split_columns(&outputs, rows)?;
        let parts = loss_of(&columns, None)?;
        parts.total.backward();
        return stats(&parts, &outputs, None);
    }

    // 1. Embeddings: with their graph (one pass), or detached, mini-batch by mini-batch.
    let mut graphs = Vec::new();
    let mut embeddings = Vec::new();
    match options.mini_batch {
        None => {
            tch::manual_seed(options.seed as i64);
            for (p, texts) in passes.iter().enumerate() {
                let out = model.forward_route(texts, model.pass_route(p))?;
                embeddings.push(out.f_detach()?);
                graphs.push(out);
            }
        }
        Some(m) => {
            for (p, texts) in passes.iter().enumerate() {
                let mut chunks = Vec::new();
                for (k, chunk) in texts.chunks(m).enumerate() {
                    tch::manual_seed(chunk_seed(options.seed, p, k));
                    // With gradients on, though they are dropped at once: libtorch's attention
                    // picks its kernel (and so its dropout draws) by grad mode, and the second
                    // pass must draw exactly these masks. The graph lives for one mini-batch.
                    let out = model.forward_route(chunk, model.pass_route(p))?;
                    chunks.push(out.f_detach()?);
                }
                embeddings.push(Tensor::f_cat(&chunks, 0)?);
            }
        }
    }
    let local_columns = split_columns(&embeddings, rows)?;

    // 2. Every rank's rows, in rank order: the columns of the merged batch.
    let gathered = match ranks.as_deref_mut() {
        Some(c) => local_columns
            .iter()
            .map(|t| c.all_gather(t))
            .collect::<Result<Vec<_>, _>>()?,
        None => local_columns.iter().map(Tensor::shallow_clone).collect(),
    };
    let leaves = gathered
        .iter()
        .map(|c| c.detach().set_requires_grad(true))
        .collect::<Vec<_>>();
    let local = (world > 1).then_some(((rank * rows) as i64, rows as i64));

    // 3. The loss and its gradient with respect to the embeddings.
    let parts = loss_of(&leaves, local)?;
    parts.total.backward();
    let mut grads: Vec<Tensor> = leaves
        .iter()
        .map(|l| {
            let g = l.grad();
            if g.defined() {
                g
            } else {
                l.zeros_like() // A column the loss does not read.
            }
        })
        .collect();
    if let Some(c) = ranks.as_deref_mut() {
        // Sum over ranks, then keep this rank's rows: all_gather_with_grad's backward.
        let device = model.device();
        grads = c
            .all_reduce_sum(&grads)?
            .iter()
            .map(|t| {
                t.f_narrow(0, (rank * rows) as i64, rows as i64)?
                    .f_to_device(device)
            })
            .collect::<Result<Vec<_>, tch::TchError>>()?;
    }
    // Per forward pass: the queries' gradient, and the document columns' in pass order.
    let pass_grads = [grads[0].shallow_clone(), Tensor::f_cat(&grads[1..], 0)?];

    // 4. Through the encoder: d/dθ Σ e·g = Jᵀg.
    match options.mini_batch {
        None => {
            let mut surrogate = Tensor::zeros([], (Kind::Float, model.device()));
            for (out, g) in graphs.iter().zip(&pass_grads) {
                surrogate = surrogate.f_add(&out.f_mul(g)?.f_sum(Kind::Float)?)?;
            }
            surrogate.backward();
        }
        Some(m) => {
            for (p, texts) in passes.iter().enumerate() {
                for (k, chunk) in texts.chunks(m).enumerate() {
                    tch::manual_seed(chunk_seed(options.seed, p, k));
                    let out = model.forward_route(chunk, model.pass_route(p))?;
                    let g = pass_grads[p].f_narrow(0, (k * m) as i64, chunk.len() as i64)?;
                    out.f_mul(&g)?.f_sum(Kind::Float)?.backward();
                }
            }
        }
    }
    stats(&parts, &embeddings, ranks)
}

/// The query tensor and each document column of the per-pass outputs.
fn split_columns(outputs: &[Tensor], rows: usize) -> Result<Vec<Tensor>, TrainError> {
    let mut columns = vec![outputs[0].shallow_clone()];
    columns.extend(outputs[1].f_split(rows as i64, 0)?);
    Ok(columns)
}

/// The dropout seed of mini-batch `k` of forward pass `pass` (0: queries, 1: documents) of a
/// cached step seeded `seed`: both passes over a mini-batch draw the same masks from it.
pub fn chunk_seed(seed: u64, pass: usize, k: usize) -> i64 {
    let mut rng = super::data::SplitMix64::new(
        seed ^ (pass as u64).wrapping_mul(0xA24B_AED4_963E_E407) ^ ((k as u64) << 20),
    );
    (rng.next_u64() >> 1) as i64
}

fn stats(
    parts: &super::loss::LossParts,
    outputs: &[Tensor],
    ranks: Option<&mut Collective>,
) -> Result<StepStats, TrainError> {
    let active = |t: &Tensor| -> Result<f64, tch::TchError> {
        t.f_ne(0.0)?
            .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
            .f_mean(Kind::Float)?
            .f_double_value(&[])
    };
    let mut values = [
        parts.total.f_double_value(&[])?,
        parts.base.f_double_value(&[])?,
        match &parts.query_regularizer {
            Some(q) => q.f_double_value(&[])?,
            None => 0.0,
        },
        parts.document_regularizer.f_double_value(&[])?,
        active(&outputs[0])?,
        active(&outputs[1])?,
    ];
    if let Some(c) = ranks {
        // Each rank's loss averages its own rows: the mean over ranks is the merged batch's.
        c.mean_of_hosts(&mut values)?;
    }
    Ok(StepStats {
        total: values[0],
        base: values[1],
        query_regularizer: values[2],
        document_regularizer: values[3],
        query_active: values[4],
        document_active: values[5],
    })
}
