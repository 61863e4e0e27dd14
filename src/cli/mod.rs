//! The command line's side of each command: what it prints on stdout (results) and stderr
//! (messages), and the exit codes. The library below returns values and errors; main.rs parses
//! the arguments and calls these.

pub mod commands;
pub mod log;
pub mod service;
pub(crate) mod stdout;

/// Why a command failed: the error of the layer that failed, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The service's client.
    #[error(transparent)]
    Client(#[from] crate::serve::client::ClientError),
    /// A job spec file.
    #[error(transparent)]
    SpecFile(#[from] crate::serve::client::SpecFileError),
    /// The service or a worker.
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    /// An encode job.
    #[error(transparent)]
    Job(#[from] crate::job::JobError),
    /// Training.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// Evaluation.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// Export, inspect, decode.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// Hard-negative mining.
    #[error(transparent)]
    Mine(#[from] crate::mine::MineError),
    /// encode-text.
    #[error(transparent)]
    EncodeText(#[from] crate::encode::text::EncodeTextError),
    /// Anything else, said in full.
    #[error("{0}")]
    Message(String),
    /// The reader of stdout went away (EPIPE: `sparq decode … | head -1`): not a failure, the
    /// command ends quietly with exit code 0 (see [`stdout`]).
    #[error("stdout was closed before all results were written")]
    StdoutClosed,
    /// Writing results to stdout failed (a full disk, say).
    #[error("writing results to stdout failed")]
    Stdout(#[source] std::io::Error),
}

impl CliError {
    /// Whether the command ended because its reader went away: exit code 0, nothing said.
    pub fn is_stdout_closed(&self) -> bool {
        matches!(
            self,
            CliError::StdoutClosed | CliError::Export(crate::export::ExportError::StdoutClosed)
        )
    }
}
