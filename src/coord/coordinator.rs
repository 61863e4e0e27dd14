//! `sparq encode`: plans shards, leases them to worker processes (one per device), retries
//! what dies or stalls, and writes the manifest and `_SUCCESS` last.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::duplicates::{find_duplicates, DuplicateExample};
use super::plan::{check_columns, shards_of_file, ShardSpec};
use super::pool::{WorkerEvent, WorkerPool};
use super::progress::JobProgress;
use super::protocol::{FromWorker, RowFailure, ShardReport, ToWorker};
use super::JobError;
use crate::encode::job::InputRecord;
use crate::encode::job::{job_devices, job_dtype, EncodeArgs, JobIdentity, WorkerConfig};
use crate::io::input::{list_inputs, read_footer, InputFile, InputReader};
use crate::io::url::Location;
use crate::io::{AllowedRoots, Committer, StoreError, StoreUrl};
use crate::model::{fingerprint, Dtype, ModelLayout, ResolveDevice};

/// Name of the file that records which job made an output.
pub const JOB_FILE: &str = "_sparq_job.json";
/// Name of the manifest.
pub const MANIFEST: &str = "_manifest.json";
/// Name of the success marker.
pub const SUCCESS: &str = "_SUCCESS";

/// A shard that could not be encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardFailure {
    /// Output part it would have been (empty for an unreadable file).
    pub part: String,
    /// Input file.
    pub file: String,
    /// First row and row count.
    pub rows: (u64, u64),
    /// Cause of every attempt.
    pub causes: Vec<String>,
}

/// The one JSON line printed at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EncodeSummary {
    /// Rows encoded by this run.
    pub docs: u64,
    /// Tokens encoded by this run.
    pub tokens: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Rows per second.
    pub docs_per_s: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
    /// Mean non-zero dims per vector.
    pub mean_active_dims: f64,
    /// Rows that could not be encoded (null vectors).
    pub failed_rows: u64,
    /// Shards that could not be encoded.
    pub failed_shards: usize,
    /// Shards committed by earlier runs and skipped.
    pub skipped_shards: usize,
    /// Shards committed by this run.
    pub committed_shards: usize,
    /// Rows with null text (empty vectors).
    pub null_texts: u64,
    /// Rows of the whole output whose id occurred before, in any file or shard.
    pub duplicate_ids: u64,
    /// A few duplicated ids and the parts holding them.
    #[serde(default)]
    pub duplicate_examples: Vec<DuplicateExample>,
    /// Rows with a null id encoded by this run.
    #[serde(default)]
    pub null_ids: u64,
    /// Where the first few are.
    #[serde(default)]
    pub null_id_examples: Vec<String>,
}

#[derive(Serialize)]
struct ManifestPart<'a> {
    name: &'a str,
    rows: u64,
    source: &'a str,
    first_row: u64,
}

/// A planned encode job: what `plan_encode` found and decided, enough to lease its shards
/// (here or through `sparq serve`) and to write the manifest at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodePlan {
    /// Absolute model folder.
    pub model: PathBuf,
    /// Its fingerprint.
    pub model_fingerprint: String,
    /// What the output is made of.
    pub identity: JobIdentity,
    /// Every shard, committed before or not.
    pub shards: Vec<ShardSpec>,
    /// Ids of the shards still to encode.
    pub pending: Vec<usize>,
    /// Input files that could not be read (no shards).
    pub failures: Vec<ShardFailure>,
    /// Settings for workers; `device` and `threads` are filled in per worker.
    pub template: WorkerConfig,
}

