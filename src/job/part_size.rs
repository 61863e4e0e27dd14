//! The part-size cap (`--max-part-bytes`): a new output's shards are cut small enough that no
//! part is expected to pass it, so a part fits one S3 `PUT` and a worker's disk. The estimate
//! is an upper bound on the vectors (every entry the top-k, else the vocabulary, allows) plus
//! the input's bytes per row for the id and kept columns; a part that passes the cap all the
//! same fails its shard when it is written (`io::output::PartWriter`).

use super::args::EncodeConfig;
use super::identity::InputRecord;
use super::JobError;
use crate::encode::settings::RowTask;
use crate::io::commit::SINGLE_PUT_LIMIT;
use crate::io::output::DEFAULT_MAX_PART_BYTES;
use crate::model::ModelLayout;

/// Bytes of one vector entry in a part: a uint32 id and a float32 weight (compression saves
/// little on either).
const ENTRY_BYTES: u64 = 8;

/// Checks `--max-part-bytes`: at least 64 KiB, and for an S3 output at most what one `PUT`
/// carries.
pub fn validate(args: &EncodeConfig) -> Result<(), JobError> {
    let Some(max) = args.max_part_bytes else {
        return Ok(());
    };
    let high = if args.output.starts_with("s3://") {
        SINGLE_PUT_LIMIT
    } else {
        u64::MAX
    };
    if !(64 << 10..=high).contains(&max) {
        return Err(JobError::Settings(format!(
            "--max-part-bytes {max} is outside its range [65536, {high}]{}",
            if max > high {
                " (one S3 PUT carries at most 5 GiB)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// Bytes one output row may take, generously: every entry its vector may hold, plus the
/// largest bytes per row of any input file (which hold the id and kept columns, and the text
/// besides).
pub fn row_bytes(args: &EncodeConfig, files: &[InputRecord], layout: Option<&ModelLayout>) -> u64 {
    let entries = match (&args.task, layout) {
        (RowTask::Encode, Some(layout)) => {
            let vocab = layout.arch.vocab_size().max(1) as u64;
            args.max_active_dims
                .or(layout.max_active_dims)
                .map_or(vocab, |k| (k as u64).min(vocab))
        }
        // A score, or a model not read: one value per row.
        _ => 1,
    };
    let input = files
        .iter()
        .filter_map(|f| Some(f.size.div_ceil(f.rows.filter(|&r| r > 0)?)))
        .max()
        .unwrap_or(0);
    entries * ENTRY_BYTES + input
}

/// `rows`, lowered where parts of that many rows could pass `--max-part-bytes`.
pub fn capped_shard_rows(
    rows: u64,
    args: &EncodeConfig,
    files: &[InputRecord],
    layout: Option<&ModelLayout>,
) -> u64 {
    let max = args.max_part_bytes.unwrap_or(DEFAULT_MAX_PART_BYTES);
    let fit = (max / row_bytes(args, files, layout).max(1)).max(1);
    if fit < rows {
        tracing::info!(
            "shards of at most {fit} rows (not {rows}): a part of more could pass \
             --max-part-bytes {max}"
        );
    }
    rows.min(fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_lowers_the_rows_per_shard_only_where_it_must() {
        let mut args: EncodeConfig = serde_json::from_value(
            serde_json::json!({"input": "in", "output": "out", "max_active_dims": 100}),
        )
        .unwrap();
        let files = [InputRecord {
            url: "a".into(),
            size: 2000,
            version: None,
            rows: Some(10),
            footer: None,
        }];
        // No layout read: one entry (8 bytes) + 200 input bytes per row.
        assert_eq!(row_bytes(&args, &files, None), 208);
        args.max_part_bytes = Some(208 * 50);
        assert_eq!(capped_shard_rows(1000, &args, &files, None), 50);
        assert_eq!(capped_shard_rows(20, &args, &files, None), 20);
        args.output = "s3://b/o".into();
        args.max_part_bytes = Some(6 << 30);
        assert!(validate(&args).unwrap_err().to_string().contains("5 GiB"));
    }
}
