//! Training pairs from parquet (local or S3), and the order they are seen in: shuffled per
//! epoch from the seed, in batches holding no text twice (sentence-transformers'
//! `NoDuplicatesBatchSampler`), each process taking every `world`-th batch.
//!
//! Labels (gold margins or teacher scores for the distillation losses) come from the column
//! sentence-transformers' data collator takes: the first of `label`, `labels`, `score`, `scores`
//! present, or the one `--label-column` names; it is not a text column.

use std::collections::HashSet;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::TrainError;
use crate::io::input::read_whole;
use crate::io::{AllowedRoots, StoreUrl};

/// The training rows: `columns[c][row]`, column 0 the anchors, 1 the positives, then negatives.
#[derive(Debug, Clone)]
pub struct PairData {
    /// Column names as read.
    pub names: Vec<String>,
    /// Texts by column.
    pub columns: Vec<Vec<String>>,
    /// The label column, if the data has one.
    pub labels: Option<Labels>,
}

/// A label column: `width` f32 values per row (a float column has width 1).
#[derive(Debug, Clone)]
pub struct Labels {
    /// Column name.
    pub name: String,
    /// Values per row.
    pub width: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

impl Labels {
    /// The values of `rows`, row-major.
    pub fn rows(&self, rows: &[usize]) -> Vec<f32> {
        rows.iter()
            .flat_map(|&r| &self.values[r * self.width..(r + 1) * self.width])
            .copied()
            .collect()
    }
}

/// The label column names sentence-transformers' data collator recognizes, in its order.
pub const LABEL_COLUMNS: [&str; 4] = ["label", "labels", "score", "scores"];

impl PairData {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads every parquet file at `url` (a file, or a folder/prefix of `*.parquet`), keeping
/// `columns` in that order (all columns when empty). Every kept column must be text without
/// nulls; errors name the file, column and row. The label column (`label_column`, else the
/// first of [`LABEL_COLUMNS`] present and not picked as text) is read as numbers.
pub fn read_pairs(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    columns: &[String],
    label_column: Option<&str>,
    roots: &AllowedRoots,
) -> Result<PairData, TrainError> {
    let root = StoreUrl::parse(url).map_err(TrainError::DataStore)?;
    let (store, files) = runtime
        .block_on(crate::io::input::list_inputs(&root, roots))
        .map_err(TrainError::DataStore)?;
    let mut out: Option<PairData> = None;
    for file in files {
        let bytes = runtime
            .block_on(read_whole(store.clone(), &file, roots))
            .map_err(TrainError::DataStore)?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| {
            TrainError::Data(format!("{}: not a readable parquet file ({e})", file.url))
        })?;
        let schema = builder.schema().clone();
        let present = |n: &str| schema.field_with_name(n).is_ok();
        let label = match label_column {
            Some(name) if !present(name) => {
                return Err(TrainError::Data(format!(
                    "{}: no label column `{name}` (--label-column); columns: {}",
                    file.url,
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Some(name) => Some(name.to_string()),
            None => LABEL_COLUMNS
                .iter()
                .find(|n| present(n) && !columns.iter().any(|c| c == *n))
                .map(|n| n.to_string()),
        };
        let names: Vec<String> = if columns.is_empty() {
            schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| Some(n) != label.as_ref())
                .collect()
        } else {
            columns.to_vec()
        };
        if names.len() < 2 {
            return Err(TrainError::Data(format!(
                "{}: training needs at least 2 columns (anchor, positive), found {:?}",
                file.url, names
            )));
        }
        for name in &names {
            let field = schema.field_with_name(name).map_err(|_| {
                TrainError::Data(format!(
                    "{}: no column `{name}` (columns: {}); pick them with --columns",
                    file.url,
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            if !matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                return Err(TrainError::Data(format!(
                    "{}: column `{name}` is {}, not text; pick text columns with --columns",
                    file.url,
                    field.data_type()
                )));
            }
        }
        let data = out.get_or_insert_with(|| PairData {
            names: names.clone(),
            columns: vec![Vec::new(); names.len()],
            labels: label.as_ref().map(|name| Labels {
                name: name.clone(),
                width: 0,
                values: Vec::new(),
            }),
        });
        if data.labels.as_ref().map(|l| &l.name) != label.as_ref() {
            return Err(TrainError::Data(format!(
                "{}: label column {:?} where earlier files have {:?}",
                file.url,
                label,
                data.labels.as_ref().map(|l| &l.name)
            )));
        }
        if data.names.len() != names.len() {
            return Err(TrainError::Data(format!(
                "{}: has {} columns where earlier files have {}",
                file.url,
                names.len(),
                data.names.len()
            )));
        }
        let reader = builder
            .build()
            .map_err(|e| TrainError::Data(format!("{}: {e}", file.url)))?;
        let mut row = 0usize;
        for batch in reader {
            let batch = batch.map_err(|e| TrainError::Data(format!("{}: {e}", file.url)))?;
            for (c, name) in names.iter().enumerate() {
                let array = batch.column_by_name(name).expect("checked above");
                for i in 0..array.len() {
                    let text = match array.data_type() {
                        DataType::Utf8 => text_at(array.as_string::<i32>(), i),
                        DataType::LargeUtf8 => text_at(array.as_string::<i64>(), i),
                        _ => {
                            let a = array.as_string_view();
                            (!a.is_null(i)).then(|| a.value(i).to_string())
                        }
                    };
                    let text = text.ok_or_else(|| {
                        TrainError::Data(format!(
                            "{}: row {} column `{name}` is null; training texts cannot be \
                             null (drop or fill such rows)",
                            file.url,
                            row + i
                        ))
                    })?;
                    data.columns[c].push(text);
                }
            }
            if let Some(labels) = data.labels.as_mut() {
                let array = batch
                    .column_by_name(&labels.name)
                    .expect("checked above")
                    .clone();
                read_labels(&array, labels, &file.url, row)?;
            }
            row += batch.num_rows();
        }
    }
    let data = out.ok_or_else(|| TrainError::Data(format!("no parquet files at {url}")))?;
    if data.is_empty() {
        return Err(TrainError::Data(format!("{url}: no training rows")));
    }
    Ok(data)
}

/// Appends the rows of a label `array` (a number, or a list of numbers, per row) to `labels`;
/// every row must hold the same count of finite-or-−∞ numbers.
fn read_labels(
    array: &arrow::array::ArrayRef,
    labels: &mut Labels,
    file: &str,
    first_row: usize,
) -> Result<(), TrainError> {
    use arrow::datatypes::Float32Type;
    let name = labels.name.clone();
    let bad = |row: usize, what: String| {
        TrainError::Data(format!(
            "{file}: row {} label column `{name}` {what}",
            first_row + row
        ))
    };
    let numbers = |a: &dyn Array| -> Result<Vec<Option<f32>>, TrainError> {
        let cast = arrow::compute::cast(a, &DataType::Float32).map_err(|_| {
            TrainError::Data(format!(
                "{file}: label column `{name}` is {}, not numbers: the labels are gold margins or \
                 teacher scores (float or list<float>); pick the column with --label-column",
                a.data_type()
            ))
        })?;
        Ok(cast.as_primitive::<Float32Type>().iter().collect())
    };
    let mut push_row = |i: usize, values: Vec<Option<f32>>| -> Result<(), TrainError> {
        if labels.width == 0 && labels.values.is_empty() {
            labels.width = values.len();
        }
        if values.len() != labels.width || values.is_empty() {
            return Err(bad(
                i,
                format!(
                    "holds {} value(s) where earlier rows hold {}: every row needs the same \
                     count",
                    values.len(),
                    labels.width
                ),
            ));
        }
        for v in values {
            match v {
                Some(x) if !x.is_nan() && x != f32::INFINITY => labels.values.push(x),
                Some(x) => return Err(bad(i, format!("is {x}: give finite scores"))),
                None => return Err(bad(i, "is null: drop or fill such rows".into())),
            }
        }
        Ok(())
    };
    let list_rows =
        |i: usize, value: arrow::array::ArrayRef| numbers(value.as_ref()).map(|v| (i, v));
    match array.data_type() {
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            for i in 0..array.len() {
                if array.is_null(i) {
                    return Err(bad(i, "is null: drop or fill such rows".into()));
                }
                let value = match array.data_type() {
                    DataType::List(_) => array.as_list::<i32>().value(i),
                    DataType::LargeList(_) => array.as_list::<i64>().value(i),
                    _ => array.as_fixed_size_list().value(i),
                };
                let (i, values) = list_rows(i, value)?;
                push_row(i, values)?;
            }
        }
        _ => {
            for (i, v) in numbers(array.as_ref())?.into_iter().enumerate() {
                push_row(i, vec![v])?;
            }
        }
    }
    Ok(())
}

fn text_at<O: arrow::array::OffsetSizeTrait>(
    a: &arrow::array::GenericStringArray<O>,
    i: usize,
) -> Option<String> {
    (!a.is_null(i)).then(|| a.value(i).to_string())
}

/// SplitMix64: a small, fully specified generator, so the data order of a seed is the same on
/// every machine and in every version.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the bias is below 2^-32 for any n used here.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The batches of one epoch: rows shuffled from `(seed, epoch)`, then packed in order into
/// batches of `batch_size` rows that share no text (a row whose texts are already in the
/// batch waits for a later one, as in sentence-transformers' `NoDuplicatesBatchSampler`);
/// incomplete batches are dropped.
pub fn epoch_batches(data: &PairData, batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix64::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut order: Vec<usize> = (0..data.len()).collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    // Rows skipped for a duplicate come first in the next batch, then the shuffled order goes on.
    let mut deferred: Vec<usize> = Vec::new();
    let mut next = 0usize;
    let mut batches = Vec::new();
    loop {
        let mut batch = Vec::with_capacity(batch_size);
        let mut seen: HashSet<&str> = HashSet::new();
        let mut skipped = Vec::new();
        let mut candidates = std::mem::take(&mut deferred).into_iter();
        loop {
            let row = match candidates.next() {
                Some(row) => row,
                None if next < order.len() => {
                    next += 1;
                    order[next - 1]
                }
                None => break,
            };
            let texts = data.columns.iter().map(|c| c[row].as_str());
            if texts.clone().all(|t| !seen.contains(t)) {
                seen.extend(texts);
                batch.push(row);
                if batch.len() == batch_size {
                    break;
                }
            } else {
                skipped.push(row);
            }
        }
        skipped.extend(candidates);
        deferred = skipped;
        if batch.len() < batch_size {
            return batches; // Incomplete: dropped, as with drop_last.
        }
        batches.push(batch);
    }
}

/// Where training is in the data: epoch and the index of the next step within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Steps already taken in this epoch.
    pub step_in_epoch: u64,
}