/// Plans an encode job: checks the settings, model and inputs, cuts shards, claims (or resumes)
/// the output. `dtype` is the job's precision (see [`job_dtype`]); every local path the job
/// touches must resolve under `roots` (a service's allowed folders; anywhere for the CLI).
pub fn plan_encode(
    args: &EncodeArgs,
    dtype: Dtype,
    roots: &AllowedRoots,
    runtime: &tokio::runtime::Runtime,
) -> Result<EncodePlan, JobError> {
    validate(args)?;
    let model = std::path::absolute(&args.model).unwrap_or(args.model.clone());
    // Validate the model (config, tokenizer, weights present) before any work.
    roots.check_model(&model)?;
    let layout = ModelLayout::read(&model)?;
    crate::model::tokenizer::SpladeTokenizer::load(&layout)?;
    let model_fingerprint = fingerprint(&layout.root)?;

    let input = StoreUrl::parse(&args.input)?;
    let output = StoreUrl::parse(&args.output)?;
    check_overlap(&input, &output)?;
    let committer = Committer::new(&output)?.confined(roots);
    runtime.block_on(committer.probe())?;

    // Plan: list, read footers, check columns, cut shards.
    let (store, files) = runtime.block_on(list_inputs(&input, roots))?;
    let footers: Vec<_> = runtime.block_on(
        futures::stream::iter(files.iter().map(|f| {
            let store = store.clone();
            async move { read_footer(&mut InputReader::open(store, f, roots)?).await }
        }))
        .buffered(16)
        .collect(),
    );
    let mut failures = Vec::new();
    let mut shards = Vec::new();
    let mut records = Vec::new();
    let mut next_id = 0;
    let mut types: Option<Vec<(String, String)>> = None;
    for (index, (file, footer)) in files.iter().zip(footers).enumerate() {
        let footer = match footer {
            Ok(f) => f,
            Err(e @ StoreError::Escape { .. }) => return Err(e.into()),
            Err(e) => {
                failures.push(ShardFailure {
                    part: String::new(),
                    file: file.url.clone(),
                    rows: (0, 0),
                    causes: vec![e.to_string()],
                });
                records.push(InputRecord {
                    url: file.url.clone(),
                    size: file.size,
                    version: file.version.clone(),
                    rows: None,
                    footer: None,
                });
                continue;
            }
        };
        records.push(InputRecord {
            url: file.url.clone(),
            size: file.size,
            version: file.version.clone(),
            rows: Some(footer.rows),
            footer: Some(footer.digest.clone()),
        });
        let metadata = footer.metadata;
        let schema = metadata.schema();
        let (id, keep, _) = check_columns(
            &file.url,
            schema,
            &args.id_column,
            &args.text_column,
            &args.keep_columns,
        )?;
        let these: Vec<(String, String)> = std::iter::once(&id)
            .chain(&keep)
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect();
        match &types {
            None => types = Some(these),
            Some(expected) => {
                if let Some(((name, want), (_, got))) =
                    expected.iter().zip(&these).find(|(a, b)| a != b)
                {
                    return Err(JobError::SchemaMismatch {
                        file: file.url.clone(),
                        column: name.clone(),
                        expected: want.clone(),
                        found: got.clone(),
                    });
                }
            }
        }
        let rg: Vec<u64> = metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as u64)
            .collect();
        shards.extend(shards_of_file(
            index,
            file,
            &rg,
            args.shard_rows,
            &mut next_id,
        ));
    }

    // The output: same job resumes, another job is refused unless --overwrite.
    let identity = JobIdentity {
        model: model_fingerprint.clone(),
        input: args.input.clone(),
        input_files: records,
        id_column: args.id_column.clone(),
        text_column: args.text_column.clone(),
        keep_columns: args.keep_columns.clone(),
        max_active_dims: args.max_active_dims,
        dtype,
        query: args.query,
        shard_rows: args.shard_rows,
    };
    let existing = runtime.block_on(committer.list())?;
    let owned: Vec<String> = existing
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| {
            n == JOB_FILE
                || n == MANIFEST
                || n == SUCCESS
                || n.starts_with("_attempts/")
                || is_part(n)
        })
        .collect();
    // Files sparq did not write would be taken for parts, or break every reader: refuse them
    // before any work (leftover temporary names of an interrupted marker write are ours).
    let foreign: Vec<&str> = existing
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !(owned.iter().any(|o| o == n) || n.starts_with('.') && n.ends_with(".tmp")))
        .collect();
    if !foreign.is_empty() {
        return Err(JobError::Settings(format!(
            "--output {} holds {} file(s) sparq did not write ({}{}): encode into an empty \
             folder or prefix, or move them out",
            output.raw,
            foreign.len(),
            foreign
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
            if foreign.len() > 5 { ", ..." } else { "" }
        )));
    }
    let previous: Option<JobIdentity> = runtime
        .block_on(committer.get(JOB_FILE))?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mismatch = match &previous {
        Some(prev) => identity.differences(prev),
        None if owned.iter().any(|n| is_part(n)) => {
            vec!["job (parts without a _sparq_job.json)".to_string()]
        }
        None => vec![],
    };
    let mut committed: HashSet<String> = existing
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| is_part(n))
        .collect();
    if args.overwrite && !owned.is_empty() {
        runtime.block_on(committer.delete(&owned))?;
        committed.clear();
    } else if !mismatch.is_empty() {
        return Err(JobError::OutputMismatch {
            output: output.raw.clone(),
            differences: mismatch,
        });
    }
    runtime.block_on(committer.put(
        JOB_FILE,
        serde_json::to_vec_pretty(&identity).expect("serializable"),
    ))?;
    let pending: Vec<usize> = shards
        .iter()
        .filter(|s| !committed.contains(&s.part))
        .map(|s| s.id)
        .collect();
    if !pending.is_empty() {
        // The output is about to change: an old success marker would lie.
        runtime.block_on(committer.delete(&[SUCCESS.to_string(), MANIFEST.to_string()]))?;
    }
    let template = WorkerConfig {
        model: model.clone(),
        device: String::new(),
        dtype,
        threads: 0,
        batch_tokens: args.batch_tokens,
        max_active_dims: args.max_active_dims,
        id_column: args.id_column.clone(),
        text_column: args.text_column.clone(),
        keep_columns: args.keep_columns.clone(),
        query: args.query,
        output: output.raw.clone(),
        allowed_roots: roots.clone(),
    };
    Ok(EncodePlan {
        model,
        model_fingerprint,
        identity,
        shards,
        pending,
        failures,
        template,
    })
}

