//! [`MlmRoute`]: a masked-LM backbone + SPLADE pooling on one device, the route of every
//! input kind a [`SpladeEncoder`] runs through a model; encoding options; [`InFlight`] batches.

use tch::{Device, Tensor};

use super::attention::AttentionKernel;
use super::bge_m3::TokenWeightPooling;
use super::config::ArchConfig;
use super::extract::{Extracted, Extraction};
use super::layout::ModelLayout;
use super::mlm::MaskedLm;
use super::packed::{token_bucket, PackedBatch};
use super::pooling::SpladePooling;
use super::profile;
use super::tokenizer::SpladeTokenizer;
use super::weights::WeightMap;
use super::windows::LongDocs;
use super::ModelError;
use crate::types::{DeviceSpec, Dtype, InputKind, SparseVector};

/// Per-call encoding options.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Keep only the K largest weights of each vector (`None`: the model's saved default).
    pub max_active_dims: Option<usize>,
    /// Texts longer than the model's maximum length: truncated, or encoded as windows.
    pub long_docs: LongDocs,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            max_active_dims: None,
            long_docs: LongDocs::Truncate,
        }
    }
}

/// Anything that turns texts into SPLADE vectors: a loaded model, or a model being trained
/// (evaluated in process, without writing it to disk).
pub trait SparseEncode {
    /// Encodes texts as `kind`; `None` gives an empty vector. Output order equals input order.
    fn encode_texts(
        &self,
        texts: &[Option<&str>],
        kind: InputKind,
        opts: EncodeOptions,
    ) -> Result<Vec<SparseVector>, ModelError>;

    /// Output dimension (vocabulary size).
    fn dimension(&self) -> i64;
}

/// A masked-LM route: tokenizer, backbone and pooling on one device.
pub struct MlmRoute {
    layout: ModelLayout,
    tokenizer: SpladeTokenizer,
    model: MaskedLm,
    head: SparseHead,
    device: Device,
    dtype: Dtype,
    /// Sparse extraction state (the adaptive bound on non-zeros per row).
    extraction: Extraction,
    /// Memory maps the model's tensors may point into: they live as long as the model.
    _maps: Vec<std::sync::Arc<memmap2::Mmap>>,
}

impl MlmRoute {
    /// Loads the backbone of `layout` onto `device` in `dtype`.
    pub fn load(layout: ModelLayout, device: Device, dtype: Dtype) -> Result<Self, ModelError> {
        let tokenizer = SpladeTokenizer::load(&layout)?;
        // fp32 on CPU uses the checkpoint's tensors as they are: map them, so every worker
        // process on the machine shares one copy (anything else is converted, i.e. copied).
        let shared = device == Device::Cpu && dtype == Dtype::F32;
        let mut weights = if shared {
            WeightMap::load_mapped(&layout.transformer_dir)?
        } else {
            WeightMap::load(&layout.transformer_dir)?
        };
        let mut model = MaskedLm::load(&mut weights, &layout.arch)?;
        weights.check_finite(&layout.root)?;
        model.to(device, dtype.kind());
        // One Q/K/V GEMM per layer, except where the weights are mapped from the page cache:
        // a fused copy would cost every worker its own (and CPU GEMMs gain little from it).
        if !shared {
            model.fuse_qkv()?;
        }
        let head = match layout.arch {
            ArchConfig::BgeM3(_) => SparseHead::TokenWeight(TokenWeightPooling::new(
                &layout.transformer_dir,
                &tokenizer,
            )?),
            _ => SparseHead::Splade(layout.pooling),
        };
        Ok(Self {
            layout,
            tokenizer,
            model,
            head,
            device,
            dtype,
            extraction: Extraction::new(device),
            _maps: weights.maps(),
        })
    }

