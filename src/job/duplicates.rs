//! Ids that occur more than once in a whole output, across files and shards, in bounded
//! memory.
//!
//! Every part's id column is read (nothing else), each non-null id hashed to 128 bits, and the
//! hashes sorted: in memory up to [`RUN_HASHES`] (128 MiB), beyond that in sorted runs spilled
//! to temporary files and merged. Equal neighbours are duplicates. A second pass over the id
//! columns, only when there are some, finds the text and the part of a few examples. Two
//! different ids share a 128-bit hash with probability about n²/2¹²⁹: never, in practice.
//! The runs go to `$SPARQ_SPILL_DIR` when set (a disk with room: a billion ids spill 16 GB),
//! else the system's temporary folder.

use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use arrow::array::Array;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use object_store::ObjectStore;

use crate::io::input::{read_column, read_footer, InputFile, InputReader};
use crate::io::{AllowedRoots, StoreError};

/// Hashes sorted in memory before a run is spilled (16 bytes each).
const RUN_HASHES: usize = 8 << 20;
/// The variable naming the folder sorted runs of id hashes spill to.
pub const SPILL_DIR_ENV: &str = "SPARQ_SPILL_DIR";

/// Where sorted runs spill: `$SPARQ_SPILL_DIR`, else the system's temporary folder.
pub fn spill_dir() -> std::path::PathBuf {
    std::env::var_os(SPILL_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from)
}

/// Examples named in the report.
const EXAMPLES: usize = 5;

/// Duplicate ids of an output.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Duplicates {
    /// Rows whose id occurred before (a row's second and later copies).
    pub rows: u64,
    /// A few duplicated ids and the parts holding them.
    pub examples: Vec<DuplicateExample>,
}

/// One duplicated id.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DuplicateExample {
    /// The id, as text.
    pub id: String,
    /// Parts holding it (a part twice when it holds the id twice).
    pub parts: Vec<String>,
}

/// Finds the duplicate ids of `files` (output parts) in column `id_column`.
pub fn find_duplicates(
    runtime: &tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    files: &[InputFile],
    id_column: &str,
    roots: &AllowedRoots,
) -> Result<Duplicates, StoreError> {
    let mut sorter = RunSorter::new(spill_dir());
    for_each_id(runtime, &store, files, id_column, roots, |_, _, hash| {
        sorter.push(hash)
    })?;
    let (rows, duplicated) = sorter.count_duplicates(EXAMPLES)?;
    if rows == 0 {
        return Ok(Duplicates::default());
    }
    let mut where_: BTreeMap<u128, DuplicateExample> = BTreeMap::new();
    for_each_id(
        runtime,
        &store,
        files,
        id_column,
        roots,
        |part, id, hash| {
            if duplicated.contains(&hash) {
                where_
                    .entry(hash)
                    .or_insert_with(|| DuplicateExample {
                        id: id.to_string(),
                        parts: Vec::new(),
                    })
                    .parts
                    .push(part.to_string());
            }
            Ok(())
        },
    )?;
    Ok(Duplicates {
        rows,
        examples: where_.into_values().collect(),
    })
}

/// Calls `each(part name, id text, hash)` for every non-null id of every file.
fn for_each_id(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    files: &[InputFile],
    id_column: &str,
    roots: &AllowedRoots,
    mut each: impl FnMut(&str, &str, u128) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for file in files {
        let mut reader = InputReader::open(store.clone(), file, roots)?;
        let footer = runtime.block_on(read_footer(&mut reader))?;
        let Ok(column) = footer.metadata.schema().index_of(id_column) else {
            continue; // Not a part of this output's schema: its readers say so.
        };
        let part = file.url.rsplit('/').next().unwrap_or(&file.url).to_string();
        let mut failed = None;
        runtime.block_on(read_column(
            reader.clone(),
            &footer.metadata,
            column,
            8192,
            |batch| {
                let ids = batch.column(0);
                let Ok(f) = ArrayFormatter::try_new(ids.as_ref(), &FormatOptions::default()) else {
                    return true;
                };
                for i in 0..ids.len() {
                    if ids.is_null(i) {
                        continue;
                    }
                    let text = f.value(i).to_string();
                    if let Err(e) = each(&part, &text, hash128(&text)) {
                        failed = Some(e);
                        return false;
                    }
                }
                true
            },
        ))?;
        if let Some(e) = failed.take() {
            return Err(e);
        }
    }
    Ok(())
}

