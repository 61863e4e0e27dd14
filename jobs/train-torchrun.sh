#!/usr/bin/env bash
# Data-parallel training with a torchrun-style launcher: each rank reads RANK, WORLD_SIZE,
# LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and rank r trains on cuda:r of its machine.
# One machine, 8 GPUs (sparq can also start the ranks itself: --nproc-per-node 8):
#   jobs/train-torchrun.sh
# Two machines: run on each with NNODES=2 NODE_RANK=0|1 MASTER_ADDR=<first machine>.
set -euo pipefail
cd "$(dirname "$0")/.."
exec torchrun --no-python \
  --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" --nproc-per-node "${GPUS:-8}" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
  target/release/sparq train --config configs/train-reference.toml \
  --device cuda --dtype bf16 "$@"
