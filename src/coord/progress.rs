//! Job progress: an indicatif bar on a terminal, plain periodic log lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Seconds between log lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress of a job: shards committed out of the total, docs and tokens per second, ETA.
pub struct JobProgress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
    total_rows: u64,
    total_shards: usize,
}

impl JobProgress {
    /// Starts reporting on stderr.
    pub fn new(total_shards: usize, total_rows: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total_rows), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} docs {msg} ETA {eta}")
                    .expect("valid template"),
            );
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            started: now,
            last_log: now,
            total_rows,
            total_shards,
        }
    }

    /// Reports the current totals.
    pub fn update(&mut self, shards_done: usize, rows: u64, tokens: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let message = format!(
            "| shards {shards_done}/{} | {:.0} docs/s | {:.0} tokens/s",
            self.total_shards,
            rows as f64 / secs,
            tokens as f64 / secs
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(rows);
                bar.set_message(message);
            }
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                let eta = if rows > 0 {
                    format!(
                        "{:.0}s",
                        secs * (self.total_rows.saturating_sub(rows)) as f64 / rows as f64
                    )
                } else {
                    "?".into()
                };
                eprintln!(
                    "sparq: {rows}/{} docs {message} | ETA {eta}",
                    self.total_rows
                );
            }
            None => {}
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
