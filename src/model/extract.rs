//! Sparse extraction: the non-zeros of pooled `[rows, vocab]` vectors, found on the device and
//! brought to the host in one copy.
//!
//! `nonzero` must learn how many non-zeros there are before it can allocate its output, which
//! costs a device-to-host synchronisation per call, and the values then need a second copy.
//! Here the device computes each row's count, `nonzero_static` (a fixed-size output, no
//! synchronisation) up to a bound, and the values at those positions, and packs the three into
//! one int64 tensor copied to the host once (asynchronously into pinned memory on CUDA). Rows
//! are in order, so the counts split the coordinates. The bound adapts: a batch with more
//! non-zeros than it is extracted again exactly, and the bound doubles past what it held.

use std::sync::atomic::{AtomicI64, Ordering};

use tch::{Device, Kind, Tensor};

use super::cuda_event::Event;
use super::profile;
use super::ModelError;
use crate::encode::SparseVector;

/// Non-zeros per row the first batches are extracted with.
const FIRST_BOUND: i64 = 512;

/// Extraction state of one model: its device and the bound on non-zeros per row.
pub struct Extraction {
    device: Device,
    per_row: AtomicI64,
}

/// The packed result of a launched extraction: `[counts (rows) | columns (cap) | value bits
/// (cap)]`, on the host once its copy has completed.
pub struct Extracted {
    host: Tensor,
    cap: i64,
    event: Option<Event>,
    /// The vectors on the device (after top-k), for an exact extraction past the bound.
    source: Tensor,
}

impl Extraction {
    /// Extraction for a model on `device`.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            per_row: AtomicI64::new(FIRST_BOUND),
        }
    }

    /// Queues the extraction of `pooled` `[rows, vocab]` (after keeping the top `k` of each
    /// row if asked) and its copy to the host.
    pub fn launch(
        &self,
        pooled: &Tensor,
        k: Option<usize>,
        device: Device,
    ) -> Result<Extracted, tch::TchError> {
        let (rows, vocab) = pooled.size2()?;
        let pooled = top_k(pooled, k, vocab)?;
        let per_row = self.per_row.load(Ordering::Relaxed).min(vocab);
        let cap = rows * per_row;
        // NaN != 0 too: a NaN weight is extracted and then refused, never dropped silently.
        let mask = pooled.f_ne(0.0)?;
        let counts = mask.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?;
        let coords = mask.f_nonzero_static(cap, -1)?;
        let columns = coords.f_select(1, 1)?;
        // Padding entries (-1) read element 0; they are never decoded.
        let flat = coords
            .f_select(1, 0)?
            .f_mul_scalar(vocab)?
            .f_add(&columns)?
            .f_clamp_min(0)?;
        let values = pooled
            .f_reshape([-1])?
            .f_index_select(0, &flat)?
            .f_view_dtype(Kind::Int)?
            .f_to_kind(Kind::Int64)?;
        let packed = Tensor::f_cat(&[counts, columns, values], 0)?;
        let (host, event) = match device {
            Device::Cuda(n) => {
                let host = packed.f_to_device_(Device::Cpu, Kind::Int64, true, false)?;
                (host, Event::record(n))
            }
            _ => (packed, None),
        };
        Ok(Extracted {
            host,
            cap,
            event,
            source: pooled,
        })
    }

    /// Waits for the copy and decodes `rows` vectors; extracts `pooled` again exactly when a
    /// row had more non-zeros than the bound (and raises it).
    pub fn finish(
        &self,
        extracted: Extracted,
        rows: usize,
    ) -> Result<Vec<SparseVector>, ModelError> {
        profile::count_wait();
        match &extracted.event {
            Some(event) => {
                if !event.wait() {
                    return Err(ModelError::Torch(
                        "waiting for the device failed (see the CUDA error above)".into(),
                    ));
                }
            }
            None => {
                if let Device::Cuda(n) = self.device {
                    tch::Cuda::synchronize(n as i64);
                }
            }
        }
        let host: Vec<i64> = Vec::<i64>::try_from(&extracted.host)?;
        let cap = extracted.cap as usize;
        let counts = &host[..rows];
        let total: i64 = counts.iter().sum();
        if total as usize > cap {
            let largest = counts.iter().copied().max().unwrap_or(0);
            self.per_row
                .fetch_max((largest * 2).max(FIRST_BOUND), Ordering::Relaxed);
            profile::count_wait();
            return exact(&extracted.source);
        }
        let columns = &host[rows..rows + cap];
        let values = &host[rows + cap..rows + 2 * cap];
        let mut out = Vec::with_capacity(rows);
        let mut at = 0usize;
        for &n in counts {
            let n = n as usize;
            out.push(SparseVector {
                indices: columns[at..at + n].iter().map(|&c| c as u32).collect(),
                values: values[at..at + n]
                    .iter()
                    .map(|&b| f32::from_bits(b as u32))
                    .collect(),
            });
            at += n;
        }
        Ok(out)
    }
}

