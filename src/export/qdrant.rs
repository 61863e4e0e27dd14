//! Qdrant point ids. Qdrant accepts unsigned 64-bit integers and UUIDs only, and rejects a
//! whole upsert batch over one string id, so ids are mapped before anything is written:
//! unsigned integers (integer columns, or strings of digits) become JSON numbers, UUID strings
//! canonical UUIDs, and any other id refuses the export, naming the file, row and id. With
//! `--qdrant-ids uuid5` every id becomes the UUIDv5 of its text instead, the original kept in
//! the point's payload.

use std::sync::Arc;

use object_store::ObjectStore;
use serde_json::Value;
use sha1::{Digest, Sha1};
use uuid::Uuid;

use super::read::id_values;
use super::ExportError;
use crate::io::input::{read_column, read_footer, InputFile, InputReader};
use crate::io::AllowedRoots;

/// How `sparq export --format qdrant` makes point ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum QdrantIds {
    /// Ids Qdrant accepts, as they are: unsigned integers (an integer column, or strings of
    /// digits without leading zeros) as numbers, UUID strings as canonical UUIDs; any other id
    /// refuses the export before anything is written.
    #[default]
    Keep,
    /// Every point id is the UUIDv5 of the id's text in the OID namespace (Python:
    /// `uuid.uuid5(uuid.NAMESPACE_OID, str(id))`); the original id is kept in the point's
    /// `payload` under the id column's name.
    Uuid5,
}

/// The point id of an output id: a JSON number or a canonical UUID string; else why not.
pub fn point_id(id: &Value, mode: QdrantIds) -> Result<Value, String> {
    if id.is_null() {
        return Err("the id is null: a point needs an id".into());
    }
    if mode == QdrantIds::Uuid5 {
        let u = uuid5(&Uuid::NAMESPACE_OID, &id_text(id));
        return Ok(Value::String(u.hyphenated().to_string()));
    }
    match id {
        Value::Number(n) => n
            .as_u64()
            .map(Value::from)
            .ok_or_else(|| format!("id {n} is not an unsigned integer")),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<u64>() {
                Ok(n) if n.to_string() == *s => Ok(n.into()),
                Ok(n) => Err(format!(
                    "id `{s}` has leading zeros (as a number it would be the same point as `{n}`)"
                )),
                Err(_) => Err(format!(
                    "id `{s}` is larger than an unsigned 64-bit integer"
                )),
            }
        }
        Value::String(s) => Uuid::try_parse(s)
            .map(|u| Value::String(u.hyphenated().to_string()))
            .map_err(|_| format!("id `{s}` is neither an unsigned integer nor a UUID")),
        other => Err(format!(
            "id {other} is neither an unsigned integer nor a UUID"
        )),
    }
}

/// The payload keeping the original id (`--qdrant-ids uuid5`), else none.
pub fn payload(id: &Value, id_column: &str, mode: QdrantIds) -> Option<Value> {
    (mode == QdrantIds::Uuid5).then(|| serde_json::json!({ id_column: id }))
}