/// Ends a job: sums the shard reports into the summary and writes the manifest, then
/// `_SUCCESS` when nothing failed. `failures` holds the plan's and the lease loop's.
pub fn finish_encode(
    plan: &EncodePlan,
    reports: &BTreeMap<usize, ShardReport>,
    failures: &[ShardFailure],
    seconds: f64,
    runtime: &tokio::runtime::Runtime,
) -> Result<EncodeSummary, JobError> {
    let committer = Committer::new(&StoreUrl::parse(&plan.template.output)?)?
        .confined(&plan.template.allowed_roots);
    let mut summary = EncodeSummary {
        skipped_shards: plan.shards.len() - plan.pending.len(),
        ..Default::default()
    };
    for r in reports.values() {
        summary.docs += r.rows;
        summary.tokens += r.tokens;
        summary.failed_rows += r.failed_rows;
        summary.null_texts += r.null_texts;
        summary.null_ids += r.null_ids;
        for e in &r.null_id_examples {
            if summary.null_id_examples.len() < 5 {
                summary.null_id_examples.push(e.clone());
            }
        }
        summary.committed_shards += 1;
    }
    let active: u64 = reports.values().map(|r| r.active_dims).sum();
    let encoded = summary.docs - summary.failed_rows - summary.null_texts;
    summary.mean_active_dims = if encoded > 0 {
        active as f64 / encoded as f64
    } else {
        0.0
    };
    summary.failed_shards = failures.len();
    summary.seconds = seconds;
    summary.docs_per_s = summary.docs as f64 / summary.seconds.max(1e-9);
    summary.tokens_per_s = summary.tokens as f64 / summary.seconds.max(1e-9);

    committer.remove_attempts();
    let failed_parts: HashSet<&str> = failures.iter().map(|f| f.part.as_str()).collect();
    // Duplicate ids across the whole output (every committed part, this run's or earlier).
    let output = committer.url().clone();
    let sizes: BTreeMap<String, u64> = runtime.block_on(committer.list())?.into_iter().collect();
    let part_files: Vec<InputFile> = plan
        .shards
        .iter()
        .filter(|s| !failed_parts.contains(s.part.as_str()))
        .filter_map(|s| Some(part_file(&output, &s.part, *sizes.get(&s.part)?)))
        .collect::<Result<_, _>>()?;
    let (store, _) = output.store()?;
    let duplicates = find_duplicates(
        runtime,
        store,
        &part_files,
        &plan.identity.id_column,
        &plan.template.allowed_roots,
    )?;
    summary.duplicate_ids = duplicates.rows;
    summary.duplicate_examples = duplicates.examples;
    // Manifest, then the success marker, last.
    let parts: Vec<ManifestPart> = plan
        .shards
        .iter()
        .filter(|s| !failed_parts.contains(s.part.as_str()))
        .map(|s| ManifestPart {
            name: &s.part,
            rows: s.rows,
            source: &s.file,
            first_row: s.first_row,
        })
        .collect();
    let failed_row_list: Vec<&RowFailure> = reports.values().flat_map(|r| &r.failures).collect();
    let manifest = serde_json::json!({
        "sparq_version": env!("CARGO_PKG_VERSION"),
        "complete": failures.is_empty(),
        "model": { "path": plan.model, "fingerprint": plan.model_fingerprint },
        "settings": plan.identity,
        "rows": parts.iter().map(|p| p.rows).sum::<u64>(),
        "files": parts,
        "failed_shards": failures,
        "failed_rows": failed_row_list,
        "summary": summary,
    });
    runtime.block_on(committer.put(
        MANIFEST,
        serde_json::to_vec_pretty(&manifest).expect("serializable"),
    ))?;
    if failures.is_empty() {
        runtime.block_on(committer.put(SUCCESS, Vec::new()))?;
    }
    Ok(summary)
}