/// A 128-bit hash of an id's text: two SipHash-1-3 passes with different prefixes.
fn hash128(text: &str) -> u128 {
    let half = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        salt.hash(&mut h);
        text.hash(&mut h);
        h.finish() as u128
    };
    (half(0) << 64) | half(1)
}

/// Sorts hashes in bounded memory: sorted runs, spilled to temporary files in `dir` when
/// large.
struct RunSorter {
    current: Vec<u128>,
    runs: Vec<tempfile::NamedTempFile>,
    dir: std::path::PathBuf,
}

impl RunSorter {
    fn new(dir: std::path::PathBuf) -> Self {
        Self {
            current: Vec::new(),
            runs: Vec::new(),
            dir,
        }
    }

    fn push(&mut self, hash: u128) -> Result<(), StoreError> {
        self.current.push(hash);
        if self.current.len() >= RUN_HASHES {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<(), StoreError> {
        self.current.sort_unstable();
        let dir = self.dir.clone();
        let io = |e| StoreError::Io {
            op: "spilling id hashes (set SPARQ_SPILL_DIR to a folder with room) to",
            path: dir.clone(),
            source: e,
        };
        let file = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        let mut w = BufWriter::new(file.as_file());
        for h in self.current.drain(..) {
            w.write_all(&h.to_le_bytes()).map_err(io)?;
        }
        w.flush().map_err(io)?;
        drop(w);
        self.runs.push(file);
        Ok(())
    }

    /// Rows whose hash occurred before, and up to `examples` duplicated hashes.
    fn count_duplicates(mut self, examples: usize) -> Result<(u64, HashSet<u128>), StoreError> {
        let mut rows = 0u64;
        let mut found = HashSet::new();
        let mut previous: Option<u128> = None;
        let mut see = |h: u128| {
            if previous == Some(h) {
                rows += 1;
                if found.len() < examples {
                    found.insert(h);
                }
            }
            previous = Some(h);
        };
        if self.runs.is_empty() {
            self.current.sort_unstable();
            self.current.iter().for_each(|&h| see(h));
            return Ok((rows, found));
        }
        if !self.current.is_empty() {
            self.spill()?;
        }
        let dir = self.dir.clone();
        let io = |e| StoreError::Io {
            op: "reading spilled id hashes from",
            path: dir.clone(),
            source: e,
        };
        let mut readers: Vec<BufReader<std::fs::File>> = Vec::new();
        for run in &self.runs {
            readers.push(BufReader::new(run.reopen().map_err(io)?));
        }
        let next = |r: &mut BufReader<std::fs::File>| -> Result<Option<u128>, StoreError> {
            let mut b = [0u8; 16];
            match r.read_exact(&mut b) {
                Ok(()) => Ok(Some(u128::from_le_bytes(b))),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(io(e)),
            }
        };
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(h) = next(r)? {
                heap.push(std::cmp::Reverse((h, i)));
            }
        }
        while let Some(std::cmp::Reverse((h, i))) = heap.pop() {
            see(h);
            if let Some(n) = next(&mut readers[i])? {
                heap.push(std::cmp::Reverse((n, i)));
            }
        }
        Ok((rows, found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilled_runs_count_like_one_sort() {
        let values: Vec<u128> = (0..1000u128).map(|i| (i * 7919) % 613).collect();
        let mut one = RunSorter::new(std::env::temp_dir());
        let spill = tempfile::tempdir().unwrap();
        let mut many = RunSorter::new(spill.path().to_path_buf());
        for (n, &v) in values.iter().enumerate() {
            one.push(v).unwrap();
            many.push(v).unwrap();
            if n % 97 == 0 {
                many.spill().unwrap();
            }
        }
        // The runs are in the folder given.
        assert_eq!(
            std::fs::read_dir(spill.path()).unwrap().count(),
            many.runs.len()
        );
        assert!(many.runs.len() > 5);
        let (a, _) = one.count_duplicates(5).unwrap();
        let (b, found) = many.count_duplicates(5).unwrap();
        assert_eq!(a, 1000 - 613);
        assert_eq!(a, b);
        assert_eq!(found.len(), 5);
    }

    #[test]
    fn a_spill_folder_that_is_not_there_is_named() {
        let mut sorter = RunSorter::new("/nonexistent/sparq-spill".into());
        sorter.push(1).unwrap();
        let e = sorter.spill().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/sparq-spill") && e.contains("SPARQ_SPILL_DIR"),
            "{e}"
        );
    }
}
