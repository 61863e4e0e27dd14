#!/usr/bin/env bash
# The whole GPU measurement in one device call (issue 29): the encoder benchmark (bench/gpu.sh)
# and the training benchmark (bench/gpu_train.sh), sized to finish inside one call of at most
# 8 minutes on an H200, then one summary of both against the targets (bench/gpu_summary.py).
# Each part has a deadline for its optional runs and a hard one (timeout) after that; both
# rewrite their markdown and JSON after every row, so a part stopped at its deadline still
# leaves what it measured, and the summary always runs.
#   here:   bench/gpu_wheels.sh && cargo build --release
#   device: run, carry [target/release/sparq, .whl], timeout 540: OUT=$OUT bench/gpu_all.sh
# Writes into $OUT (default target/gpu-out): <date>-<card>.json, <date>-<card>-train.json,
# gpu.md, gpu_train.md, gpu_all.md (the summary) and the logs; copy the JSON files into
# bench/gpu-runs/ and the figures into bench/RESULTS.md.
# A CPU dry run of the same script, in seconds (tests/gpu_script.rs runs it in `make test`):
#   SPARQ_BENCH_DRY=1 OUT=/tmp/g bench/gpu_all.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/gpu-out}
export OUT
mkdir -p "$OUT"
# Seconds for the whole script; the device call's limit is 480 s (8 minutes), and start-up and
# copying the files back happen outside it.
# The dry run gets more: it is a check of the script, on whatever CPU the tests run.
if [[ "${SPARQ_BENCH_DRY:-0}" == "1" ]]; then
  TOTAL=${SPARQ_BENCH_TOTAL_S:-900}
else
  TOTAL=${SPARQ_BENCH_TOTAL_S:-450}
fi
start=$SECONDS
left() { echo $((TOTAL - (SECONDS - start))); }

if [[ "${SPARQ_BENCH_DRY:-0}" == "1" ]]; then
  # Tiny model in place of BERT-base, a few hundred documents, 3 training steps at one batch.
  enc=(300 100 --device cpu --tiny --st-docs 40 --budgets 4096,8192)
  enc_s=$((TOTAL / 2))
  train=(--steps 3 --batches 4 --budget-s 0)
else
  # An H200 encodes ~5k BERT-base docs/s in bf16 (bench/gpu-runs/2026-11-27-h200-run3.md, before
  # the packed encoder): 100k realistic + 30k long documents keep every sparq run past its first
  # tenth (steady state) in well under a minute; sentence-transformers is timed on 6k.
  enc=(100000 30000 --st-docs 6000 --budgets 32768,65536,131072,262144)
  enc_s=210
  # 120 steps (the loss curves' 10-step means still have 12 points); the spread and TCP runs are
  # optional and stop at the training part's own budget.
  train=(--steps 120 --batches 16,64)
fi

echo "== encoder: deadline ${enc_s} s for optional parts, hard stop at $((enc_s + 40)) s"
timeout -k 10 $((enc_s + 40)) bench/gpu.sh "${enc[@]}" --deadline-s "$enc_s"
enc_rc=$?
[[ $enc_rc -eq 124 ]] && echo "encoder part stopped at its hard deadline; keeping what it wrote"

train_s=$(($(left) - 15))
if [[ "${SPARQ_BENCH_DRY:-0}" != "1" ]]; then
  train+=(--budget-s $((train_s * 2 / 3)))
fi
echo "== training: hard stop at ${train_s} s"
timeout -k 10 "$train_s" bench/gpu_train.sh "${train[@]}"
train_rc=$?
[[ $train_rc -eq 124 ]] && echo "training part stopped at its hard deadline; keeping what it wrote"

python3 bench/gpu_summary.py "$OUT" --encoder-rc "$enc_rc" --train-rc "$train_rc" | tee "$OUT/gpu_all.log"
summary_rc=$?
echo "(gpu_all: $((SECONDS - start)) s)"
exit "$summary_rc"
