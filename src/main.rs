//! The `sparq` command line: parses arguments and calls the library.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sparq::cli::log::LogFormat;
use sparq::cli::CliError;
use sparq::model::encoder::{onednn_cache_capacity, ONEDNN_CACHE_VAR};
use sparq::model::{DeviceSpec, Dtype};

/// SPLADE learned-sparse vectors at scale, exact to sentence-transformers.
#[derive(Parser)]
#[command(name = "sparq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr: `text` (`sparq: ...`) or `json` (one object per line, for cluster
    /// log collectors). The level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, env = LOG_FORMAT_VAR, default_value = "text")]
    log_format: LogFormat,
}

/// Carries `--log-format` to child processes.
const LOG_FORMAT_VAR: &str = "SPARQ_LOG_FORMAT";

#[derive(Subcommand)]
enum Command {
    /// Encode texts from stdin (one JSON string per line, or plain text with --input-format
    /// text) into sparse vectors on stdout.
    #[command(
        after_help = "Examples:\n  echo '\"what is splade?\"' | sparq encode-text --query --tokens\n  printf 'first passage\\nsecond passage\\n' | sparq encode-text --input-format text\n  sparq encode-text --model models/my-splade --device cuda:0 --dtype bf16 < texts.jsonl > vectors.jsonl"
    )]
    EncodeText(sparq::encode::text::EncodeTextArgs),
    /// Encode parquet or text corpora (JSON lines, TSV, CSV; plain, .gz or .zst; local or S3) with
    /// worker processes, exactly once, resumable.
    #[command(
        after_help = "Examples:\n  sparq encode --input corpus.jsonl.gz --output runs/vectors --id-column _id --workers 2\n  sparq encode --input 's3://corpus/raw/*.parquet' --output s3://corpus/splade/ --devices cuda:0,cuda:1\n  sparq encode --config job.toml --plan      # what would run, nothing written"
    )]
    Encode(sparq::job::args::EncodeArgs),
    /// Score (query, text) pairs of parquet files with a cross-encoder, as encode runs: worker
    /// processes, exactly once, resumable.
    #[command(
        after_help = "Examples:\n  sparq score --model models/my-cross-encoder --input pairs.parquet --output runs/scores\n  sparq score --model ce --input 's3://data/pairs/*.parquet' --output s3://data/scores/ --workers 4\n  sparq score --model ce --input pairs.tsv.gz --columns id,query,text --output scores"
    )]
    Score(sparq::job::score_args::ScoreArgs),
    /// Retrieval metrics of a model on BEIR / NanoBEIR datasets, as sentence-transformers computes them.
    #[command(
        after_help = "Examples:\n  sparq eval --beir tests/fixtures/beir-small\n  sparq eval --beir path/to/nfcorpus --split test --run-file run.tsv\n  sparq eval --beir path/to/nfcorpus --corpus-vectors runs/nfcorpus-vectors --corpus-id-column _id"
    )]
    Eval(sparq::eval::run::EvalArgs),
    /// Fine-tune a SPLADE model with SpladeLoss (one process or several), resumable.
    #[command(
        after_help = "Examples:\n  sparq train --config configs/train-quick.toml\n  sparq train --config configs/train-quick.toml --resume\n  sparq train --config configs/train-reference.toml --device cuda --dtype bf16 --nproc-per-node 8"
    )]
    Train(Box<sparq::train::TrainArgs>),
    /// Mine hard negatives for (anchor, positive) pairs, as sentence-transformers'
    /// mine_hard_negatives selects them; query shards committed exactly once, resumable.
    #[command(
        after_help = "Examples:\n  sparq mine --dataset examples/pairs/pairs.parquet --output runs/mined --num-negatives 5 --relative-margin 0.05\n  sparq mine --dataset pairs.parquet --corpus corpus.parquet --output s3://bucket/mined/ --output-format n-tuple --output-scores\n  sparq mine --dataset pairs.parquet --corpus-vectors runs/corpus-vectors --output runs/mined --workers 4 --worker-index 0\n\nMemory: the dataset and corpus texts, the corpus vectors and their inverted index (about 2 x non-zeros x 8 bytes) and one shard of queries must fit in RAM."
    )]
    Mine(Box<sparq::mine::MineArgs>),
    /// Convert an encode output for a retrieval engine: anserini, qdrant, elasticsearch, jsonl.
    #[command(
        after_help = "Examples:\n  sparq export --input runs/vectors --output runs/anserini --format anserini\n  sparq export --input runs/vectors --output - --format qdrant | head -2\n  sparq export --input s3://corpus/splade/ --output es.jsonl.gz --format elasticsearch --index docs --gzip"
    )]
    Export(sparq::export::ExportArgs),
    /// Summarise an encode output: rows, files, bytes, active dims, frequent tokens.
    #[command(
        after_help = "Examples:\n  sparq inspect runs/vectors\n  sparq inspect s3://corpus/splade/ --json"
    )]
    Inspect(sparq::export::InspectArgs),
    /// Show the top tokens of given rows of an encode output.
    #[command(
        after_help = "Examples:\n  sparq decode runs/vectors --id 3 --id 17\n  sparq decode runs/vectors --id doc-42 --top 10 | head -1"
    )]
    Decode(sparq::export::DecodeArgs),
    /// Run the batch-job service: a job queue (SQLite) and shard leases for remote workers.
    #[command(
        after_help = "Examples:\n  sparq serve --state runs/sparq.db\n  SPARQ_TOKEN=secret sparq serve --listen 0.0.0.0:7070 --tls-cert server.pem --tls-key server.key --allow-root /data"
    )]
    Serve(sparq::serve::ServeArgs),
    /// Submit a job spec (TOML) to a coordinator; prints the job id.
    #[command(
        after_help = "Examples:\n  sparq submit jobs/encode-local.toml --wait\n  sparq submit jobs/train.toml --coordinator https://head-node:7070 --ca-cert ca.pem"
    )]
    Submit(sparq::serve::client::SubmitArgs),
    /// Show the coordinator's jobs: state, shards, rows, rate, ETA, failures.
    #[command(after_help = "Examples:\n  sparq status\n  sparq status JOB_ID --wait")]
    Status(sparq::serve::client::StatusArgs),
    /// Cancel a job.
    #[command(
        after_help = "Examples:\n  sparq cancel JOB_ID\n  sparq cancel JOB_ID --coordinator https://head-node:7070"
    )]
    Cancel(sparq::serve::client::CancelArgs),
    /// Work for a coordinator: lease shards over HTTP and encode them (any number, anywhere).
    #[command(
        after_help = "Examples:\n  sparq worker --threads 2 --name w1\n  sparq worker --device cuda:0 --coordinator https://head-node:7070 --ca-cert ca.pem --idle-exit 600"
    )]
    Worker(sparq::serve::remote::WorkerArgs),
    /// Internal: a worker process of `encode` (speaks JSON lines on stdin/stdout).
    #[command(hide = true)]
    EncodeWorker,
}

/// glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB),
/// after which large buffers come from the heap and fragment it: a worker's RSS crept from 878
/// to 1,184 MiB (process tree) over 100k documents. A fixed threshold turns that adjustment
/// off: with 32 MiB (above the 16 MiB logits chunks, so they are not re-faulted on every batch)
/// the same run stayed at 867 → 686 MiB (2026-11-27, `bench/memory.py`). The trim threshold
/// goes to 64 MiB: glibc's 128 KiB default (what a fixed mmap threshold leaves) trimmed and
/// re-faulted the heap on every batch (7 s of system time for 3k docs instead of 0.3 s).
/// Arenas are capped at 2: glibc gives threads up to 8 arenas per core, and the pipeline's
/// threads (reader, tokenizer pool, model, writer, I/O) each fragmented their own; on 40k docs
/// with 2 workers the tree's RSS floor rose 500 → 583 MiB with the default and stayed at
/// 495 → 474 MiB with 2 arenas, peaks ~80 MiB lower, same speed (`bench/RESULTS.md`).
/// `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` / `MALLOC_ARENA_MAX` win.
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any thread exists.
    unsafe {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        }
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Before any thread exists and before libtorch reads it. The coordinator runs no model: it
    // passes each worker the setting for that worker's device and precision.
    if std::env::var_os(ONEDNN_CACHE_VAR).is_none() {
        let setting = match &cli.command {
            Command::EncodeText(args) => Some(args.model.onednn_cache_capacity()),
            Command::Eval(args) => Some(args.model.onednn_cache_capacity()),
            Command::Mine(args) => Some(args.model.onednn_cache_capacity()),
            Command::EncodeWorker => Some(onednn_cache_capacity(DeviceSpec::Cpu, Dtype::F32)),
            Command::Encode(_) | Command::Score(_) => None,
            Command::Train(_) => Some(onednn_cache_capacity(DeviceSpec::Cpu, Dtype::F32)),
            Command::Worker(args) => Some(onednn_cache_capacity(args.device, Dtype::F32)),
            Command::Export(_) | Command::Inspect(_) | Command::Decode(_) => None,
            Command::Serve(_) | Command::Submit(_) | Command::Status(_) | Command::Cancel(_) => {
                None
            }
        };
        if let Some(value) = setting {
            std::env::set_var(ONEDNN_CACHE_VAR, value);
        }
    }
    // Children (a worker's `sparq train`, `sparq encode`'s workers) log the same way.
    std::env::set_var(LOG_FORMAT_VAR, cli.log_format.as_str());
    sparq::cli::log::init(cli.log_format);
    use sparq::cli::{commands, service};
    let result: Result<(), CliError> = match cli.command {
        Command::EncodeText(args) => {
            // Unlocked handles: the pipeline reads and writes them on its own threads.
            let stdin = std::io::BufReader::with_capacity(1 << 16, std::io::stdin());
            let stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
            sparq::encode::text::run(&args, stdin, stdout).map_err(Into::into)
        }
        Command::Encode(args) => {
            // Which flags the user typed: they win over a --config job file.
            let sub = matches.subcommand_matches("encode").expect("encode");
            let given = |id: &str| {
                matches!(
                    sub.try_get_raw(id).ok().flatten().and(sub.value_source(id)),
                    Some(clap::parser::ValueSource::CommandLine)
                )
            };
            return commands::encode(&args, given);
        }
        Command::Score(args) => return commands::score(&args),
        Command::Eval(args) => commands::eval(&args),
        Command::Mine(args) => commands::mine(&args),
        Command::Train(args) => commands::train(&args),
        Command::Export(args) => commands::export(&args),
        Command::Inspect(args) => commands::inspect(&args),
        Command::Decode(args) => commands::decode(&args),
        Command::Serve(args) => sparq::serve::run_serve(&args).map_err(Into::into),
        // These exit with the job's status: 0 succeeded, 1 failed, 3 cancelled.
        Command::Submit(args) => return with_code(service::submit(&args)),
        Command::Status(args) => return with_code(service::status(&args)),
        Command::Cancel(args) => service::cancel(&args),
        Command::Worker(args) => sparq::serve::remote::run_remote_worker(&args).map_err(Into::into),
        Command::EncodeWorker => {
            let code =
                sparq::coord::worker::run_pipe_worker(std::io::stdin().lock(), std::io::stdout());
            return ExitCode::from(code as u8);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Prints an error with its chain of causes (each said once: a message that already quotes
/// its cause does not repeat it); exit code 1. A command whose stdout reader went away
/// (`| head`) ends quietly with 0, as Unix tools do.
fn fail(e: CliError) -> ExitCode {
    if e.is_stdout_closed() {
        return ExitCode::SUCCESS;
    }
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = c.source();
    }
    // Not eprintln!: it panics when stderr is a closed pipe too.
    let _ = writeln!(std::io::stderr().lock(), "sparq: error: {message}");
    ExitCode::FAILURE
}

/// A command's own exit code, or 1 with its error.
fn with_code(result: Result<u8, CliError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e),
    }
}
