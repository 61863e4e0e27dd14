//! The keys of a job spec: the flags of the job's command, and what to say about a key that is
//! none of them (each named once, with the nearest known key).

use serde_json::{Map, Value};

/// The spec keys of a command: its visible flags with `_` for `-`, less `excluded`.
pub(super) fn command_keys(
    augment: fn(clap::Command) -> clap::Command,
    excluded: &[&str],
) -> Vec<String> {
    augment(clap::Command::new("job"))
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .map(|l| l.replace('-', "_"))
        .filter(|k| !excluded.contains(&k.as_str()))
        .collect()
}

/// Refuses keys that are not settings of a `kind` job: each unknown key named once, with the
/// closest known key when one is near (a typo, `-` for `_`).
pub(super) fn check_keys(
    kind: &str,
    map: &Map<String, Value>,
    known: &[String],
) -> Result<(), String> {
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !known.contains(k))
        .map(|k| match closest_key(k, known) {
            Some(near) => format!("`{k}` (did you mean `{near}`?)"),
            None => format!("`{k}`"),
        })
        .collect();
    let named = match unknown.as_slice() {
        [] => return Ok(()),
        [one] => format!("unknown key {one}"),
        [first @ .., last] => format!("unknown keys {} and {last}", first.join(", ")),
    };
    Err(format!(
        "{named} in a {kind} job spec; its keys are the flags of `sparq {kind}` with `_` for \
         `-`: kind, {}",
        known.join(", ")
    ))
}

/// The known key nearest to `key` (edit distance, a swap counting one), if it is near enough
/// to be a typo of it, or `key` is its start.
fn closest_key<'k>(key: &str, known: &'k [String]) -> Option<&'k str> {
    let key = key.replace('-', "_").to_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&key, k), k))
        .filter(|(d, k)| {
            *d <= (key.len().max(k.len()) / 3).max(1) || (key.len() >= 4 && k.starts_with(&key))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // rows[i][j]: the distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_key_is_a_typo_or_a_start_away() {
        assert_eq!(edit_distance("modle", "model"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest_key("lr", &["seed".into()]), None);
        assert_eq!(
            closest_key("query_", &["query".into(), "queries".into()]),
            Some("query")
        );
        assert_eq!(
            closest_key("Shard-Rows", &["shard_rows".into()]),
            Some("shard_rows")
        );
        assert_eq!(
            closest_key("learn", &["learning_rate".into()]),
            Some("learning_rate")
        );
    }
}
