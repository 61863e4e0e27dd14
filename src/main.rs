//! The `sparq` command line: parses arguments and calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    EncodeText(sparq::encode::text::EncodeTextArgs),
    /// Encode parquet corpora (local or S3) with worker processes, exactly once, resumable.
    Encode(sparq::job::args::EncodeArgs),
    /// Retrieval metrics of a model on BEIR / NanoBEIR datasets, as sentence-transformers computes them.
    Eval(sparq::eval::run::EvalArgs),
    /// Fine-tune a SPLADE model with SpladeLoss (one process or several), resumable.
    Train(Box<sparq::train::TrainArgs>),
    /// Convert an encode output for a retrieval engine: anserini, qdrant, elasticsearch, jsonl.
    Export(sparq::export::ExportArgs),
    /// Summarise an encode output: rows, files, bytes, active dims, frequent tokens.
    Inspect(sparq::export::InspectArgs),
    /// Show the top tokens of given rows of an encode output.
    Decode(sparq::export::DecodeArgs),
    /// Run the batch-job service: a job queue (SQLite) and shard leases for remote workers.
    Serve(sparq::serve::ServeArgs),
    /// Submit a job spec (TOML) to a coordinator; prints the job id.
    Submit(sparq::serve::client::SubmitArgs),
    /// Show the coordinator's jobs: state, shards, rows, rate, ETA, failures.
    Status(sparq::serve::client::StatusArgs),
    /// Cancel a job.
    Cancel(sparq::serve::client::CancelArgs),
    /// Work for a coordinator: lease shards over HTTP and encode them (any number, anywhere).
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
    let cli = Cli::parse();
    // Device errors suggest the flag of the command that named the device.
    if let Command::Encode(_) | Command::EncodeWorker = cli.command {
        DeviceSpec::set_flag_name("--devices");
    }
    // Before any thread exists and before libtorch reads it. The coordinator runs no model: it
    // passes each worker the setting for that worker's device and precision.
    if std::env::var_os(ONEDNN_CACHE_VAR).is_none() {
        let setting = match &cli.command {
            Command::EncodeText(args) => Some(args.model.onednn_cache_capacity()),
            Command::Eval(args) => Some(args.model.onednn_cache_capacity()),
            Command::EncodeWorker => Some(onednn_cache_capacity(DeviceSpec::Cpu, Dtype::F32)),
            Command::Encode(_) => None,
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
        Command::Encode(args) => return commands::encode(&args),
        Command::Eval(args) => commands::eval(&args),
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

/// Prints an error with its chain of causes; exit code 1.
fn fail(e: CliError) -> ExitCode {
    eprintln!("sparq: error: {:#}", anyhow::Error::new(e));
    ExitCode::FAILURE
}

/// A command's own exit code, or 1 with its error.
fn with_code(result: Result<u8, CliError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e),
    }
}
