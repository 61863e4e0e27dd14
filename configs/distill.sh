#!/usr/bin/env bash
# Distillation recipe on the example data, end to end on CPU (about 5 minutes on 2 cores):
#   1. mine hard negatives for the 1,600 training pairs with the bundled model, rescored by the
#      cross-encoder teacher (examples/distill/teacher), keeping 4 negatives the teacher puts
#      below the answer, with the teacher's scores [answer, negative_1..4];
#   2. train the bundled model on the teacher's margins (MarginMSE, configs/distill-train.toml);
#   3. evaluate before and after on 400 held-out queries the recipe never trains on
#      (examples/distill/heldout; the data and teacher are made by examples/distill/make_teacher.py).
# Writes runs/distill/ (removed first). SPARQ=path/to/sparq to use another binary.
set -euo pipefail
cd "$(dirname "$0")/.."
SPARQ=${SPARQ:-target/release/sparq}
ndcg() { "$SPARQ" eval --beir examples/distill/heldout "$@" | tail -n 1 |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print("nDCG@10 %.4f  MRR@10 %.4f" % (d["dot_ndcg@10"], d["dot_mrr@10"]))'; }

rm -rf runs/distill
echo "== held-out, bundled model:  $(ndcg)"
"$SPARQ" mine --dataset examples/distill/train.parquet --anchor-column query --positive-column answer \
    --cross-encoder examples/distill/teacher --absolute-margin 0 --num-negatives 4 \
    --output-format n-tuple --output-scores --output runs/distill/mined
"$SPARQ" train --config configs/distill-train.toml
echo "== held-out, after distillation:  $(ndcg --model runs/distill/model)"
