//! Planning: input files → shards of bounded size (file × row range, split at row-group
//! boundaries where possible), with the schema, settings and output checked before any work;
//! the output claimed for this job or resumed.

use std::collections::HashSet;
use std::path::PathBuf;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::args::EncodeConfig;
use super::identity::{InputRecord, JobIdentity};
use super::{is_part, JobError, ShardFailure, JOB_FILE, MANIFEST, REPORTS, SUCCESS};
use crate::encode::columns::check_columns;
use crate::encode::settings::{EncodeSettings, RowTask};
use crate::encode::shard::{Segment, ShardSpec};
use crate::io::compact::{VectorFormat, WeightType};
use crate::io::input::{input_glob, read_footer, InputReader, GLOB_OPTIONS};
use crate::io::text_input::{list_corpus_inputs, text_kind, TextOptions};
use crate::io::url::Location;
use crate::io::{AllowedRoots, Committer, StoreError, StoreUrl};
use crate::model::{fingerprint, ModelLayout};
use crate::types::Dtype;

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
    /// What every worker encodes with.
    #[serde(alias = "template")]
    pub settings: EncodeSettings,
    /// Tokens the job will encode, estimated from a sample (`--plan` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<TokenEstimate>,
}

/// The tokens a job will encode, estimated at planning from the first rows of its first file,
/// tokenized as the encoder does (special tokens, truncation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEstimate {
    /// The file sampled.
    pub file: String,
    /// Rows sampled.
    pub sampled_rows: usize,
    /// Their mean tokens per row.
    pub mean_tokens: f64,
    /// Rows of the whole input × the mean.
    pub total_tokens: u64,
}

/// Rows tokenized for a plan's estimate.
const ESTIMATE_ROWS: u64 = 512;

async fn estimate_tokens(
    reader: InputReader,
    metadata: &parquet::arrow::arrow_reader::ArrowReaderMetadata,
    args: &EncodeConfig,
    layout: &ModelLayout,
    total_rows: u64,
) -> Result<TokenEstimate, JobError> {
    let file = reader.url().to_string();
    let text = metadata
        .schema()
        .index_of(&args.text_column)
        .map_err(|e| JobError::Settings(e.to_string()))?;
    let mut texts: Vec<String> = Vec::new();
    let options = arrow::compute::CastOptions {
        safe: true,
        ..Default::default()
    };
    let sample = ESTIMATE_ROWS as usize;
    crate::io::input::read_column(reader, metadata, text, sample, |batch| {
        let utf8 = &arrow::datatypes::DataType::Utf8;
        if let Ok(column) = arrow::compute::cast_with_options(batch.column(0), utf8, &options) {
            let strings = column
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("cast to Utf8");
            texts.extend(strings.iter().map(|t| t.unwrap_or("").to_string()));
        }
        texts.len() < sample
    })
    .await?;
    texts.truncate(sample);
    let tokenizer = crate::model::tokenizer::SpladeTokenizer::load(layout)?;
    let sampled_rows = texts.len();
    let tokens: usize = tokenizer.encode_batch(texts)?.iter().map(Vec::len).sum();
    let mean_tokens = tokens as f64 / sampled_rows.max(1) as f64;
    Ok(TokenEstimate {
        file,
        sampled_rows,
        mean_tokens,
        total_tokens: (mean_tokens * total_rows as f64).round() as u64,
    })
}

