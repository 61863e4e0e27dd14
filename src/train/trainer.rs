//! The training loop: data order, forward, SpladeLoss, gradient averaging across processes,
//! clipping, AdamW, schedules, logging, evaluation and checkpoints.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use super::args::{TrainArgs, TrainConfig};
use super::checkpoint::{restore, Output, TrainerState};
use super::collective::Collective;
use super::data::{epoch_batches, read_pairs, Cursor};
use super::dist::{launch, RankEnv};
use super::events::{StepLog, TrainEvent, TrainSummary};
use super::host::host_vec;
use super::loss::lambda_at;
use super::model::TrainModel;
use super::optim::{clip_grad_norm, linear_lr, warmup_steps, zero_grad, AdamW, Param};
use super::step::{forward_backward, Batch, StepOptions, StepStats};
use super::TrainError;
use crate::eval::metrics::NDCG_AT_10;
use crate::eval::run::{aggregate, evaluate_model, EvalSettings};
use crate::eval::IrDataset;
use crate::model::{Dtype, EncodeOptions, ResolveDevice};
use crate::types::DeviceSpec;

/// Runs `sparq train`. With `--nproc-per-node N` (and no torchrun variables set) it starts N
/// ranks and waits for them (returns `None`); otherwise it trains as this process's rank.
/// Events (log lines, evaluations) go to `on_event` as they happen, on rank 0.
pub fn run_train(
    args: &TrainArgs,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<Option<TrainSummary>, TrainError> {
    let merged = args.merged()?;
    let rank_env = RankEnv::from_env()?;
    if let Some(n) = merged.nproc_per_node {
        if n > 1 && rank_env.is_none() {
            merged.resolve()?; // Report bad options once, before starting any rank.
            launch(n)?;
            return Ok(None);
        }
    }
    let config = merged.resolve()?;
    let (rank, world) = rank_env.as_ref().map_or((0, 1), |e| (e.rank, e.world));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tch::set_num_threads(merged.threads.unwrap_or((cores / world).max(1)) as i32);
    let device = match config.device {
        DeviceSpec::Cuda(n) if world > 1 => {
            DeviceSpec::Cuda(n + rank_env.as_ref().map_or(0, |e| e.local_rank))
        }
        d => d,
    }
    .resolve()?;
    let mut ranks = Collective::connect(
        merged.collective.unwrap_or_default(),
        rank_env.as_ref(),
        device,
        Duration::from_secs(merged.collective_timeout.unwrap_or(300)),
    )?;
    if let (Some(c), 0) = (&ranks, rank) {
        tracing::info!("{} process(es) exchange tensors with {}", world, c.name());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TrainError::Option(format!("cannot start the I/O runtime: {e}")))?;
    let roots = merged.roots()?;
    roots
        .check_model(&config.model)
        .map_err(|e| TrainError::Option(e.to_string()))?;
    if let Some(beir) = &config.eval_beir {
        roots
            .check_tree(beir, 2)
            .map_err(|e| TrainError::Option(e.to_string()))?;
    }
    let output = Output::new(&config.output, &roots)?.fenced(merged.attempt);
    if rank == 0 {
        output.claim(&runtime)?;
    }
    let data = read_pairs(
        &runtime,
        &config.train_data,
        &config.columns,
        config.label_column.as_deref(),
        &roots,
    )?;
    config
        .loss
        .check_columns(data.columns.len(), data.labels.as_ref().map(|l| l.width))
        .map_err(|e| TrainError::Data(format!("{}: {e}", config.train_data)))?;
    let steps_per_epoch =
        (epoch_batches(&data, config.batch_size, config.seed, 0).len() / world) as u64;
    if steps_per_epoch == 0 {
        return Err(TrainError::Data(format!(
            "{} rows make no full batch of {} per process × {world} process(es) without \
             duplicate texts: lower --batch-size or add data",
            data.len(),
            config.batch_size
        )));
    }
    let total = config.max_steps.unwrap_or(config.epochs * steps_per_epoch);
    let warmup = warmup_steps(total, config.warmup_ratio);

    let mut model = TrainModel::load(&config.model, device, config.dtype == Dtype::Bf16)?;
    let eval_data = match &config.eval_beir {
        Some(dir) => Some(IrDataset::load(dir, "test", false)?),
        None => None,
    };
    model.route_columns(&data.names, &config.router_mapping)?;
    let mut params: Vec<Param> = model.optimizer_params(&config.learning_rate_mapping)?;
    let adamw = AdamW {
        weight_decay: config.weight_decay,
        ..AdamW::default()
    };

    let mut state = TrainerState {
        step: 0,
        total_steps: total,
        cursor: Cursor {
            epoch: 0,
            step_in_epoch: 0,
        },
        lambda_query: 0.0,
        lambda_document: 0.0,
        learning_rate: 0.0,
        world_size: world,
        best: None,
        config: config.clone(),
    };
    let complete = output.complete_steps(&runtime)?;
    let scratch = tempdir("sparq-train")?;
    let mut resumed_from = None;
    if merged.resume.unwrap_or(false) {
        if let Some(&step) = complete.last() {
            let dir = output.fetch(&runtime, step, &scratch)?;
            let saved = restore(&dir, &model, &mut params)?;
            check_compatible(&saved, &config, world, &dir)?;
            state = saved;
            state.config = config.clone();
            state.total_steps = total;
            resumed_from = Some(step);
        } else if rank == 0 {
            tracing::info!(
                "note: no complete checkpoint in {}: starting from step 0",
                config.output
            );
        }
    } else if let Some(&step) = complete.last() {
        return Err(TrainError::Option(format!(
            "{} already holds checkpoint-{step}: pass --resume to continue that run, or choose \
             another --output",
            config.output
        )));
    }
    if state.step >= total {
        return Err(TrainError::Option(format!(
            "the checkpoint is at step {} of {total}: nothing left to train (raise --max-steps or --epochs)",
            state.step
        )));
    }
    if let Some(c) = ranks.as_mut() {
        // Every rank starts from rank 0's parameters.
        c.broadcast_params(&params)?;
    }

    let mut batches = epoch_batches(&data, config.batch_size, config.seed, state.cursor.epoch);
    let started = Instant::now();
    let first_step = state.step;
    let progress = (rank == 0 && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}",
            )
            .expect("valid template"),
        );
        bar.set_position(state.step);
        bar
    });
    let mut window = LogWindow::default();
    while state.step < total {
        if state.cursor.step_in_epoch >= steps_per_epoch {
            state.cursor = Cursor {
                epoch: state.cursor.epoch + 1,
                step_in_epoch: 0,
            };
            batches = epoch_batches(&data, config.batch_size, config.seed, state.cursor.epoch);
        }
        let index = (state.cursor.step_in_epoch as usize) * world + rank;
        let rows = batches.get(index).cloned().ok_or_else(|| {
            TrainError::Data(format!(
                "epoch {} has fewer batches than the first (duplicates differ): lower --epochs",
                state.cursor.epoch
            ))
        })?;
        let step = state.step;
        let lambda_query = lambda_at(config.lambda_query, step, total);
        let lambda_document = lambda_at(config.lambda_document, step, total);
        let lr = linear_lr(config.learning_rate, step, warmup, total);
        // Dropout masks depend only on (seed, step, rank): a resumed run draws the same ones.
        let batch = Batch {
            columns: data
                .columns
                .iter()
                .map(|c| rows.iter().map(|&r| c[r].as_str()).collect())
                .collect(),
            labels: match &data.labels {
                Some(l) => Some(
                    Tensor::from_slice(&l.rows(&rows))
                        .f_view([rows.len() as i64, l.width as i64])?
                        .f_to_device(device)?,
                ),
                None => None,
            },
        };
        let options = StepOptions {
            spec: &config.loss,
            lambda_query,
            lambda_document,
            mini_batch: config.cached_mini_batch_size,
            seed: mix(config.seed, step, rank),
        };
        zero_grad(&mut params);
        let stats = forward_backward(&model, &batch, &options, ranks.as_mut())?;
        if !stats.total.is_finite() {
            return Err(diverged(step + 1, "the loss", stats.total, lr));
        }
        if let Some(c) = ranks.as_mut() {
            c.average_gradients(&params)?;
        }
        let grad_norm = clip_grad_norm(&params, config.max_grad_norm)?;
        // Checked before the update: a non-finite gradient would make every parameter NaN.
        if !grad_norm.is_finite() {
            return Err(diverged(step + 1, "the gradient norm", grad_norm, lr));
        }
        let lr_at = |peak| linear_lr(peak, step, warmup, total);
        adamw.step_scheduled(&mut params, lr_at, config.learning_rate, step + 1)?;
        state.step += 1;
        state.cursor.step_in_epoch += 1;
        state.lambda_query = lambda_query;
        state.lambda_document = lambda_document;
        state.learning_rate = lr;
        window.add(&stats, grad_norm);
        if let Some(bar) = &progress {
            bar.set_position(state.step);
        }
        let log_step = state.step.is_multiple_of(config.logging_steps) || state.step == total;
        let mut replicas = None;
        if let (Some(g), true) = (ranks.as_mut().and_then(Collective::group), log_step) {
            // Data parallelism keeps one model: every rank's parameters must be bit-identical.
            let hash = params_hash(&params)?;
            g.check_same(hash, "parameters after this step")?;
            replicas = Some(format!("{hash:016x}"));
        }
        if rank == 0 && log_step {
            let epoch = state.cursor.epoch as f64
                + state.cursor.step_in_epoch as f64 / steps_per_epoch as f64;
            let elapsed = started.elapsed().as_secs_f64();
            let samples = ((state.step - first_step) as usize * config.batch_size * world) as f64;
            let mut line = window.line(&state, epoch, samples / elapsed.max(1e-9));
            line.replicas_identical = replicas;
            if let Some(bar) = &progress {
                bar.set_message(format!("loss {:.4}", line.loss));
            }
            on_event(&TrainEvent::Step(line));
        }
        let scheduled = config.save_steps > 0 && state.step.is_multiple_of(config.save_steps);
        let eval = config.eval_beir.is_some()
            && state.step < total
            && match config.eval_steps {
                Some(k) => k > 0 && state.step.is_multiple_of(k),
                None => scheduled,
            };
        // With --load-best-at-end every evaluated step is saved, so the best one can be restored.
        let save = (scheduled || (eval && config.load_best_at_end)) && state.step < total;
        if eval && rank == 0 {
            let ndcg = evaluate(&mut model, eval_data.as_ref(), state.step, on_event)?;
            if state.best.is_none_or(|(b, _)| ndcg > b) {
                state.best = Some((ndcg, state.step));
            }
        }
        if save {
            if rank == 0 {
                check_finite(&params, state.step, lr)?;
                output.write_checkpoint(&runtime, &model, &params, &state)?;
                output.prune(&runtime, config.save_total_limit, state.best.map(|b| b.1))?;
            }
            if let Some(g) = ranks.as_mut().and_then(Collective::group) {
                g.barrier()?;
            }
        }
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let samples = ((state.step - first_step) as usize * config.batch_size * world) as f64;
    if rank == 0 {
        if config.eval_beir.is_some() {
            let ndcg = evaluate(&mut model, eval_data.as_ref(), state.step, on_event)?;
            if state.best.is_none_or(|(b, _)| ndcg > b) {
                state.best = Some((ndcg, state.step));
            }
        }
        let final_dir = scratch.join("final");
        match state.best {
            Some((_, best)) if config.load_best_at_end && best != state.step => {
                let dir = output.fetch(&runtime, best, &scratch)?;
                let best_model = TrainModel::load(&config.model, Device::Cpu, false)?;
                restore_weights_only(&dir, &best_model)?;
                best_model.save(&final_dir)?;
            }
            _ => {
                check_finite(&params, state.step, state.learning_rate)?;
                model.save(&final_dir)?
            }
        }
        output.write_final(&runtime, &final_dir)?;
    }
    if let Some(g) = ranks.as_mut().and_then(Collective::group) {
        g.barrier()?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(Some(TrainSummary {
        steps: state.step,
        steps_this_run: state.step - first_step,
        resumed_from,
        samples_per_s: samples / elapsed.max(1e-9),
        output: config.output.clone(),
        best: state.best,
    }))
}

/// Averages of the steps since the last log line (as transformers' Trainer logs the loss).
#[derive(Default)]
struct LogWindow {
    sum: StepStats,
    grad_norm: f64,
    steps: u32,
}

impl LogWindow {
    fn add(&mut self, s: &StepStats, grad_norm: f64) {
        self.sum.total += s.total;
        self.sum.base += s.base;
        self.sum.query_regularizer += s.query_regularizer;
        self.sum.document_regularizer += s.document_regularizer;
        self.sum.query_active += s.query_active;
        self.sum.document_active += s.document_active;
        self.grad_norm = grad_norm;
        self.steps += 1;
    }

    fn line(&mut self, state: &TrainerState, epoch: f64, samples_per_s: f64) -> StepLog {
        let n = self.steps.max(1) as f64;
        let s = std::mem::take(&mut self.sum);
        self.steps = 0;
        StepLog {
            step: state.step,
            epoch: (epoch * 1e4).round() / 1e4,
            loss: s.total / n,
            base_loss: s.base / n,
            query_regularizer_loss: s.query_regularizer / n,
            document_regularizer_loss: s.document_regularizer / n,
            lambda_query: state.lambda_query,
            lambda_document: state.lambda_document,
            learning_rate: state.learning_rate,
            grad_norm: self.grad_norm,
            query_active_dims: s.query_active / n,
            document_active_dims: s.document_active / n,
            samples_per_s: (samples_per_s * 100.0).round() / 100.0,
            replicas_identical: None,
        }
    }
}

/// FNV-1a over the bytes of every parameter, in order.
fn params_hash(params: &[Param]) -> Result<u64, TrainError> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in params {
        for x in host_vec(&p.tensor)? {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    Ok(h)
}

/// Evaluates the model being trained on `--eval-beir`, in process (dropout off, nothing
/// written to disk), as `sparq eval` would the saved model; reports the metrics as an event
/// and returns nDCG@10.
fn evaluate(
    model: &mut TrainModel,
    data: Option<&IrDataset>,
    step: u64,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<f64, TrainError> {
    let Some(data) = data else { return Ok(0.0) };
    let settings = EvalSettings {
        encode: EncodeOptions::default(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Default::default()
    };
    model.set_dropout(false);
    let results = evaluate_model(&*model, std::slice::from_ref(data), &settings);
    model.set_dropout(true);
    let metrics = aggregate(&results?);
    let ndcg = metrics.get(NDCG_AT_10).copied().unwrap_or(0.0);
    on_event(&TrainEvent::Eval {
        eval: metrics,
        step,
    });
    Ok(ndcg)
}

fn restore_weights_only(dir: &std::path::Path, model: &TrainModel) -> Result<(), TrainError> {
    model.load_saved(dir)
}

fn check_compatible(
    saved: &TrainerState,
    config: &TrainConfig,
    world: usize,
    dir: &std::path::Path,
) -> Result<(), TrainError> {
    let mut differ = Vec::new();
    if saved.world_size != world {
        differ.push(format!("processes {} (now {world})", saved.world_size));
    }
    let c = &saved.config;
    if c.batch_size != config.batch_size {
        differ.push(format!(
            "--batch-size {} (now {})",
            c.batch_size, config.batch_size
        ));
    }
    if c.loss != config.loss {
        differ.push(format!(
            "{} (now {})",
            describe(&c.loss),
            describe(&config.loss)
        ));
    }
    if c.seed != config.seed {
        differ.push(format!("--seed {} (now {})", c.seed, config.seed));
    }
    if c.train_data != config.train_data
        || c.columns != config.columns
        || c.label_column != config.label_column
    {
        differ.push(format!(
            "--train-data {} (now {})",
            c.train_data, config.train_data
        ));
    }
    if saved.total_steps != config.max_steps.unwrap_or(saved.total_steps)
        && config.max_steps.is_some()
    {
        // A longer or shorter run changes the schedules; allowed, but said.
        tracing::info!(
"note: the checkpoint planned {} steps, this run {}: the learning-rate and λ schedules follow the new total",
            saved.total_steps,
            config.max_steps.unwrap_or(0)
        );
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            detail: format!(
                "was written with {}: resume with the same settings for the same data order",
                differ.join(", ")
            ),
        })
    }
}

/// A loss's settings as the flags spell them.
fn describe(spec: &super::loss::LossSpec) -> String {
    let mut s = format!("--loss {}", spec.kind.name());
    if spec.kind == super::loss::LossKind::DistillKl {
        s += &format!(
            " --student-temperature {} --teacher-temperature {}",
            spec.student_temperature, spec.teacher_temperature
        );
    }
    if let Some(t) = spec.query_threshold {
        s += &format!(" --query-regularizer-threshold {t}");
    }
    if let Some(t) = spec.document_threshold {
        s += &format!(" --document-regularizer-threshold {t}");
    }
    if spec.document_regularizer_only {
        s += " --use-document-regularizer-only";
    } else if !spec.query_regularizer {
        s += " --lambda-query none";
    }
    s
}

/// The error of a run whose numbers left the finite range.
fn diverged(step: u64, what: &str, value: f64, lr: f64) -> TrainError {
    TrainError::Diverged(format!(
        "step {step}: {what} is {value}: training diverged (learning rate {lr:e} at this step); \
         nothing of this step was saved. Lower --learning-rate (or raise --warmup-ratio), then \
         --resume from the last checkpoint or start again"
    ))
}

/// Refuses to save parameters that are not all finite (an update can overflow even when the
/// loss and gradients were finite).
fn check_finite(params: &[Param], step: u64, lr: f64) -> Result<(), TrainError> {
    for p in params {
        let finite = p.tensor.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
        if !finite {
            return Err(diverged(
                step,
                &format!("parameter `{}`", p.name),
                f64::NAN,
                lr,
            ));
        }
    }
    Ok(())
}

fn mix(seed: u64, step: u64, rank: usize) -> u64 {
    let mut rng = super::data::SplitMix64::new(
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((rank as u64) << 48),
    );
    rng.next_u64() >> 1
}

fn tempdir(prefix: &str) -> Result<PathBuf, TrainError> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| super::files::io_error(&dir, e))?;
    Ok(dir)
}
