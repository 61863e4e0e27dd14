//! The command line's side of each command: what it prints on stdout (results) and stderr
//! (messages), and the exit codes. The library below returns values and errors; main.rs parses
//! the arguments and calls these.

pub mod commands;
pub mod log;
pub mod service;

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
    /// encode-text.
    #[error(transparent)]
    EncodeText(#[from] crate::encode::text::EncodeTextError),
    /// Anything else, said in full.
    #[error("{0}")]
    Message(String),
}