/// Plans an encode job: checks the settings, model and inputs, cuts shards, claims (or resumes)
/// the output. `dtype` is the job's precision (see [`job_dtype`]); every local path the job
/// touches must resolve under `roots` (a service's allowed folders; anywhere for the CLI).
pub fn plan_encode(
    args: &EncodeConfig,
    dtype: Dtype,
    roots: &AllowedRoots,
    runtime: &tokio::runtime::Runtime,
    options: &PlanOptions,
) -> Result<EncodePlan, JobError> {
    validate(args)?;
    let model = std::path::absolute(&args.model).unwrap_or(args.model.clone());
    // Validate the model (config, tokenizer, weights present) before any work.
    roots.check_model(&model)?;
    let (model_fingerprint, layout) = check_model(&model, &args.task)?;

    let input = StoreUrl::parse(&args.input)?;
    let output = StoreUrl::parse(&args.output)?;
    check_overlap(&input, &output)?;
    let committer = Committer::new(&output)?.confined(roots);

    // Plan: list, read footers, check columns, cut shards.
    let (store, files) = runtime.block_on(list_corpus_inputs(&input, roots))?;
    let text_options = TextOptions {
        format: args.input_format,
        columns: args.columns.clone(),
        bad_lines: args.bad_lines,
    };
    let kinds: Vec<_> = files
        .iter()
        .map(|f| text_kind(&f.url, args.input_format))
        .collect();
    let footers: Vec<_> = runtime.block_on(
        futures::stream::iter(files.iter().zip(&kinds).map(|(f, kind)| {
            let store = store.clone();
            async move {
                match kind {
                    Some(_) => Ok(None),
                    None => read_footer(&mut InputReader::open(store, f, roots)?)
                        .await
                        .map(Some),
                }
            }
        }))
        .buffered(16)
        .collect(),
    );
    let mut text_files = Vec::new();
    let failures = Vec::new();
    let mut unreadable = Vec::new();
    let mut row_groups = Vec::new();
    let mut records = Vec::new();
    let mut types: Option<Vec<(String, String)>> = None;
    for (index, ((file, footer), kind)) in files.iter().zip(footers).zip(&kinds).enumerate() {
        let footer = match (footer, kind) {
            (_, Some((format, compression))) => {
                match super::text_plan::plan_text_file(
                    runtime,
                    store.clone(),
                    roots,
                    args,
                    &text_options,
                    (index, file, *format, *compression),
                )? {
                    Ok((text_file, record, these)) => {
                        super::text_plan::check_types(&mut types, file, these)?;
                        records.push(record);
                        text_files.push(text_file);
                    }
                    Err(unreadable_file) => unreadable.push(unreadable_file),
                }
                continue;
            }
            (Ok(f), None) => f.expect("a parquet file's footer"),
            (Err(e @ StoreError::Escape { .. }), _) => return Err(e.into()),
            (Err(e), _) => {
                unreadable.push(e.to_string());
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
        if let RowTask::Score { query_column, .. } = &args.task {
            check_columns(&file.url, schema, &args.id_column, query_column, &[])?;
        }
        if let Some(title) = &args.title_column {
            check_columns(&file.url, schema, &args.id_column, title, &[])?;
        }
        let these: Vec<(String, String)> = std::iter::once(&id)
            .chain(&keep)
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect();
        super::text_plan::check_types(&mut types, file, these)?;
        let rg: Vec<u64> = metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as u64)
            .collect();
        row_groups.push((index, file, rg, metadata));
    }

    if text_files.is_empty() && (args.input_format.is_some() || !args.columns.is_empty()) {
        return Err(JobError::Settings(format!(
            "--input-format and --columns are for text inputs; {} holds parquet files only: \
             leave them out",
            input.raw
        )));
    }
    // Every input file is a readable parquet file, or nothing is written.
    if !unreadable.is_empty() {
        let count = unreadable.len();
        unreadable.truncate(5);
        if count > 5 {
            unreadable.push(format!("and {} more", count - 5));
        }
        return Err(JobError::Unreadable {
            count,
            files: unreadable,
        });
    }
    committer.check_not_file()?;
    let previous: Option<JobIdentity> = runtime
        .block_on(committer.get(JOB_FILE))?
        .and_then(|b| serde_json::from_slice(&b).ok());
    // An output written before fingerprints covered whole files records the earlier
    // fingerprint of the same model: it resumes as that model, under the fingerprint it records.
    let model_root = layout
        .as_ref()
        .map_or(model.as_path(), |l| l.root.as_path());
    let model_fingerprint = match &previous {
        Some(prev)
            if prev.model != model_fingerprint
                && crate::model::fingerprint::recognizes(
                    model_root,
                    &model_fingerprint,
                    &prev.model,
                ) =>
        {
            prev.model.clone()
        }
        _ => model_fingerprint,
    };

    // Shards: the size given, else the one the output was planned with (a resumed run cuts
    // the same parts whatever its fleet), else enough shards to keep every worker busy.
    let total_rows: u64 = records.iter().filter_map(|r| r.rows).sum::<u64>()
        + text_files.iter().map(|t| t.estimated_rows()).sum::<u64>();
    // A new size is capped so that no part passes --max-part-bytes (see `part_size`).
    let capped = |rows| super::part_size::capped_shard_rows(rows, args, &records, layout.as_ref());
    let shard_rows = match (args.shard_rows, &previous) {
        (Some(rows), Some(prev)) if !args.overwrite && prev.shard_rows == rows => rows,
        (Some(rows), _) => capped(rows),
        (None, Some(prev)) if !args.overwrite => prev.shard_rows,
        (None, _) => capped(auto_shard_rows(
            total_rows,
            options.workers,
            options.cpu_only,
        )),
    };
    let text = super::text_plan::text_identity(
        &text_files,
        &text_options,
        shard_rows,
        previous
            .as_ref()
            .filter(|_| args.shard_rows.is_none() && !args.overwrite),
    );
    let mut next_id = 0;
    // One list, never two at once: a single file's shards are moved, not copied (a plan of a
    // million shards is hundreds of MiB; a service plans them beside its queue).
    let mut shards: Vec<ShardSpec> = Vec::new();
    for (index, file, rg, _) in &row_groups {
        let these = shards_of_file(*index, file, rg, shard_rows, &mut next_id);
        if shards.is_empty() {
            shards = these;
        } else {
            shards.extend(these);
        }
    }
    if let Some(text) = &text {
        shards.extend(super::text_plan::text_shards(
            &text_files,
            text,
            &mut next_id,
        ));
        // Shards in file order, as parquet shards are (ids follow).
        shards.sort_by(|a, b| (&a.part, a.id).cmp(&(&b.part, b.id)));
        for (id, s) in shards.iter_mut().enumerate() {
            s.id = id;
        }
    }
    // The output: same job resumes, another job is refused unless --overwrite.
    let identity = JobIdentity {
        model: model_fingerprint.clone(),
        model_path: Some(model.clone()),
        input: input.normalized(),
        input_files: records,
        id_column: args.id_column.clone(),
        text_column: args.text_column.clone(),
        keep_columns: args.keep_columns.clone(),
        title_column: args.title_column.clone(),
        max_active_dims: args.max_active_dims,
        weight_type: args.weight_type,
        weight_scale: weight_scale(args),
        prune: args.prune,
        dtype,
        query: args.query,
        long_docs: args.long_docs,
        window_stride: args.window_stride,
        shard_rows,
        query_column: match &args.task {
            RowTask::Encode => None,
            RowTask::Score { query_column, .. } => Some(query_column.clone()),
        },
        text,
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
                || n.starts_with(&format!("{REPORTS}/"))
                || is_part(n)
        })
        .collect();
    // Files sparq did not write would be taken for parts, or break every reader: refuse them
    // before any work (leftover temporary names of an interrupted marker write are ours).
    let foreign: Vec<&str> = existing
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| {
            !(owned.iter().any(|o| o == n)
                || n.starts_with('.') && n.ends_with(".tmp")
                || crate::io::lock::is_lock_file(n))
        })
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
    // An output that cannot take a commit (no hard links, read-only) is refused before the
    // lock, whose generations are committed the same way, is tried.
    if options.claim {
        runtime.block_on(committer.probe())?;
    }
    // Ownership before anything else: a live job on this output is refused by name before
    // the identity is compared or anything deleted.
    let claim = match options.lock.as_ref().filter(|_| options.claim) {
        Some(request) => Some(super::ownership::Claim::take(
            runtime,
            &output,
            roots,
            request,
            &identity,
            args.overwrite,
        )?),
        None => None,
    };
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
        if options.claim {
            runtime.block_on(committer.delete(&owned))?;
        }
        committed.clear();
    } else if !mismatch.is_empty() {
        return Err(JobError::OutputMismatch {
            output: output.raw.clone(),
            differences: mismatch,
        });
    }
    if !options.claim {
        // `--plan`: what would run, with nothing written.
        let estimate = match (
            layout.as_ref().filter(|_| options.estimate),
            row_groups
                .iter()
                .find(|(_, _, rg, _)| rg.iter().any(|&r| r > 0)),
        ) {
            (Some(layout), Some((_, file, _, metadata))) => {
                let reader = InputReader::open(store.clone(), file, roots)?;
                Some(
                    runtime
                        .block_on(estimate_tokens(reader, metadata, args, layout, total_rows))?,
                )
            }
            _ => None,
        };
        let pending = shards
            .iter()
            .filter(|s| !committed.contains(&s.part))
            .map(|s| s.id)
            .collect();
        return Ok(EncodePlan {
            estimate,
            settings: settings(args, &model, dtype, &output, roots),
            model,
            model_fingerprint,
            identity,
            shards,
            pending,
            failures,
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
    Ok(EncodePlan {
        estimate: None,
        settings: EncodeSettings {
            lock_job: claim.map(super::ownership::Claim::keep),
            ..settings(args, &model, dtype, &output, roots)
        },
        model,
        model_fingerprint,
        identity,
        shards,
        pending,
        failures,
    })
}

/// Checks that the model folder holds what the task runs (config, tokenizer, weights) before
/// any work: its fingerprint, and the SPLADE layout an encode job estimates tokens with.
fn check_model(
    model: &std::path::Path,
    task: &RowTask,
) -> Result<(String, Option<ModelLayout>), JobError> {
    match task {
        RowTask::Encode => {
            let layout = ModelLayout::read(model)?;
            crate::model::tokenizer::SpladeTokenizer::load(&layout)?;
            Ok((fingerprint(&layout.root)?, Some(layout)))
        }
        RowTask::Score { .. } => {
            let config = crate::model::cross_encoder::CrossEncoderConfig::read(model)?;
            crate::model::tokenizer::SpladeTokenizer::load_for_pairs(
                &config.transformer_dir,
                config.max_length,
                config.do_lower_case,
            )?;
            Ok((fingerprint(model)?, None))
        }
    }
}

/// What a plan is for.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Workers that will lease the shards (the default shard size keeps each busy).
    pub workers: usize,
    /// Whether every worker is a CPU (smaller default shards: less work lost to an interrupt).
    pub cpu_only: bool,
    /// Claim the output (write its identity, clear a stale success marker); `false` for
    /// `--plan`, which writes nothing.
    pub claim: bool,
    /// Without claiming: estimate the tokens to encode (`--plan` does; `--plan-only` and
    /// `--finalize` need only the shards).
    pub estimate: bool,
    /// Whose lock the claim takes on the output (`None`: no lock).
    pub lock: Option<super::ownership::LockRequest>,
}

impl PlanOptions {
    /// A service's job: its remote workers are not known at planning (GPU-sized shards for
    /// four of them); the service adds its job's lock request.
    pub const SERVICE: PlanOptions = PlanOptions {
        workers: 4,
        cpu_only: false,
        claim: true,
        estimate: false,
        lock: None,
    };
}

/// Shards per worker the default size aims at: a worker that finishes early finds more, and
/// an interrupt loses at most one shard per worker.
pub const SHARDS_PER_WORKER: u64 = 4;

/// The default shard size: at least [`SHARDS_PER_WORKER`] shards per worker, within
/// 250–5,000 rows on CPU and 1,000–20,000 on GPU (a shard is the unit of commit and of the
/// work lost to an interrupt; below the minimum, the per-shard overhead shows).
pub fn auto_shard_rows(total_rows: u64, workers: usize, cpu_only: bool) -> u64 {
    let (low, high) = if cpu_only {
        (250, 5_000)
    } else {
        (1_000, 20_000)
    };
    let want = total_rows.div_ceil(SHARDS_PER_WORKER * workers.max(1) as u64);
    want.clamp(low, high)
}

/// What every worker encodes with.
fn settings(
    args: &EncodeConfig,
    model: &std::path::Path,
    dtype: Dtype,
    output: &StoreUrl,
    roots: &AllowedRoots,
) -> EncodeSettings {
    EncodeSettings {
        model: model.to_path_buf(),
        dtype,
        batch_tokens: args.batch_tokens,
        max_active_dims: args.max_active_dims,
        id_column: args.id_column.clone(),
        text_column: args.text_column.clone(),
        keep_columns: args.keep_columns.clone(),
        title_column: args.title_column.clone(),
        query: args.query,
        long_docs: args.long_docs,
        window_stride: args.window_stride,
        output: output.raw.clone(),
        allowed_roots: roots.clone(),
        task: args.task.clone(),
        shard_reports: false,
        lock_job: None,
        max_part_bytes: args.max_part_bytes,
        vectors: VectorFormat {
            weight_type: args.weight_type,
            scale: weight_scale(args).unwrap_or(0.0),
            prune: args.prune,
        },
    }
}

/// The u8 scale of the job (`--weight-scale`, else the default); none for the other types.
fn weight_scale(args: &EncodeConfig) -> Option<f32> {
    (args.weight_type == WeightType::U8).then(|| {
        args.weight_scale
            .unwrap_or(crate::io::compact::DEFAULT_WEIGHT_SCALE)
    })
}

/// Splits one file with the given row-group sizes into shards of at most `shard_rows` rows.
pub fn shards_of_file(
    file_index: usize,
    file: &crate::io::input::InputFile,
    row_groups: &[u64],
    shard_rows: u64,
    next_id: &mut usize,
) -> Vec<ShardSpec> {
    let shard_rows = shard_rows.max(1);
    let mut out = Vec::with_capacity(row_groups.iter().sum::<u64>().div_ceil(shard_rows) as usize);
    let mut current: Vec<Segment> = Vec::new();
    let (mut current_rows, mut first_row, mut file_row) = (0u64, 0u64, 0u64);
    let mut close =
        |segments: &mut Vec<Segment>, rows: &mut u64, first: u64, out: &mut Vec<ShardSpec>| {
            if *rows > 0 {
                out.push(ShardSpec {
                    id: *next_id,
                    file: file.url.clone(),
                    file_size: file.size,
                    file_version: file.version.clone(),
                    first_row: first,
                    rows: *rows,
                    // Sized to fit: a growing Vec keeps room for 4 segments per shard.
                    segments: std::mem::take(segments).into_boxed_slice().into_vec(),
                    part: super::part_name(file_index, first),
                    text: None,
                });
                *next_id += 1;
            }
            *rows = 0;
        };
    for (rg, &rg_rows) in row_groups.iter().enumerate() {
        let mut offset = 0;
        while offset < rg_rows {
            if current_rows == 0 {
                first_row = file_row;
            }
            let take = (rg_rows - offset).min(shard_rows - current_rows);
            current.push(Segment {
                row_group: rg,
                skip: offset,
                rows: take,
            });
            current_rows += take;
            offset += take;
            file_row += take;
            if current_rows == shard_rows {
                close(&mut current, &mut current_rows, first_row, &mut out);
            }
        }
    }
    close(&mut current, &mut current_rows, first_row, &mut out);
    out
}

/// Checks the numeric settings of an encode job: each within the range a run can mean.
pub fn validate(args: &EncodeConfig) -> Result<(), JobError> {
    super::part_size::validate(args)?;
    if let Some(title) = &args.title_column {
        if *title == args.text_column || *title == args.id_column {
            return Err(JobError::Settings(format!(
                "--title-column `{title}` is the id or text column: name the column holding \
                 the titles (BEIR corpora: --title-column title)"
            )));
        }
        if !matches!(args.task, RowTask::Encode) {
            return Err(JobError::Settings(
                "--title-column is for sparq encode: join the titles into the text column".into(),
            ));
        }
    }
    if let Some(s) = args.weight_scale {
        if args.weight_type != WeightType::U8 {
            return Err(JobError::Settings(format!(
                "--weight-scale {s} applies to --weight-type u8 only (this job stores {}): \
                 drop it, or add --weight-type u8",
                args.weight_type
            )));
        }
        if !(s.is_finite() && s > 0.0) {
            return Err(JobError::Settings(format!(
                "--weight-scale {s} must be a positive number (the weight one u8 step stands \
                 for, e.g. 0.02)"
            )));
        }
    }
    let ranges: [(&str, Option<u64>, u64, u64); 5] = [
        (
            "--batch-tokens",
            args.batch_tokens.map(|t| t as u64),
            1,
            1 << 24,
        ),
        ("--shard-rows", args.shard_rows, 1, 1 << 32),
        (
            "--max-active-dims",
            args.max_active_dims.map(|k| k as u64),
            1,
            1 << 24,
        ),
        ("--max-attempts", Some(args.max_attempts as u64), 1, 100),
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

/// Refuses an output inside the input (the next listing would read the output as input): in
/// the folder or prefix, or where a glob input would match its parts.
fn check_overlap(input: &StoreUrl, output: &StoreUrl) -> Result<(), JobError> {
    let part = super::part_name(0, 0);
    let globbed = match (input_glob(input)?, &input.location, &output.location) {
        (Some(glob), Location::Local(_), Location::Local(o)) => {
            Some(glob.matches_path_with(&o.join(&part), GLOB_OPTIONS))
        }
        (Some(glob), Location::S3 { bucket: bi, .. }, Location::S3 { bucket: bo, key }) => {
            Some(bi == bo && glob.matches_with(&format!("{key}/{part}"), GLOB_OPTIONS))
        }
        (Some(_), _, _) => Some(false),
        (None, _, _) => None,
    };
    let overlap = match (&input.location, &output.location) {
        _ if globbed.is_some() => globbed == Some(true),
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
            "--output {} is inside --input {}: its parts would be read as input next time; choose an output outside the input (or a narrower glob)",
            output.raw, input.raw
        )));
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_row_once_within_bounds() {
        let mut id = 0;
        let file = crate::io::input::InputFile {
            url: "/f".into(),
            path: "f".into(),
            size: 10,
            version: None,
        };
        let shards = shards_of_file(3, &file, &[5, 30, 0, 7, 2], 10, &mut id);
        let total: u64 = shards.iter().map(|s| s.rows).sum();
        assert_eq!(total, 44);
        let mut next = 0;
        for s in &shards {
            assert!(s.rows <= 10);
            assert_eq!(s.first_row, next);
            assert_eq!(s.segments.iter().map(|g| g.rows).sum::<u64>(), s.rows);
            next += s.rows;
        }
        assert_eq!(
            shards[0].segments,
            vec![
                Segment {
                    row_group: 0,
                    skip: 0,
                    rows: 5
                },
                Segment {
                    row_group: 1,
                    skip: 0,
                    rows: 5
                }
            ]
        );
        assert_eq!(shards[1].part, "part-00003-000000000010.parquet");
        assert_eq!(id, shards.len());
    }
}

#[cfg(test)]
mod overlap_tests {
    use super::*;

    #[test]
    fn an_output_inside_its_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::create_dir_all(&input).unwrap();
        let url = |p: &std::path::Path| StoreUrl::parse(p.to_str().unwrap()).unwrap();
        assert!(check_overlap(&url(&input), &url(&input.join("out"))).is_err());
        assert!(check_overlap(&url(&input), &url(&input)).is_err());
        assert!(check_overlap(&url(&input), &url(&dir.path().join("out"))).is_ok());
        let s3 = |u: &str| StoreUrl::parse(u).unwrap();
        assert!(check_overlap(&s3("s3://b/corpus"), &s3("s3://b/corpus/vectors")).is_err());
        assert!(check_overlap(&s3("s3://b"), &s3("s3://b/vectors")).is_err());
        // A prefix that merely starts the same is another folder.
        assert!(check_overlap(&s3("s3://b/corpus"), &s3("s3://b/corpus-vectors")).is_ok());
        assert!(check_overlap(&s3("s3://b/corpus"), &s3("s3://c/corpus/v")).is_ok());
        // A glob overlaps where it would match the output's parts.
        let glob = |g: &str| StoreUrl::parse(input.join(g).to_str().unwrap()).unwrap();
        assert!(check_overlap(&glob("*.parquet"), &url(&input)).is_err());
        assert!(check_overlap(&glob("**/*.parquet"), &url(&input.join("out"))).is_err());
        assert!(check_overlap(&glob("*/*.parquet"), &url(&input.join("out"))).is_err());
        assert!(check_overlap(&glob("*.parquet"), &url(&input.join("out"))).is_ok());
        assert!(check_overlap(&s3("s3://b/c/**/*.parquet"), &s3("s3://b/c/v")).is_err());
        assert!(check_overlap(&s3("s3://b/c/*.parquet"), &s3("s3://b/c/v")).is_ok());
    }

    #[test]
    fn settings_outside_their_ranges_name_the_flag_and_the_range() {
        let mut config: EncodeConfig =
            serde_json::from_value(serde_json::json!({"input": "i", "output": "o"})).unwrap();
        assert!(validate(&config).is_ok());
        config.shard_rows = Some(0);
        let e = validate(&config).unwrap_err().to_string();
        assert!(
            e.contains("--shard-rows 0") && e.contains("[1, 4294967296]"),
            "{e}"
        );
    }
}
