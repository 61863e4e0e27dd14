#!/usr/bin/env python3
"""Writes reference SPLADE vectors with sentence-transformers (fp32, CPU) for sparq's tests.

  make_reference.py fixtures
      Reference vectors of tests/fixtures/texts.jsonl for the bundled model (v6 layout) and a
      small random DistilBERT SPLADE model it creates (v4/v5 layout, sum pooling, log1p_relu,
      prompts, lowercasing, max_seq_length 64). Outputs are committed: tests need no Python.

  make_reference.py bert-base OUT_DIR
      A BERT-base-size SPLADE model (12 layers, 768 hidden, 30522 vocab, random weights with a
      fixed seed, decoder bias shifted so documents get ~100-200 active dims) in OUT_DIR/model,
      with reference vectors in OUT_DIR. Too large to commit: tests generate it when this
      Python environment exists.

Each reference file holds one JSON line per text: {"indices": [...], "values": [...]}.
"""
import json
import os
import shutil
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = os.path.join(ROOT, "tests", "fixtures", "texts.jsonl")
REF = os.path.join(ROOT, "tests", "reference")
TINY = os.path.join(ROOT, "models", "splade-bert-tiny-nq")
DISTIL = os.path.join(ROOT, "tests", "fixtures", "models", "distil-sum-tiny")


def load_texts():
    with open(TEXTS, encoding="utf8") as f:
        return [json.loads(line) for line in f]


def write_vectors(path, dense):
    with open(path, "w") as f:
        for row in dense:
            idx = torch.nonzero(row).flatten()
            f.write(json.dumps({"indices": idx.tolist(), "values": row[idx].tolist()}) + "\n")


def encode_both(model, texts, out_prefix, max_active_dims=None):
    kw = dict(convert_to_tensor=True, convert_to_sparse_tensor=False, batch_size=8)
    if max_active_dims:
        kw["max_active_dims"] = max_active_dims
    write_vectors(out_prefix + "-documents.jsonl", model.encode_document(texts, **kw).cpu())
    write_vectors(out_prefix + "-queries.jsonl", model.encode_query(texts, **kw).cpu())


def shift_bias_for_sparsity(model, texts, target_dims):
    """Shifts the MLM decoder bias so documents get about `target_dims` active dims on average.

    Random weights give dense vectors (about half the vocabulary positive), which no trained
    SPLADE model produces; real models have ~100-200 active dims per document."""
    mlm = model[0].model
    bias = mlm.cls.predictions.bias if hasattr(mlm, "cls") else mlm.vocab_projector.bias
    original = bias.detach().clone()

    def active_dims(shift):
        with torch.no_grad():
            bias.copy_(original - shift)
        emb = model.encode_document(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
        return (emb > 0).sum(dim=1).float().mean().item()

    if model[1].pooling_strategy == "max" and model[1].activation_function == "relu":
        # One pass: with a large positive bias every token's logit is positive, so the pooled
        # weight log1p(max logit + C) gives back each document's max logit per vocab entry.
        lift = 50.0
        with torch.no_grad():
            bias.copy_(original + lift)
        emb = model.encode_document(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
        max_logits = torch.expm1(emb.double()) - lift
        low, high = -20.0, 20.0
        for _ in range(60):
            mid = (low + high) / 2
            if (max_logits > mid).sum(dim=1).double().mean().item() > target_dims:
                low = mid
            else:
                high = mid
        with torch.no_grad():
            bias.copy_(original - high)
        return

    low, high = -20.0, 20.0  # active dims fall as the shift grows
    for _ in range(20):
        mid = (low + high) / 2
        if active_dims(mid) > target_dims:
            low = mid
        else:
            high = mid
    active_dims(high)


def make_distil_fixture(texts):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    torch.manual_seed(7)
    cfg = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128)
    tmp = DISTIL + ".hf"
    shutil.rmtree(tmp, ignore_errors=True)
    DistilBertForMaskedLM(cfg).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(TINY).save_pretrained(tmp)
    mlm = MLMTransformer(tmp, max_seq_length=64, do_lower_case=True)
    pooling = SpladePooling(pooling_strategy="sum", activation_function="log1p_relu")
    model = SparseEncoder(modules=[mlm, pooling], device="cpu",
                          prompts={"query": "query: ", "document": "passage: "})
    shift_bias_for_sparsity(model, texts, 60)
    shutil.rmtree(DISTIL, ignore_errors=True)
    model.save(DISTIL)
    shutil.rmtree(tmp)
    to_v5_layout_with_cased_tokenizer(DISTIL)
    return SparseEncoder(DISTIL, device="cpu")


def to_v5_layout_with_cased_tokenizer(path):
    """Rewrites a saved model into the v4/v5 layout (MLMTransformer + SpladePooling with
    word_embedding_dimension, sentence_bert_config.json with max_seq_length/do_lower_case) and
    makes its tokenizer cased, so that `do_lower_case: true` is what lowercases inputs."""
    def rewrite(name, fn):
        full = os.path.join(path, name)
        with open(full, encoding="utf8") as f:
            data = json.load(f)
        data = fn(data)
        with open(full, "w", encoding="utf8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)

    v5 = {"MLMTransformer": "sentence_transformers.sparse_encoder.models.MLMTransformer",
          "SpladePooling": "sentence_transformers.sparse_encoder.models.SpladePooling"}
    rewrite("modules.json", lambda mods: [dict(m, type=v5[m["type"].rsplit(".", 1)[1]]) for m in mods])
    rewrite("sentence_bert_config.json", lambda _: {"max_seq_length": 64, "do_lower_case": True})
    rewrite("1_SpladePooling/config.json", lambda c: {"pooling_strategy": c["pooling_strategy"],
            "activation_function": c["activation_function"], "word_embedding_dimension": 30522})

    def cased(tok):
        tok["normalizer"]["lowercase"] = False
        return tok
    rewrite("tokenizer.json", cased)
    rewrite("tokenizer_config.json", lambda c: dict(c, do_lower_case=False, model_max_length=512))


def fixtures():
    from sentence_transformers import SparseEncoder

    texts = load_texts()
    tiny = SparseEncoder(TINY, device="cpu")
    encode_both(tiny, texts, os.path.join(REF, "tiny"))
    encode_both(tiny, texts, os.path.join(REF, "tiny-k16"), max_active_dims=16)
    distil = make_distil_fixture(texts)
    encode_both(distil, texts, os.path.join(REF, "distil"))


def bert_base(out):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    texts = load_texts()
    torch.manual_seed(1234)
    hf = os.path.join(out, "hf")
    BertForMaskedLM(BertConfig()).save_pretrained(hf)  # BERT-base: 12 x 768, 30522 vocab
    AutoTokenizer.from_pretrained(TINY).save_pretrained(hf)
    model = SparseEncoder(modules=[MLMTransformer(hf, max_seq_length=256), SpladePooling("max")], device="cpu")
    shift_bias_for_sparsity(model, texts, 150)
    model.save(os.path.join(out, "model"))
    shutil.rmtree(hf)
    model = SparseEncoder(os.path.join(out, "model"), device="cpu")
    encode_both(model, texts, os.path.join(out, "reference"))


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    if sys.argv[1:] == ["fixtures"]:
        fixtures()
    elif len(sys.argv) == 3 and sys.argv[1] == "bert-base":
        bert_base(sys.argv[2])
    else:
        sys.exit(__doc__)
