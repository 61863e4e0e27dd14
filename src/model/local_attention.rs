//! Sliding-window (local) self-attention over a packed batch: each token attends to the tokens
//! of its own sequence at most `half_window` positions away, bounds included, as transformers'
//! `sliding_window_bidirectional_overlay` (`abs(q_idx - kv_idx) <= sliding_window`) masks it.
//!
//! It always runs on the padded grid of [`super::packed`] (one row per sequence), with the key
//! mask of the grid combined with a band mask. On CUDA the packed batch normally attends through
//! the variable-length kernels, which take no window (the memory-efficient kernel used for fp32
//! has none), so local layers build the same grid from the sequence lengths instead: correct on
//! every device, and the band costs a `[rows, width, width]` boolean mask per batch, not per
//! layer.

use tch::{Device, Kind, Tensor};

use super::attention::self_attention;
use super::packed::{AttentionPlan, PackedBatch};

/// The grid a batch's local layers attend on, with its band-and-key mask.
pub struct BandGrid {
    /// Position of each packed token in the flattened grid, `[total]`.
    index: Tensor,
    /// Boolean `[rows, 1, width, width]`: query cell `i` may attend key cell `j`.
    mask: Tensor,
    rows: i64,
    width: i64,
}

impl BandGrid {
    /// The grid of `batch` (its own, or one built from its lengths when it attends through the
    /// variable-length kernels) with a band of `half_window` positions on each side.
    pub fn new(batch: &PackedBatch, half_window: i64) -> Result<Self, tch::TchError> {
        let device = batch.ids.device();
        let (index, keys, rows, width) = match &batch.attention {
            AttentionPlan::Grid {
                index,
                keys,
                rows,
                width,
            } => (index.shallow_clone(), keys.shallow_clone(), *rows, *width),
            AttentionPlan::Varlen => grid_of(&batch.lengths, batch.total, device)?,
        };
        let cells = Tensor::f_arange(width, (Kind::Int64, device))?;
        let distance = cells
            .f_unsqueeze(1)?
            .f_sub(&cells.f_unsqueeze(0)?)?
            .f_abs()?;
        let band = distance.f_le(half_window)?.f_view([1, 1, width, width])?;
        // A grid cell past a sequence's end may see no key at all; letting every cell see itself
        // keeps its softmax finite (such cells are never gathered back, and a real token always
        // sees itself anyway), so no NaN reaches a gradient.
        let own = distance.f_eq(0)?.f_view([1, 1, width, width])?;
        let mask = keys.f_logical_and(&band)?.f_logical_or(&own)?;
        Ok(Self {
            index,
            mask,
            rows,
            width,
        })
    }

    /// Multi-head local attention of the packed `q`, `k`, `v` (`[total, hidden]` each); returns
    /// `[total, hidden]`.
    pub fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: i64,
        attn_dropout: f64,
    ) -> Result<Tensor, tch::TchError> {
        let joined = Tensor::f_cat(&[q, k, v], -1)?;
        let (_, three) = joined.size2()?;
        // Zeros where no token is: a masked key's value must be finite (0 · NaN = NaN).
        let grid = Tensor::f_zeros(
            [self.rows * self.width, three],
            (joined.kind(), joined.device()),
        )?
        .f_index_copy(0, &self.index, &joined)?
        .f_view([self.rows, self.width, three])?;
        let parts = grid.f_chunk(3, -1)?;
        self_attention(
            &parts[0],
            &parts[1],
            &parts[2],
            heads,
            &self.mask,
            attn_dropout,
        )?
        .f_reshape([self.rows * self.width, three / 3])?
        .f_index_select(0, &self.index)
    }
}

/// The grid [`PackedBatch::new`] lays out for the CPU path: one row per sequence, as wide as the
/// longest, then the padding tokens in rows of their own (they attend among themselves).
fn grid_of(
    lengths: &[i64],
    total: i64,
    device: Device,
) -> Result<(Tensor, Tensor, i64, i64), tch::TchError> {
    let width = lengths.iter().copied().max().unwrap_or(1).max(1);
    let real: i64 = lengths.iter().sum();
    let pad = (total - real).max(0);
    let rows = lengths.len() as i64 + (pad + width - 1) / width;
    let mut index = Vec::with_capacity(total.max(0) as usize);
    for (b, &n) in lengths.iter().enumerate() {
        index.extend((0..n).map(|t| b as i64 * width + t));
    }
    let first_pad_cell = lengths.len() as i64 * width;
    index.extend(first_pad_cell..first_pad_cell + pad);
    let mut keys = vec![false; (rows * width) as usize];
    for &cell in &index {
        keys[cell as usize] = true;
    }
    Ok((
        Tensor::from_slice(&index).f_to_device(device)?,
        Tensor::from_slice(&keys)
            .f_to_device(device)?
            .f_view([rows, 1, 1, width])?,
        rows,
        width,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::AttentionKernel;

    /// Local attention of one sequence computed the slow way: a softmax over the keys within
    /// the window of each query.
    fn banded_reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, half: i64) -> Tensor {
        let (n, h) = q.size2().unwrap();
        let d = h / heads;
        let split = |t: &Tensor| t.view([n, heads, d]).transpose(0, 1);
        let (q, k, v) = (split(q), split(k), split(v));
        let scores = q.matmul(&k.transpose(-2, -1)) / (d as f64).sqrt();
        let mut rows = Vec::new();
        for i in 0..n {
            let lo = (i - half).max(0);
            let hi = (i + half).min(n - 1);
            let s = scores.narrow(1, i, 1).narrow(2, lo, hi - lo + 1);
            let p = s.softmax(-1, Kind::Float);
            rows.push(p.matmul(&v.narrow(1, lo, hi - lo + 1)));
        }
        Tensor::cat(&rows, 1).transpose(0, 1).reshape([n, h])
    }

    #[test]
    fn band_attention_equals_a_per_query_window_softmax() {
        tch::manual_seed(3);
        let seqs: Vec<Vec<u32>> = vec![vec![1; 11], vec![2; 3], vec![3; 7]];
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let (h, heads, half) = (8, 2, 2);
        for total in [21, 32] {
            let batch =
                PackedBatch::new(&refs, total, Device::Cpu, AttentionKernel::Fused, 1).unwrap();
            let band = BandGrid::new(&batch, half).unwrap();
            let make = || Tensor::randn([total, h], (Kind::Float, Device::Cpu));
            let (q, k, v) = (make(), make(), make());
            let got = band.attend(&q, &k, &v, heads, 0.0).unwrap();
            assert_eq!(got.size(), [total, h]);
            assert!(bool::try_from(got.isfinite().all()).unwrap());
            let mut start = 0;
            for &n in &batch.lengths {
                let one = |t: &Tensor| t.narrow(0, start, n);
                let want = banded_reference(&one(&q), &one(&k), &one(&v), heads, half);
                let diff = (want - got.narrow(0, start, n))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(diff < 1e-6, "sequence at {start}: {diff}");
                start += n;
            }
            // The grid built from lengths (the CUDA path's) is the CPU path's grid.
            let (index, keys, rows, width) = grid_of(&batch.lengths, total, Device::Cpu).unwrap();
            let AttentionPlan::Grid {
                index: i2,
                keys: k2,
                rows: r2,
                width: w2,
            } = &batch.attention
            else {
                panic!("CPU batches attend on a grid")
            };
            assert_eq!((rows, width), (*r2, *w2));
            assert_eq!(index, *i2);
            assert_eq!(keys, *k2);
        }
    }
}
