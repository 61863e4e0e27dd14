#!/usr/bin/env bash
# One prepared run on a lent H100/H200 (bench/gpu_bench.py): the measured bf16 matmul rate,
# parity of the packed encoder with sentence-transformers on the card, then steady-state
# throughput of `sparq encode-text` and `sparq encode` against sentence-transformers bf16 on a
# realistic mix (200k docs, mean ~60 tokens) and a long mix (100k docs, mean ~200, max 512).
# Build the binary here first; the corpora and the BERT-base-size model are made on the card:
#   device run, carry target/release/sparq: bench/gpu.sh [DOCS] [LONG_DOCS]
# Needs python3 with torch 2.11 and sentence-transformers (the lent machines have both); about
# 6 minutes on an H200. Writes gpu.md, gpu.log and <date>-<card>.json into $OUT when set, else
# into target/gpu-out; copy the JSON into bench/gpu-runs/ and the figures into RESULTS.md.
# A dry run on a CPU: OUT=/tmp/g bench/gpu.sh 400 200 --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
OUT=${OUT:-target/gpu-out}
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.log"
fi
python3 -c 'import sentence_transformers as s, transformers as t; print("sentence-transformers", s.__version__, "transformers", t.__version__)' | tee -a "$OUT/gpu.log"
PYTHONUNBUFFERED=1 python3 bench/gpu_bench.py "$OUT" --docs "${1:-200000}" --long-docs "${2:-100000}" "${@:3}" 2>&1 \
  | grep --line-buffered -v -e '^Loading weights' -e '^Writing model' -e 'it/s]' | tee -a "$OUT/gpu.log"
