#!/usr/bin/env python3
"""Writes the fixture and reference outputs for `sparq mine` (tests/mine.rs), computed with
sentence-transformers' `mine_hard_negatives` and the bundled model as a SparseEncoder (fp32, CPU).

  tests/fixtures/mine/pairs.parquet    (query, answer): 150 pairs of examples/pairs, then anchors
                                       repeated with other positives (several positives per
                                       query) and one (anchor, positive) row given twice.
  tests/fixtures/mine/corpus.parquet   `text`: 60 further answers plus 5 positives repeated
                                       (the separate-corpus case; ST de-duplicates the union).
  tests/fixtures/mine/{document,query}-vectors/  every document / query once, encoded by the
                                       reference (encode_document / encode_query), in the
                                       layout of a `sparq encode --keep-columns text` output
                                       (id, sparse, text): the --corpus-vectors/--query-vectors
                                       path, and the selection tested on the reference's own
                                       vectors.
  tests/reference/mine-reference.jsonl first line {"texts": [...]}: every text once; then one
                                       object per option combination: the options, the output's
                                       column names and its rows, each text given by its
                                       position in "texts" (keeps the file small).

`mine_hard_negatives` calls `encode_document` / `encode_query` with the dense-model arguments
`normalize_embeddings=True, convert_to_numpy=True`, which `SparseEncoder.encode` refuses (it
accepts no extra keyword arguments). The adapter below drops those two, encodes through the
SparseEncoder's own `encode_document` / `encode_query` (document and query routes, prompts as
configured) and hands back dense float32 arrays; similarity is the SparseEncoder's `dot`.
So the scores are SPLADE dot products, as `sparq mine` computes them, not cosines.
"""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets import Dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "splade-bert-tiny-nq")
CROSS_ENCODER = os.path.join(ROOT, "tests", "fixtures", "models", "cross-encoder-tiny")
FIX = os.path.join(ROOT, "tests", "fixtures", "mine")
REF = os.path.join(ROOT, "tests", "reference", "mine-reference.jsonl")


class SparseAsDense:
    """What mine_hard_negatives needs of a model, from a SparseEncoder."""

    def __init__(self, model):
        self.model = model
        self.device = model.device

    def _encode(self, fn, texts, batch_size=32, prompt_name=None, prompt=None, **_dense_only):
        out = fn(texts, batch_size=batch_size, prompt_name=prompt_name, prompt=prompt,
                 convert_to_tensor=True, convert_to_sparse_tensor=False)
        return out.float().cpu().numpy()

    def encode_document(self, texts, **kw):
        return self._encode(self.model.encode_document, texts, **kw)

    def encode_query(self, texts, **kw):
        return self._encode(self.model.encode_query, texts, **kw)

    def similarity(self, a, b):
        return self.model.similarity(torch.as_tensor(a), torch.as_tensor(b))

    def similarity_pairwise(self, a, b):
        return self.model.similarity_pairwise(torch.as_tensor(a), torch.as_tensor(b))


# name -> mine_hard_negatives options (the corpus option names the fixture corpus).
COMBINATIONS = [
    ("triplet-top", dict(num_negatives=3, output_format="triplet", output_scores=True)),
    ("triplet-plain", dict(num_negatives=2, output_format="triplet")),
    ("ntuple-relative-margin", dict(num_negatives=4, relative_margin=0.05, output_format="n-tuple",
                                    output_scores=True)),
    ("ntuple-scores-absolute-margin", dict(num_negatives=3, absolute_margin=2.0,
                                           output_format="n-tuple-scores")),
    ("ntuple-range", dict(num_negatives=3, range_min=2, range_max=8, output_format="n-tuple")),
    ("ntuple-max-score-drops", dict(num_negatives=5, max_score=8.0, range_max=12,
                                    output_format="n-tuple", output_scores=True)),
    ("labeled-pair", dict(num_negatives=3, range_min=1, range_max=10, output_format="labeled-pair")),
    ("labeled-pair-scores", dict(num_negatives=2, min_score=15.0, range_max=6,
                                 output_format="labeled-pair", output_scores=True)),
    ("labeled-list", dict(num_negatives=4, max_score=25.0, min_score=12.0, output_format="labeled-list")),
    ("labeled-list-scores", dict(num_negatives=3, relative_margin=0.1, output_format="labeled-list",
                                 output_scores=True)),
    ("corpus-triplet", dict(num_negatives=3, corpus=True, output_format="triplet", output_scores=True)),
    ("include-positives", dict(num_negatives=4, include_positives=True, output_format="n-tuple",
                               output_scores=True)),
    # Rescored by the cross-encoder fixture (random weights, Sigmoid): every candidate and
    # positive gets its score, and the filters and the ranking apply to those scores. Its
    # 32-token limit makes passages that share a beginning score exactly alike: torch.topk
    # orders such ties arbitrarily, so the test accepts any order among exactly equal scores.
    ("cross-encoder-relative-margin", dict(num_negatives=3, relative_margin=0.01, range_max=8, cross_encoder=True,
                                           output_format="n-tuple", output_scores=True)),
    ("cross-encoder-min-score", dict(num_negatives=2, min_score=0.5, range_max=5, cross_encoder=True,
                                     output_format="labeled-pair", output_scores=True)),
    # Without a margin or score bound ST does not rescore: the retriever's scores stay.
    ("cross-encoder-unused", dict(num_negatives=2, cross_encoder=True, output_format="triplet",
                                  output_scores=True)),
]


