//! [`SpladeEncoder`]: text → SPLADE sparse vectors, equal to sentence-transformers'
//! `SparseEncoder.encode_query` / `encode_document` on the same model folder, with a
//! [`Route`] per input kind: one model for both (plain SPLADE), a model per kind (two-encoder
//! Routers), or an inference-free query route (`SparseStaticEmbedding`, see
//! [`super::router`]).

use std::path::{Path, PathBuf};

use tch::Device;

use super::device::ResolveDevice;
use super::encoder::{EncodeOptions, InFlight, MlmRoute, SparseEncode};
use super::layout::ModelLayout;
use super::pooling::SpladePooling;
use super::profile;
use super::router::{RouteLayout, RouterLayout};
use super::static_embedding::SparseStaticEmbedding;
use super::tokenizer::SpladeTokenizer;
use super::windows::{self, LongDocs};
use super::ModelError;
use crate::types::{DeviceSpec, Dtype, InputKind, SparseVector};

/// A loaded SPLADE model: the route of documents and, when the model has its own, of queries.
pub struct SpladeEncoder {
    root: PathBuf,
    document: MlmRoute,
    query: QueryRoute,
    device: Device,
    dtype: Dtype,
}

/// How queries are encoded.
enum QueryRoute {
    /// By the document route (a plain SPLADE model, or a Router whose routes share modules).
    Document,
    /// By a second backbone.
    Mlm(Box<MlmRoute>),
    /// By a static weight per token (no model call).
    Static(Box<StaticRoute>),
}

struct StaticRoute {
    embedding: SparseStaticEmbedding,
    prompt: Option<String>,
    max_active_dims: Option<usize>,
}

/// What one input kind is encoded with: its tokenizer, prompt and model (or lookup).
#[derive(Clone, Copy)]
pub struct Route<'a> {
    kind: InputKind,
    backend: Backend<'a>,
}

