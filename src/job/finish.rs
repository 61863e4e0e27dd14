//! Finishing a job: the shard reports summed into the summary, duplicate ids counted over the
//! whole output, the manifest, and `_SUCCESS` written last.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::duplicates::{find_duplicates, DuplicateExample, PartIds};
use super::identity::JobIdentity;
use super::plan::EncodePlan;
use super::{JobError, ShardFailure, MANIFEST, SUCCESS};
use crate::encode::shard::{RowFailure, ShardReport};
use crate::io::input::InputFile;
use crate::io::retry::S3Requests;
use crate::io::url::Location;
use crate::io::{Committer, StoreError, StoreUrl};

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
    /// Lines of text inputs left out by `--bad-lines skip` in this run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_lines: u64,
    /// Where the first few are and why (`file, line N, column C: what`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_line_examples: Vec<String>,
    /// S3 requests of the run (its workers' included) and those retried, when it used S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_requests: Option<S3Requests>,
}

/// `_manifest.json`: what the output holds and how it was made. Fields in alphabetical
/// order, as the file has always been written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Whether every shard was committed (then `_SUCCESS` follows).
    pub complete: bool,
    /// The first rows that could not be encoded (null vectors).
    pub failed_rows: Vec<RowFailure>,
    /// Shards that failed, with their causes.
    pub failed_shards: Vec<ShardFailure>,
    /// The committed parts.
    pub files: Vec<ManifestPart>,
    /// The model that encoded the output.
    pub model: ManifestModel,
    /// Rows in the committed parts.
    pub rows: u64,
    /// The output's identity (`_sparq_job.json`).
    pub settings: JobIdentity,
    /// The sparq that wrote it.
    pub sparq_version: String,
    /// The last run's summary.
    pub summary: EncodeSummary,
    /// How the vectors are stored, and what they cost (none in manifests of sparq ≤ 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<ManifestVectors>,
}

/// How an output's vectors are stored and their size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestVectors {
    /// Bytes of the committed parts.
    pub bytes: u64,
    /// `bytes` / `rows` of the manifest.
    pub bytes_per_doc: f64,
    /// u8 weights past 255 × scale, stored as 255, in the rows this run encoded.
    pub clamped_weights: u64,
    /// The parts' parquet compression.
    pub codec: String,
    /// Mean sparse entries per row this run encoded (after `--prune`).
    pub entries_per_doc: f64,
    /// `--prune` (none: every weight kept).
    pub prune: Option<String>,
    /// The weight type: f32, f16, bf16 or u8.
    pub weight_type: crate::io::compact::WeightType,
    /// u8 only: weight ≈ q × scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_scale: Option<f32>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One committed part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestPart {
    /// The byte range of a text source it holds: the lines starting in `[start, end)` (the
    /// whole file for a compressed one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<(u64, u64)>,
    /// First row of the source file it holds (of a text file: its rows in the parts before,
    /// counted when every part of the file is there).
    pub first_row: u64,
    /// Its file name.
    pub name: String,
    /// Rows.
    pub rows: u64,
    /// The input file its rows come from.
    pub source: String,
}

/// The model that encoded an output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestModel {
    /// Its fingerprint (see `model::fingerprint`).
    pub fingerprint: String,
    /// The hub id and commit, when the folder is a snapshot of the Hugging Face cache
    /// (`--model owner/name[@revision]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<crate::model::hub::HubOrigin>,
    /// Its folder.
    pub path: std::path::PathBuf,
}

/// A shard counted committed whose part the output's listing does not hold (deleted since,
/// or never really written): a failed shard, to encode again.
#[derive(Debug, Clone)]
pub struct MissingShard {
    /// The shard's id in the plan.
    pub shard: usize,
    /// The failure the manifest records for it.
    pub failure: ShardFailure,
}

/// What finishing a job found and wrote.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The summary (its `failed_shards` counts the missing shards too).
    pub summary: EncodeSummary,
    /// Shards whose part is missing: no `_SUCCESS` was written; the caller re-runs them
    /// (the service re-queues them, `sparq encode` asks for a rerun).
    pub missing: Vec<MissingShard>,
}

