//! Token ids of whitespace-separated words, memoized, for tokenizers where a text's ids are
//! the concatenation of its words' ids: a BERT normalizer (per-character: cleanup, CJK
//! spacing, accents, lowercase), the BERT pre-tokenizer (splits on whitespace, then
//! punctuation), WordPiece, no special tokens, added tokens without whitespace. Queries of an
//! inference-free route are short and repeat words, so most words are looked up, not
//! tokenized: the `tokenizers` pipeline was 96% of that route's time
//! (`bench/static_query_rate.rs`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokenizers::Tokenizer;

use super::ModelError;

/// Words kept at most (a few tens of MB); past it, new words are tokenized each time.
const CAPACITY: usize = 1 << 20;

/// Memoized word → token ids.
pub struct WordCache {
    words: RwLock<HashMap<String, Arc<[u32]>>>,
}

impl WordCache {
    /// A cache for `tokenizer`, or `None` where a text's ids may not be its words' ids.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Option<Self> {
        let json: Value = serde_json::from_str(&tokenizer.to_string(false).ok()?).ok()?;
        let kind = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_string);
        let normalizer_ok = match json.get("normalizer") {
            None | Some(Value::Null) => true,
            Some(n) => kind(n).as_deref() == Some("BertNormalizer"),
        };
        let pre_ok =
            json.get("pre_tokenizer").and_then(kind).as_deref() == Some("BertPreTokenizer");
        let model_ok = json.get("model").and_then(kind).as_deref() == Some("WordPiece");
        let added_ok = json
            .get("added_tokens")
            .and_then(Value::as_array)
            .is_none_or(|tokens| {
                tokens.iter().all(|t| {
                    t.get("content")
                        .and_then(Value::as_str)
                        .is_some_and(|c| !c.chars().any(char::is_whitespace))
                })
            });
        (normalizer_ok && pre_ok && model_ok && added_ok).then(|| Self {
            words: RwLock::new(HashMap::new()),
        })
    }

    /// Token ids of `text` (no special tokens), truncated to `max_length`.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        max_length: usize,
    ) -> Result<Vec<u32>, ModelError> {
        let mut ids = Vec::new();
        for word in text.split(char::is_whitespace).filter(|w| !w.is_empty()) {
            let known = self
                .words
                .read()
                .ok()
                .and_then(|words| words.get(word).cloned());
            let word_ids = match known {
                Some(ids) => ids,
                None => {
                    let encoding = tokenizer
                        .encode_fast(word, false)
                        .map_err(|e| ModelError::Tokenize(e.to_string()))?;
                    let fresh: Arc<[u32]> = encoding.get_ids().into();
                    if let Ok(mut words) = self.words.write() {
                        if words.len() < CAPACITY {
                            words.insert(word.to_string(), fresh.clone());
                        }
                    }
                    fresh
                }
            };
            ids.extend_from_slice(&word_ids);
            if ids.len() >= max_length {
                ids.truncate(max_length);
                break;
            }
        }
        Ok(ids)
    }
}
