//! The packed token stream every forward pass runs on: the real tokens of a batch laid end to
//! end, `[tokens, hidden]`, with cumulative lengths marking the sequences.
//!
//! FasterTransformer's "effective transformer" and text-embeddings-inference's `flash_bert`
//! run BERT this way: embeddings, Q/K/V, the attention output, the FFN and the MLM head see
//! only real tokens, and attention alone knows where sequences start and end. On CUDA it runs
//! over the variable-length segments directly (FlashAttention-2 in bf16, the memory-efficient
//! kernel in fp32, through `csrc/varlen_attention.cpp`); on CPU, and wherever those kernels are
//! not available, the tokens are scattered into a `[sequences, longest]` grid around the
//! attention call only and gathered back.
//!
//! On CUDA the stream is padded to one of a few token-count buckets ([`token_bucket`]), so a
//! long run sees a handful of shapes and every one is warm after the first batches; the
//! padding forms segments of its own, which nothing reads. The index tensors are built on the
//! host in one buffer and uploaded once, from pinned memory, without blocking.

use tch::{Device, Kind, Tensor};

use super::attention::{self_attention, varlen_attention, varlen_usable, AttentionKernel};

/// `n` rounded up to a multiple of `multiple`.
pub fn shape_bucket(n: i64, multiple: i64) -> i64 {
    if multiple <= 1 {
        n
    } else {
        (n + multiple - 1) / multiple * multiple
    }
}

/// Tokens of the smallest CUDA bucket; buckets up to [`LINEAR_BUCKETS`] are its multiples.
const BUCKET_STEP: i64 = 256;
/// Beyond this, buckets grow geometrically (×2^¼): a few shapes per doubling.
const LINEAR_BUCKETS: i64 = 2048;

/// The padded token count of a packed batch of `tokens` real tokens: on CUDA one of a small
/// fixed set (multiples of 256 up to 2,048, then 2,048·2^(k/4) rounded up to 256: 32 shapes up
/// to 131,072 tokens, at most 19% padding); elsewhere `tokens` rounded up to `multiple`.
pub fn token_bucket(tokens: i64, cuda: bool, multiple: i64) -> i64 {
    let tokens = tokens.max(1);
    if !cuda {
        let m = multiple.max(1);
        return (tokens + m - 1) / m * m;
    }
    if tokens <= LINEAR_BUCKETS {
        return (tokens + BUCKET_STEP - 1) / BUCKET_STEP * BUCKET_STEP;
    }
    let mut k = 0i32;
    loop {
        let size = (LINEAR_BUCKETS as f64 * 2f64.powf(k as f64 / 4.0)).ceil() as i64;
        let size = (size + BUCKET_STEP - 1) / BUCKET_STEP * BUCKET_STEP;
        if size >= tokens {
            return size;
        }
        k += 1;
    }
}

/// How attention finds the sequences of a packed batch.
pub enum AttentionPlan {
    /// Variable-length kernels over `cu_seqlens` (CUDA).
    Varlen,
    /// Scatter into a `[rows, width]` grid, attend with a key mask, gather back.
    Grid {
        /// Position of each real token in the flattened grid, `[real]`.
        index: Tensor,
        /// Boolean key mask `[rows, 1, 1, width]`.
        keys: Tensor,
        /// Sequences.
        rows: i64,
        /// Grid width (the longest sequence, rounded up for bf16 on CPU).
        width: i64,
    },
}

/// A batch of tokenized sequences as one stream, on the model's device.
pub struct PackedBatch {
    /// Token ids `[total]`: the real tokens, then padding.
    pub ids: Tensor,
    /// Position of each token within its sequence `[total]`.
    pub positions: Tensor,
    /// Cumulative segment lengths, int32 `[segments + 1]`: the sequences, then padding.
    pub cu_seqlens: Tensor,
    /// Real tokens per sequence, in order.
    pub lengths: Vec<i64>,
    /// Real tokens.
    pub real: i64,
    /// Tokens including padding.
    pub total: i64,
    /// Longest segment (padding segments included).
    pub max_len: i64,
    /// How attention runs.
    pub attention: AttentionPlan,
}

