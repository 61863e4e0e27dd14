//! sparq: SPLADE learned-sparse encoding at scale on libtorch, exact to sentence-transformers.
#![warn(missing_docs)]

pub mod coord;
pub mod encode;
pub mod eval;
pub mod export;
pub mod io;
pub mod model;
pub mod serve;
pub mod train;
pub mod types;

use std::path::PathBuf;

/// The bundled default model: `models/splade-bert-tiny-nq` under the working directory if it
/// is there, else the one in the source tree sparq was built from.
pub fn default_model_dir() -> PathBuf {
    let local = PathBuf::from("models/splade-bert-tiny-nq");
    if local.is_dir() {
        local
    } else {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/splade-bert-tiny-nq"
        ))
    }
}