/// Runs a whole encode job. Returns the summary and the failed shards (the job is complete
/// only when there are none).
pub fn run_encode(args: &EncodeArgs) -> Result<(EncodeSummary, Vec<ShardFailure>), JobError> {
    let started = Instant::now();
    validate(args)?;
    let mut devices = job_devices(args);
    for d in devices.iter().collect::<HashSet<_>>() {
        d.resolve()?;
    }
    let dtype = job_dtype(args, &devices);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let plan = plan_encode(args, dtype, &AllowedRoots::anywhere(), &runtime)?;
    let mut failures = plan.failures.clone();
    if !plan.pending.is_empty() && plan.pending.len() < devices.len() {
        // More workers than shards would load the model to sit idle.
        eprintln!(
            "sparq: note: {} shard(s) to encode: starting {} of the {} workers asked for \
             (lower --shard-rows for more shards)",
            plan.pending.len(),
            plan.pending.len(),
            devices.len()
        );
        devices.truncate(plan.pending.len());
    }

    let threads = args.threads.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / devices.len()).max(1)
    });
    let configs: Vec<WorkerConfig> = devices
        .iter()
        .map(|d| WorkerConfig {
            device: d.to_string(),
            threads,
            ..plan.template.clone()
        })
        .collect();
    let by_id: BTreeMap<usize, &ShardSpec> = plan.shards.iter().map(|s| (s.id, s)).collect();
    let pending: Vec<&ShardSpec> = plan.pending.iter().map(|id| by_id[id]).collect();
    let reports = lease_loop(args, &configs, &pending, &mut failures)?;
    // Each failed shard's causes, before the manifest is written: if that fails too (a full
    // disk), the causes are still said.
    for f in &failures {
        eprintln!(
            "sparq: shard {} ({} rows {}..{}) failed: {}",
            if f.part.is_empty() { "-" } else { &f.part },
            f.file,
            f.rows.0,
            f.rows.0 + f.rows.1,
            f.causes.join("; then: ")
        );
    }

    for r in reports.values() {
        for f in &r.failures {
            eprintln!(
                "sparq: warning: {}, row group {}, row {}, column `{}`: {}; its vector is null",
                f.file, f.row_group, f.row, f.column, f.reason
            );
        }
    }
    let summary = finish_encode(
        &plan,
        &reports,
        &failures,
        started.elapsed().as_secs_f64(),
        &runtime,
    )?;
    if summary.null_ids > 0 {
        eprintln!(
            "sparq: warning: {} rows have a null id `{}` (their vectors are written), e.g. {}",
            summary.null_ids,
            plan.identity.id_column,
            summary.null_id_examples.join("; ")
        );
    }
    if summary.duplicate_ids > 0 {
        let examples: Vec<String> = summary
            .duplicate_examples
            .iter()
            .map(|e| format!("{:?} in {}", e.id, e.parts.join(", ")))
            .collect();
        eprintln!(
            "sparq: warning: {} duplicate ids in the output (rows whose id occurred before), e.g. {}",
            summary.duplicate_ids,
            examples.join("; ")
        );
    }
    Ok((summary, failures))
}