#[derive(Clone, Copy)]
enum Backend<'a> {
    Mlm(&'a MlmRoute),
    Static(&'a StaticRoute),
}

impl SpladeEncoder {
    /// Loads the model folder `dir` onto `device` in `dtype` (default: bf16 on CUDA, fp32 on CPU).
    pub fn load(dir: &Path, device: DeviceSpec, dtype: Option<Dtype>) -> Result<Self, ModelError> {
        let started = std::time::Instant::now();
        // Reads the plain layout, or refuses what sparq cannot run, naming the file.
        let layout = ModelLayout::read(dir)?;
        let torch_device = device.resolve()?;
        let dtype = dtype.unwrap_or(Dtype::default_for(device));
        let modules = dir.join("modules.json");
        let router = if modules.is_file() {
            RouterLayout::read(dir, &modules)?
        } else {
            None
        };
        let query = match router {
            None => QueryRoute::Document,
            Some(r) if r.shared => QueryRoute::Document,
            Some(r) => match r.query {
                RouteLayout::Mlm(q) => {
                    QueryRoute::Mlm(Box::new(MlmRoute::load(*q, torch_device, dtype)?))
                }
                RouteLayout::Static(s) => QueryRoute::Static(Box::new(StaticRoute {
                    embedding: SparseStaticEmbedding::load(&s)?,
                    prompt: s.prompt,
                    max_active_dims: s.max_active_dims,
                })),
            },
        };
        let document = MlmRoute::load(layout, torch_device, dtype)?;
        profile::loaded(started.elapsed().as_secs_f64());
        Ok(Self {
            root: dir.to_path_buf(),
            document,
            query,
            device: torch_device,
            dtype,
        })
    }

    /// The route `kind` inputs take.
    pub fn route(&self, kind: InputKind) -> Route<'_> {
        let backend = match (&self.query, kind) {
            (QueryRoute::Mlm(m), InputKind::Query) => Backend::Mlm(m),
            (QueryRoute::Static(s), InputKind::Query) => Backend::Static(s),
            _ => Backend::Mlm(&self.document),
        };
        Route { kind, backend }
    }

    /// Whether queries are encoded without a model call (a `SparseStaticEmbedding` route).
    pub fn inference_free_queries(&self) -> bool {
        matches!(self.query, QueryRoute::Static(_))
    }

    /// The model folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The document route's layout (pooling, prompts, limits).
    pub fn layout(&self) -> &ModelLayout {
        self.document.layout()
    }

    /// Whether the model runs on a CUDA device.
    pub fn is_cuda(&self) -> bool {
        self.device.is_cuda()
    }

    /// The document route's tokenizer (it names the dimensions).
    pub fn tokenizer(&self) -> &SpladeTokenizer {
        self.document.tokenizer()
    }

    /// Output dimension (vocabulary size; the larger route's where they differ).
    pub fn dimension(&self) -> i64 {
        let query = match &self.query {
            QueryRoute::Document => 0,
            QueryRoute::Mlm(m) => m.dimension(),
            QueryRoute::Static(s) => s.embedding.dimension(),
        };
        self.document.dimension().max(query)
    }

    /// Precision in use.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The document route's pooling settings.
    pub fn pooling(&self) -> SpladePooling {
        self.document.pooling()
    }

    /// The prompt applied to `kind` inputs, if any.
    pub fn prompt(&self, kind: InputKind) -> Option<&str> {
        self.route(kind).prompt()
    }

    /// Token ids of each text with the prompt of `kind` prepended (as sentence-transformers
    /// prepends it to the string), by the tokenizer of `kind`'s route.
    pub fn tokenize(&self, texts: &[&str], kind: InputKind) -> Result<Vec<Vec<u32>>, ModelError> {
        self.route(kind).tokenize(texts)
    }

    /// Encodes texts; `None` gives an empty vector. Output order equals input order.
    pub fn encode(
        &self,
        texts: &[Option<&str>],
        kind: InputKind,
        opts: EncodeOptions,
    ) -> Result<Vec<SparseVector>, ModelError> {
        let route = self.route(kind);
        let present: Vec<&str> = texts.iter().filter_map(|t| *t).collect();
        if opts.long_docs != LongDocs::Truncate {
            let mut windows = route
                .tokenize_windows(&present, opts.long_docs)?
                .into_iter();
            let tokenized: Vec<Option<Vec<Vec<u32>>>> = texts
                .iter()
                .map(|t| t.and_then(|_| windows.next()))
                .collect();
            return route.encode_windows(&tokenized, opts);
        }
        let mut ids = route.tokenize(&present)?.into_iter();
        let tokenized: Vec<Option<Vec<u32>>> =
            texts.iter().map(|t| t.and_then(|_| ids.next())).collect();
        route.encode_tokenized(&tokenized, opts)
    }
}

