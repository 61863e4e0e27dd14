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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::EncodeText(args) => {
            let stdin = std::io::stdin().lock();
            let stdout = std::io::BufWriter::new(std::io::stdout().lock());
            sparq::encode::text::run(&args, stdin, stdout).map_err(Into::into)
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
