//! The output's identity (`_sparq_job.json`): the settings and input files that decide its
//! content. An existing output is resumed only when they are equal.

use serde::{Deserialize, Serialize};

use crate::io::compact::{Prune, VectorFormat, WeightType};
use crate::model::LongDocsMode;
use crate::types::Dtype;

/// One input file as the output's identity records it: what the store can prove cheaply about
/// its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "InputRecordRepr")]
pub struct InputRecord {
    /// File URL.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// S3 ETag, or `<size>-<mtime ns>` of a local file (`None` in records of sparq ≤ 0.1.0).
    pub version: Option<String>,
    /// Rows, from the footer.
    pub rows: Option<u64>,
    /// SHA-256 of the parquet footer.
    pub footer: Option<String>,
}

/// Today's record, or the `[url, size]` pair older outputs hold.
#[derive(Deserialize)]
#[serde(untagged)]
enum InputRecordRepr {
    Full {
        url: String,
        size: u64,
        version: Option<String>,
        rows: Option<u64>,
        footer: Option<String>,
    },
    Pair(String, u64),
}

impl From<InputRecordRepr> for InputRecord {
    fn from(r: InputRecordRepr) -> Self {
        match r {
            InputRecordRepr::Full {
                url,
                size,
                version,
                rows,
                footer,
            } => Self {
                url,
                size,
                version,
                rows,
                footer,
            },
            InputRecordRepr::Pair(url, size) => Self {
                url,
                size,
                version: None,
                rows: None,
                footer: None,
            },
        }
    }
}

impl InputRecord {
    /// How `now` differs from this record (`None` when it is the same file as far as both
    /// records can tell: an older record without version or digest compares the size only).
    pub fn change(&self, now: &InputRecord) -> Option<String> {
        let differs =
            |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if a != b);
        if self.size != now.size {
            Some(format!("{} bytes, was {}", now.size, self.size))
        } else if matches!((self.rows, now.rows), (Some(a), Some(b)) if a != b) {
            Some(format!(
                "{} rows, was {}",
                now.rows.unwrap_or(0),
                self.rows.unwrap_or(0)
            ))
        } else if differs(&self.footer, &now.footer) {
            Some("its parquet footer (row groups, sizes, statistics) differs".into())
        } else if differs(&self.version, &now.version) {
            Some(if now.url.starts_with("s3://") {
                "its ETag differs".into()
            } else {
                "modified since: same size, new modification time".into()
            })
        } else {
            None
        }
    }
}

/// The settings that decide the output's content: an existing output is resumed only when
/// these are equal (`_sparq_job.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobIdentity {
    /// Model fingerprint (see [`crate::model::fingerprint`]).
    pub model: String,
    /// The model's folder when the output was made (not compared: a moved folder with the same
    /// files is the same model). `inspect`, `decode` and `export` default to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_path: Option<std::path::PathBuf>,
    /// Input location, normalized (an absolute path, or s3://bucket/prefix). Shown, not
    /// compared: the same files spelled another way are the same input.
    pub input: String,
    /// Input files, in order: shard names depend on them.
    pub input_files: Vec<InputRecord>,
    /// Id column.
    pub id_column: String,
    /// Text column.
    pub text_column: String,
    /// Kept columns.
    pub keep_columns: Vec<String>,
    /// Column whose text goes before the text (`--title-column`; none: the text alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_column: Option<String>,
    /// Top-k.
    pub max_active_dims: Option<usize>,
    /// Precision.
    pub dtype: Dtype,
    /// How weights are stored (`--weight-type`; outputs made before it was recorded: f32).
    #[serde(default, skip_serializing_if = "WeightType::is_f32")]
    pub weight_type: WeightType,
    /// The u8 scale: weight ≈ q × scale (`--weight-scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_scale: Option<f32>,
    /// `--prune` applied to each vector before it is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<Prune>,
    /// Queries or documents.
    pub query: bool,
    /// Long texts truncated or windowed (outputs made before this was recorded truncated).
    #[serde(default)]
    pub long_docs: LongDocsMode,
    /// Tokens consecutive windows share.
    #[serde(default)]
    pub window_stride: usize,
    /// Shard size.
    pub shard_rows: u64,
    /// The query column of a `sparq score` output (none for `sparq encode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_column: Option<String>,
    /// How text inputs are read and cut (none when every input is parquet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextIdentity>,
}

/// How an output's text inputs are read and cut into shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextIdentity {
    /// `--input-format`, `--columns`, `--bad-lines`.
    pub options: crate::io::text_input::TextOptions,
    /// Bytes per shard of a plain text file (`--shard-rows` × the mean line length sampled at
    /// planning); part names are `part-<file>-<first byte>.parquet`.
    pub shard_bytes: u64,
}

