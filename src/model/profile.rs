//! Opt-in profile of the forward pass (`SPARQ_PROFILE=1`): stage times, each stage closed by a
//! device synchronisation (true device times, at some cost in overlap), host waits per batch,
//! distinct padded shapes, the model's load time, and the steady-state rate with the intervals
//! of batches of cold and warm shapes. `SPARQ_PROFILE=counts` leaves out the stage times and
//! their synchronisations. The line goes to stderr when the process's encoding ends
//! ([`profile::report`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use tch::Device;

/// The stages of one forward pass.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// Padding the batch and copying it to the device.
    Input = 0,
    /// Embeddings, transformer layers and the MLM transform.
    Encoder = 1,
    /// Vocabulary projection and pooling.
    Pooling = 2,
    /// Non-zero extraction and the copy to the host.
    Extract = 3,
}

const NAMES: [&str; 4] = ["input", "encoder", "pooling", "extract"];
static NANOS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static BATCHES: AtomicU64 = AtomicU64::new(0);
static WAITS: AtomicU64 = AtomicU64::new(0);
static SHAPES: std::sync::Mutex<std::collections::BTreeSet<i64>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Counts a host wait for the device (a synchronisation the encoder itself needs, not one
/// the profiler adds to time its stages).
pub fn count_wait() {
    if enabled() {
        WAITS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records the token count a batch was padded to; true the first time it is seen (a
/// cold shape: the first GEMMs of a shape pay for planning and allocation).
pub fn count_shape(tokens: i64) -> bool {
    enabled()
        && SHAPES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tokens)
}

/// When each batch's vectors reached the host, its real tokens, and whether its shape was
/// cold; the model's load time.
static TIMELINE: std::sync::Mutex<Vec<(Instant, u64, bool)>> = std::sync::Mutex::new(Vec::new());
static LOAD_NANOS: AtomicU64 = AtomicU64::new(0);

/// Records a batch whose vectors reached the host.
pub fn batch_done(tokens: u64, cold: bool) {
    if enabled() {
        let mut t = TIMELINE.lock().unwrap_or_else(|p| p.into_inner());
        t.push((Instant::now(), tokens, cold));
    }
}

/// Records how long loading the model took.
pub fn loaded(seconds: f64) {
    LOAD_NANOS.store((seconds * 1e9) as u64, Ordering::Relaxed);
}

/// Steady-state throughput (real tokens/s over the batches after the first tenth: start-up
/// and cold shapes left out), the mean interval before batches with cold and with warm
/// shapes (ms), and the number of cold batches.
fn steady() -> Option<(f64, f64, f64, usize)> {
    let t = TIMELINE.lock().unwrap_or_else(|p| p.into_inner());
    if t.len() < 3 {
        return None;
    }
    let skip = (t.len() / 10).max(1);
    let tokens: u64 = t[skip + 1..].iter().map(|b| b.1).sum();
    let secs = (t[t.len() - 1].0 - t[skip].0).as_secs_f64();
    let mean = |cold: bool| {
        let gaps: Vec<f64> = t
            .windows(2)
            .filter(|w| w[1].2 == cold)
            .map(|w| (w[1].0 - w[0].0).as_secs_f64() * 1e3)
            .collect();
        gaps.iter().sum::<f64>() / gaps.len().max(1) as f64
    };
    let cold = t.iter().filter(|b| b.2).count();
    Some((
        tokens as f64 / secs.max(1e-9),
        mean(true),
        mean(false),
        cold,
    ))
}

/// Whether `SPARQ_PROFILE` is set (to anything but `0` or empty).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPARQ_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Whether stages are timed too (`SPARQ_PROFILE=counts` keeps the counters and the
/// steady-state rate but adds no synchronisation, so throughput is not disturbed).
fn stage_timing() -> bool {
    enabled() && std::env::var("SPARQ_PROFILE").is_ok_and(|v| v != "counts")
}

/// Times the stages of one batch (does nothing unless [`enabled`]).
pub struct Clock {
    device: Device,
    last: Option<Instant>,
}

impl Clock {
    /// Starts timing a batch on `device`.
    pub fn start(device: Device) -> Self {
        if enabled() {
            BATCHES.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            device,
            last: stage_timing().then(Instant::now),
        }
    }

    /// Closes `stage`: waits for the device, then adds the time since the last lap.
    pub fn lap(&mut self, stage: Stage) {
        let Some(last) = self.last else { return };
        if let Device::Cuda(n) = self.device {
            tch::Cuda::synchronize(n as i64);
        }
        let now = Instant::now();
        NANOS[stage as usize].fetch_add((now - last).as_nanos() as u64, Ordering::Relaxed);
        self.last = Some(now);
    }
}

/// One line with each stage's total seconds, or `None` when profiling is off.
pub fn report() -> Option<String> {
    if !enabled() {
        return None;
    }
    let parts: Vec<String> = NAMES
        .iter()
        .zip(&NANOS)
        .map(|(name, n)| format!("{name} {:.3} s", n.load(Ordering::Relaxed) as f64 / 1e9))
        .collect();
    let batches = BATCHES.load(Ordering::Relaxed);
    let waits = WAITS.load(Ordering::Relaxed);
    let shapes = SHAPES.lock().unwrap_or_else(|p| p.into_inner()).len();
    let steady = steady().map_or(String::new(), |(rate, cold, warm, n)| {
        format!(
            "; steady {rate:.0} tokens/s; batch interval {cold:.1} ms with a cold shape \
             ({n} batches), {warm:.1} ms warm"
        )
    });
    Some(format!(
        "profile: model load {:.2} s, {batches} batches, {waits} host waits ({:.2} per \
         batch), {shapes} token shapes: {}{steady}",
        LOAD_NANOS.load(Ordering::Relaxed) as f64 / 1e9,
        waits as f64 / batches.max(1) as f64,
        parts.join(", ")
    ))
}