    /// The folder layout (pooling, prompts, limits).
    pub fn layout(&self) -> &ModelLayout {
        &self.layout
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &SpladeTokenizer {
        &self.tokenizer
    }

    /// Output dimension (vocabulary size).
    pub fn dimension(&self) -> i64 {
        self.layout.arch.vocab_size()
    }

    /// The pooling settings.
    pub fn pooling(&self) -> SpladePooling {
        self.layout.pooling
    }

    /// The prompt the model saved for `kind` inputs, if any.
    pub fn prompt(&self, kind: InputKind) -> Option<&str> {
        match kind {
            InputKind::Query => self.layout.query_prompt.as_deref(),
            InputKind::Document => self.layout.document_prompt.as_deref(),
        }
        .filter(|p| !p.is_empty())
    }

    /// Encodes tokenized texts; `None` gives an empty vector. Batches of `opts.batch_size` are
    /// formed longest first, as the reference orders them, so similar lengths pad little.
    /// Output order equals input order.
    pub fn encode_tokenized(
        &self,
        ids: &[Option<Vec<u32>>],
        opts: EncodeOptions,
    ) -> Result<Vec<SparseVector>, ModelError> {
        let mut order: Vec<usize> = (0..ids.len()).filter(|&i| ids[i].is_some()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].as_ref().map_or(0, Vec::len)));
        let mut out = vec![SparseVector::default(); ids.len()];
        // On CUDA the next batch is launched before this one is waited for (see `launch`).
        let mut pending: Option<(&[usize], InFlight<'_>)> = None;
        for chunk in order.chunks(opts.batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk
                .iter()
                .map(|&i| ids[i].as_deref().unwrap_or_default())
                .collect();
            let launched = self.launch(&batch, opts.max_active_dims)?;
            let (done, inflight) = if self.device.is_cuda() {
                match pending.replace((chunk, launched)) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                (chunk, launched)
            };
            for (&i, vector) in done.iter().zip(inflight.wait()?) {
                out[i] = vector;
            }
        }
        if let Some((done, inflight)) = pending {
            for (&i, vector) in done.iter().zip(inflight.wait()?) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// The multiple that padded lengths and projected token counts are rounded up to: see
    /// [`onednn_cache_capacity`].
    pub fn shape_multiple(&self) -> i64 {
        if self.device == Device::Cpu && self.dtype == Dtype::Bf16 {
            8
        } else {
            1
        }
    }

    /// One forward pass over already tokenized sequences.
    pub fn encode_ids(
        &self,
        batch: &[&[u32]],
        max_active_dims: Option<usize>,
    ) -> Result<Vec<SparseVector>, ModelError> {
        self.launch(batch, max_active_dims)?.wait()
    }

    /// Starts a forward pass over tokenized sequences: on CUDA everything (upload, model,
    /// pooling, extraction, the copy of the result to the host) is queued and this returns
    /// at once, so the caller can prepare and launch the next batch before it waits for this
    /// one ([`InFlight::wait`]). On CPU the work is done here.
    pub fn launch(
        &self,
        batch: &[&[u32]],
        max_active_dims: Option<usize>,
    ) -> Result<InFlight<'_>, ModelError> {
        if batch.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Option("an input has no tokens at all".into()));
        }
        let k = max_active_dims.or(self.layout.max_active_dims);
        let mut clock = profile::Clock::start(self.device);
        tch::no_grad(|| -> Result<InFlight, ModelError> {
            let (pooled, cold) = match self.pooled(batch, &mut clock) {
                // The variable-length kernels failed on this GPU: the grid path from now on.
                Err(e) if !super::attention::varlen_usable() && self.device.is_cuda() => {
                    tracing::info!("note: {e}; attention falls back to a padded grid");
                    self.pooled(batch, &mut clock)?
                }
                other => other?,
            };
            let result = self.extraction.launch(&pooled, k, self.device)?;
            clock.lap(profile::Stage::Extract);
            Ok(InFlight(Pending::Device {
                result,
                rows: batch.len(),
                extraction: &self.extraction,
                model: self.layout.root.clone(),
                tokens: batch.iter().map(|s| s.len() as u64).sum(),
                cold,
            }))
        })
    }

    /// The pooled `[sequences, vocab]` fp32 vectors of a batch, on the device, and whether the
    /// batch's padded shape was new.
    fn pooled(
        &self,
        batch: &[&[u32]],
        clock: &mut profile::Clock,
    ) -> Result<(Tensor, bool), ModelError> {
        let real: i64 = batch.iter().map(|s| s.len() as i64).sum();
        let multiple = self.shape_multiple();
        let total = token_bucket(real, self.device.is_cuda(), multiple);
        let cold = profile::count_shape(total);
        let kernel = AttentionKernel::for_device(self.device);
        let packed = PackedBatch::new(batch, total, self.device, kernel, multiple)?;
        clock.lap(profile::Stage::Input);
        let hidden = self.model.transformed(&packed)?;
        clock.lap(profile::Stage::Encoder);
        let pooled = match &self.head {
            SparseHead::Splade(p) => {
                p.pool(&hidden, &packed.lengths, self.model.decoder(), multiple)?
            }
            SparseHead::TokenWeight(p) => {
                p.pool(&hidden, &packed, self.model.decoder(), self.dimension())?
            }
        };
        clock.lap(profile::Stage::Pooling);
        Ok((pooled, cold))
    }
}