impl PackedBatch {
    /// Packs `seqs` (none empty) into `total` ≥ their token count slots on `device`, for
    /// attention by `kernel`; `multiple` rounds the CPU grid width (bf16 shape caching).
    pub fn new(
        seqs: &[&[u32]],
        total: i64,
        device: Device,
        kernel: AttentionKernel,
        multiple: i64,
    ) -> Result<Self, tch::TchError> {
        let lengths: Vec<i64> = seqs.iter().map(|s| s.len() as i64).collect();
        let real: i64 = lengths.iter().sum();
        let total = total.max(real).max(1);
        let longest = lengths.iter().copied().max().unwrap_or(1).max(1);
        // Padding segments no longer than the longest sequence: their attention costs no more
        // than a sequence's would.
        let mut segments = lengths.clone();
        let mut pad = total - real;
        while pad > 0 {
            let n = pad.min(longest);
            segments.push(n);
            pad -= n;
        }
        let mut buf: Vec<i64> = Vec::with_capacity((2 * total) as usize + segments.len() + 1);
        for s in seqs {
            buf.extend(s.iter().map(|&id| id as i64));
        }
        buf.resize(total as usize, 0);
        for &n in &lengths {
            buf.extend(0..n);
        }
        buf.resize((2 * total) as usize, 0);
        buf.push(0);
        let mut end = 0;
        for &n in &segments {
            end += n;
            buf.push(end);
        }
        let host = Tensor::from_slice(&buf);
        let uploaded = upload(&host, device)?;
        let ids = uploaded.f_narrow(0, 0, total)?;
        let positions = uploaded.f_narrow(0, total, total)?;
        let cu_seqlens = uploaded
            .f_narrow(0, 2 * total, segments.len() as i64 + 1)?
            .f_to_kind(Kind::Int)?;
        let attention = if kernel == AttentionKernel::Varlen && varlen_usable() {
            AttentionPlan::Varlen
        } else {
            // Each sequence is a grid row; padding tokens fill extra rows of their own, so one
            // scatter and one gather cover the whole stream.
            let width = shape_bucket(longest, multiple);
            let pad = total - real;
            let rows = lengths.len() as i64 + (pad + width - 1) / width;
            let mut index = Vec::with_capacity(total as usize);
            let mut keys = vec![false; (rows * width) as usize];
            for (b, &n) in lengths.iter().enumerate() {
                for t in 0..n {
                    index.push(b as i64 * width + t);
                }
            }
            let first_pad_cell = lengths.len() as i64 * width;
            index.extend(first_pad_cell..first_pad_cell + pad);
            for &cell in &index {
                keys[cell as usize] = true;
            }
            AttentionPlan::Grid {
                index: upload(&Tensor::from_slice(&index), device)?,
                keys: upload(&Tensor::from_slice(&keys), device)?.f_view([rows, 1, 1, width])?,
                rows,
                width,
            }
        };
        Ok(Self {
            ids,
            positions,
            cu_seqlens,
            lengths,
            real,
            total,
            max_len: longest,
            attention,
        })
    }

    /// Multi-head self-attention over the packed stream, each token attending to the tokens of
    /// its own segment; `[total, hidden]`.
    pub fn attend(
        &self,
        qkv: Qkv<'_>,
        heads: i64,
        attn_dropout: f64,
    ) -> Result<Tensor, tch::TchError> {
        match &self.attention {
            AttentionPlan::Varlen => {
                let (q, k, v) = qkv.split()?;
                let (total, hidden) = q.size2()?;
                let split = |t: &Tensor| t.f_view([total, heads, hidden / heads]);
                let scale = 1.0 / ((hidden / heads) as f64).sqrt();
                let out = varlen_attention(
                    &split(&q)?,
                    &split(&k)?,
                    &split(&v)?,
                    &self.cu_seqlens,
                    self.max_len,
                    scale,
                    attn_dropout,
                )?;
                out.f_view([total, hidden])
            }
            AttentionPlan::Grid {
                index,
                keys,
                rows,
                width,
            } => {
                let joined = qkv.joined()?;
                let (_, three) = joined.size2()?;
                // Zeros where no token is: a masked key's value must be finite (0 · NaN = NaN).
                let mut grid =
                    Tensor::f_zeros([rows * width, three], (joined.kind(), joined.device()))?;
                if joined.requires_grad() {
                    grid = grid.f_index_copy(0, index, &joined)?;
                } else {
                    let _ = grid.f_index_copy_(0, index, &joined)?;
                }
                let grid = grid.f_view([*rows, *width, three])?;
                let parts = grid.f_chunk(3, -1)?;
                self_attention(&parts[0], &parts[1], &parts[2], heads, keys, attn_dropout)?
                    .f_reshape([rows * width, three / 3])?
                    .f_index_select(0, index)
            }
        }
    }
}