def fixture():
    rows = pq.read_table(os.path.join(ROOT, "examples", "pairs", "pairs.parquet")).to_pylist()
    pairs = [(r["query"], r["answer"]) for r in rows[:150]]
    # Several positives for some anchors, and a row given twice (a duplicate positive).
    pairs += [(pairs[i][0], rows[200 + i]["answer"]) for i in range(0, 12, 3)]
    pairs.append(pairs[7])
    corpus = [r["answer"] for r in rows[300:360]] + [p[1] for p in pairs[20:25]]
    os.makedirs(FIX, exist_ok=True)
    pq.write_table(pa.table({"query": [p[0] for p in pairs], "answer": [p[1] for p in pairs]}),
                   os.path.join(FIX, "pairs.parquet"))
    pq.write_table(pa.table({"text": corpus}), os.path.join(FIX, "corpus.parquet"))
    return pairs, corpus


def write_vectors(model, pairs, corpus):
    documents = list(dict.fromkeys(corpus + [p[1] for p in pairs]))
    queries = list(dict.fromkeys(p[0] for p in pairs))
    entry = pa.struct([pa.field("id", pa.uint32(), False), pa.field("weight", pa.float32(), False)])
    for name, texts, encode in [("document-vectors", documents, model.encode_document),
                                ("query-vectors", queries, model.encode_query)]:
        dense = encode(texts)
        sparse = [[{"id": int(i), "weight": float(row[i])} for i in row.nonzero()[0]] for row in dense]
        table = pa.table({"id": pa.array(range(len(texts)), pa.int64()),
                          "sparse": pa.array(sparse, pa.list_(pa.field("item", entry, False))),
                          "text": texts})
        os.makedirs(os.path.join(FIX, name), exist_ok=True)
        pq.write_table(table, os.path.join(FIX, name, "part-00000-000000000000.parquet"))


def main():
    from sentence_transformers import CrossEncoder, SparseEncoder
    from sentence_transformers.util import mine_hard_negatives

    torch.manual_seed(0)
    torch.set_num_threads(1)
    pairs, corpus = fixture()
    dataset = Dataset.from_dict({"query": [p[0] for p in pairs], "answer": [p[1] for p in pairs]})
    model = SparseAsDense(SparseEncoder(MODEL, device="cpu"))
    write_vectors(model, pairs, corpus)
    texts = list(dict.fromkeys([p[0] for p in pairs] + [p[1] for p in pairs] + corpus))
    position = {t: i for i, t in enumerate(texts)}

    def compact(value):
        if isinstance(value, str):
            return position[value]
        if isinstance(value, list) and value and isinstance(value[0], str):
            return [position[v] for v in value]
        return value

    with open(REF, "w") as out:
        out.write(json.dumps({"texts": texts}) + "\n")
        for name, options in COMBINATIONS:
            kw = dict(options)
            if kw.pop("corpus", False):
                kw["corpus"] = corpus
            if kw.pop("cross_encoder", False):
                kw["cross_encoder"] = CrossEncoder(CROSS_ENCODER, device="cpu")
            result = mine_hard_negatives(dataset, model, verbose=False, **kw)
            rows = [{k: compact(v) for k, v in row.items()} for row in result.to_list()]
            record = {"name": name, "options": options, "columns": result.column_names, "rows": rows}
            out.write(json.dumps(record) + "\n")
            print(name, len(result), result.column_names)


if __name__ == "__main__":
    main()