/// The id as text: a string as it is, a number as written.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The RFC 4122 version 5 (SHA-1) UUID of `name` in `namespace`.
fn uuid5(namespace: &Uuid, name: &str) -> Uuid {
    let mut hash = Sha1::new();
    hash.update(namespace.as_bytes());
    hash.update(name.as_bytes());
    let digest = hash.finalize();
    let bytes: [u8; 16] = digest[..16].try_into().expect("SHA-1 has 20 bytes");
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// The refusal of an id that maps to no point id.
pub fn refusal(file: &str, row: u64, id_column: &str, why: &str) -> ExportError {
    ExportError::Input(format!(
        "{file}, row {row} (counting from 0), column `{id_column}`: {why}. Qdrant point ids are \
         unsigned 64-bit integers or UUIDs; pass --qdrant-ids uuid5 to derive a UUID from each \
         id (the original kept in the payload as `{id_column}`), or export another id column \
         with --id-column. Nothing was written"
    ))
}

/// Checks that every id of `files` maps to a point id, reading the id column only, so that an
/// export is refused before it writes anything.
pub fn check_ids(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    files: &[InputFile],
    id_column: &str,
    mode: QdrantIds,
) -> Result<(), ExportError> {
    let roots = AllowedRoots::anywhere();
    for file in files {
        let mut reader = InputReader::open(store.clone(), file, &roots)?;
        let footer = runtime.block_on(read_footer(&mut reader))?;
        let Ok(column) = footer.metadata.schema().index_of(id_column) else {
            continue; // The export's own pass names the missing column and the ones there are.
        };
        let mut row = 0u64;
        let mut refused: Option<ExportError> = None;
        runtime.block_on(read_column(
            reader.clone(),
            &footer.metadata,
            column,
            8192,
            |batch| {
                let ids = match id_values(batch.column(0)) {
                    Ok(ids) => ids,
                    Err(e) => {
                        refused = Some(ExportError::Input(format!("{}: {e}", file.url)));
                        return false;
                    }
                };
                for id in &ids {
                    if let Err(why) = point_id(id, mode) {
                        refused = Some(refusal(&file.url, row, id_column, &why));
                        return false;
                    }
                    row += 1;
                }
                true
            },
        ))?;
        if let Some(e) = refused.take() {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_and_uuids_are_kept_other_ids_refused() {
        let keep = |v: Value| point_id(&v, QdrantIds::Keep);
        assert_eq!(keep(json!(7)), Ok(json!(7)));
        assert_eq!(keep(json!(u64::MAX)), Ok(json!(u64::MAX)));
        assert_eq!(keep(json!("42")), Ok(json!(42)));
        assert_eq!(keep(json!("0")), Ok(json!(0)));
        assert_eq!(
            keep(json!("6BA7B810-9DAD-11D1-80B4-00C04FD430C8")),
            Ok(json!("6ba7b810-9dad-11d1-80b4-00c04fd430c8"))
        );
        assert_eq!(
            keep(json!("6ba7b8109dad11d180b400c04fd430c8")),
            Ok(json!("6ba7b810-9dad-11d1-80b4-00c04fd430c8"))
        );
        assert!(keep(json!(-1)).unwrap_err().contains("-1"));
        assert!(keep(json!("007")).unwrap_err().contains("leading zeros"));
        assert!(keep(json!("18446744073709551616"))
            .unwrap_err()
            .contains("larger"));
        assert!(keep(json!("MED-10")).unwrap_err().contains("`MED-10`"));
        assert!(keep(json!("")).is_err());
        assert!(keep(Value::Null).unwrap_err().contains("null"));
    }

    #[test]
    fn uuid5_ids_are_rfc_4122_version_5() {
        // Python's `uuid.uuid5(uuid.NAMESPACE_OID, "MED-10")`, and RFC 4122's example
        // (errata 1352) `uuid5(NAMESPACE_DNS, "www.example.com")`.
        assert_eq!(
            point_id(&json!("MED-10"), QdrantIds::Uuid5),
            Ok(json!("d7af0ce8-0691-5ac9-b086-3bff373caa71"))
        );
        assert_eq!(
            uuid5(&Uuid::NAMESPACE_DNS, "www.example.com").to_string(),
            "2ed6657d-e927-568b-95e1-2665a8aea6a2"
        );
        // Integer ids hash their decimal text, and the payload keeps the original.
        assert_eq!(
            point_id(&json!(12), QdrantIds::Uuid5),
            point_id(&json!("12"), QdrantIds::Uuid5)
        );
        assert_eq!(
            payload(&json!("MED-10"), "doc_id", QdrantIds::Uuid5),
            Some(json!({"doc_id": "MED-10"}))
        );
        assert_eq!(payload(&json!(1), "id", QdrantIds::Keep), None);
    }
}