/// Ends a job: sums the shard reports into the summary and writes the manifest, then
/// `_SUCCESS` when nothing failed and the output's listing holds every expected part (a part
/// missing from it is a failed shard, returned in [`Finished::missing`]). `failures` holds
/// the plan's and the lease loop's; with `count_s3_requests` (a process running one job: the
/// local coordinator, not the service) the summary says the S3 requests of the run so far.
pub fn finish_encode(
    plan: &EncodePlan,
    reports: &BTreeMap<usize, ShardReport>,
    failures: &[ShardFailure],
    seconds: f64,
    count_s3_requests: bool,
    runtime: &tokio::runtime::Runtime,
) -> Result<Finished, JobError> {
    let committer = Committer::new(&StoreUrl::parse(&plan.settings.output)?)?
        .confined(&plan.settings.allowed_roots);
    committer.remove_attempts();
    let failed_parts: HashSet<&str> = failures.iter().map(|f| f.part.as_str()).collect();
    let output = committer.url().clone();
    let sizes: BTreeMap<String, u64> = runtime.block_on(committer.list())?.into_iter().collect();
    // Every part the plan expects and no failure accounts for must be listed: a shard counted
    // committed (by this run or an earlier one) whose part is gone is failed, not skipped.
    let missing: Vec<MissingShard> = plan
        .shards
        .iter()
        .filter(|s| !failed_parts.contains(s.part.as_str()) && !sizes.contains_key(&s.part))
        .map(|s| MissingShard {
            shard: s.id,
            failure: ShardFailure {
                part: s.part.clone(),
                file: s.file.clone(),
                rows: (s.first_row, s.rows),
                causes: vec![format!(
                    "{} is missing from the output although its shard was counted committed \
                     (deleted, or never really written): rerun the same command to encode it \
                     again",
                    output.join(&s.part)
                )],
            },
        })
        .collect();
    for m in &missing {
        tracing::error!("{}", m.failure.causes[0]);
    }
    let failures: Vec<ShardFailure> = failures
        .iter()
        .cloned()
        .chain(missing.iter().map(|m| m.failure.clone()))
        .collect();
    let failed_parts: HashSet<&str> = failures.iter().map(|f| f.part.as_str()).collect();
    let mut summary = summarize(plan, reports, &failures, seconds);
    // Duplicate ids across the whole output (every committed part, this run's or earlier).
    // A part's sidecar holds its ids' sorted hashes: the check merges those and reads only
    // the parts without one.
    let part_files: Vec<PartIds> = plan
        .shards
        .iter()
        .filter(|s| !failed_parts.contains(s.part.as_str()))
        .filter_map(|s| {
            let file = part_file(&output, &s.part, *sizes.get(&s.part)?);
            let sidecar = crate::io::id_hashes::sidecar_name(&s.part);
            let sidecar = sizes.contains_key(&sidecar).then_some(sidecar);
            Some(file.map(|file| PartIds { file, sidecar }))
        })
        .collect::<Result<_, _>>()?;
    let (store, _) = output.store()?;
    let duplicates = find_duplicates(
        runtime,
        store,
        &committer,
        &part_files,
        &plan.identity.id_column,
        &plan.settings.allowed_roots,
    )?;
    summary.duplicate_ids = duplicates.rows;
    summary.duplicate_examples = duplicates.examples;
    summary.s3_requests = count_s3_requests
        .then(crate::io::retry::s3_requests)
        .filter(|r| r.requests > 0);
    // Manifest, then the success marker, last.
    let text_rows = text_part_rows(plan, &part_files, runtime)?;
    let mut rows_before: BTreeMap<&str, u64> = BTreeMap::new();
    let parts: Vec<ManifestPart> = plan
        .shards
        .iter()
        .filter(|s| !failed_parts.contains(s.part.as_str()))
        .map(|s| match &s.text {
            None => ManifestPart {
                name: s.part.clone(),
                rows: s.rows,
                source: s.file.clone(),
                first_row: s.first_row,
                bytes: None,
            },
            Some(slice) => {
                let rows = text_rows.get(&s.part).copied().unwrap_or(0);
                let before = rows_before.entry(s.file.as_str()).or_insert(0);
                let first_row = *before;
                *before += rows;
                ManifestPart {
                    name: s.part.clone(),
                    rows,
                    source: s.file.clone(),
                    first_row,
                    bytes: Some((slice.start, slice.end)),
                }
            }
        })
        .collect();
    let rows: u64 = parts.iter().map(|p| p.rows).sum();
    let bytes: u64 = parts.iter().filter_map(|p| sizes.get(&p.name)).sum();
    // Entries and clamped weights of the rows this run encoded (earlier runs' reports are gone).
    let entries: u64 = reports.values().map(|r| r.entries).sum();
    let clamped: u64 = reports.values().map(|r| r.clamped_weights).sum();
    if clamped > 0 {
        tracing::warn!(
            "{clamped} weight(s) were past 255 × --weight-scale {} and were stored as 255: rerun \
             into a new output with a larger --weight-scale to keep them apart",
            plan.identity.weight_scale.unwrap_or_default()
        );
    }
    let vectors = ManifestVectors {
        bytes,
        bytes_per_doc: if rows > 0 {
            bytes as f64 / rows as f64
        } else {
            0.0
        },
        clamped_weights: clamped,
        codec: crate::io::output::PART_CODEC.to_string(),
        entries_per_doc: if summary.docs > 0 {
            entries as f64 / summary.docs as f64
        } else {
            0.0
        },
        prune: plan.identity.prune.map(|p| p.to_string()),
        weight_type: plan.identity.weight_type,
        weight_scale: plan.identity.weight_scale,
    };
    let manifest = Manifest {
        sparq_version: env!("CARGO_PKG_VERSION").into(),
        complete: failures.is_empty(),
        model: ManifestModel {
            path: plan.model.clone(),
            fingerprint: plan.model_fingerprint.clone(),
            hub: crate::model::hub::origin(&plan.model),
        },
        settings: plan.identity.clone(),
        rows,
        files: parts,
        failed_shards: failures.clone(),
        failed_rows: reports
            .values()
            .flat_map(|r| r.failures.iter().cloned())
            .collect(),
        summary: summary.clone(),
        // A score output holds no vectors.
        vectors: plan.identity.query_column.is_none().then_some(vectors),
    };
    runtime.block_on(committer.put(
        MANIFEST,
        serde_json::to_vec_pretty(&manifest).expect("serializable"),
    ))?;
    if failures.is_empty() {
        runtime.block_on(committer.put(SUCCESS, Vec::new()))?;
    }
    Ok(Finished { summary, missing })
}

