//! Command-line options shared by every command that runs a model in-process.

use std::path::PathBuf;

use super::{DeviceSpec, Dtype, EncodeOptions, ModelError, SpladeEncoder};

/// Model, device, precision and batching options.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model folder: a sentence-transformers SparseEncoder (v4/v5 or v6 layout) or a Hugging
    /// Face BertForMaskedLM / DistilBertForMaskedLM folder.
    #[arg(long, env = "SPARQ_MODEL", default_value_os_t = crate::model::default_model_dir())]
    pub model: PathBuf,
    /// Keep only the K largest weights of each vector (default: the model's saved setting, else all).
    #[arg(long, value_name = "K")]
    pub max_active_dims: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Precision: f32 (exact to the reference) or bf16. Default: f32 on CPU, bf16 on CUDA.
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Intra-op threads for libtorch (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// The oneDNN primitive cache setting for this device and precision.
    pub fn onednn_cache_capacity(&self) -> &'static str {
        let dtype = self.dtype.unwrap_or(super::Dtype::default_for(self.device));
        super::encoder::onednn_cache_capacity(self.device, dtype)
    }

    /// Checks the options, sets the thread count and loads the model.
    pub fn load(&self) -> Result<(SpladeEncoder, EncodeOptions), ModelError> {
        if self.max_active_dims == Some(0) {
            return Err(ModelError::Option(
                "--max-active-dims must be a positive integer".into(),
            ));
        }
        tch::set_num_threads(self.threads() as i32);
        let encoder = SpladeEncoder::load(&self.model, self.device, self.dtype)?;
        let opts = EncodeOptions {
            batch_size: self.batch_size.max(1),
            max_active_dims: self.max_active_dims,
        };
        Ok((encoder, opts))
    }

    /// Threads in use.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}
