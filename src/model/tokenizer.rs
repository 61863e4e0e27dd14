//! The model's tokenizer (`tokenizer.json`) configured as sentence-transformers configures it:
//! truncation to the max sequence length (longest-first, right side), optional lowercasing,
//! no padding (the batcher pads).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::normalizers::{BertNormalizer, Lowercase, NormalizerWrapper, Sequence};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::layout::{parse_json, ModelLayout};
use super::word_cache::WordCache;
use super::ModelError;

/// Tokenizer plus the limits it truncates to.
pub struct SpladeTokenizer {
    inner: Tokenizer,
    max_length: usize,
    /// `[CLS]`/`[SEP]` and the like are added (false for a `SparseStaticEmbedding` route).
    special_tokens: bool,
    /// Memoized word ids (a static route's BERT-style tokenizer only; see `word_cache`).
    words: Option<WordCache>,
    /// A copy that cuts windows sharing `stride` tokens (made on first use of that stride).
    windowed: std::sync::Mutex<Option<(usize, std::sync::Arc<Tokenizer>)>>,
}

impl SpladeTokenizer {
    /// Loads `tokenizer.json` from the transformer folder of `layout`.
    pub fn load(layout: &ModelLayout) -> Result<Self, ModelError> {
        let dir = &layout.transformer_dir;
        let max_length = max_length(layout, dir)?;
        let tokenizer = Self::open(dir, Some(max_length), layout.do_lower_case, true)?;
        let vocab = tokenizer.inner.get_vocab_size(true);
        if vocab as i64 > layout.arch.vocab_size() {
            return Err(ModelError::VocabMismatch {
                path: dir.join("tokenizer.json"),
                tokenizer: vocab,
                model: layout.arch.vocab_size(),
            });
        }
        Ok(tokenizer)
    }

    /// Loads the tokenizer of a `SparseStaticEmbedding` route as sentence-transformers calls
    /// it there: no special tokens, truncation to the tokenizer's own `model_max_length` (none
    /// when `tokenizer_config.json` sets none).
    pub fn load_without_special_tokens(dir: &Path) -> Result<Self, ModelError> {
        let config_path = dir.join("tokenizer_config.json");
        let max_length = if config_path.is_file() {
            let value: Value = parse_json(&config_path)?;
            value
                .get("model_max_length")
                .and_then(Value::as_f64)
                // transformers' "no limit" is 1e30 (VERY_LARGE_INTEGER).
                .filter(|v| *v < 1e18)
                .map(|v| v as usize)
        } else {
            None
        };
        let mut tokenizer = Self::open(dir, max_length, false, false)?;
        tokenizer.words = WordCache::for_tokenizer(&tokenizer.inner);
        Ok(tokenizer)
    }

