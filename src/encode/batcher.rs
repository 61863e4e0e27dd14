//! Token-budget batching: the real tokens of each batch (the packed stream the model runs on)
//! stay under a budget. Sequences are taken longest first, so a batch holds similar lengths
//! and the CPU's attention grid (`[sequences, longest]`) wastes little.

/// Groups sequences into batches of at most `budget` real tokens.
#[derive(Debug, Clone, Copy)]
pub struct TokenBudgetBatcher {
    /// Most real tokens per batch; a longer single sequence still runs alone.
    pub budget: usize,
}

/// The default budget on CUDA: large batches keep the GEMMs big enough to fill the card
/// (`bench/gpu.sh` sweeps 16k to 128k; see bench/RESULTS.md for the measured choice).
pub const CUDA_BATCH_TOKENS: usize = 65_536;
/// The default budget on the CPU (the batches' working set stays in cache).
pub const CPU_BATCH_TOKENS: usize = 4_096;

impl TokenBudgetBatcher {
    /// Batches of indices into `lengths`, longest sequences first.
    pub fn batches(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let mut out: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut tokens = 0;
        for i in order {
            let len = lengths[i].max(1);
            if !current.is_empty() && tokens + len > self.budget {
                out.push(std::mem::take(&mut current));
                tokens = 0;
            }
            tokens += len;
            current.push(i);
        }
        if !current.is_empty() {
            out.push(current);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_and_budget_respected() {
        let lengths: Vec<usize> = (0..500).map(|i| (i * 37) % 200 + 3).collect();
        let batcher = TokenBudgetBatcher { budget: 1000 };
        let batches = batcher.batches(&lengths);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        for b in &batches {
            let real: usize = b.iter().map(|&i| lengths[i]).sum();
            assert!(b.len() == 1 || real <= 1000, "batch of {real} tokens");
        }
        // Batches are full: no sequence cap below the budget.
        let full = batches
            .iter()
            .filter(|b| b.iter().map(|&i| lengths[i]).sum::<usize>() > 800);
        assert!(full.count() >= batches.len() - 2);
        // Similar lengths together: the CPU grid (count × longest) wastes little.
        let grid: usize = batches
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
            .sum();
        let real: usize = lengths.iter().sum();
        assert!(
            (grid as f64) < real as f64 * 1.1,
            "grid {grid} vs real {real}"
        );
        // Many short sequences fill one batch, however many there are.
        let short = vec![4usize; 1000];
        assert_eq!(TokenBudgetBatcher { budget: 4000 }.batches(&short).len(), 1);
    }

    #[test]
    fn oversized_sequence_runs_alone() {
        let batcher = TokenBudgetBatcher { budget: 100 };
        assert_eq!(batcher.batches(&[300, 10, 10]), vec![vec![0], vec![1, 2]]);
    }
}
