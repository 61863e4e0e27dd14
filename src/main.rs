//! The `sparq` command line: parses arguments and calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// SPLADE learned-sparse vectors at scale, exact to sentence-transformers.
#[derive(Parser)]
#[command(name = "sparq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encode texts from stdin (one JSON string per line) into sparse vectors on stdout.
    EncodeText(sparq::encode::text::EncodeTextArgs),
    /// Encode parquet corpora (local or S3) with worker processes, exactly once, resumable.
    Encode(sparq::encode::job::EncodeArgs),
    /// Retrieval metrics of a model on BEIR / NanoBEIR datasets, as sentence-transformers computes them.
    Eval(sparq::eval::run::EvalArgs),
    /// Internal: a worker process of `encode` (speaks JSON lines on stdin/stdout).
    #[command(hide = true)]
    EncodeWorker,
}

/// oneDNN primitives cached per process (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`, 1024 by default).
/// Batches come in ever-changing shapes and oneDNN keeps a primitive per shape: a worker's RSS
/// grew from 290 to 900 MiB over 30k documents (and past 1 GiB over 100k) with the default or
/// with 64, and from 270 to 420 MiB with 0. With 0, fp32 CPU encoding was as fast (7.8 s vs
/// 8.5 s for 3k docs) and bf16 CPU encoding 30% slower (7.4 s vs 5.7 s); CUDA is unaffected.
/// Set the variable to trade memory for CPU bf16 speed.
const ONEDNN_PRIMITIVE_CACHE: &str = "0";

fn main() -> ExitCode {
    if std::env::var_os("ONEDNN_PRIMITIVE_CACHE_CAPACITY").is_none() {
        // Before any thread exists and before libtorch reads it.
        std::env::set_var("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_PRIMITIVE_CACHE);
    }
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::EncodeText(args) => {
            // Unlocked handles: the pipeline reads and writes them on its own threads.
            let stdin = std::io::BufReader::with_capacity(1 << 16, std::io::stdin());
            let stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
            sparq::encode::text::run(&args, stdin, stdout).map_err(Into::into)
        }
        Command::Encode(args) => return encode(&args),
        Command::Eval(args) => eval(&args),
        Command::EncodeWorker => {
            let code = sparq::coord::worker::run_worker(std::io::stdin().lock(), std::io::stdout());
            return ExitCode::from(code as u8);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sparq: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `encode`: the summary JSON line on stdout; exit 1 on a job error, 2 when some shards
/// failed (the rest is committed).
fn encode(args: &sparq::encode::job::EncodeArgs) -> ExitCode {
    match sparq::coord::coordinator::run_encode(args) {
        Ok((summary, failures)) => {
            println!("{}", serde_json::to_string(&summary).expect("serializable"));
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
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("sparq: {} shard(s) failed; the rest is committed. Fix the cause and rerun the same command to finish.", failures.len());
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("sparq: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `eval`: one JSON line per dataset (the metrics alone for one dataset; with a
/// `dataset` key, then their mean, for several).
fn eval(args: &sparq::eval::run::EvalArgs) -> anyhow::Result<()> {
    let results = sparq::eval::run::run_eval(args)?;
    let line = |m: &sparq::eval::IrMetrics, name: Option<&str>| {
        let mut v = serde_json::to_value(m).expect("serializable");
        if let Some(name) = name {
            v["dataset"] = name.into();
        }
        println!("{v}");
    };
    if results.len() == 1 {
        line(&results[0].metrics, None);
    } else {
        for r in &results {
            line(&r.metrics, Some(&r.name));
        }
        line(&sparq::eval::run::aggregate(&results), Some("mean"));
    }
    Ok(())
}
