#!/usr/bin/env python3
"""Writes the tiny cross-encoder fixture and its reference scores with sentence-transformers.

  make_cross_encoder_reference.py

A random-weight `BertForSequenceClassification` (2 layers, hidden 32, num_labels 1, fixed
seed) with the WordPiece vocabulary of tests/fixtures/models/router-two (1,200 tokens), wrapped
in a sentence-transformers `CrossEncoder` with max_length 32 and saved with `CrossEncoder.save`
to tests/fixtures/models/cross-encoder-tiny.

tests/reference/cross-encoder-tiny.jsonl holds one line per pair of tests/fixtures/pairs.jsonl:
  {"query", "text", "score": CrossEncoder.predict (its default activation: Sigmoid),
   "logit": predict with activation_fn=Identity, "input_ids", "token_type_ids"}
The pairs include long ones that need pair truncation (longest_first) and non-ASCII text.
Outputs are committed: tests need no Python.
"""
import json
import os
import shutil
import tempfile

import torch
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB_FROM = os.path.join(ROOT, "tests", "fixtures", "models", "router-two", "document_0_MLMTransformer")
OUT = os.path.join(ROOT, "tests", "fixtures", "models", "cross-encoder-tiny")
PAIRS = os.path.join(ROOT, "tests", "fixtures", "pairs.jsonl")
REF = os.path.join(ROOT, "tests", "reference", "cross-encoder-tiny.jsonl")
MAX_LENGTH = 32

LONG = ("sparse retrieval models expand every document into weighted vocabulary terms, "
        "so an inverted index can answer queries quickly while keeping most of the "
        "quality of dense retrieval on the benchmarks we measured last year")


def pairs():
    out = [
        ("what is splade", "SPLADE is a sparse neural retrieval model."),
        ("how do cross encoders score pairs", "They read the query and the passage together."),
        ("short", LONG),
        (LONG, "short answer"),
        (LONG, LONG + " and more words after it"),
        (LONG[:90], LONG[40:]),
        ("Crème brûlée à Zürich?", "Über die Straße gehen, naïve café façade."),
        ("东京 の 天気", "雨が降っています 🌧️ 今日は"),
        ("emoji 🙂 query", "Привет, как дела? ελληνικά"),
        ("empty passage", ""),
        ("a", "b"),
        ("the same words", "the same words"),
    ]
    # More pairs so batches mix long and short ones.
    for i in range(8):
        out.append((f"query number {i} about retrieval", LONG[: 20 + 25 * i]))
    return out


def main():
    torch.manual_seed(0)
    work = tempfile.mkdtemp()
    try:
        tokenizer = AutoTokenizer.from_pretrained(VOCAB_FROM)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=64, type_vocab_size=2, num_labels=1,
                            initializer_range=0.3)
        model = BertForSequenceClassification(config).eval()
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        ce = CrossEncoder(work, max_length=MAX_LENGTH, device="cpu")
        if os.path.exists(OUT):
            shutil.rmtree(OUT)
        ce.save(OUT)
    finally:
        shutil.rmtree(work)

    # Reload what was saved: the reference is what a user loading the folder gets.
    ce = CrossEncoder(OUT, device="cpu")
    assert ce.max_length == MAX_LENGTH, ce.max_length
    items = pairs()
    scores = ce.predict(items, batch_size=4, convert_to_numpy=True)
    logits = ce.predict(items, batch_size=4, convert_to_numpy=True,
                        activation_fn=torch.nn.Identity())
    with open(PAIRS, "w", encoding="utf8") as f:
        for i, (q, t) in enumerate(items):
            f.write(json.dumps({"id": f"p{i}", "query": q, "text": t}, ensure_ascii=False) + "\n")
    with open(REF, "w", encoding="utf8") as f:
        for (q, t), s, l in zip(items, scores, logits):
            # The features predict builds for this pair alone (no padding).
            features = ce.preprocess([(q, t)])
            f.write(json.dumps({"query": q, "text": t, "score": float(s), "logit": float(l),
                                "input_ids": features["input_ids"][0].tolist(),
                                "token_type_ids": features["token_type_ids"][0].tolist()},
                               ensure_ascii=False) + "\n")
    print("scores:", [round(float(s), 4) for s in scores])


if __name__ == "__main__":
    main()
