//! How many queries per second one core encodes through an inference-free query route
//! (`SparseStaticEmbedding`: tokenize, look up a weight per token), against the same model's
//! document route (a forward pass) on the same queries, measured in the same run.
//!
//!   cargo run --release --example static_query_rate -- [ROUTER_MODEL] [QUERIES]
//!
//! Default model: tests/fixtures/models/router-static; default 200,000 queries of 6-10 words
//! drawn (fixed seed) from the words of tests/fixtures/texts.jsonl, MS MARCO-like in length.
//! Everything runs on one rayon thread (the tokenizer's parallelism included) and with one
//! libtorch thread, so the numbers are per core.
use std::time::Instant;

use sparq::model::{DeviceSpec, Dtype, EncodeOptions, InputKind, SpladeEncoder};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = args
        .first()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("tests/fixtures/models/router-static"));
    let count: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let queries = queries(&root.join("tests/fixtures/texts.jsonl"), count);
    tch::set_num_threads(1);
    let encoder = SpladeEncoder::load(&model, DeviceSpec::Cpu, Some(Dtype::F32)).expect("model");
    assert!(
        encoder.inference_free_queries(),
        "{} has no inference-free query route",
        model.display()
    );
    // The tokenizer's batch parallelism runs on rayon's global pool: one thread.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .expect("a one-thread global pool");
    let opts = EncodeOptions::default();
    let run = |kind: InputKind, texts: &[String]| {
        let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let mut dims = 0usize;
        // Blocks of 2,048, as `sparq encode-text` hands them over.
        for block in refs.chunks(2048) {
            let vectors = encoder.encode(block, kind, opts).expect("encoded");
            dims += vectors.iter().map(|v| v.len()).sum::<usize>();
        }
        (t.elapsed().as_secs_f64(), cpu_seconds() - cpu, dims)
    };
    run(InputKind::Query, &queries[..queries.len().min(10_000)]); // warm-up
    let (secs, cpu, dims) = run(InputKind::Query, &queries);
    let rate = queries.len() as f64 / secs;
    // Per CPU-second as well: on a shared machine the wall clock counts other processes' turns.
    println!(
        "static query route: {rate:.0} queries/s wall, {:.0} queries per CPU-second ({} queries, \
         {:.1} dims each, {secs:.2} s wall, {cpu:.2} s CPU)",
        queries.len() as f64 / cpu,
        queries.len(),
        dims as f64 / queries.len() as f64
    );
    // Of which tokenizing (the `tokenizers` pipeline, prompt included) takes:
    let route = encoder.route(InputKind::Query);
    let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let before = cpu_seconds();
    for block in refs.chunks(2048) {
        route.tokenize(block).expect("tokenized");
    }
    let tokenize_cpu = cpu_seconds() - before;
    println!(
        "  of which tokenizing: {:.2} s CPU ({:.0}% of the route)",
        tokenize_cpu,
        100.0 * tokenize_cpu / cpu
    );
    // Worst case for the word cache: every query has two words never seen before.
    let rare: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| format!("{q} zq{i}x w{}k", i * 7919))
        .collect();
    let (_, rare_cpu, _) = run(InputKind::Query, &rare);
    println!(
        "  with two unseen words per query: {:.0} queries per CPU-second",
        rare.len() as f64 / rare_cpu
    );
    // The baseline: the document route (a forward pass) on a sample of the same queries.
    let sample = &queries[..queries.len().min(2_000)];
    let (_, base_cpu, _) = run(InputKind::Document, sample);
    let base = sample.len() as f64 / base_cpu;
    println!(
        "document route (model) on the same queries: {base:.0} queries per CPU-second; \
         static/model = {:.1}x",
        queries.len() as f64 / cpu / base
    );
}

/// `count` queries of 6-10 words drawn from the words of a JSON-lines text file.
fn queries(path: &std::path::Path, count: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("the texts file");
    let words: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<String>(l).ok())
        .flat_map(|t| {
            t.split_whitespace()
                .map(|w| w.to_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        // xorshift64*: fixed and dependency-free.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    };
    (0..count)
        .map(|_| {
            let len = 6 + next(5);
            (0..len)
                .map(|_| words[next(words.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// CPU time of this process (all its threads), in seconds.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
