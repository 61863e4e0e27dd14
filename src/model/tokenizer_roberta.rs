//! RoBERTa's and XLM-R's tokenizer pipelines as transformers 5 rebuilds them.
//!
//! transformers 5 does not use a RoBERTa or XLM-R `tokenizer.json` as saved: its
//! `RobertaTokenizer` / `XLMRobertaTokenizer` classes (`models/roberta/tokenization_roberta.py`,
//! `models/xlm_roberta/tokenization_xlm_roberta.py`) take only the vocabulary (and merges, and
//! the Precompiled charsmap) from the file and build the rest from `tokenizer_config.json`:
//! byte-level BPE without a normalizer and `ByteLevel(add_prefix_space)` (default false); a
//! Unigram with `unk_id` 3, the charsmap alone as normalizer (a saved `Replace` is dropped), and
//! `WhitespaceSplit` + `Metaspace(prepend_scheme)` (default always). sparq does the same, so its
//! token ids equal `SparseEncoder.tokenize`'s and FlagEmbedding's.

use std::path::Path;
use std::str::FromStr;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::layout::parse_json;
use super::ModelError;

/// The tokenizer class transformers would instantiate for the folder `dir`.
enum Class {
    Roberta,
    XlmRoberta,
}

/// The pipeline transformers 5 builds for `tokenizer.json` (at `path`, in `dir`), when the
/// folder's tokenizer class is RoBERTa's or XLM-R's; `None` for any other class.
pub fn rebuilt(dir: &Path, path: &Path) -> Result<Option<Tokenizer>, ModelError> {
    let config_path = dir.join("tokenizer_config.json");
    let config: Value = if config_path.is_file() {
        parse_json(&config_path)?
    } else {
        Value::Null
    };
    let Some(class) = class_of(dir, &config)? else {
        return Ok(None);
    };
    let mut json: Value = parse_json(path)?;
    let flag =
        |key: &str, default: bool| config.get(key).and_then(Value::as_bool).unwrap_or(default);
    let token = |key: &str, default: &str| -> String {
        match config.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string(),
            _ => default.to_string(),
        }
    };
    let corrupt = |detail: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let model = json.get("model").cloned().unwrap_or(Value::Null);
    match class {
        Class::Roberta => {
            let add_prefix_space = flag("add_prefix_space", false);
            let (sep, cls) = (token("sep_token", "</s>"), token("cls_token", "<s>"));
            let (sep_id, cls_id) = (id_of(&json, &sep), id_of(&json, &cls));
            let (Some(sep_id), Some(cls_id)) = (sep_id, cls_id) else {
                return Err(corrupt(format!("no id for `{sep}` or `{cls}`")));
            };
            json["model"] = json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false,
                "vocab": model.get("vocab").cloned().unwrap_or(Value::Null),
                "merges": model.get("merges").cloned().unwrap_or(json!([])),
            });
            json["normalizer"] = Value::Null;
            json["pre_tokenizer"] = json!({"type": "ByteLevel",
                "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": true});
            json["post_processor"] = json!({"type": "RobertaProcessing",
                "sep": [sep, sep_id], "cls": [cls, cls_id],
                "trim_offsets": flag("trim_offsets", true), "add_prefix_space": add_prefix_space});
        }
        Class::XlmRoberta => {
            let scheme = if flag("add_prefix_space", true) {
                "always"
            } else {
                "never"
            };
            let (bos, eos) = (token("bos_token", "<s>"), token("eos_token", "</s>"));
            let (Some(bos_id), Some(eos_id)) = (id_of(&json, &bos), id_of(&json, &eos)) else {
                return Err(corrupt(format!("no id for `{bos}` or `{eos}`")));
            };
            json["normalizer"] = precompiled(json.get("normalizer")).unwrap_or(Value::Null);
            json["model"] = json!({"type": "Unigram", "unk_id": 3, "byte_fallback": false,
                "vocab": model.get("vocab").cloned().unwrap_or(Value::Null)});
            json["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                {"type": "WhitespaceSplit"},
                {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": scheme,
                 "split": true}]});
            let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
            let seq = |s: &str| json!({"Sequence": {"id": s, "type_id": 0}});
            json["post_processor"] = json!({"type": "TemplateProcessing",
                "single": [special(&bos), seq("A"), special(&eos)],
                "pair": [special(&bos), seq("A"), special(&eos), special(&eos), seq("B"),
                         special(&eos)],
                "special_tokens": {
                    bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]},
                    eos.clone(): {"id": eos, "ids": [eos_id], "tokens": [eos]}}});
        }
    }
    let text = json.to_string();
    Tokenizer::from_str(&text)
        .map(Some)
        .map_err(|e| corrupt(format!("as transformers rebuilds it: {e}")))
}

/// `tokenizer_class` from `tokenizer_config.json`, else the class AutoTokenizer maps
/// `config.json`'s `model_type` to.
fn class_of(dir: &Path, config: &Value) -> Result<Option<Class>, ModelError> {
    let named = config.get("tokenizer_class").and_then(Value::as_str);
    let name = match named {
        Some(name) => name.to_string(),
        None => {
            let model_config = dir.join("config.json");
            if !model_config.is_file() {
                return Ok(None);
            }
            let value: Value = parse_json(&model_config)?;
            match value.get("model_type").and_then(Value::as_str) {
                Some("roberta") => "RobertaTokenizer".into(),
                Some("xlm-roberta") => "XLMRobertaTokenizer".into(),
                _ => return Ok(None),
            }
        }
    };
    Ok(match name.trim_end_matches("Fast") {
        "RobertaTokenizer" => Some(Class::Roberta),
        "XLMRobertaTokenizer" => Some(Class::XlmRoberta),
        _ => None,
    })
}

/// The id of `token`: an added token's, else the model vocabulary's (a map for BPE, a list
/// of `[piece, score]` for Unigram).
fn id_of(json: &Value, token: &str) -> Option<u32> {
    let added = json.get("added_tokens").and_then(Value::as_array);
    if let Some(t) = added
        .into_iter()
        .flatten()
        .find(|t| t.get("content").and_then(Value::as_str) == Some(token))
    {
        return t.get("id").and_then(Value::as_u64).map(|i| i as u32);
    }
    match json.get("model").and_then(|m| m.get("vocab"))? {
        Value::Object(map) => map.get(token).and_then(Value::as_u64).map(|i| i as u32),
        Value::Array(items) => items
            .iter()
            .position(|p| p.get(0).and_then(Value::as_str) == Some(token))
            .map(|i| i as u32),
        _ => None,
    }
}

/// The first `Precompiled` normalizer, alone or inside a `Sequence`.
fn precompiled(normalizer: Option<&Value>) -> Option<Value> {
    let n = normalizer?;
    if n.get("type").and_then(Value::as_str) == Some("Precompiled") {
        return Some(n.clone());
    }
    n.get("normalizers")
        .and_then(Value::as_array)?
        .iter()
        .find_map(|inner| precompiled(Some(inner)))
}