    fn open(
        dir: &Path,
        max_length: Option<usize>,
        do_lower_case: bool,
        special_tokens: bool,
    ) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path,
                hint: "sparq needs the fast-tokenizer file; in Python, \
                       `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)` writes it"
                    .into(),
            });
        }
        let mut inner = match super::tokenizer_roberta::rebuilt(dir, &path)? {
            Some(rebuilt) => rebuilt,
            None => Tokenizer::from_file(&path).map_err(|e| ModelError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?,
        };
        let truncation = max_length.map(|max_length| TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            direction: TruncationDirection::Right,
            stride: 0,
        });
        inner
            .with_truncation(truncation)
            .map_err(|e| ModelError::Config {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        inner.with_padding(None);
        if let Some(normalizer) = bert_normalizer_from_config(dir)? {
            inner.with_normalizer(Some(normalizer));
        }
        if do_lower_case && !lowercases(&inner) {
            // Same as sentence-transformers: prepend a Lowercase normalizer.
            let mut parts = vec![NormalizerWrapper::Lowercase(Lowercase)];
            if let Some(existing) = inner.get_normalizer() {
                parts.push(existing.clone());
            }
            inner.with_normalizer(Some(NormalizerWrapper::Sequence(Sequence::new(parts))));
        }
        Ok(Self {
            inner,
            max_length: max_length.unwrap_or(usize::MAX),
            special_tokens,
            words: None,
            windowed: std::sync::Mutex::new(None),
        })
    }

    /// Loads `dir/tokenizer.json` to encode text pairs as a cross-encoder reads them: special
    /// tokens and segment ids added, each pair truncated longest-first to `max_length` tokens.
    pub fn load_for_pairs(
        dir: &Path,
        max_length: usize,
        do_lower_case: bool,
    ) -> Result<Self, ModelError> {
        Self::open(dir, Some(max_length), do_lower_case, true)
    }

    /// Token ids and segment ids of each `(first, second)` pair (`[CLS] a [SEP] b [SEP]` for
    /// BERT), truncated as Hugging Face tokenizers truncate pairs (`longest_first`: one token at
    /// a time from the longer of the two, until the pair fits).
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<PairTokens>, ModelError> {
        let inputs: Vec<tokenizers::EncodeInput> = pairs
            .iter()
            .map(|&(first, second)| (first, second).into())
            .collect();
        let encodings = self
            .inner
            .encode_batch_fast(inputs, self.special_tokens)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| PairTokens {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }

    /// Longest token sequence produced (special tokens included).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Token ids of each text, special tokens added (unless the route adds none), truncated.
    pub fn encode_batch(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>, ModelError> {
        if let Some(words) = &self.words {
            return texts
                .iter()
                .map(|t| words.encode(&self.inner, t, self.max_length))
                .collect();
        }
        let encodings = self
            .inner
            // Ids only: skipping character offsets is faster and gives the same ids.
            .encode_batch_fast(texts, self.special_tokens)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// The sequences of each text: every window (`stride`: see [`Self::encode_windows`]), or
    /// with `None` the one truncated sequence [`Self::encode_batch`] gives.
    pub fn encode_sequences(
        &self,
        texts: Vec<String>,
        stride: Option<usize>,
    ) -> Result<Vec<Vec<Vec<u32>>>, ModelError> {
        match stride {
            Some(stride) => self.encode_windows(texts, stride),
            None => Ok(self
                .encode_batch(texts)?
                .into_iter()
                .map(|ids| vec![ids])
                .collect()),
        }
    }

    /// Every window of each text: the first is what [`Self::encode_batch`] gives, then the
    /// overflowing tokens in windows of the same length, each with the special tokens and
    /// repeating `stride` tokens of the one before (`return_overflowing_tokens` in Python).
    pub fn encode_windows(
        &self,
        texts: Vec<String>,
        stride: usize,
    ) -> Result<Vec<Vec<Vec<u32>>>, ModelError> {
        let windowed = self.windowed(stride)?;
        let tokenizer = windowed.as_deref().unwrap_or(&self.inner);
        let encodings = tokenizer
            .encode_batch_fast(texts, self.special_tokens)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| {
                std::iter::once(e.get_ids().to_vec())
                    .chain(e.get_overflowing().iter().map(|o| o.get_ids().to_vec()))
                    .collect()
            })
            .collect())
    }

    /// The tokenizer that cuts windows sharing `stride` tokens (`None`: this one, stride 0).
    fn windowed(&self, stride: usize) -> Result<Option<std::sync::Arc<Tokenizer>>, ModelError> {
        if stride == 0 {
            return Ok(None);
        }
        let mut cached = self.windowed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, t)) = cached.as_ref() {
            if *s == stride {
                return Ok(Some(t.clone()));
            }
        }
        let added = match self.inner.get_post_processor() {
            Some(p) if self.special_tokens => tokenizers::PostProcessor::added_tokens(p, false),
            _ => 0,
        };
        let room = self.max_length.saturating_sub(added);
        if stride >= room {
            return Err(ModelError::Option(format!(
                "--window-stride {stride} must be below the {room} text tokens a window holds \
                 (max length {} less {added} special tokens)",
                self.max_length
            )));
        }
        let mut t = self.inner.clone();
        t.with_truncation(Some(TruncationParams {
            max_length: self.max_length,
            strategy: TruncationStrategy::LongestFirst,
            direction: TruncationDirection::Right,
            stride,
        }))
        .map_err(|e| ModelError::Option(e.to_string()))?;
        let t = std::sync::Arc::new(t);
        *cached = Some((stride, t.clone()));
        Ok(Some(t))
    }

    /// Token ids of one text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode(text, self.special_tokens)
            .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The vocabulary string of a token id.
    pub fn token(&self, id: u32) -> String {
        self.inner
            .id_to_token(id)
            .unwrap_or_else(|| format!("[{id}]"))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// One encoded text pair: token ids and the segment (token type) id of each token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairTokens {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// 0 for the first text (and its `[CLS]`/`[SEP]`), 1 for the second.
    pub type_ids: Vec<u32>,
}

