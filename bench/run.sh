#!/usr/bin/env bash
# The side-by-side benchmarks, in one run: sparq vs sentence-transformers on the same corpus,
# same machine, same threads and batch size. Prints markdown tables to append to
# bench/RESULTS.md. Run it on a quiet machine (no build, test or helper beside it).
#   bench/run.sh [DOCS_TINY] [DOCS_BASE] [DOCS_MODERNBERT]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s reference-env build >/dev/null   # .venv: torch 2.11.0 (sparq's libtorch) + sentence-transformers 6.2
PY=.venv/bin/python
THREADS=$(nproc)
DATA=target/bench-data
BASE=target/bench-models/bert-base
MODERN=target/bench-models/modernbert-base
[ -f $DATA/corpus.parquet ] || $PY bench/make_corpus.py $DATA --docs 10000 --queries 500
[ -f $BASE/model/model.safetensors ] || $PY tests/reference/make_reference.py bert-base $BASE
[ -f $MODERN/model/model.safetensors ] || $PY tests/reference/make_modernbert_reference.py base $MODERN
echo "## $(date -u +%F) on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
$PY bench/encode_vs_st.py $DATA/corpus.parquet --model models/splade-bert-tiny-nq --limit "${1:-3000}" \
  --threads $THREADS --dtype f32 bf16 --workers 1 $THREADS $THREADS 1 --label "Tiny model (bundled)" 2>/dev/null
$PY bench/encode_vs_st.py $DATA/corpus.parquet --model $BASE/model --limit "${2:-300}" \
  --threads $THREADS --dtype f32 bf16 --workers 1 --workers-dtype f32 bf16 \
  --label "BERT-base size (random weights, shifted decoder bias)" 2>/dev/null
$PY bench/encode_vs_st.py $DATA/corpus.parquet --model $MODERN/model --limit "${3:-300}" \
  --threads $THREADS --dtype f32 bf16 --workers 1 --workers-dtype f32 bf16 \
  --label "ModernBERT-base size (22 layers, local window 128, random weights, shifted decoder bias)" 2>/dev/null
echo
echo "eval, 10k documents + 500 queries, encode + retrieve + metrics, model load included:"
$PY bench/eval_vs_st.py $DATA/beir --threads $THREADS 2>/dev/null
echo
echo "bf16 vs fp32 retrieval metrics (sparq eval):"
$PY bench/bf16_metrics.py $DATA/beir --model models/splade-bert-tiny-nq --docs 10000 --queries 500 --label "Tiny model" 2>/dev/null
$PY bench/bf16_metrics.py $DATA/beir --model $BASE/model --docs 2000 --queries 500 --label "BERT-base size" 2>/dev/null
echo
echo "training, sparq train vs SparseEncoderTrainer (tiny model, batch 16):"
$PY bench/train_vs_st.py --model models/splade-bert-tiny-nq --steps 40 --batch-size 16 --threads $THREADS 2>/dev/null
