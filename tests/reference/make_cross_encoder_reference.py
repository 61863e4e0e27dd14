#!/usr/bin/env python3
"""Writes the tiny cross-encoder fixtures and their reference scores with sentence-transformers.

  make_cross_encoder_reference.py

A random-weight `BertForSequenceClassification` (2 layers, hidden 32, num_labels 1, fixed
seed) with the WordPiece vocabulary of tests/fixtures/models/router-two (1,200 tokens), wrapped
in a sentence-transformers `CrossEncoder` with max_length 32 and saved with `CrossEncoder.save`
to tests/fixtures/models/cross-encoder-tiny.

tests/reference/cross-encoder-tiny.jsonl holds one line per pair:
  {"query", "text", "score": CrossEncoder.predict (its default activation: Sigmoid),
   "logit": predict with activation_fn=Identity, "input_ids", "token_type_ids"}
The pairs include long ones that need pair truncation (longest_first) and non-ASCII text.

The same for an XLM-RoBERTa cross-encoder (`XLMRobertaForSequenceClassification`, the
vocabulary of tests/fixtures/models/xlmr-tiny, seed 1): tests/fixtures/models/
cross-encoder-xlmr-tiny and tests/reference/cross-encoder-xlmr-tiny.jsonl (its tokenizer gives
no token_type_ids: the model reads type 0 everywhere, written as zeros).
Outputs are committed: tests need no Python.
"""
import json
import os
import shutil
import tempfile

import torch
from sentence_transformers import CrossEncoder
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification,
                          XLMRobertaConfig, XLMRobertaForSequenceClassification)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
VOCAB_FROM = os.path.join(MODELS, "router-two", "document_0_MLMTransformer")
XLMR_VOCAB_FROM = os.path.join(MODELS, "xlmr-tiny")
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


def bert(tokenizer):
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, type_vocab_size=2, num_labels=1,
                        initializer_range=0.3)
    return BertForSequenceClassification(config)


def xlmr(tokenizer):
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64,
                              max_position_embeddings=66, type_vocab_size=1, num_labels=1,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2,
                              initializer_range=0.3)
    return XLMRobertaForSequenceClassification(config)


def make(name, vocab_from, build, seed, items):
    out = os.path.join(MODELS, name)
    torch.manual_seed(seed)
    work = tempfile.mkdtemp()
    try:
        tokenizer = AutoTokenizer.from_pretrained(vocab_from)
        model = build(tokenizer).eval()
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        ce = CrossEncoder(work, max_length=MAX_LENGTH, device="cpu")
        if os.path.exists(out):
            shutil.rmtree(out)
        ce.save(out)
    finally:
        shutil.rmtree(work)

    # Reload what was saved: the reference is what a user loading the folder gets.
    ce = CrossEncoder(out, device="cpu")
    assert ce.max_seq_length == MAX_LENGTH, ce.max_seq_length
    scores = ce.predict(items, batch_size=4, convert_to_numpy=True)
    logits = ce.predict(items, batch_size=4, convert_to_numpy=True,
                        activation_fn=torch.nn.Identity())
    with open(os.path.join(ROOT, "tests", "reference", name + ".jsonl"), "w", encoding="utf8") as f:
        for (q, t), s, l in zip(items, scores, logits):
            # The features predict builds for this pair alone (no padding).
            features = ce.preprocess([(q, t)])
            ids = features["input_ids"][0].tolist()
            types = features["token_type_ids"][0].tolist() if "token_type_ids" in features else [0] * len(ids)
            f.write(json.dumps({"query": q, "text": t, "score": float(s), "logit": float(l),
                                "input_ids": ids, "token_type_ids": types},
                               ensure_ascii=False) + "\n")
    print(name, "scores:", [round(float(s), 4) for s in scores])


def main():
    items = pairs()
    make("cross-encoder-tiny", VOCAB_FROM, bert, 0, items)
    make("cross-encoder-xlmr-tiny", XLMR_VOCAB_FROM, xlmr, 1, items)


if __name__ == "__main__":
    main()
