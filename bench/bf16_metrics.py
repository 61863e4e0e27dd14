#!/usr/bin/env python3
"""Retrieval metrics of `sparq eval` in bf16 vs fp32 on the same judged set (CPU).

  bf16_metrics.py BEIR_DIR --model DIR [--docs N] [--queries Q] [--label TEXT]

BEIR_DIR is a BEIR folder such as bench/make_corpus.py writes (corpus.jsonl, queries.jsonl,
qrels/test.tsv). The first N documents are kept, with the first Q queries whose judged
documents are all among them. Prints every metric that differs, the largest difference, and
a short table; the issue's bar is 0.005. One flipped query moves nDCG@10 by about 1/Q, so Q
must be in the hundreds for the bar to mean anything (the 10-query test fixture cannot).
"""
import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARQ = os.path.join(ROOT, "target", "release", "sparq")


def subset(beir, docs, queries, out):
    os.makedirs(os.path.join(out, "qrels"))
    kept = set()
    with open(os.path.join(beir, "corpus.jsonl")) as f, open(os.path.join(out, "corpus.jsonl"), "w") as g:
        for line in f:
            if len(kept) == docs:
                break
            kept.add(json.loads(line)["_id"])
            g.write(line)
    judged = {}
    with open(os.path.join(beir, "qrels", "test.tsv")) as f:
        header = next(f)
        for line in f:
            q, d, _ = line.rstrip("\n").split("\t")
            judged.setdefault(q, []).append(line)
            judged[q + "\0docs"] = judged.get(q + "\0docs", []) + [d]
    chosen = []
    with open(os.path.join(beir, "queries.jsonl")) as f, open(os.path.join(out, "queries.jsonl"), "w") as g:
        for line in f:
            q = json.loads(line)["_id"]
            if len(chosen) < queries and q in judged and all(d in kept for d in judged[q + "\0docs"]):
                chosen.append(q)
                g.write(line)
    with open(os.path.join(out, "qrels", "test.tsv"), "w") as g:
        g.write(header)
        for q in chosen:
            g.writelines(judged[q])
    return len(kept), len(chosen)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("beir")
    ap.add_argument("--model", required=True)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    data = os.path.join(tempfile.mkdtemp(), "judged")
    n_docs, n_queries = subset(a.beir, a.docs, a.queries, data)
    metrics = {}
    for dtype in ("f32", "bf16"):
        out = subprocess.run([SPARQ, "eval", "--beir", data, "--model", a.model, "--dtype", dtype],
                             capture_output=True, text=True, check=True).stdout
        metrics[dtype] = json.loads(out.strip().splitlines()[-1])
    f32, bf16 = metrics["f32"], metrics["bf16"]
    ir = [k for k in f32 if k.startswith("dot_")]
    worst = max(ir, key=lambda k: abs(f32[k] - bf16[k]))
    print(f"\n{a.label} {n_docs} docs, {n_queries} judged queries")
    print("| metric | fp32 | bf16 | difference |")
    print("|---|---|---|---|")
    for k in dict.fromkeys(("dot_ndcg@10", "dot_mrr@10", "dot_map@100", "dot_recall@10", "dot_accuracy@1", worst)):
        print(f"| {k} | {f32[k]:.5f} | {bf16[k]:.5f} | {bf16[k] - f32[k]:+.5f} |")
    print(f"largest difference over {len(ir)} IR metrics: {abs(f32[worst] - bf16[worst]):.5f} ({worst}); "
          f"bar 0.005: {'met' if abs(f32[worst] - bf16[worst]) <= 0.005 else 'NOT met'}")


if __name__ == "__main__":
    main()
