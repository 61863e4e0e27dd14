//! `sparq train`'s mapping options, `--router-mapping COLUMN=ROUTE` and
//! `--learning-rate-mapping REGEX=LR` (sentence-transformers' `router_mapping` and
//! `learning_rate_mapping`): repeatable `KEY=VALUE` flags, or tables in the `--config` file.

use serde::{Deserialize, Deserializer};

use super::TrainError;
use crate::model::InputKind;

/// One `KEY=VALUE` of a mapping option (split at the last `=`).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    /// Before the `=`.
    pub key: String,
    /// After it.
    pub value: String,
}

impl std::str::FromStr for KeyValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
        Ok(Self {
            key: key.to_string(),
            value: value.trim().to_string(),
        })
    }
}

/// A TOML table `key = value` (text or number) as [`KeyValue`]s, in the order read.
pub fn ordered_table<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<KeyValue>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Number(f64),
    }
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Vec<KeyValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a table of name = value")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, Scalar>()? {
                let value = match value {
                    Scalar::Text(t) => t,
                    Scalar::Number(n) => n.to_string(),
                };
                out.push(KeyValue { key, value });
            }
            Ok(out)
        }
    }
    d.deserialize_map(Visit).map(Some)
}

/// `--router-mapping` as (column, route) pairs.
pub fn router_mappings(pairs: Option<&[KeyValue]>) -> Result<Vec<(String, InputKind)>, TrainError> {
    pairs
        .into_iter()
        .flatten()
        .map(|kv| match kv.value.as_str() {
            "query" => Ok((kv.key.clone(), InputKind::Query)),
            "document" => Ok((kv.key.clone(), InputKind::Document)),
            other => Err(TrainError::Option(format!(
                "--router-mapping {}={other}: the route must be `query` or `document`",
                kv.key
            ))),
        })
        .collect()
}

/// `--learning-rate-mapping` as (pattern, peak learning rate) pairs, each checked.
pub fn learning_rate_mappings(
    pairs: Option<&[KeyValue]>,
) -> Result<Vec<(String, f64)>, TrainError> {
    pairs
        .into_iter()
        .flatten()
        .map(|kv| {
            let flag = format!("--learning-rate-mapping {}={}", kv.key, kv.value);
            regex::Regex::new(&kv.key)
                .map_err(|e| TrainError::Option(format!("{flag}: not a valid pattern: {e}")))?;
            let lr: f64 = kv.value.parse().map_err(|_| {
                TrainError::Option(format!("{flag}: the learning rate is not a number"))
            })?;
            if !(lr.is_finite() && lr > 0.0 && lr <= 1.0) {
                return Err(TrainError::Option(format!(
                    "{flag}: the learning rate must be in (0, 1]"
                )));
            }
            Ok((kv.key.clone(), lr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::TrainArgs;

    #[test]
    fn config_tables_keep_their_order_and_flags_split_at_the_last_equals() {
        let args: TrainArgs = toml::from_str(
            "[learning_rate_mapping]\n'z=b' = 0.5\n'SparseStaticEmbedding\\..*' = 1e-3\n\
             [router_mapping]\nquestion = \"query\"\nanswer = \"document\"\n",
        )
        .unwrap();
        let lr = learning_rate_mappings(args.learning_rate_mapping.as_deref()).unwrap();
        assert_eq!(
            lr,
            [
                ("z=b".to_string(), 0.5),
                (r"SparseStaticEmbedding\..*".to_string(), 1e-3)
            ]
        );
        let routes = router_mappings(args.router_mapping.as_deref()).unwrap();
        assert_eq!(
            routes,
            [
                ("question".to_string(), InputKind::Query),
                ("answer".to_string(), InputKind::Document)
            ]
        );
        let flag: KeyValue = "x=y=2e-3".parse().unwrap();
        assert_eq!((flag.key.as_str(), flag.value.as_str()), ("x=y", "2e-3"));
    }

    #[test]
    fn bad_mappings_say_which_and_why() {
        let kv = |s: &str| vec![s.parse::<KeyValue>().unwrap()];
        let err = |r: Result<Vec<(String, f64)>, TrainError>| r.unwrap_err().to_string();
        assert!(err(learning_rate_mappings(Some(&kv("(=1e-3")))).contains("not a valid pattern"));
        assert!(err(learning_rate_mappings(Some(&kv("x=fast")))).contains("not a number"));
        assert!(err(learning_rate_mappings(Some(&kv("x=2")))).contains("(0, 1]"));
        let route = router_mappings(Some(&kv("question=queries"))).unwrap_err();
        assert!(
            route.to_string().contains("`query` or `document`"),
            "{route}"
        );
        assert!("no-equals".parse::<KeyValue>().is_err());
    }
}
