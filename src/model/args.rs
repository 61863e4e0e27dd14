//! Command-line options shared by every command that runs a model in-process.

use std::path::PathBuf;

use super::{DeviceSpec, Dtype, EncodeOptions, LongDocs, LongDocsMode, ModelError, SpladeEncoder};

/// Model, device, precision and batching options.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model folder: a sentence-transformers SparseEncoder (v4/v5 or v6 layout) or a Hugging
    /// Face BertForMaskedLM / DistilBertForMaskedLM folder; or a hub id `owner/name[@revision]`,
    /// read from the Hugging Face cache and downloaded when absent (unless HF_HUB_OFFLINE=1).
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
    /// Texts longer than the model's maximum length: `truncate` keeps the first window (as
    /// sentence-transformers does); `window` encodes every window of the maximum length and
    /// keeps the elementwise maximum, one vector per text.
    #[arg(long, value_enum, default_value_t = LongDocsMode::Truncate)]
    pub long_docs: LongDocsMode,
    /// With `--long-docs window`: tokens each window repeats from the one before (Hugging Face
    /// tokenizers' `stride`); below the window's text length.
    #[arg(long, default_value_t = 0, value_name = "TOKENS")]
    pub window_stride: usize,
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
        if self.window_stride != 0 && self.long_docs == LongDocsMode::Truncate {
            return Err(ModelError::Option(
                "--window-stride applies to --long-docs window; add --long-docs window".into(),
            ));
        }
        tch::set_num_threads(self.threads() as i32);
        let model = super::resolve_model(&self.model)?;
        let encoder = SpladeEncoder::load(&model, self.device, self.dtype)?;
        let opts = EncodeOptions {
            batch_size: self.batch_size.max(1),
            max_active_dims: self.max_active_dims,
            long_docs: LongDocs::new(self.long_docs, self.window_stride),
        };
        if let Some(stride) = opts.long_docs.stride() {
            // A stride the windows cannot hold is refused now, not at the first long text.
            encoder.tokenizer().encode_windows(Vec::new(), stride)?;
        }
        Ok((encoder, opts))
    }

    /// Threads in use.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}
