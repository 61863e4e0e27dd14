//! Ids that occur more than once in a whole output, across files and shards, in bounded
//! memory.
//!
//! Each non-null id is hashed to 128 bits (its text, see `io::id_hashes`) and the hashes
//! sorted. A part committed by this sparq has its ids' hashes beside it, sorted
//! (`_reports/ids-<part>.bin`, written by the worker that committed it), so the check reads those
//! small runs and merges them; only a part without one that fits it (older outputs) has its id
//! column read and hashed. The runs are merged in memory up to
//! [`RUN_HASHES`] (128 MiB), beyond that spilled to temporary files and merged from there.
//! Equal neighbours are duplicates. A second pass, only when there are some, reads the id
//! column of the parts holding the first few (by their runs) for their text. The runs go to
//! `$SPARQ_SPILL_DIR` when set (a disk with room: a billion ids spill 16 GB), else the
//! system's temporary folder.

use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use object_store::ObjectStore;

use crate::io::id_hashes::{self, for_each_id_text};
use crate::io::input::{read_column, read_footer, InputFile, InputReader};
use crate::io::{AllowedRoots, Committer, StoreError};

pub use crate::io::commit::spill_dir;

/// Hashes sorted in memory before a run is spilled (16 bytes each).
const RUN_HASHES: usize = 8 << 20;

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

/// A committed part: its file, and the name of its ids' sidecar where the output holds one.
pub struct PartIds {
    /// The part.
    pub file: InputFile,
    /// Its sidecar (relative to the output).
    pub sidecar: Option<String>,
}

/// Finds the duplicate ids of `parts` (an output's, written through `committer`) in column
/// `id_column`.
pub fn find_duplicates(
    runtime: &tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    committer: &Committer,
    parts: &[PartIds],
    id_column: &str,
    roots: &AllowedRoots,
) -> Result<Duplicates, StoreError> {
    let mut sorter = RunSorter::new(spill_dir());
    let mut with_run = vec![false; parts.len()];
    for (part, has_run) in parts.iter().zip(&mut with_run) {
        match read_run(runtime, committer, part)? {
            Some(run) => {
                *has_run = true;
                sorter.push_sorted(&run)?;
            }
            None => for_each_id(
                runtime,
                &store,
                std::slice::from_ref(&part.file),
                id_column,
                roots,
                |_, _, hash| sorter.push(hash),
            )?,
        }
    }
    let (rows, duplicated) = sorter.count_duplicates(EXAMPLES)?;
    if rows == 0 {
        return Ok(Duplicates::default());
    }
    // The parts holding an example, in order: those with a run only where it holds one.
    let mut holding = Vec::new();
    for (part, &has_run) in parts.iter().zip(&with_run) {
        let holds = !has_run
            || read_run(runtime, committer, part)?
                .is_some_and(|run| duplicated.iter().any(|h| run.binary_search(h).is_ok()));
        if holds {
            holding.push(part.file.clone());
        }
    }
    let mut where_: BTreeMap<u128, DuplicateExample> = BTreeMap::new();
    for_each_id(
        runtime,
        &store,
        &holding,
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

/// The sorted id hashes of `part` from its sidecar, `None` where it has none that fits it.
fn read_run(
    runtime: &tokio::runtime::Runtime,
    committer: &Committer,
    part: &PartIds,
) -> Result<Option<Vec<u128>>, StoreError> {
    let Some(name) = &part.sidecar else {
        return Ok(None);
    };
    let Some(bytes) = runtime.block_on(committer.get(name))? else {
        return Ok(None);
    };
    match id_hashes::decode(&bytes, part.file.size) {
        Ok(run) => Ok(Some(run)),
        Err(why) => {
            tracing::warn!(
                "{}: {why}; the duplicate-id check reads {} instead",
                committer.url().join(name),
                part.file.url
            );
            Ok(None)
        }
    }
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
                for_each_id_text(batch.column(0).as_ref(), |text, hash| {
                    match each(&part, text, hash) {
                        Ok(()) => true,
                        Err(e) => {
                            failed = Some(e);
                            false
                        }
                    }
                })
            },
        ))?;
        if let Some(e) = failed.take() {
            return Err(e);
        }
    }
    Ok(())
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

    /// Adds a sorted run (a part's sidecar): runs side by side are merged when sorted.
    fn push_sorted(&mut self, run: &[u128]) -> Result<(), StoreError> {
        self.current.extend_from_slice(run);
        if self.current.len() >= RUN_HASHES {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<(), StoreError> {
        // The stable sort finds the sorted runs already there and merges them.
        self.current.sort();
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
            self.current.sort();
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
