#!/usr/bin/env bash
# One prepared training run on a lent GPU machine (bench/gpu_train.py): sparq train against
# sentence-transformers' SparseEncoderTrainer, bf16, on a BERT-base-size model made on the card,
# batch 16 and 64, 200 steps each: samples/s, peak GPU memory, the loss curves side by side
# (and the reference's run-to-run spread), NCCL with world size 1, and with several GPUs the
# parameters compared across ranks and the scaling efficiency.
# Build the binary here first, and fetch the Python packages the card lacks (bench/gpu_wheels.sh:
# datasets, sentence-transformers 6.2); everything else is made on the card:
#   device run, carry [target/release/sparq, .whl]: bench/gpu_train.sh
# Needs python3 with torch 2.11 (a CUDA wheel, which brings nvidia-nccl) and
# sentence-transformers[train]; about 6 minutes on an H200 (optional runs stop after --budget-s,
# 420 s by default). Writes gpu_train.md, gpu_train.log and <date>-<card>-train.json into $OUT
# when set, else into target/gpu-out; copy the JSON into bench/gpu-runs/ and the figures into
# RESULTS.md.
# A dry run on a CPU (tiny model, 5 steps, f32, two CPU ranks over TCP):
#   SPARQ_BENCH_DRY=1 OUT=/tmp/g bench/gpu_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G '.whl/*.whl' > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
OUT=${OUT:-target/gpu-out}
mkdir -p "$OUT"
DRY=()
if [[ "${SPARQ_BENCH_DRY:-0}" == "1" ]]; then
  DRY=(--dry)
elif command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu_train.log"
fi
python3 -c 'import sentence_transformers as s, transformers as t; print("sentence-transformers", s.__version__, "transformers", t.__version__)' | tee -a "$OUT/gpu_train.log"
PYTHONUNBUFFERED=1 python3 bench/gpu_train.py "$OUT" "${DRY[@]}" "$@" 2>&1 \
  | grep --line-buffered -v -e '^Loading weights' -e '^Writing model' -e 'it/s]' | tee -a "$OUT/gpu_train.log"
