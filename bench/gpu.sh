#!/usr/bin/env bash
# One prepared run on a lent H100/H200 (the sparq binary built beforehand on the CPU machine and
# carried over): parity with sentence-transformers on the card, then timings of sparq bf16 vs
# sentence-transformers bf16 on the same corpus, with the fraction of the card's measured bf16
# matmul rate (BERT-base SPLADE: 227 MFLOP per token). Needs python3 with torch 2.11 and
# sentence-transformers (the lent machines have both). Writes $OUT/gpu.md when OUT is set.
#   bench/gpu.sh [DOCS]
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
DOCS=${1:-20000}
W=$(mktemp -d)
OUT=${OUT:-$W}
python3 bench/make_corpus.py $W/data --docs $DOCS --queries 10
python3 tests/reference/make_reference.py bert-base $W/base
python3 - "$W" "$OUT" <<'PY'
import json, os, subprocess, sys, time, torch
w, out = sys.argv[1], sys.argv[2]
import pyarrow.parquet as pq
from sentence_transformers import SparseEncoder
texts = pq.read_table(f"{w}/data/corpus.parquet").column("text").to_pylist()
model_dir = f"{w}/base/model"
# The card's bf16 matmul rate.
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): a @ b
torch.cuda.synchronize(); peak = 20 * 2 * 8192**3 / (time.perf_counter() - t)
m = SparseEncoder(model_dir, device="cuda", model_kwargs={"torch_dtype": torch.bfloat16})
tok = m[0].tokenizer
tokens = sum(len(tok(t, truncation=True, max_length=256)["input_ids"]) for t in texts)
m.encode_document(texts[:256], batch_size=64)
torch.cuda.synchronize(); t = time.perf_counter()
ref = m.encode_document(texts, batch_size=64, convert_to_tensor=True)
torch.cuda.synchronize(); st = time.perf_counter() - t
with open(f"{w}/texts.jsonl", "w") as f:
    for x in texts: f.write(json.dumps(x) + "\n")
t = time.perf_counter()
with open(f"{w}/texts.jsonl") as fin, open(f"{w}/sparq.jsonl", "w") as fout:
    subprocess.run(["target/release/sparq", "encode-text", "--model", model_dir, "--device", "cuda:0",
                    "--batch-size", "64"], stdin=fin, stdout=fout, check=True)
sq = time.perf_counter() - t
ref = ref.coalesce().to_dense().float().cpu() if ref.is_sparse else ref.float().cpu()
cos = []
for i, line in enumerate(open(f"{w}/sparq.jsonl")):
    v = json.loads(line); g = torch.zeros(ref.shape[1]); g[v["indices"]] = torch.tensor(v["values"])
    cos.append(torch.nn.functional.cosine_similarity(g, ref[i], dim=0).item())
flop = 227e6 * tokens
lines = [f"GPU {torch.cuda.get_device_name()}: {len(texts)} docs, {tokens} tokens, bf16 matmul {peak/1e12:.0f} TFLOP/s",
         f"| contender | tokens/s | ratio | matmul fraction |", "|---|---|---|---|",
         f"| sentence-transformers bf16 | {tokens/st:.0f} | 1.00x | {flop/st/peak:.1%} |",
         f"| sparq encode-text bf16 (model load included) | {tokens/sq:.0f} | {st/sq:.2f}x | {flop/sq/peak:.1%} |",
         f"mean cosine sparq vs reference: {sum(cos)/len(cos):.5f}, min {min(cos):.5f}"]
print("\n".join(lines)); open(f"{out}/gpu.md", "w").write("\n".join(lines) + "\n")
PY