/// The shard reports and failures of a run summed (without duplicate ids, which need the
/// whole output read back).
pub fn summarize(
    plan: &EncodePlan,
    reports: &BTreeMap<usize, ShardReport>,
    failures: &[ShardFailure],
    seconds: f64,
) -> EncodeSummary {
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
        summary.skipped_lines += r.skipped_lines;
        for e in &r.skipped_line_examples {
            if summary.skipped_line_examples.len() < 20 {
                summary.skipped_line_examples.push(e.clone());
            }
        }
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
    summary
}

/// The rows of each committed part of a text shard, from its footer (a text shard's rows are
/// known once read, and parts committed by earlier runs have no report here).
fn text_part_rows(
    plan: &EncodePlan,
    parts: &[PartIds],
    runtime: &tokio::runtime::Runtime,
) -> Result<BTreeMap<String, u64>, JobError> {
    let text_parts: HashSet<&str> = plan
        .shards
        .iter()
        .filter(|s| s.text.is_some())
        .map(|s| s.part.as_str())
        .collect();
    let output = StoreUrl::parse(&plan.settings.output)?;
    let (store, _) = output.store()?;
    let mut rows = BTreeMap::new();
    for part in parts.iter().map(|p| &p.file) {
        let name = part.url.rsplit('/').next().unwrap_or(&part.url);
        if !text_parts.contains(name) {
            continue;
        }
        let mut reader =
            crate::io::input::InputReader::open(store.clone(), part, &plan.settings.allowed_roots)?;
        let footer = runtime.block_on(crate::io::input::read_footer(&mut reader))?;
        rows.insert(name.to_string(), footer.rows);
    }
    Ok(rows)
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