/// How hidden states become sparse vectors, chosen at load from the model folder.
enum SparseHead {
    /// SPLADE pooling of the masked-LM logits.
    Splade(SpladePooling),
    /// BGE-M3's token weights, max-pooled by token id.
    TokenWeight(TokenWeightPooling),
}

/// A batch whose forward pass is queued on the device (or, on an inference-free route,
/// whose vectors are already made).
pub struct InFlight<'a>(Pending<'a>);

enum Pending<'a> {
    Device {
        result: Extracted,
        rows: usize,
        extraction: &'a Extraction,
        model: std::path::PathBuf,
        /// Real tokens, and whether the batch's padded shape was new (for the profile).
        tokens: u64,
        cold: bool,
    },
    Ready(Vec<SparseVector>),
}

impl InFlight<'_> {
    /// Vectors made on the host, handed back by [`Self::wait`] as they are.
    pub fn ready(vectors: Vec<SparseVector>) -> Self {
        InFlight(Pending::Ready(vectors))
    }

    /// Waits for the batch and returns its vectors, in input order: one device-to-host copy
    /// (and one wait) per batch, unless a vector has more non-zeros than the extraction's
    /// current bound, when the batch is extracted again exactly (and the bound raised).
    pub fn wait(self) -> Result<Vec<SparseVector>, ModelError> {
        let (result, rows, extraction, model, tokens, cold) = match self.0 {
            Pending::Ready(vectors) => return Ok(vectors),
            Pending::Device {
                result,
                rows,
                extraction,
                model,
                tokens,
                cold,
            } => (result, rows, extraction, model, tokens, cold),
        };
        let out = tch::no_grad(|| extraction.finish(result, rows))?;
        profile::batch_done(tokens, cold);
        // Finite weights can still overflow (bf16, extreme inputs): never write NaN.
        if out.iter().any(|v| v.values.iter().any(|x| !x.is_finite())) {
            return Err(ModelError::NonFinite {
                path: model,
                detail: format!(
                    "its output for a batch of {rows} texts holds NaN or infinite weights"
                ),
            });
        }
        Ok(out)
    }
}

/// The environment variable oneDNN reads its primitive cache size from (default 1024).
pub const ONEDNN_CACHE_VAR: &str = "ONEDNN_PRIMITIVE_CACHE_CAPACITY";

/// The oneDNN primitive cache size for a process encoding on `device` in `dtype`.
///
/// oneDNN keeps a compiled primitive per matmul shape, and length-sorted batches come in
/// ever-changing shapes. Measured on the 2-core CPU machine, 15k docs, tiny model, fp32,
/// `encode-text`, RSS at 10% → end of the run (2026-11-27): cache 1024 grew 375 → 585 MiB;
/// cache off stayed at 258 → 281 MiB at the same speed (fp32 matmuls do not go through
/// oneDNN's cache). bf16 matmuls do: with the cache off, BERT-base bf16 ran 13% slower
/// (7.2 s vs 6.2 s for 300 docs). So bf16 on CPU keeps the cache and rounds padded lengths and
/// projected token counts up to multiples of 8 ([`MlmRoute::shape_multiple`]), which bounds
/// the set of shapes: 360 → 375 MiB over the same run, as fast. Everything else runs with the
/// cache off. Setting the variable overrides this.
pub fn onednn_cache_capacity(device: DeviceSpec, dtype: Dtype) -> &'static str {
    if device == DeviceSpec::Cpu && dtype == Dtype::Bf16 {
        "1024"
    } else {
        "0"
    }
}