/// The query, key and value projections of a packed stream: one `[total, 3·hidden]` tensor (a
/// fused projection) or three `[total, hidden]` ones.
pub enum Qkv<'a> {
    /// Q, K and V side by side.
    Fused(&'a Tensor),
    /// Q, K and V apart.
    Split(&'a Tensor, &'a Tensor, &'a Tensor),
}

impl Qkv<'_> {
    fn split(&self) -> Result<(Tensor, Tensor, Tensor), tch::TchError> {
        match self {
            Qkv::Fused(t) => {
                let p = t.f_chunk(3, -1)?;
                Ok((
                    p[0].shallow_clone(),
                    p[1].shallow_clone(),
                    p[2].shallow_clone(),
                ))
            }
            Qkv::Split(q, k, v) => Ok((q.shallow_clone(), k.shallow_clone(), v.shallow_clone())),
        }
    }

    fn joined(&self) -> Result<Tensor, tch::TchError> {
        match self {
            Qkv::Fused(t) => Ok(t.shallow_clone()),
            Qkv::Split(q, k, v) => Tensor::f_cat(&[*q, *k, *v], -1),
        }
    }
}

/// Copies a host tensor to `device`: from pinned memory without blocking on CUDA (the copy is
/// ordered before the kernels that read it on the same stream).
fn upload(host: &Tensor, device: Device) -> Result<Tensor, tch::TchError> {
    match device {
        Device::Cpu => Ok(host.shallow_clone()),
        _ => host
            .f_pin_memory(device)?
            .f_to_device_(device, host.kind(), true, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_few_and_cover_every_size() {
        let mut shapes = std::collections::BTreeSet::new();
        for n in 1..=131_072i64 {
            let b = token_bucket(n, true, 1);
            assert!(b >= n && b % 256 == 0);
            // Never more than ~19% padding beyond the first bucket step.
            assert!(
                b <= 256 || (b as f64) < n as f64 * 1.19 + 256.0,
                "{n} → {b}"
            );
            shapes.insert(b);
        }
        assert_eq!(shapes.len(), 32);
        assert_eq!(token_bucket(13, false, 8), 16);
        assert_eq!(token_bucket(13, false, 1), 13);
    }

    #[test]
    fn the_grid_attention_equals_per_sequence_attention() {
        tch::manual_seed(1);
        let seqs: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![4], vec![5, 6, 7, 8, 9]];
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let batch = PackedBatch::new(&refs, 12, Device::Cpu, AttentionKernel::Fused, 1).unwrap();
        assert_eq!(batch.real, 9);
        assert_eq!(
            Vec::<i32>::try_from(&batch.cu_seqlens).unwrap(),
            vec![0, 3, 4, 9, 12]
        );
        let (h, heads) = (8, 2);
        let q = Tensor::randn([12, h], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([12, h], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([12, h], (Kind::Float, Device::Cpu));
        let packed = batch.attend(Qkv::Split(&q, &k, &v), heads, 0.0).unwrap();
        let fused = batch
            .attend(Qkv::Fused(&Tensor::cat(&[&q, &k, &v], -1)), heads, 0.0)
            .unwrap();
        assert_eq!(packed, fused);
        let mut start = 0;
        for &n in &batch.lengths {
            let one = |t: &Tensor| t.narrow(0, start, n).unsqueeze(0);
            let mask = Tensor::ones([1, 1, 1, n], (Kind::Bool, Device::Cpu));
            let alone = self_attention(&one(&q), &one(&k), &one(&v), heads, &mask, 0.0).unwrap();
            let diff = (alone.squeeze_dim(0) - packed.narrow(0, start, n))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-6, "{diff}");
            start += n;
        }
        // On a CPU tensor the variable-length kernels refuse cleanly (no kernel, no crash).
        let err = varlen_attention(
            &q.view([12, heads, h / heads]),
            &k.view([12, heads, h / heads]),
            &v.view([12, heads, h / heads]),
            &batch.cu_seqlens,
            5,
            0.5,
            0.0,
        );
        assert!(err.is_err());
    }
}
