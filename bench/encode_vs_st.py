#!/usr/bin/env python3
"""sparq vs sentence-transformers, encoding the same documents in one run on one machine.

  encode_vs_st.py CORPUS.parquet --model DIR [--limit N] [--threads T] [--batch-size B]
                  [--dtype f32|bf16 ...] [--workers 1 2]

For each contender: docs/s, tokens/s, peak RSS (of that process), and for sparq the ratio to
sentence-transformers plus output agreement (mean cosine, top-10 token overlap).
Contenders: sentence-transformers `encode_document` (fp32 CPU, threads = T, same batch size,
length-sorted as it always is), `sparq encode-text` (texts piped in, vectors out, model load
included), and `sparq encode` on the parquet (1 worker with T threads, and T workers with one
thread each). Run on a quiet machine: numbers taken beside a build are meaningless.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARQ = os.path.join(ROOT, "target", "release", "sparq")

ST_CHILD = r"""
import json, sys, time, torch
threads, batch, model_dir, texts_path, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
torch.set_num_threads(threads)
texts = [json.loads(l) for l in open(texts_path)]
t0 = time.perf_counter()
from sentence_transformers import SparseEncoder
m = SparseEncoder(model_dir, device="cpu")
emb = m.encode_document(texts, batch_size=batch, convert_to_tensor=True, convert_to_sparse_tensor=True).coalesce()
secs = time.perf_counter() - t0
idx, val = emb.indices(), emb.values()
rows = [dict(indices=[], values=[]) for _ in texts]
for r, c, v in zip(idx[0].tolist(), idx[1].tolist(), val.tolist()):
    rows[r]["indices"].append(c); rows[r]["values"].append(v)
with open(out_path, "w") as f:
    for r in rows: f.write(json.dumps(r) + "\n")
print(json.dumps({"seconds": secs}))
"""


def run(cmd, stdin=None, stdout=subprocess.PIPE):
    """Runs cmd; returns (seconds, peak RSS MiB of that process, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True)
    out = p.stdout.read() if stdout == subprocess.PIPE else ""
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"{cmd[0]} failed: {p.stderr.read()}")
    return secs, usage.ru_maxrss / 1024, out


def load_vectors(path):
    with open(path) as f:
        return [json.loads(l) for l in f]


def agreement(a, b):
    import math
    cos, overlap = [], []
    for x, y in zip(a, b):
        dx, dy = dict(zip(x["indices"], x["values"])), dict(zip(y["indices"], y["values"]))
        dot = sum(v * dy.get(k, 0.0) for k, v in dx.items())
        nx, ny = math.sqrt(sum(v * v for v in dx.values())), math.sqrt(sum(v * v for v in dy.values()))
        cos.append(1.0 if nx == ny == 0 else dot / (nx * ny) if nx and ny else 0.0)
        tx = set(sorted(dx, key=dx.get, reverse=True)[:10])
        ty = set(sorted(dy, key=dy.get, reverse=True)[:10])
        overlap.append(len(tx & ty) / max(1, len(tx | ty)) if tx or ty else 1.0)
    return sum(cos) / len(cos), sum(overlap) / len(overlap)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--model", required=True)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", nargs="+", default=["f32"])
    ap.add_argument("--workers", nargs="*", type=int, default=[])
    ap.add_argument("--workers-dtype", nargs="+", default=["f32"], help="dtypes of the `sparq encode` runs")
    ap.add_argument("--label", default="")
    a = ap.parse_args()

    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    table = pq.read_table(a.corpus).slice(0, a.limit)
    texts = table.column("text").to_pylist()
    tok = AutoTokenizer.from_pretrained(a.model)
    tokens = sum(len(tok(t, truncation=True, max_length=256)["input_ids"]) for t in texts)
    tmp = tempfile.mkdtemp()
    texts_path = os.path.join(tmp, "texts.jsonl")
    with open(texts_path, "w") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")
    rows = []

    st_out = os.path.join(tmp, "st.jsonl")
    secs, rss, _ = run([sys.executable, "-c", ST_CHILD, str(a.threads), str(a.batch_size), a.model, texts_path, st_out])
    rows.append(("sentence-transformers fp32", secs, rss, None))
    st_vectors = load_vectors(st_out)

    for dtype in a.dtype:
        out_path = os.path.join(tmp, f"sparq-{dtype}.jsonl")
        with open(texts_path) as fin, open(out_path, "w") as fout:
            secs, rss, _ = run([SPARQ, "encode-text", "--model", a.model, "--threads", str(a.threads),
                                "--batch-size", str(a.batch_size), "--dtype", dtype], stdin=fin, stdout=fout)
        rows.append((f"sparq encode-text {dtype}", secs, rss, agreement(load_vectors(out_path), st_vectors)))

    sub = os.path.join(tmp, "in")
    os.makedirs(sub)
    pq.write_table(table, os.path.join(sub, "corpus.parquet"), row_group_size=500)
    for dtype in a.workers_dtype:
        for i, workers in enumerate(a.workers):
            threads = max(1, a.threads // workers)
            secs, rss, _ = run([SPARQ, "encode", "--model", a.model, "--input", sub,
                                "--output", os.path.join(tmp, f"out-{i}-{workers}-{dtype}"), "--dtype", dtype,
                                "--workers", str(workers), "--threads", str(threads), "--shard-rows", "500"])
            rows.append((f"sparq encode {workers} worker(s) x {threads} thread(s) {dtype}", secs, rss, None))

    base = rows[0][1]
    print(f"\n{a.label} {len(texts)} docs, {tokens} tokens, {a.threads} threads, batch {a.batch_size}")
    print(f"| contender | docs/s | tokens/s | peak RSS MiB | ratio | mean cosine | top-10 overlap |")
    print(f"|---|---|---|---|---|---|---|")
    for name, secs, rss, agree in rows:
        cos, ov = agree if agree else ("", "")
        cos = f"{cos:.5f}" if cos != "" else ""
        ov = f"{ov:.4f}" if ov != "" else ""
        print(f"| {name} | {len(texts)/secs:.1f} | {tokens/secs:.0f} | {rss:.0f} | {base/secs:.2f}x | {cos} | {ov} |")


if __name__ == "__main__":
    main()
