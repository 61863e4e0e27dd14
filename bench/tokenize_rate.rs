//! How fast one core tokenizes: the rate that decides how many cores a GPU's encoder needs to
//! be fed (`sparq encode` tokenizes on its tokenizer thread, with the `tokenizers` crate's
//! own thread pool across the cores).
//!
//!   cargo run --release --example tokenize_rate -- CORPUS.parquet [MODEL] [THREADS...]
//!
//! Tokenizes the `text` column with the model's tokenizer (as `sparq encode` does: truncation,
//! special tokens), once per thread count, and prints texts/s and tokens/s, per core too.
use std::time::Instant;

use arrow::array::{Array, AsArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sparq::model::layout::ModelLayout;
use sparq::model::tokenizer::SpladeTokenizer;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let corpus = args
        .first()
        .expect("usage: tokenize_rate CORPUS.parquet [MODEL] [THREADS...]");
    let model = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(sparq::default_model_dir);
    let mut threads: Vec<usize> = args.iter().skip(2).filter_map(|t| t.parse().ok()).collect();
    if threads.is_empty() {
        threads = vec![
            1,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ];
    }
    let file = std::fs::File::open(corpus).expect("the corpus");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .expect("a parquet file");
    let mut texts = Vec::new();
    for batch in reader {
        let batch = batch.expect("readable");
        let col = batch.column_by_name("text").expect("a text column");
        let col = col.as_string::<i32>();
        texts.extend((0..col.len()).map(|i| col.value(i).to_string()));
    }
    let layout = ModelLayout::read(&model).expect("the model");
    let tokenizer = SpladeTokenizer::load(&layout).expect("its tokenizer");
    for n in threads {
        let pool = rayon_pool(n);
        // As the pipeline does: blocks of 2,048 texts.
        let run = || {
            let mut tokens = 0usize;
            for block in texts.chunks(2048) {
                let ids = tokenizer.encode_batch(block.to_vec()).expect("tokenized");
                tokens += ids.iter().map(Vec::len).sum::<usize>();
            }
            tokens
        };
        pool.install(run); // warm-up
        let t = Instant::now();
        let tokens = pool.install(run);
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{n} thread(s): {:.0} texts/s, {:.0} tokens/s, {:.0} tokens/s per thread ({} texts, {} tokens, {:.2} s)",
            texts.len() as f64 / secs,
            tokens as f64 / secs,
            tokens as f64 / secs / n as f64,
            texts.len(),
            tokens,
            secs
        );
    }
}

fn rayon_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
}
