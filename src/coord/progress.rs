//! Job progress: an indicatif bar on a terminal, plain periodic log lines otherwise, the same
//! figures in both, and a last line that stays.
//!
//! Rates come from a moving window of tokens, not from the whole run: the model load and the
//! first (longest: batches are length-sorted) documents would otherwise swing the ETA for
//! minutes. The ETA is the rows left, times the tokens per row seen so far, over the window's
//! token rate.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Seconds between log lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// The moving window rates are measured over.
const WINDOW: Duration = Duration::from_secs(30);

/// Progress of a job: shards committed out of the total, docs and tokens per second, ETA.
pub struct JobProgress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
    total_rows: u64,
    total_shards: usize,
    rates: RateWindow,
    last: (usize, u64, u64),
}

impl JobProgress {
    /// Starts reporting on stderr.
    pub fn new(total_shards: usize, total_rows: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total_rows), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} docs {msg}")
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
            rates: RateWindow::new(WINDOW),
            last: (0, 0, 0),
        }
    }

    /// Reports the current totals.
    pub fn update(&mut self, shards_done: usize, rows: u64, tokens: u64) {
        let now = Instant::now();
        self.rates.push(now, rows, tokens);
        self.last = (shards_done, rows, tokens);
        let message = self.figures(now);
        match &self.bar {
            Some(bar) => {
                bar.set_position(rows);
                bar.set_message(message);
            }
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = now;
                eprintln!("sparq: {rows}/{} docs | {message}", self.total_rows);
            }
            None => {}
        }
    }

    /// The figures shown: shards, rates over the window, elapsed time, ETA.
    fn figures(&self, now: Instant) -> String {
        let (shards, rows, tokens) = self.last;
        let rate = self.rates.rate();
        let eta = match rate {
            Some((_, tokens_per_s)) if rows > 0 && tokens_per_s > 0.0 => {
                let tokens_per_row = tokens as f64 / rows as f64;
                let left = self.total_rows.saturating_sub(rows) as f64 * tokens_per_row;
                clock(Duration::from_secs_f64(left / tokens_per_s))
            }
            _ => "?".into(),
        };
        let (docs_s, tokens_s) = rate.unwrap_or((0.0, 0.0));
        format!(
            "| shards {shards}/{} | {docs_s:.0} docs/s | {tokens_s:.0} tokens/s | elapsed {} | ETA {eta}",
            self.total_shards,
            clock(now - self.started),
        )
    }

    /// Ends the bar and leaves one line that stays: what was encoded, how long it took, and
    /// the mean rates of the whole run.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let (shards, rows, tokens) = self.last;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "sparq: {rows}/{} docs, {shards}/{} shards in {} | {:.0} docs/s | {:.0} tokens/s",
            self.total_rows,
            self.total_shards,
            clock(self.started.elapsed()),
            rows as f64 / secs,
            tokens as f64 / secs
        );
    }
}

/// `1h02m03s`, `2m03s`, `7s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// Rows and tokens per second over a moving window of samples, measured from the first
/// sample with work done (a model load does not count).
struct RateWindow {
    window: Duration,
    samples: VecDeque<(Instant, u64, u64)>,
}

impl RateWindow {
    fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    fn push(&mut self, at: Instant, rows: u64, tokens: u64) {
        if tokens == 0 && rows == 0 {
            return;
        }
        if self.samples.back().is_some_and(|&(_, _, t)| t == tokens) {
            return;
        }
        self.samples.push_back((at, rows, tokens));
        // Keep one sample older than the window as its start.
        while self.samples.len() > 2 && at - self.samples[1].0 > self.window {
            self.samples.pop_front();
        }
    }

    /// (rows/s, tokens/s), once two samples are a second apart.
    fn rate(&self) -> Option<(f64, f64)> {
        let (&(t0, r0, k0), &(t1, r1, k1)) = (self.samples.front()?, self.samples.back()?);
        let secs = (t1 - t0).as_secs_f64();
        (secs >= 1.0).then(|| ((r1 - r0) as f64 / secs, (k1 - k0) as f64 / secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_the_window_not_the_start() {
        let t = Instant::now();
        let s = |secs: u64| t + Duration::from_secs(secs);
        let mut w = RateWindow::new(Duration::from_secs(30));
        // A slow start (long documents: 100 tokens/s), then 1,000 tokens/s for a minute.
        w.push(s(0), 0, 0);
        assert_eq!(w.rate(), None, "nothing done yet: no rate");
        w.push(s(10), 1, 1_000);
        w.push(s(20), 2, 2_000);
        for i in 1..=60 {
            w.push(s(20 + i), 2 + 10 * i, 2_000 + 1_000 * i);
        }
        let (docs, tokens) = w.rate().unwrap();
        assert!((tokens - 1_000.0).abs() < 1.0, "{tokens}");
        assert!((docs - 10.0).abs() < 0.1, "{docs}");
    }

    #[test]
    fn clocks_read_as_hours_minutes_seconds() {
        assert_eq!(clock(Duration::from_secs(7)), "7s");
        assert_eq!(clock(Duration::from_secs(123)), "2m03s");
        assert_eq!(clock(Duration::from_secs(3723)), "1h02m03s");
    }
}
