//! Gradient buckets, as PyTorch's DistributedDataParallel forms them: parameters in reverse
//! registration order (the order backward produces their gradients), packed into buckets of
//! about 25 MB, so the exchange runs in a few large transfers instead of one per parameter
//! (PyTorch: `torch/csrc/distributed/c10d/reducer.cpp`, `bucket_cap_mb`).

/// DDP's default bucket size, 25 MiB.
pub const BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Splits parameters of `sizes` bytes (in registration order) into buckets of at most `cap`
/// bytes, walking them last to first; a parameter larger than `cap` gets a bucket of its own.
/// Each bucket lists parameter indices in the order they were added (descending).
pub fn plan_buckets(sizes: &[usize], cap: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut filled = 0usize;
    for i in (0..sizes.len()).rev() {
        if !current.is_empty() && filled + sizes[i] > cap {
            buckets.push(std::mem::take(&mut current));
            filled = 0;
        }
        current.push(i);
        filled += sizes[i];
    }
    if !current.is_empty() {
        buckets.push(current);
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(sizes: &[usize], bucket: &[usize]) -> usize {
        bucket.iter().map(|&i| sizes[i]).sum()
    }

    #[test]
    fn buckets_fill_up_to_the_cap_in_reverse_registration_order() {
        let sizes = [10, 20, 30, 40, 5];
        let plan = plan_buckets(&sizes, 50);
        assert_eq!(plan, vec![vec![4, 3], vec![2, 1], vec![0]]);
        for b in &plan {
            assert!(bytes(&sizes, b) <= 50);
        }
        // Exactly at the cap still fits.
        assert_eq!(plan_buckets(&[25, 25, 25], 50), vec![vec![2, 1], vec![0]]);
    }

    #[test]
    fn a_parameter_larger_than_a_bucket_gets_its_own() {
        let sizes = [4, 100, 4, 4];
        let plan = plan_buckets(&sizes, 10);
        assert_eq!(plan, vec![vec![3, 2], vec![1], vec![0]]);
        // Leading with it, or as the only parameter.
        assert_eq!(plan_buckets(&[3, 100], 10), vec![vec![1], vec![0]]);
        assert_eq!(plan_buckets(&[100], 10), vec![vec![0]]);
        assert!(plan_buckets(&[], 10).is_empty());
    }

    #[test]
    fn every_parameter_lands_in_exactly_one_bucket() {
        // BERT-base-like sizes: the 30522 x 768 embedding, 12 layers of matrices and vectors.
        let mut sizes = vec![
            30522 * 768 * 4,
            512 * 768 * 4,
            2 * 768 * 4,
            768 * 4,
            768 * 4,
        ];
        for _ in 0..12 {
            for s in [
                768 * 768,
                768,
                768 * 768,
                768,
                768 * 768,
                768,
                768 * 768,
                768,
                768,
                768,
            ] {
                sizes.push(s * 4);
            }
            for s in [3072 * 768, 3072, 768 * 3072, 768, 768, 768] {
                sizes.push(s * 4);
            }
        }
        let plan = plan_buckets(&sizes, BUCKET_BYTES);
        let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
        assert_eq!(seen.len(), sizes.len());
        seen.sort_unstable();
        assert_eq!(seen, (0..sizes.len()).collect::<Vec<_>>());
        for b in &plan {
            assert!(b.len() == 1 || bytes(&sizes, b) <= BUCKET_BYTES, "{b:?}");
            // Descending indices: the order backward finishes the gradients.
            assert!(b.windows(2).all(|w| w[0] > w[1]));
        }
        // Greedy: a bucket closes only when the next parameter would not fit.
        for pair in plan.windows(2) {
            assert!(bytes(&sizes, &pair[0]) + sizes[pair[1][0]] > BUCKET_BYTES);
        }
        // ~415 MiB of fp32 parameters: 16 buckets, the 89 MiB word embedding alone in the last.
        assert_eq!(plan.len(), 16);
        assert_eq!(plan.last(), Some(&vec![0]));
    }
}
