#!/usr/bin/env python3
"""Builds sparq's Router fixtures with sentence-transformers 6.2 and writes their references.

  .venv/bin/python tests/reference/make_router_reference.py

Run from the repository root (fp32, CPU, a fixed seed; outputs are committed, so tests need no
Python). It writes, under tests/fixtures/models/:

  router-static   OpenSearch-style inference-free model, saved by SparseEncoder.save: a Router
                  whose query route is a SparseStaticEmbedding (random IDF weights, some zero)
                  and whose document route is a random BERT MLMTransformer + SpladePooling
                  (max, log1p_relu).
  router-idf      The same model with the query route given as idf.json (token -> weight, as
                  OpenSearch publishes it) and no weights file; its config.json `path` names
                  the file relative to the route folder, so the reference is encoded with the
                  route folder as working directory (sentence-transformers resolves the path
                  against it).
  router-asym     The legacy layout: modules.json type `sentence_transformers.models.Asym`,
                  the routes in the root `config.json` (no router_config.json), the static
                  route in a folder named `query_0_IDF`.
  router-two      Two full encoders (naver efficient-splade style): a Router with a different
                  random BERT MLMTransformer + SpladePooling on each route, query/document
                  prompts.

The tokenizer is a WordPiece vocabulary trained with `tokenizers` on the repository's Markdown
(never on the test texts), wrapped by transformers' BertTokenizerFast and save_pretrained.
The WordPiece trainer breaks ties between equally frequent pairs in no fixed order, so a rerun
may assign other ids: it rewrites fixtures and references together (commit both), and the
tests hold for any run.

References (tests/reference/router-<fixture>-{queries,documents}.jsonl) are
`encode_query` / `encode_document` of tests/fixtures/texts.jsonl plus the multilingual and long
texts in tests/fixtures/router-texts.jsonl, one {"indices": [...], "values": [...]} per line.
"""
import glob
import json
import os
import shutil

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
REF = os.path.join(ROOT, "tests", "reference")
EXTRA_TEXTS = os.path.join(ROOT, "tests", "fixtures", "router-texts.jsonl")
WORK = os.path.join(ROOT, "target", "router-fixtures")


def load_texts():
    texts = []
    for path in (os.path.join(ROOT, "tests", "fixtures", "texts.jsonl"), EXTRA_TEXTS):
        with open(path, encoding="utf8") as f:
            texts += [json.loads(line) for line in f]
    return texts


def write_vectors(path, dense):
    with open(path, "w") as f:
        for row in dense:
            idx = torch.nonzero(row).flatten()
            f.write(json.dumps({"indices": idx.tolist(), "values": row[idx].tolist()}) + "\n")


def encode_both(model, texts, name):
    kw = dict(convert_to_tensor=True, convert_to_sparse_tensor=False, batch_size=8)
    prefix = os.path.join(REF, f"router-{name}")
    write_vectors(prefix + "-queries.jsonl", model.encode_query(texts, **kw).cpu())
    write_vectors(prefix + "-documents.jsonl", model.encode_document(texts, **kw).cpu())