impl JobIdentity {
    /// How the output's vectors are stored.
    pub fn vector_format(&self) -> VectorFormat {
        VectorFormat {
            weight_type: self.weight_type,
            scale: self.weight_scale.unwrap_or(0.0),
            prune: self.prune,
        }
    }

    /// The job these settings make, as the output's lock names it: a digest of everything
    /// [`JobIdentity::differences`] compares, so a rerun (or another task of an array) with the
    /// same settings is the same job and shares the output.
    pub fn key(&self) -> String {
        use sha2::Digest;
        let compared = JobIdentity {
            model_path: None,
            input: String::new(),
            ..self.clone()
        };
        let json = serde_json::to_vec(&compared).expect("an identity serializes");
        let digest = hex::encode(sha2::Sha256::digest(&json));
        let kind = if self.query_column.is_some() {
            "score"
        } else {
            "encode"
        };
        format!("{kind}-{}", &digest[..16])
    }

    /// What differs from `other` (the recorded identity): each setting named with its recorded
    /// and its new value, and the input files added, removed or changed.
    pub fn differences(&self, other: &JobIdentity) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |same: bool, name: &str, was: String, now: String| {
            if !same {
                out.push(format!("{name}: was {was}, now {now}"))
            }
        };
        check(
            self.model == other.model,
            "model",
            model_text(other),
            model_text(self),
        );
        let urls = |id: &JobIdentity| id.input_files.iter().map(|f| f.url.clone()).collect();
        let (now, was): (Vec<String>, Vec<String>) = (urls(self), urls(other));
        if now != was {
            out.push(file_list_change(&other.input, &was, &self.input, &now));
        } else {
            for (now, was) in self.input_files.iter().zip(&other.input_files) {
                if let Some(change) = was.change(now) {
                    out.push(format!("content of input file {} ({change})", now.url));
                }
            }
        }
        let mut check = |same: bool, name: &str, was: String, now: String| {
            if !same {
                out.push(format!("{name}: was {was}, now {now}"))
            }
        };
        let text = |s: &str| format!("`{s}`");
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(",")
            }
        };
        let top = |k: Option<usize>| k.map_or("all".to_string(), |k| k.to_string());
        check(
            self.id_column == other.id_column,
            "--id-column",
            text(&other.id_column),
            text(&self.id_column),
        );
        check(
            self.text_column == other.text_column,
            "--text-column",
            text(&other.text_column),
            text(&self.text_column),
        );
        check(
            self.keep_columns == other.keep_columns,
            "--keep-columns",
            list(&other.keep_columns),
            list(&self.keep_columns),
        );
        let title = |c: &Option<String>| c.as_deref().map_or("none".to_string(), text);
        check(
            self.title_column == other.title_column,
            "--title-column",
            title(&other.title_column),
            title(&self.title_column),
        );
        check(
            self.max_active_dims == other.max_active_dims,
            "--max-active-dims",
            top(other.max_active_dims),
            top(self.max_active_dims),
        );
        check(
            self.weight_type == other.weight_type,
            "--weight-type",
            other.weight_type.to_string(),
            self.weight_type.to_string(),
        );
        let scale = |s: Option<f32>| s.map_or("none".to_string(), |s| s.to_string());
        check(
            self.weight_scale == other.weight_scale,
            "--weight-scale",
            scale(other.weight_scale),
            scale(self.weight_scale),
        );
        let prune = |p: Option<Prune>| p.map_or("none".to_string(), |p| p.to_string());
        check(
            self.prune == other.prune,
            "--prune",
            prune(other.prune),
            prune(self.prune),
        );
        check(
            self.dtype == other.dtype,
            "--dtype",
            other.dtype.to_string(),
            self.dtype.to_string(),
        );
        check(
            self.long_docs == other.long_docs,
            "--long-docs",
            other.long_docs.to_string(),
            self.long_docs.to_string(),
        );
        check(
            self.window_stride == other.window_stride,
            "--window-stride",
            other.window_stride.to_string(),
            self.window_stride.to_string(),
        );
        let kind = |q: bool| if q { "queries (--query)" } else { "documents" }.to_string();
        check(
            self.query == other.query,
            "--query",
            kind(other.query),
            kind(self.query),
        );
        let pairs = |c: &Option<String>| match c {
            Some(c) => format!("scores of `{c}` (--query-column)"),
            None => "sparse vectors (sparq encode)".to_string(),
        };
        check(
            self.query_column == other.query_column,
            "output",
            pairs(&other.query_column),
            pairs(&self.query_column),
        );
        check(
            self.shard_rows == other.shard_rows,
            "--shard-rows",
            other.shard_rows.to_string(),
            self.shard_rows.to_string(),
        );
        let text_input = |t: &Option<TextIdentity>| match t {
            None => "parquet only".to_string(),
            Some(t) => format!(
                "--input-format {}, --columns {}, --bad-lines {}, {} bytes per shard",
                t.options
                    .format
                    .map_or("by name".to_string(), |f| format!("{f:?}").to_lowercase()),
                list(&t.options.columns),
                t.options.bad_lines,
                t.shard_bytes
            ),
        };
        check(
            self.text == other.text,
            "text input",
            text_input(&other.text),
            text_input(&self.text),
        );
        out
    }
}

