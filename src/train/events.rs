//! What a training run reports as it goes, one JSON line per event: `sparq train` prints them
//! on stdout, and `sparq worker` reads them from the `sparq train` it runs for a service job
//! (steps for its heartbeats, the summary or the error for its report).

use serde::{Deserialize, Serialize};

use crate::eval::IrMetrics;

/// What a finished run reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainSummary {
    /// Steps taken in total (including those before a resume).
    pub steps: u64,
    /// Steps taken by this invocation.
    pub steps_this_run: u64,
    /// Step resumed from, if any.
    pub resumed_from: Option<u64>,
    /// Training pairs per second over this invocation (all processes).
    pub samples_per_s: f64,
    /// Where the final model is.
    pub output: String,
    /// Best evaluation (nDCG@10, step), if evaluated.
    pub best: Option<(f64, u64)>,
}

/// One logging step: the averages since the last one (as transformers' Trainer logs them).
/// Fields in alphabetical order, as the JSON lines have always been written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// SparseMNRL loss.
    pub base_loss: f64,
    /// Mean non-zero dims of the documents.
    pub document_active_dims: f64,
    /// λ_d · FLOPS of the documents.
    pub document_regularizer_loss: f64,
    /// Epochs done (fractional).
    pub epoch: f64,
    /// Total gradient norm before clipping, at the last step.
    pub grad_norm: f64,
    /// λ_d at the last step.
    pub lambda_document: f64,
    /// λ_q at the last step.
    pub lambda_query: f64,
    /// Learning rate of the last step.
    pub learning_rate: f64,
    /// SpladeLoss.
    pub loss: f64,
    /// Mean non-zero dims of the queries.
    pub query_active_dims: f64,
    /// λ_q · FLOPS of the queries.
    pub query_regularizer_loss: f64,
    /// The parameters' hash, the same on every rank (several processes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_identical: Option<String>,
    /// Training pairs per second over this invocation (all processes).
    pub samples_per_s: f64,
    /// Optimizer steps taken.
    pub step: u64,
}

/// An event of a training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TrainEvent {
    /// The run ended; the final model is written.
    Summary {
        /// What it did.
        train_summary: TrainSummary,
    },
    /// The run failed (written only for `sparq worker`, with the hidden `--events`).
    Failed {
        /// Why.
        train_error: String,
    },
    /// An evaluation (`--eval-beir`).
    Eval {
        /// The metrics, with `sparq eval`'s names.
        eval: IrMetrics,
        /// The step it was made at.
        step: u64,
    },
    /// A logging step.
    Step(StepLog),
}

impl TrainEvent {
    /// The step the event was written at, if it says.
    pub fn step(&self) -> Option<u64> {
        match self {
            TrainEvent::Step(s) => Some(s.step),
            TrainEvent::Eval { step, .. } => Some(*step),
            TrainEvent::Summary { train_summary } => Some(train_summary.steps),
            TrainEvent::Failed { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_back_as_the_kind_they_were_written() {
        let step = TrainEvent::Step(StepLog {
            step: 3,
            loss: 1.5,
            ..Default::default()
        });
        let eval = TrainEvent::Eval {
            eval: [("dot_ndcg@10".to_string(), 0.5)].into_iter().collect(),
            step: 4,
        };
        let failed = TrainEvent::Failed {
            train_error: "diverged".into(),
        };
        for event in [step, eval, failed] {
            let line = serde_json::to_string(&event).unwrap();
            let back: TrainEvent = serde_json::from_str(&line).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), line);
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&event)
            );
        }
        // The log line as it has always been written: keys in alphabetical order.
        let line = serde_json::to_string(&StepLog::default()).unwrap();
        assert!(
            line.starts_with("{\"base_loss\":0.0,\"document_active_dims\""),
            "{line}"
        );
        assert!(
            line.ends_with("\"samples_per_s\":0.0,\"step\":0}"),
            "{line}"
        );
    }
}
