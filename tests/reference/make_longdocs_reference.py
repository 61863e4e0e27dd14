#!/usr/bin/env python3
"""Reference vectors for `--long-docs window` (tests/long_docs.rs), fp32 CPU.

  .venv/bin/python tests/reference/make_longdocs_reference.py

Writes tests/fixtures/long_texts.jsonl (texts of ~20 to ~1,300 tokens, made from
tests/fixtures/texts.jsonl) and, for the bundled model, tests/reference/longdocs-s{0,48}.jsonl:
each text cut into windows as Hugging Face tokenizers cut them
(`tokenizer(text, max_length=L, truncation=True, stride=S, return_overflowing_tokens=True)`),
every window run through the sentence-transformers SparseEncoder's own modules (MLM + SPLADE
pooling), and the elementwise maximum over the windows taken.
"""
import json
import os
import random

import torch
from sentence_transformers import SparseEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "splade-bert-tiny-nq")


def long_texts():
    with open(os.path.join(ROOT, "tests", "fixtures", "texts.jsonl"), encoding="utf8") as f:
        base = [json.loads(line) for line in f]
    short = [t for t in base if len(t) < 500]
    rng = random.Random(7)
    out = [base[0], base[3], max(base, key=len)]  # two of one window, equal to truncation
    for n in [12, 15, 25, 40, 60]:
        out.append(" ".join(rng.choice(short) for _ in range(n)))
    return out


def windowed(model, texts, stride):
    tok = model.tokenizer
    length = model.max_seq_length
    rows = []
    for text in texts:
        enc = tok(text, max_length=length, truncation=True, stride=stride,
                  return_overflowing_tokens=True, padding=True, return_tensors="pt")
        features = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        with torch.no_grad():
            out = model.forward(features)["sentence_embedding"]
        rows.append((out.max(dim=0).values, out.shape[0]))
    return rows


def main():
    model = SparseEncoder(MODEL, device="cpu")
    texts = long_texts()
    with open(os.path.join(ROOT, "tests", "fixtures", "long_texts.jsonl"), "w", encoding="utf8") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")
    for stride in (0, 48):
        path = os.path.join(ROOT, "tests", "reference", f"longdocs-s{stride}.jsonl")
        with open(path, "w") as f:
            for dense, windows in windowed(model, texts, stride):
                idx = torch.nonzero(dense).flatten()
                f.write(json.dumps({"indices": idx.tolist(), "values": dense[idx].tolist(),
                                    "windows": windows}) + "\n")
        print(path, [w for _, w in windowed(model, texts, stride)])


if __name__ == "__main__":
    main()