impl<'a> Route<'a> {
    /// The route's tokenizer (a static route's adds no special tokens).
    pub fn tokenizer(&self) -> &'a SpladeTokenizer {
        match self.backend {
            Backend::Mlm(m) => m.tokenizer(),
            Backend::Static(s) => s.embedding.tokenizer(),
        }
    }

    /// The prompt prepended to this route's inputs, if any.
    pub fn prompt(&self) -> Option<&'a str> {
        match self.backend {
            Backend::Mlm(m) => m.prompt(self.kind),
            Backend::Static(s) => s.prompt.as_deref(),
        }
    }

    /// Whether this route encodes without a model call.
    pub fn is_inference_free(&self) -> bool {
        matches!(self.backend, Backend::Static(_))
    }

    /// The multiple padded lengths are rounded up to (1 for a static route).
    pub fn shape_multiple(&self) -> i64 {
        match self.backend {
            Backend::Mlm(m) => m.shape_multiple(),
            Backend::Static(_) => 1,
        }
    }

    /// Token ids of each text with the route's prompt prepended.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, ModelError> {
        let prompt = self.prompt().unwrap_or("");
        let owned = texts.iter().map(|t| format!("{prompt}{t}")).collect();
        self.tokenizer().encode_batch(owned)
    }

    /// The windows of each text (see [`windows`]), the route's prompt prepended: one per text
    /// when `long_docs` truncates.
    pub fn tokenize_windows(
        &self,
        texts: &[&str],
        long_docs: LongDocs,
    ) -> Result<Vec<Vec<Vec<u32>>>, ModelError> {
        let prompt = self.prompt().unwrap_or("");
        let owned = texts.iter().map(|t| format!("{prompt}{t}")).collect();
        self.tokenizer().encode_sequences(owned, long_docs.stride())
    }

    /// The top-k a vector keeps when the caller sets none (the model's saved setting).
    pub fn default_max_active_dims(&self) -> Option<usize> {
        match self.backend {
            Backend::Mlm(m) => m.layout().max_active_dims,
            Backend::Static(s) => s.max_active_dims,
        }
    }

    /// Encodes texts given as windows (from [`Self::tokenize_windows`]): every window is
    /// encoded, and the windows of a text are max-pooled into its vector, which then keeps its
    /// `max_active_dims` largest weights. `None` gives an empty vector.
    pub fn encode_windows(
        &self,
        windows: &[Option<Vec<Vec<u32>>>],
        opts: EncodeOptions,
    ) -> Result<Vec<SparseVector>, ModelError> {
        let counts: Vec<usize> = windows
            .iter()
            .map(|w| w.as_ref().map_or(0, Vec::len))
            .collect();
        let flat: Vec<Option<Vec<u32>>> = windows
            .iter()
            .flatten()
            .flat_map(|w| w.iter().cloned().map(Some))
            .collect();
        if counts.iter().all(|&n| n <= 1) {
            // Nothing to pool: exactly the truncating path (top-k on the device).
            let mut vectors = self.encode_tokenized(&flat, opts)?.into_iter();
            return Ok(counts
                .iter()
                .map(|&n| match n {
                    0 => SparseVector::default(),
                    _ => vectors.next().unwrap_or_default(),
                })
                .collect());
        }
        let each = EncodeOptions {
            max_active_dims: windows::KEEP_ALL,
            ..opts
        };
        let vectors = self.encode_tokenized(&flat, each)?;
        let k = opts.max_active_dims.or(self.default_max_active_dims());
        Ok(windows::pool_per_text(vectors, &counts, k))
    }

    /// Starts encoding tokenized sequences (see [`MlmRoute::launch`]); a static route makes
    /// the vectors here, on the host.
    pub fn launch(
        &self,
        batch: &[&[u32]],
        max_active_dims: Option<usize>,
    ) -> Result<InFlight<'a>, ModelError> {
        match self.backend {
            Backend::Mlm(m) => m.launch(batch, max_active_dims),
            Backend::Static(s) => {
                let k = max_active_dims.or(s.max_active_dims);
                Ok(InFlight::ready(
                    batch.iter().map(|ids| s.embedding.vector(ids, k)).collect(),
                ))
            }
        }
    }

    /// Encodes tokenized texts (from [`Self::tokenize`]); `None` gives an empty vector. Output
    /// order equals input order.
    pub fn encode_tokenized(
        &self,
        ids: &[Option<Vec<u32>>],
        opts: EncodeOptions,
    ) -> Result<Vec<SparseVector>, ModelError> {
        match self.backend {
            Backend::Mlm(m) => m.encode_tokenized(ids, opts),
            Backend::Static(s) => {
                let k = opts.max_active_dims.or(s.max_active_dims);
                Ok(ids
                    .iter()
                    .map(|t| {
                        t.as_deref()
                            .map_or_else(SparseVector::default, |t| s.embedding.vector(t, k))
                    })
                    .collect())
            }
        }
    }
}

impl SparseEncode for SpladeEncoder {
    fn encode_texts(
        &self,
        texts: &[Option<&str>],
        kind: InputKind,
        opts: EncodeOptions,
    ) -> Result<Vec<SparseVector>, ModelError> {
        self.encode(texts, kind, opts)
    }

    fn dimension(&self) -> i64 {
        SpladeEncoder::dimension(self)
    }
}