/// Keeps the `k` largest weights of each row (by magnitude), zeroing the rest.
fn top_k(pooled: &Tensor, k: Option<usize>, vocab: i64) -> Result<Tensor, tch::TchError> {
    match k {
        Some(k) if (k as u64) < vocab as u64 => {
            let (_, top) = pooled.f_abs()?.f_topk(k as i64, -1, true, false)?;
            pooled
                .f_zeros_like()?
                .f_scatter(-1, &top, &pooled.f_gather(-1, &top, false)?)
        }
        _ => Ok(pooled.shallow_clone()),
    }
}

/// The exact extraction (two synchronisations), for a batch with rows past the bound.
fn exact(pooled: &Tensor) -> Result<Vec<SparseVector>, ModelError> {
    let (rows, _) = pooled.size2()?;
    let nonzero = pooled.f_ne(0.0)?;
    let coords = nonzero.f_nonzero()?.f_to_device(Device::Cpu)?;
    let values = pooled.f_masked_select(&nonzero)?.f_to_device(Device::Cpu)?;
    let count = coords.size()[0] as usize;
    let coords: Vec<i64> = Vec::<i64>::try_from(coords.f_reshape([-1])?)?;
    let values: Vec<f32> = Vec::<f32>::try_from(values.f_to_kind(Kind::Float)?)?;
    let mut out = vec![SparseVector::default(); rows as usize];
    for n in 0..count {
        let v = &mut out[coords[2 * n] as usize];
        v.indices.push(coords[2 * n + 1] as u32);
        v.values.push(values[n]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_extraction_equals_the_exact_one_past_the_bound_too() {
        tch::manual_seed(3);
        // Row 1 has ~1,800 non-zeros: past the first bound of 512.
        let dense = Tensor::rand([3, 2000], (Kind::Float, Device::Cpu));
        let keep = Tensor::rand([3, 2000], (Kind::Float, Device::Cpu));
        let thresholds = Tensor::from_slice(&[0.99f32, 0.1, 0.5]).view([3, 1]);
        let pooled = dense * keep.gt_tensor(&thresholds);
        let extraction = Extraction::new(Device::Cpu);
        let want = exact(&pooled).unwrap();
        assert!(want[1].len() > 1500 && want[0].len() < 100);
        for _ in 0..2 {
            // First past the bound (exact fallback, bound raised), then within it.
            let got = extraction
                .finish(extraction.launch(&pooled, None, Device::Cpu).unwrap(), 3)
                .unwrap();
            assert_eq!(got, want);
        }
        assert!(extraction.per_row.load(Ordering::Relaxed) > 1500);
        // Top-k keeps the k largest of each row.
        let got = extraction
            .finish(extraction.launch(&pooled, Some(5), Device::Cpu).unwrap(), 3)
            .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), 5.min(w.len()));
            let mut top = w.values.clone();
            top.sort_by(|a, b| b.total_cmp(a));
            let mut mine = g.values.clone();
            mine.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(mine, top[..mine.len()]);
        }
    }
}
