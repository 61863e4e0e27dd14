//! The sorted 128-bit hashes of one part's ids, committed beside the part
//! (`_reports/ids-<part>.bin`) so that the duplicate-id check at a job's end merges small sorted
//! runs instead of reading back and sorting every part's id column.
//!
//! Layout (little-endian): the magic `SPQIDS01`, the hash of [`PROBE`] (a sidecar written by a
//! build whose hash differs is not used), the part's size in bytes (a sidecar that does not
//! match the committed part is not used), the count, then the sorted hashes.

use std::hash::{Hash, Hasher};

use arrow::array::Array;
use arrow::util::display::{ArrayFormatter, FormatOptions};

const MAGIC: &[u8; 8] = b"SPQIDS01";
/// Hashed into every sidecar's header: equal only where the hash function is the same.
const PROBE: &str = "sparq id hash probe";
const HEADER: usize = 8 + 16 + 8 + 8;

/// The sidecar of part `part` (relative to the output).
pub fn sidecar_name(part: &str) -> String {
    format!("_reports/ids-{part}.bin")
}

/// A 128-bit hash of an id's text: two SipHash-1-3 passes with different prefixes. Two
/// different ids share it with probability about n²/2¹²⁹: never, in practice.
pub fn hash128(text: &str) -> u128 {
    let half = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        salt.hash(&mut h);
        text.hash(&mut h);
        h.finish() as u128
    };
    (half(0) << 64) | half(1)
}

/// Calls `each(text, hash)` for every non-null id of `ids`, as the duplicate check names it.
pub fn for_each_id_text(ids: &dyn Array, mut each: impl FnMut(&str, u128) -> bool) -> bool {
    let Ok(f) = ArrayFormatter::try_new(ids, &FormatOptions::default()) else {
        return true;
    };
    for i in 0..ids.len() {
        if ids.is_null(i) {
            continue;
        }
        let text = f.value(i).to_string();
        if !each(&text, hash128(&text)) {
            return false;
        }
    }
    true
}

/// The hashes of the non-null ids of `ids`, appended to `out`.
pub fn push_hashes(ids: &dyn Array, out: &mut Vec<u128>) {
    for_each_id_text(ids, |_, h| {
        out.push(h);
        true
    });
}

/// The sidecar bytes of a part of `part_bytes` bytes holding `hashes` (sorted here).
pub fn encode(mut hashes: Vec<u128>, part_bytes: u64) -> Vec<u8> {
    hashes.sort_unstable();
    let mut out = Vec::with_capacity(HEADER + 16 * hashes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&hash128(PROBE).to_le_bytes());
    out.extend_from_slice(&part_bytes.to_le_bytes());
    out.extend_from_slice(&(hashes.len() as u64).to_le_bytes());
    for h in hashes {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out
}

/// The sorted hashes of a sidecar, or why it cannot stand for a part of `part_bytes` bytes.
pub fn decode(bytes: &[u8], part_bytes: u64) -> Result<Vec<u128>, &'static str> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("not an id sidecar of this sparq");
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let probe = u128::from_le_bytes(bytes[8..24].try_into().expect("16 bytes"));
    if probe != hash128(PROBE) {
        return Err("written by a sparq whose id hash differs");
    }
    if u64_at(24) != part_bytes {
        return Err("written for another version of the part");
    }
    let count = u64_at(32) as usize;
    if bytes.len() - HEADER != count.saturating_mul(16) {
        return Err("truncated");
    }
    let hashes: Vec<u128> = bytes[HEADER..]
        .chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
        .collect();
    if hashes.windows(2).any(|w| w[0] > w[1]) {
        return Err("not sorted");
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_reads_back_sorted_and_only_for_its_part() {
        let bytes = encode(vec![3, 1, 2, 2], 77);
        assert_eq!(decode(&bytes, 77).unwrap(), vec![1, 2, 2, 3]);
        assert!(decode(&bytes, 78).is_err());
        assert!(decode(&bytes[..bytes.len() - 1], 77).is_err());
        assert!(decode(b"PAR1", 77).is_err());
    }
}
