#!/usr/bin/env python3
"""`sparq eval` vs sentence-transformers' SparseInformationRetrievalEvaluator, side by side in
one run on the same machine: encode queries + corpus and retrieve, wall-clock seconds each
(model load included for both), their ratio, and the largest metric difference.

  eval_vs_st.py BEIR_DIR [--model DIR] [--threads N] [--batch-size B]

Run it on a quiet machine (no build or test beside it): only ratios from one run mean anything.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(beir):
    corpus = {}
    with open(os.path.join(beir, "corpus.jsonl")) as f:
        for line in f:
            d = json.loads(line)
            if d["text"]:
                corpus[d["_id"]] = d["text"]
    queries = {}
    with open(os.path.join(beir, "queries.jsonl")) as f:
        for line in f:
            q = json.loads(line)
            if q["text"]:
                queries[q["_id"]] = q["text"]
    rel = {}
    with open(os.path.join(beir, "qrels", "test.tsv")) as f:
        next(f)
        for line in f:
            q, d, s = line.rstrip("\n").split("\t")
            if float(s) > 0:
                rel.setdefault(q, set()).add(d)
    return corpus, queries, rel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("beir")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "splade-bert-tiny-nq"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator
    model = SparseEncoder(a.model, device="cpu")
    corpus, queries, rel = load(a.beir)
    ev = SparseInformationRetrievalEvaluator(queries, corpus, rel, name="b", batch_size=a.batch_size, write_csv=False)
    st = {k[2:]: v for k, v in ev(model).items() if k.startswith("b_")}
    st_s = time.perf_counter() - t0

    sparq = os.path.join(ROOT, "target", "release", "sparq")
    t0 = time.perf_counter()
    out = subprocess.run([sparq, "eval", "--model", a.model, "--beir", a.beir, "--threads", str(a.threads),
                          "--batch-size", str(a.batch_size)], capture_output=True, text=True, check=True)
    sq_s = time.perf_counter() - t0
    sq = json.loads(out.stdout.strip().splitlines()[-1])
    diff = max(abs(sq[k] - st[k]) for k in st)
    print(json.dumps({"docs": len(corpus), "queries": len(ev.queries), "threads": a.threads,
                      "sentence_transformers_s": round(st_s, 2), "sparq_s": round(sq_s, 2),
                      "speedup": round(st_s / sq_s, 2), "ndcg@10": [st["dot_ndcg@10"], sq["dot_ndcg@10"]],
                      "max_metric_diff": diff}))


if __name__ == "__main__":
    sys.exit(main())
