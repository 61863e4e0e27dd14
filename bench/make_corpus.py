#!/usr/bin/env python3
"""Writes a benchmark corpus of real English passages with GooAQ-like lengths, from text that
ships with CPython (the `pydoc_data` documentation topics), so it needs no download.

  make_corpus.py OUT_DIR [--docs N] [--queries M] [--seed S] [--mix realistic|long] [--fast]

OUT_DIR/corpus.parquet     documents: `id` (int64), `text` (realistic: mean ~60 tokens,
                           14..201; long: mean ~200, 40..512)
OUT_DIR/beir/              the same documents as a BEIR dataset with M queries (~12 tokens),
                           each judged relevant to the passage it was cut from.
Token counts use the bundled model's tokenizer, special tokens included.
"""
import argparse
import json
import os
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
from pydoc_data.topics import topics
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sentences():
    out = []
    for _, text in sorted(topics.items()):
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if len(para) < 40 or para.startswith((">>>", "*", "|", "+", "-")) or "::=" in para:
                continue
            out.extend(s for s in re.split(r"(?<=[.!?])\s+", para) if 20 <= len(s) <= 400)
    return out


def write_beir(out, docs, queries, rng):
    """The documents as a BEIR dataset, with `queries` queries each judged relevant to the
    passage it was cut from."""
    os.makedirs(os.path.join(out, "beir", "qrels"), exist_ok=True)
    with open(os.path.join(out, "beir", "corpus.jsonl"), "w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": d}) + "\n")
    with open(os.path.join(out, "beir", "queries.jsonl"), "w") as f, \
            open(os.path.join(out, "beir", "qrels", "test.tsv"), "w") as g:
        g.write("query-id\tcorpus-id\tscore\n")
        for q in range(queries):
            d = rng.randrange(len(docs))
            words = docs[d].split()
            s = rng.randrange(max(1, len(words) - 9))
            f.write(json.dumps({"_id": f"q{q}", "text": " ".join(words[s:s + 9]).lower()}) + "\n")
            g.write(f"q{q}\td{d}\t1\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--docs", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--mix", choices=["realistic", "long"], default="realistic")
    ap.add_argument("--fast", action="store_true",
                    help="count tokens by sentence instead of tokenizing every document (200k docs in seconds)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models", "splade-bert-tiny-nq"))
    pool = sentences()
    lengths = {s: len(tok(s)["input_ids"]) - 2 for s in pool}
    docs = []
    # GooAQ answers: mean ~60 tokens, 14..201; the long mix: mean ~200, 40..512 (lognormals fit
    # the shapes). Special tokens add 2.
    mu, sigma, low, high = (4.15, 0.45, 12, 199) if a.mix == "realistic" else (5.25, 0.35, 38, 510)
    while len(docs) < a.docs:
        target = min(high, max(low, int(rng.lognormvariate(mu, sigma))))
        start = rng.randrange(len(pool))
        parts, n = [], 0
        for s in pool[start:] + pool[:start]:
            if n + lengths[s] > target and parts:
                break
            parts.append(s)
            n += lengths[s]
        text = " ".join(parts)
        if a.fast:
            if n + 2 >= low + 2:
                docs.append(text)
            continue
        ids = tok(text, truncation=True, max_length=high + 2)["input_ids"]
        if len(ids) < low + 2:
            continue
        docs.append(tok.decode(ids[1:-1]) if len(ids) >= high + 2 else text)
    os.makedirs(a.out, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(range(len(docs)), pa.int64()), "text": docs}),
                   os.path.join(a.out, "corpus.parquet"), row_group_size=2000)
    if a.queries > 0:
        write_beir(a.out, docs, a.queries, rng)
    sample = docs if len(docs) <= 20000 else rng.sample(docs, 20000)
    n_tok = [len(ids) for ids in tok(sample)["input_ids"]]
    print(json.dumps({"docs": len(docs), "mean_tokens": sum(n_tok) / len(n_tok), "min": min(n_tok), "max": max(n_tok)}))


if __name__ == "__main__":
    main()