/// `max_seq_length` if the sentence-transformers config sets it, else the tokenizer's
/// `model_max_length`; never above `max_position_embeddings` (as sentence-transformers caps it).
fn max_length(layout: &ModelLayout, dir: &Path) -> Result<usize, ModelError> {
    let positions = layout.arch.max_position_embeddings().max(1) as usize;
    if let Some(len) = layout.max_seq_length {
        if len > positions {
            return Err(ModelError::Config {
                path: dir.join("sentence_bert_config.json"),
                detail: format!(
                    "max_seq_length {len} exceeds the model's max_position_embeddings {positions}: \
                     set it to at most {positions}"
                ),
            });
        }
        return Ok(len);
    }
    let config_path: PathBuf = dir.join("tokenizer_config.json");
    let from_tokenizer = if config_path.is_file() {
        let value: Value = parse_json(&config_path)?;
        value
            .get("model_max_length")
            .and_then(Value::as_f64)
            .map(|v| v as usize)
    } else {
        None
    };
    Ok(from_tokenizer.map_or(positions, |len| len.min(positions)))
}

/// transformers 5 rebuilds the normalizer of BERT-family tokenizers from
/// `tokenizer_config.json` (`do_lower_case`, default true; `strip_accents`;
/// `tokenize_chinese_chars`), ignoring the one in `tokenizer.json`; so does sparq.
fn bert_normalizer_from_config(dir: &Path) -> Result<Option<NormalizerWrapper>, ModelError> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let config: Value = parse_json(&path)?;
    let class = config
        .get("tokenizer_class")
        .and_then(Value::as_str)
        .unwrap_or("");
    let bert_family = [
        "BertTokenizer",
        "BertTokenizerFast",
        "DistilBertTokenizer",
        "DistilBertTokenizerFast",
    ];
    if !bert_family.contains(&class) {
        return Ok(None);
    }
    let flag = |key: &str| config.get(key).and_then(Value::as_bool);
    Ok(Some(NormalizerWrapper::BertNormalizer(
        BertNormalizer::new(
            true,
            flag("tokenize_chinese_chars").unwrap_or(true),
            flag("strip_accents"),
            flag("do_lower_case").unwrap_or(true),
        ),
    )))
}

fn lowercases(tokenizer: &Tokenizer) -> bool {
    let Some(normalizer) = tokenizer.get_normalizer() else {
        return false;
    };
    let json = serde_json::to_value(normalizer).unwrap_or(Value::Null);
    fn walk(v: &Value) -> bool {
        match v {
            Value::Object(map) => {
                map.get("type").and_then(Value::as_str) == Some("Lowercase")
                    || map.get("lowercase").and_then(Value::as_bool) == Some(true)
                    || map.values().any(walk)
            }
            Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    walk(&json)
}
