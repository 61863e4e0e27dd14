#!/usr/bin/env bash
# One prepared run on a lent H100/H200: parity with sentence-transformers on the card, then
# sparq bf16 vs sentence-transformers bf16 timings (bench/gpu_bench.py). The sparq binary is
# built beforehand on the CPU machine and carried over with the corpus:
#   .venv/bin/python bench/make_corpus.py /tmp/c --docs 50000 --queries 10
#   mkdir -p target/gpu-data && cp /tmp/c/corpus.parquet target/gpu-data/
#   device run, carry target/release/sparq and target/gpu-data: bench/gpu.sh [DOCS]
# Needs python3 with torch 2.11 and sentence-transformers (the lent machines have both).
# Writes gpu.md and gpu.log into $OUT when set, else into target/gpu-out.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
OUT=${OUT:-target/gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.log"
python3 -c 'import sentence_transformers as s, transformers as t; print("sentence-transformers", s.__version__, "transformers", t.__version__)' | tee -a "$OUT/gpu.log"
PYTHONUNBUFFERED=1 python3 bench/gpu_bench.py target/gpu-data/corpus.parquet "$OUT" --docs "${1:-30000}" 2>&1 \
  | grep --line-buffered -v -e '^Loading weights' -e '^Writing model' -e 'it/s]' | tee -a "$OUT/gpu.log"
