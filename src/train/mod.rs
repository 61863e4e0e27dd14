//! `sparq train`: SPLADE fine-tuning with SpladeLoss, as sentence-transformers'
//! `SparseEncoderTrainer` does it, on one process or several (data parallel), resumable from
//! checkpoints, writing models sentence-transformers loads unchanged.

pub mod args;
pub mod buckets;
pub mod checkpoint;
pub mod collective;
mod cuda;
pub mod data;
pub mod dist;
pub mod events;
pub mod fence;
mod fenced_output;
pub mod files;
mod host;
pub mod loss;
pub mod mappings;
pub mod model;
pub mod nccl;
pub mod optim;
mod router_layout;
mod routing;
pub mod static_route;
pub mod step;
pub mod trainer;

use std::path::PathBuf;

pub use args::{TrainArgs, TrainConfig};

/// The marker file of a complete checkpoint (written last into `checkpoint-<step>/`).
pub const CHECKPOINT_MARKER: &str = "_COMPLETE";
pub use events::{StepLog, TrainEvent, TrainSummary};
pub use trainer::run_train;

/// What can stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A bad option or option combination.
    #[error("{0}")]
    Option(String),
    /// The training data cannot be used.
    #[error("training data: {0}")]
    Data(String),
    /// The training data cannot be read.
    #[error("training data: {0}")]
    DataStore(#[source] crate::io::StoreError),
    /// The output (checkpoints, the final model) cannot be read or written.
    #[error(transparent)]
    Store(#[from] crate::io::StoreError),
    /// Loading the model failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A libtorch operation failed.
    #[error("libtorch: {}", crate::model::clean_tch_error(&.0.to_string()))]
    Torch(#[from] tch::TchError),
    /// Reading or writing a file failed.
    #[error("{}: {detail}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        detail: String,
    },
    /// A checkpoint cannot be used.
    #[error("checkpoint {}: {detail}", path.display())]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The processes of a multi-process run lost each other.
    #[error("{0}")]
    Collective(String),
    /// Evaluation during training failed.
    #[error("evaluation: {0}")]
    Eval(#[from] crate::eval::EvalError),
    /// The loss, a gradient or a parameter became non-finite.
    #[error("{0}")]
    Diverged(String),
    /// Another run (a newer attempt of the job, or a second run on the output) owns the
    /// checkpoints: this one stops without writing.
    #[error("{0}")]
    Superseded(String),
}
