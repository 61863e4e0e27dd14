//! Token-budget batching: sequences of similar lengths together, so the padded cost
//! (longest length × count) of each batch stays under a budget and little is wasted on padding.

/// Groups sequences into batches whose padded size fits a token budget.
#[derive(Debug, Clone, Copy)]
pub struct TokenBudgetBatcher {
    /// Most padded tokens (longest × count) per batch; a longer single sequence still runs alone.
    pub budget: usize,
    /// Most sequences per batch, whatever their lengths.
    pub max_sequences: usize,
}

impl TokenBudgetBatcher {
    /// Batches of indices into `lengths`, longest sequences first.
    pub fn batches(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let mut out: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut longest = 0;
        for i in order {
            let len = lengths[i].max(1);
            let longest_after = longest.max(len);
            let fits = (current.len() + 1) * longest_after <= self.budget
                && current.len() < self.max_sequences;
            if !current.is_empty() && !fits {
                out.push(std::mem::take(&mut current));
                longest = 0;
            }
            longest = longest.max(len);
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
        let batcher = TokenBudgetBatcher {
            budget: 1000,
            max_sequences: 64,
        };
        let batches = batcher.batches(&lengths);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(
                b.len() == 1 || b.len() * longest <= 1000,
                "batch of {} × {longest}",
                b.len()
            );
            assert!(b.len() <= 64);
        }
        // Similar lengths together: padding waste small.
        let padded: usize = batches
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
            .sum();
        let real: usize = lengths.iter().sum();
        assert!(
            (padded as f64) < real as f64 * 1.1,
            "padded {padded} vs real {real}"
        );
    }

    #[test]
    fn oversized_sequence_runs_alone() {
        let batcher = TokenBudgetBatcher {
            budget: 100,
            max_sequences: 8,
        };
        assert_eq!(batcher.batches(&[300, 10, 10]), vec![vec![0], vec![1, 2]]);
    }
}