/// Leases `pending` shards to one worker per config until each is committed or failed.
fn lease_loop(
    args: &EncodeArgs,
    configs: &[WorkerConfig],
    pending: &[&ShardSpec],
    failures: &mut Vec<ShardFailure>,
) -> Result<BTreeMap<usize, ShardReport>, JobError> {
    let mut reports = BTreeMap::new();
    if pending.is_empty() {
        return Ok(reports);
    }
    let total_rows = pending.iter().map(|s| s.rows).sum();
    let mut progress = JobProgress::new(pending.len(), total_rows);
    let by_id: BTreeMap<usize, &ShardSpec> = pending.iter().map(|s| (s.id, *s)).collect();
    let mut queue: VecDeque<usize> = pending.iter().map(|s| s.id).collect();
    let mut remaining = pending.len();
    let mut pool = WorkerPool::new(configs.len());
    let mut slots: Vec<Slot> = configs.iter().map(|_| Slot::default()).collect();
    // A slot whose workers keep dying is given up after this many starts.
    let max_starts = args.max_attempts as usize + pending.len().min(8);
    for (i, config) in configs.iter().enumerate() {
        pool.spawn(i, config)?;
        slots[i].starts = 1;
    }
    let lease_timeout = Duration::from_secs(args.lease_timeout.max(1));
    let (mut done_rows, mut done_tokens) = (0u64, 0u64);

    let mut retries = Retries {
        causes: BTreeMap::new(),
        max_attempts: args.max_attempts,
    };
    let fail = |s: &ShardSpec, causes: Vec<String>| ShardFailure {
        part: s.part.clone(),
        file: s.file.clone(),
        rows: (s.first_row, s.rows),
        causes,
    };

    while remaining > 0 {
        // Lease queued shards to idle workers.
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.ready && slot.busy.is_none() {
                if let Some(shard) = queue.pop_front() {
                    let attempt = retries.attempts(shard) + 1;
                    if pool.send(
                        i,
                        &ToWorker::Shard {
                            shard: by_id[&shard].clone(),
                            attempt,
                        },
                    ) {
                        slot.busy = Some(Lease {
                            shard,
                            since: Instant::now(),
                            rows: 0,
                            tokens: 0,
                        });
                    } else {
                        queue.push_front(shard);
                    }
                }
            }
        }
        let event = pool.events.recv_timeout(Duration::from_millis(200));
        match event {
            Ok(WorkerEvent::Message {
                slot,
                generation,
                message,
            }) if pool.is_current(slot, generation) => match message {
                FromWorker::Ready => slots[slot].ready = true,
                FromWorker::Progress {
                    shard,
                    rows,
                    tokens,
                } => {
                    if let (Some(lease), Some(shard)) = (slots[slot].busy.as_mut(), shard) {
                        if lease.shard == shard && (rows, tokens) != (lease.rows, lease.tokens) {
                            lease.rows = rows;
                            lease.tokens = tokens;
                            lease.since = Instant::now();
                        }
                    }
                }
                FromWorker::Done(report) => {
                    slots[slot].busy = None;
                    done_rows += report.rows;
                    done_tokens += report.tokens;
                    reports.insert(report.shard, report);
                    remaining -= 1;
                }
                FromWorker::Failed {
                    shard,
                    error,
                    retryable,
                } => {
                    slots[slot].busy = None;
                    if let Some(causes) = retries.record(shard, error, retryable, &mut queue) {
                        failures.push(fail(by_id[&shard], causes));
                        remaining -= 1;
                    }
                }
                FromWorker::Fatal { error } => {
                    progress.finish();
                    return Err(JobError::Worker {
                        device: configs[slot].device.clone(),
                        error,
                    });
                }
            },
            Ok(WorkerEvent::Exited { slot, generation }) if pool.is_current(slot, generation) => {
                let how = pool.reap(slot);
                let s = &mut slots[slot];
                let cause = s.stall_cause.take().unwrap_or(how);
                if let Some(lease) = s.busy.take() {
                    if let Some(causes) =
                        retries.record(lease.shard, cause.clone(), true, &mut queue)
                    {
                        failures.push(fail(by_id[&lease.shard], causes));
                        remaining -= 1;
                    }
                }
                s.ready = false;
                if remaining > 0 && s.starts < max_starts {
                    eprintln!(
                        "sparq: {cause}; starting a new worker on {}",
                        configs[slot].device
                    );
                    s.starts += 1;
                    pool.spawn(slot, &configs[slot])?;
                } else if remaining > 0 && slots.iter().all(|s| s.starts >= max_starts && !s.ready)
                {
                    // No worker left: every remaining shard fails with the last cause.
                    for shard in queue.drain(..).collect::<Vec<_>>() {
                        let mut causes = retries.causes.remove(&shard).unwrap_or_default();
                        causes.push(format!("no worker left ({cause})"));
                        failures.push(fail(by_id[&shard], causes));
                        remaining -= 1;
                    }
                }
            }
            Ok(_) => {} // A stale event from a replaced worker.
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        // Stalled workers lose their lease: kill them; the exit event requeues the shard.
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(lease) = &slot.busy {
                if lease.since.elapsed() > lease_timeout && slot.stall_cause.is_none() {
                    slot.stall_cause = Some(format!(
                        "worker stalled (no progress for {}s)",
                        lease_timeout.as_secs()
                    ));
                    pool.signal_kill(i);
                }
            }
        }
        let live_rows: u64 = slots
            .iter()
            .filter_map(|s| s.busy.as_ref())
            .map(|l| l.rows)
            .sum();
        let live_tokens: u64 = slots
            .iter()
            .filter_map(|s| s.busy.as_ref())
            .map(|l| l.tokens)
            .sum();
        progress.update(
            reports.len(),
            done_rows + live_rows,
            done_tokens + live_tokens,
        );
    }
    pool.shutdown();
    progress.finish();
    Ok(reports)
}

