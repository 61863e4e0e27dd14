//! What `encode`, `eval`, `inspect`, `decode`, `export` and `train` print. Results go through
//! [`print_line`], so a reader that goes away (`| head -1`) ends the command quietly.

use std::process::ExitCode;

use super::stdout::{eprint_line, print_line};
use super::CliError;
use crate::eval::run::{aggregate, evaluate_model, EvalArgs};
use crate::eval::IrMetrics;
use crate::export::{InspectArgs, InspectReport};
use crate::job::args::{EncodeArgs, EncodeConfig, Fleet};
use crate::job::plan::EncodePlan;
use crate::job::score_args::ScoreArgs;
use crate::job::JobError;
use crate::train::{run_train, TrainArgs, TrainEvent};

/// `encode`: the summary JSON line on stdout; exit 1 on a job error, 2 when some shards
/// failed (the rest is committed), 128 + the signal when interrupted. With `--plan`, the plan.
///
/// Array tasks (`--task-index`) print their share's summary; `--plan-only` the shard count;
/// `--finalize` the summary, or the missing parts and exit 3.
pub fn encode(args: &EncodeArgs, given: impl Fn(&str) -> bool) -> ExitCode {
    let config = match args
        .job(given)
        .map_err(|e| e.to_string())
        .and_then(with_model)
    {
        Ok(config) => config,
        Err(e) => {
            eprint_line(format_args!("sparq: error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    if args.plan_only {
        let tasks = args.task_count.unwrap_or(1);
        return match crate::coord::coordinator::shard_count(&config, &args.fleet, tasks) {
            Ok(count) => print_or_fail(&count.to_string()),
            Err(e) => {
                eprint_line(format_args!("sparq: error: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    if args.finalize {
        return finalize(&config, &args.fleet, args.task_count);
    }
    match crate::job::tasks::resolve_share(args.task_index, args.task_count, |k| {
        std::env::var(k).ok()
    }) {
        Ok(share) => run_job(&config, &args.fleet, args.plan, share),
        Err(e) => {
            eprint_line(format_args!("sparq: error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Prints a result line; a reader that went away is not an error.
fn print_or_fail(line: &str) -> ExitCode {
    match print_line(line) {
        Ok(()) | Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprint_line(format_args!("sparq: error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// `encode --finalize`: the summary line, or each missing part on stderr and exit 3.
fn finalize(config: &EncodeConfig, fleet: &Fleet, tasks: Option<usize>) -> ExitCode {
    use crate::coord::coordinator::Finalized;
    match crate::coord::coordinator::finalize(config, fleet, tasks) {
        Ok(Finalized::Complete(summary)) => {
            print_or_fail(&serde_json::to_string(&summary).expect("serializable"))
        }
        Ok(Finalized::Incomplete { missing, shards }) => {
            eprint_line(format_args!(
                "sparq: {} is incomplete: {} of {shards} parts are missing, so no manifest or \
                 _SUCCESS was written:",
                config.output,
                missing.len()
            ));
            for m in missing.iter().take(50) {
                let task = m.task.map_or(String::new(), |t| format!(", task {t}"));
                eprint_line(format_args!(
                    "  {} (shard {}{task}): {} rows {}..{}",
                    m.part,
                    m.shard,
                    m.file,
                    m.rows.0,
                    m.rows.0 + m.rows.1
                ));
            }
            if missing.len() > 50 {
                eprint_line(format_args!("  ... and {} more", missing.len() - 50));
            }
            let mut tasks: Vec<usize> = missing.iter().filter_map(|m| m.task).collect();
            tasks.sort_unstable();
            tasks.dedup();
            eprint_line(format_args!(
                "sparq: {}, then --finalize again",
                if tasks.is_empty() {
                    "rerun the tasks (give --task-count N to see which ones own these parts)"
                        .to_string()
                } else {
                    format!(
                        "rerun task(s) {} (or the whole array: finished tasks exit at once)",
                        tasks
                            .iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                }
            ));
            ExitCode::from(3)
        }
        Err(e) => {
            eprint_line(format_args!("sparq: error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// `score`: as `encode` (the same summary, exit codes and `--plan`), for pairs.
pub fn score(args: &ScoreArgs) -> ExitCode {
    match args.job().map_err(|e| e.to_string()).and_then(with_model) {
        Ok(config) => run_job(&config, &args.fleet, args.plan, None),
        Err(e) => {
            eprint_line(format_args!("sparq: error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// The job with its model resolved: a hub id becomes its snapshot folder in the Hugging Face
/// cache (downloaded when absent), once here rather than in every worker process.
fn with_model(mut config: EncodeConfig) -> Result<EncodeConfig, String> {
    config.model = crate::model::resolve_model(&config.model).map_err(|e| e.to_string())?;
    Ok(config)
}

/// Runs (or with `plan`, plans) a job on this machine's workers.
fn run_job(
    config: &EncodeConfig,
    fleet: &Fleet,
    plan: bool,
    share: Option<crate::job::tasks::TaskShare>,
) -> ExitCode {
    if plan {
        return match crate::coord::coordinator::plan_only(config, fleet) {
            Ok(plan) => match print_line(plan_text(config, fleet, &plan).trim_end()) {
                Ok(()) | Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
                Err(e) => {
                    eprint_line(format_args!("sparq: error: {e}"));
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprint_line(format_args!("sparq: error: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    let result = crate::coord::coordinator::run_encode(config, fleet, share);
    say_s3_requests();
    match result {
        Ok((summary, failures)) => {
            // The work is committed whatever happens to the summary: a reader that went away
            // changes nothing, a failed write is said.
            if let Err(CliError::Stdout(e)) =
                print_line(serde_json::to_string(&summary).expect("serializable"))
            {
                eprint_line(format_args!(
                    "sparq: error: writing the summary to stdout failed: {e}"
                ));
            }
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprint_line(format_args!(
                    "sparq: {} shard(s) failed; the rest is committed. Fix the cause and rerun the \
                     same command to finish.",
                    failures.len()
                ));
                ExitCode::from(2)
            }
        }
        Err(e @ JobError::Interrupted { signal, .. }) => {
            eprint_line(format_args!(
                "sparq: {e}:\n  {}",
                shell_words(std::env::args())
            ));
            ExitCode::from(128 + signal as u8)
        }
        Err(e) => {
            eprint_line(format_args!("sparq: error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// The command line as a shell would take it back (single quotes where needed).
fn shell_words(args: impl Iterator<Item = String>) -> String {
    args.map(|a| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    })
    .collect::<Vec<_>>()
    .join(" ")
}

/// `encode --plan`: what would run.
fn plan_text(config: &EncodeConfig, fleet: &Fleet, plan: &EncodePlan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let files = &plan.identity.input_files;
    let rows: u64 = plan.shards.iter().map(|s| s.rows).sum();
    let pending: std::collections::HashSet<usize> = plan.pending.iter().copied().collect();
    let pending_rows: u64 = plan
        .shards
        .iter()
        .filter(|s| pending.contains(&s.id))
        .map(|s| s.rows)
        .sum();
    let workers = fleet.devices().len();
    let _ = writeln!(out, "input   {}", plan.identity.input);
    let _ = writeln!(out, "        {} file(s), {rows} rows", files.len());
    for f in files.iter().take(10) {
        let _ = writeln!(
            out,
            "        {} ({} rows, {} bytes)",
            f.url,
            f.rows.unwrap_or(0),
            f.size
        );
    }
    if files.len() > 10 {
        let _ = writeln!(out, "        ... and {} more", files.len() - 10);
    }
    let _ = writeln!(out, "model   {}", plan.model.display());
    let _ = writeln!(out, "output  {}", config.output);
    let _ = writeln!(
        out,
        "shards  {} of at most {} rows ({}); {} committed before, {} to encode ({pending_rows} rows)",
        plan.shards.len(),
        plan.identity.shard_rows,
        if config.shard_rows.is_some() {
            "--shard-rows".to_string()
        } else {
            format!(
                "default for {workers} {} worker{}",
                if fleet.devices().iter().all(|d| *d == crate::types::DeviceSpec::Cpu) {
                    "CPU"
                } else {
                    "GPU"
                },
                if workers == 1 { "" } else { "s" }
            )
        },
        plan.shards.len() - plan.pending.len(),
        plan.pending.len(),
    );
    if let Some(e) = &plan.estimate {
        let _ = writeln!(
            out,
            "tokens  ~{} to encode ({:.1} per row over the first {} rows of {})",
            (e.mean_tokens * pending_rows as f64).round() as u64,
            e.mean_tokens,
            e.sampled_rows,
            e.file
        );
    }
    out.push_str("nothing written (--plan)\n");
    out
}

/// `inspect`: the report as text, or as one JSON object with `--json`.
pub fn inspect(args: &InspectArgs) -> Result<(), CliError> {
    let r: InspectReport = crate::export::inspect(args)?;
    if args.json {
        return print_line(serde_json::to_string(&r).expect("serializable"));
    }
    print_line(&r.url)?;
    print_line(format_args!(
        "  {} rows in {} files, {} bytes ({:.1} bytes/row)",
        r.rows, r.files, r.bytes, r.bytes_per_row
    ))?;
    print_line(format_args!(
        "  null vectors {}, empty vectors {}",
        r.null_vectors, r.empty_vectors
    ))?;
    print_line(format_args!("  schema: {}", r.schema))?;
    match r.weight_scale {
        Some(scale) => print_line(format_args!(
            "  weights: {} (weight = q × {scale})",
            r.weight_type
        ))?,
        None => print_line(format_args!("  weights: {}", r.weight_type))?,
    }
    let d = &r.active_dims;
    print_line(format_args!(
        "  active dims: mean {:.1}, p50 {}, p99 {}, max {}",
        d.mean, d.p50, d.p99, d.max
    ))?;
    print_line("  top tokens by document frequency:")?;
    for t in &r.top_tokens_by_document_frequency {
        print_line(format_args!(
            "    {:>8} {:<20} {:>10} docs ({:.1}%)",
            t.id,
            t.token.as_deref().unwrap_or("?"),
            t.documents,
            100.0 * t.fraction
        ))?;
    }
    Ok(())
}

/// `decode`: one JSON line per row asked for.
pub fn decode(args: &crate::export::DecodeArgs) -> Result<(), CliError> {
    for row in crate::export::decode(args)? {
        print_line(row)?;
    }
    Ok(())
}

/// `export`: the summary JSON line, on stdout, or on stderr when the lines went to stdout
/// (`--output -`), so that stdout holds the data alone.
pub fn export(args: &crate::export::ExportArgs) -> Result<(), CliError> {
    let summary = crate::export::run_export(args);
    say_s3_requests();
    let summary = summary?;
    let line = serde_json::json!({ "export_summary": summary });
    if args.to_stdout() {
        eprint_line(line);
        Ok(())
    } else {
        print_line(line)
    }
}

/// `train`: each event as a JSON line on stdout (rank 0), the end on stderr. With the hidden
/// `--events` (a worker's child) a failure is written as an event too.
pub fn train(args: &TrainArgs) -> Result<(), CliError> {
    let mut print = |event: &TrainEvent| {
        // A reader of the log that went away does not stop the training.
        let _ = print_line(serde_json::to_string(event).expect("serializable"));
    };
    let result = run_train(args, &mut print);
    say_s3_requests();
    match result {
        Ok(Some(summary)) => {
            if std::env::var("RANK").map_or(true, |r| r == "0") {
                eprintln!(
                    "sparq: trained {} steps ({:.1} pairs/s); model in {}",
                    summary.steps, summary.samples_per_s, summary.output
                );
                print(&TrainEvent::Summary {
                    train_summary: summary,
                });
            }
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            if args.events {
                print(&TrainEvent::Failed {
                    train_error: e.to_string(),
                });
            }
            Err(e.into())
        }
    }
}

/// The end-of-run line on stderr of a command that talked to S3: its requests (its workers'
/// included) and how many were retried, by cause (`SPARQ_S3_*` set the retry policy).
fn say_s3_requests() {
    let requests = crate::io::retry::s3_requests();
    if requests.requests > 0 {
        eprint_line(format_args!("sparq: {requests}"));
    }
}

/// `eval`: one JSON line per dataset (the metrics alone for one dataset; with a `dataset` key,
/// then their mean, for several).
pub fn eval(args: &EvalArgs) -> Result<(), CliError> {
    let datasets = args.datasets()?;
    let (encoder, opts) = args.model.load().map_err(crate::eval::EvalError::from)?;
    let results = evaluate_model(&encoder, &datasets, &args.settings(opts))?;
    let line = |m: &IrMetrics, name: Option<&str>| {
        let mut v = serde_json::to_value(m).expect("serializable");
        if let Some(name) = name {
            v["dataset"] = name.into();
        }
        print_line(v)
    };
    if results.len() == 1 {
        line(&results[0].metrics, None)?;
    } else {
        for r in &results {
            line(&r.metrics, Some(&r.name))?;
        }
        line(&aggregate(&results), Some("mean"))?;
    }
    Ok(())
}

/// `mine`: the summary JSON line on stdout once this process's shards are committed. The
/// inputs are read and checked before any model loads.
pub fn mine(args: &crate::mine::MineArgs) -> Result<(), CliError> {
    use crate::mine::MineError;
    use crate::model::cross_encoder::CrossEncoder;
    use crate::model::ResolveDevice;
    let run = crate::mine::prepare(args)?;
    let loaded = match run.needs_model() {
        true => Some(args.model.load().map_err(MineError::from)?),
        false => None,
    };
    let model = loaded
        .as_ref()
        .map(|(m, opts)| (m as &dyn crate::model::SparseEncode, *opts));
    let cross_encoder = match run.cross_encoder() {
        Some(dir) => {
            tch::set_num_threads(args.model.threads() as i32);
            let device = args.model.device.resolve().map_err(MineError::from)?;
            Some(CrossEncoder::load(dir, device).map_err(MineError::from)?)
        }
        None => None,
    };
    let mut score = |pairs: &[(&str, &str)]| -> Result<Vec<f32>, MineError> {
        let ce = cross_encoder.as_ref().expect("loaded when used");
        Ok(ce.predict(pairs, args.model.batch_size)?)
    };
    let scorer: Option<&mut crate::mine::select::PairScorer<'_>> = match cross_encoder {
        Some(_) => Some(&mut score),
        None => None,
    };
    let summary = run.run(model, scorer)?;
    if !summary.complete {
        eprint_line(format_args!(
            "sparq: this process's shards are committed; the output is complete (_SUCCESS) once \
             every --worker-index has run"
        ));
    }
    print_line(serde_json::to_string(&summary).expect("serializable"))
}