/// A model as a refusal names it: its folder when recorded, and its fingerprint.
fn model_text(id: &JobIdentity) -> String {
    match &id.model_path {
        Some(p) => format!("{} ({})", p.display(), short(&id.model)),
        None => format!("fingerprint {}", short(&id.model)),
    }
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

/// How the input's file list changed: the locations, and the first files added and removed.
fn file_list_change(was_input: &str, was: &[String], now_input: &str, now: &[String]) -> String {
    let names = |v: Vec<&String>| {
        let shown: Vec<&str> = v.iter().take(3).map(|s| s.as_str()).collect();
        let more = v.len().saturating_sub(3);
        format!(
            "{}{}",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    };
    let added: Vec<&String> = now.iter().filter(|f| !was.contains(f)).collect();
    let removed: Vec<&String> = was.iter().filter(|f| !now.contains(f)).collect();
    let mut text = format!(
        "input files: was {} file(s) from {was_input}, now {} from {now_input}",
        was.len(),
        now.len()
    );
    if !added.is_empty() {
        text += &format!("; new: {}", names(added));
    }
    if !removed.is_empty() {
        text += &format!("; gone: {}", names(removed));
    }
    if was.len() == now.len() && text.ends_with(now_input) {
        text += "; same files in another order";
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> JobIdentity {
        JobIdentity {
            model: "m1".into(),
            model_path: None,
            input: "in".into(),
            input_files: vec![InputRecord {
                url: "/in/a.parquet".into(),
                size: 100,
                version: Some("100-1".into()),
                rows: Some(10),
                footer: Some("f1".into()),
            }],
            id_column: "id".into(),
            text_column: "text".into(),
            keep_columns: vec![],
            title_column: None,
            max_active_dims: None,
            weight_type: Default::default(),
            weight_scale: None,
            prune: None,
            dtype: Dtype::F32,
            query: false,
            long_docs: Default::default(),
            window_stride: 0,
            shard_rows: 10,
            query_column: None,
            text: None,
        }
    }

    #[test]
    fn differences_name_the_setting_and_the_changed_file() {
        let was = identity();
        assert!(was.differences(&was).is_empty());
        let mut now = identity();
        now.model = "m2".into();
        now.shard_rows = 20;
        let d = now.differences(&was);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].starts_with("model: was fingerprint m1") && d[0].contains("now fingerprint m2")
        );
        assert_eq!(d[1], "--shard-rows: was 10, now 20");
        // The input spelled another way (same files) is the same input.
        let mut now = identity();
        now.input = "/elsewhere/../in/".into();
        assert!(now.differences(&was).is_empty());
        let mut now = identity();
        now.input_files[0].url = "/in/b.parquet".into();
        let d = now.differences(&was);
        assert!(
            d[0].contains("new: /in/b.parquet") && d[0].contains("gone: /in/a.parquet"),
            "{d:?}"
        );
        let mut now = identity();
        now.input_files[0].footer = Some("f2".into());
        let d = now.differences(&was);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].contains("/in/a.parquet") && d[0].contains("footer"),
            "{d:?}"
        );
        let mut now = identity();
        now.input_files[0].version = Some("100-2".into());
        assert!(now.differences(&was)[0].contains("modified"));
    }

    #[test]
    fn the_job_key_is_what_differences_compare() {
        let was = identity();
        let mut moved = identity();
        moved.input = "/elsewhere/../in/".into();
        moved.model_path = Some("/models/copy".into());
        assert_eq!(moved.key(), was.key());
        let mut other = identity();
        other.model = "m2".into();
        assert_ne!(other.key(), was.key());
        assert!(was.key().starts_with("encode-"), "{}", was.key());
    }

    #[test]
    fn records_of_earlier_versions_compare_by_size() {
        // sparq 0.1.0 recorded [url, size] pairs.
        let old: InputRecord = serde_json::from_str(r#"["/in/a.parquet", 100]"#).unwrap();
        assert_eq!(old.version, None);
        let now = identity().input_files.remove(0);
        assert_eq!(old.change(&now), None);
        let bigger = InputRecord { size: 101, ..now };
        assert!(old.change(&bigger).unwrap().contains("101 bytes"));
    }
}