def make_tokenizer(out):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    files = [p for p in glob.glob(os.path.join(ROOT, "**", "*.md"), recursive=True)
             if "/target/" not in p and "/.venv/" not in p]
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train(sorted(files), trainers.WordPieceTrainer(vocab_size=1200, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=128)
    fast.save_pretrained(out)
    return len(fast.get_vocab())


def make_mlm(out, tokenizer_dir, vocab, seed):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM
    from sentence_transformers.sparse_encoder.modules import MLMTransformer

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128,
                     initializer_range=0.2)  # logits spread enough that some stay positive
    model = BertForMaskedLM(cfg)
    with torch.no_grad():  # sparser vectors, as trained SPLADE models give
        model.cls.predictions.bias.sub_(3.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return MLMTransformer(out, max_seq_length=64)


def random_idf(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.rand(vocab, generator=g) * 5.0
    weight[torch.rand(vocab, generator=g) < 0.2] = 0.0  # tokens without a weight
    return weight


def router_static(tok_dir, vocab):
    from transformers import AutoTokenizer
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import Router, SparseStaticEmbedding, SpladePooling

    doc = make_mlm(os.path.join(WORK, "doc"), tok_dir, vocab, seed=11)
    static = SparseStaticEmbedding(tokenizer=AutoTokenizer.from_pretrained(tok_dir),
                                   weight=random_idf(vocab, 5), frozen=True)
    router = Router.for_query_document(
        query_modules=[static],
        document_modules=[doc, SpladePooling(pooling_strategy="max", activation_function="log1p_relu")])
    return SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")


def rewrite_json(path, fn):
    with open(path, encoding="utf8") as f:
        data = json.load(f)
    with open(path, "w", encoding="utf8") as f:
        json.dump(fn(data), f, indent=2, ensure_ascii=False)


def to_idf_json(src, dst):
    """router-static with the query route's weights given as idf.json (token -> weight)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    route = os.path.join(dst, "query_0_SparseStaticEmbedding")
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    weight = load_file(os.path.join(route, "model.safetensors"))["weight"]
    tokenizer = AutoTokenizer.from_pretrained(route)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    idf = {token: weight[i].item() for token, i in vocab if weight[i] != 0}
    # A token the vocabulary lacks maps to [UNK], as convert_tokens_to_ids does.
    idf["zzzunknowntoken"] = 1.25
    with open(os.path.join(route, "idf.json"), "w", encoding="utf8") as f:
        json.dump(idf, f, ensure_ascii=False)
    os.remove(os.path.join(route, "model.safetensors"))
    rewrite_json(os.path.join(route, "config.json"), lambda c: dict(c, path="idf.json"))
    return route


def to_asym(src, dst):
    """router-static as sentence-transformers v2/v3 saved an Asym model."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    os.rename(os.path.join(dst, "query_0_SparseStaticEmbedding"), os.path.join(dst, "query_0_IDF"))
    with open(os.path.join(dst, "router_config.json"), encoding="utf8") as f:
        config = json.load(f)
    os.remove(os.path.join(dst, "router_config.json"))
    rename = lambda i: "query_0_IDF" if i == "query_0_SparseStaticEmbedding" else i
    config["types"] = {rename(k): v for k, v in config["types"].items()}
    config["structure"] = {k: [rename(i) for i in v] for k, v in config["structure"].items()}
    config["parameters"] = {"allow_empty_key": True}
    with open(os.path.join(dst, "config.json"), "w", encoding="utf8") as f:
        json.dump(config, f, indent=2)
    rewrite_json(os.path.join(dst, "modules.json"),
                 lambda mods: [dict(m, type="sentence_transformers.models.Asym") for m in mods])


def router_two(tok_dir, vocab):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import Router, SpladePooling

    query = make_mlm(os.path.join(WORK, "query"), tok_dir, vocab, seed=21)
    doc = make_mlm(os.path.join(WORK, "doc2"), tok_dir, vocab, seed=22)
    router = Router.for_query_document(
        query_modules=[query, SpladePooling(pooling_strategy="max")],
        document_modules=[doc, SpladePooling(pooling_strategy="max")])
    return SparseEncoder(modules=[router], device="cpu",
                         prompts={"query": "query: ", "document": "passage: "})


def main():
    from sentence_transformers import SparseEncoder

    torch.set_num_threads(os.cpu_count() or 1)
    texts = load_texts()
    shutil.rmtree(WORK, ignore_errors=True)
    tok_dir = os.path.join(WORK, "tokenizer")
    vocab = make_tokenizer(tok_dir)

    static = os.path.join(MODELS, "router-static")
    shutil.rmtree(static, ignore_errors=True)
    router_static(tok_dir, vocab).save(static)
    encode_both(SparseEncoder(static, device="cpu"), texts, "static")

    route = to_idf_json(static, os.path.join(MODELS, "router-idf"))
    here = os.getcwd()
    os.chdir(route)  # the one place sentence-transformers finds a relative idf.json
    model = SparseEncoder(os.path.join(MODELS, "router-idf"), device="cpu")
    os.chdir(here)
    encode_both(model, texts, "idf")

    to_asym(static, os.path.join(MODELS, "router-asym"))
    encode_both(SparseEncoder(os.path.join(MODELS, "router-asym"), device="cpu"), texts, "asym")

    two = os.path.join(MODELS, "router-two")
    shutil.rmtree(two, ignore_errors=True)
    router_two(tok_dir, vocab).save(two)
    encode_both(SparseEncoder(two, device="cpu"), texts, "two")
    for name in ("router-static", "router-idf", "router-asym", "router-two"):
        for readme in glob.glob(os.path.join(MODELS, name, "README.md")):
            os.remove(readme)  # model cards are large and say nothing the tests use


if __name__ == "__main__":
    main()