/// Causes of failed attempts per shard.
struct Retries {
    causes: BTreeMap<usize, Vec<String>>,
    max_attempts: u32,
}

impl Retries {
    fn attempts(&self, shard: usize) -> u32 {
        self.causes.get(&shard).map_or(0, |c| c.len() as u32)
    }

    /// Records a failed attempt: requeues the shard (front) if another attempt is allowed,
    /// else returns every cause (the shard has failed).
    fn record(
        &mut self,
        shard: usize,
        cause: String,
        retryable: bool,
        queue: &mut VecDeque<usize>,
    ) -> Option<Vec<String>> {
        let causes = self.causes.entry(shard).or_default();
        causes.push(cause);
        if retryable && (causes.len() as u32) < self.max_attempts {
            queue.push_front(shard);
            None
        } else {
            Some(causes.clone())
        }
    }
}

#[derive(Default)]
struct Slot {
    ready: bool,
    busy: Option<Lease>,
    starts: usize,
    stall_cause: Option<String>,
}

struct Lease {
    shard: usize,
    since: Instant,
    rows: u64,
    tokens: u64,
}

/// An output part as an input file (to read its id column back).
fn part_file(output: &StoreUrl, name: &str, size: u64) -> Result<InputFile, StoreError> {
    let url = match &output.location {
        Location::Local(dir) => dir.join(name).to_string_lossy().into_owned(),
        Location::S3 { .. } => output.join(name),
    };
    let path = match &output.location {
        Location::Local(dir) => object_store::path::Path::from_absolute_path(dir.join(name))
            .map_err(|e| StoreError::BadUrl {
                url: url.clone(),
                detail: e.to_string(),
            })?,
        Location::S3 { key, .. } => object_store::path::Path::from(format!("{key}/{name}")),
    };
    Ok(InputFile {
        url,
        path,
        size,
        version: None,
    })
}

fn is_part(name: &str) -> bool {
    !name.contains('/') && name.starts_with("part-") && name.ends_with(".parquet")
}

/// Checks the numeric settings of an encode job: each within the range a run can mean.
pub fn validate(args: &EncodeArgs) -> Result<(), JobError> {
    let ranges: [(&str, Option<u64>, u64, u64); 7] = [
        (
            "--batch-tokens",
            args.batch_tokens.map(|t| t as u64),
            1,
            1 << 24,
        ),
        ("--shard-rows", Some(args.shard_rows), 1, 1 << 32),
        (
            "--max-active-dims",
            args.max_active_dims.map(|k| k as u64),
            1,
            1 << 24,
        ),
        ("--max-attempts", Some(args.max_attempts as u64), 1, 100),
        ("--workers", args.workers.map(|w| w as u64), 1, 1024),
        ("--threads", args.threads.map(|t| t as u64), 1, 4096),
        (
            "--lease-timeout",
            Some(args.lease_timeout),
            1,
            7 * 24 * 3600,
        ),
    ];
    for (flag, value, low, high) in ranges {
        if let Some(v) = value.filter(|v| !(low..=high).contains(v)) {
            return Err(JobError::Settings(format!(
                "{flag} {v} is outside its range [{low}, {high}]"
            )));
        }
    }
    Ok(())
}

/// Refuses an output inside the input (the next listing would read the output as input).
fn check_overlap(input: &StoreUrl, output: &StoreUrl) -> Result<(), JobError> {
    let overlap = match (&input.location, &output.location) {
        (Location::Local(i), Location::Local(o)) => i.is_dir() && o.starts_with(i) || i == o,
        (
            Location::S3 {
                bucket: bi,
                key: ki,
            },
            Location::S3 {
                bucket: bo,
                key: ko,
            },
        ) => bi == bo && (ko == ki || ki.is_empty() || ko.starts_with(&format!("{ki}/"))),
        _ => false,
    };
    if overlap {
        return Err(JobError::Settings(format!(
            "--output {} is inside --input {}: its parts would be read as input next time; choose an output outside the input",
            output.raw, input.raw
        )));
    }
    Ok(())
}
