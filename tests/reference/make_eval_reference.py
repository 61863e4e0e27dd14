#!/usr/bin/env python3
"""Writes the BEIR fixtures for `sparq eval` and their reference metrics, computed with
sentence-transformers' SparseInformationRetrievalEvaluator (bundled model, fp32, CPU).

  tests/fixtures/beir-small/       BEIR layout (corpus.jsonl, queries.jsonl, qrels/test.tsv)
  tests/fixtures/nanobeir-small/   the same data in the NanoBEIR parquet layout
  tests/fixtures/beir-other/       a second dataset, for the multi-dataset mean
  tests/reference/eval-*.json      metrics (no name prefix), the vectors the reference used,
                                   and the mean over both datasets computed as
                                   SparseNanoBEIREvaluator aggregates.

The data has imperfect rankings, queries with several relevant documents, a query whose
relevant document is not in its top 10, a query without judgements, a judgement with score 0,
and judgements naming an unknown query and an unknown document (kept as the reference keeps
them). Document text is the `text` field, as the NanoBEIR evaluator builds it.
"""
import json
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
REF = os.path.join(ROOT, "tests", "reference")
MODEL = os.path.join(ROOT, "models", "splade-bert-tiny-nq")

TOPICS = {
    "whisky": ["Scotch whisky is distilled from malted barley and aged in oak casks for at least three years.",
               "Islay whiskies taste of peat smoke because the barley is dried over peat fires.",
               "Bourbon is an American whiskey made mostly from corn and aged in new charred oak barrels."],
    "moon": ["Apollo 11 landed on the Moon in July 1969 and Neil Armstrong was the first to walk on it.",
             "The Moon's gravity raises tides in Earth's oceans twice a day.",
             "Lunar eclipses happen when Earth's shadow falls on the full Moon."],
    "coffee": ["Espresso forces hot water through finely ground coffee at about nine bars of pressure.",
               "Arabica coffee beans grow best at high altitudes in tropical climates.",
               "A flat white pours steamed milk with little foam over a double shot of espresso."],
    "bread": ["Sourdough rises thanks to wild yeast and lactic acid bacteria in the starter.",
              "Kneading develops gluten, which traps gas and gives bread its structure."],
    "heart": ["The heart pumps blood through two circuits: to the lungs and to the rest of the body.",
              "A resting adult heart beats between sixty and one hundred times a minute."],
    "rust": ["Rust's borrow checker prevents data races at compile time.",
             "Cargo is Rust's build system and package manager."],
    "glacier": ["Glaciers are rivers of ice that flow slowly under their own weight.",
                "Melting glaciers raise sea levels and change river flows downstream."],
    "everest": ["Mount Everest is 8,849 metres tall, the highest peak above sea level.",
                "Climbers on Everest use bottled oxygen above eight thousand metres."],
}
DISTRACTORS = [
    "The museum opens at nine and closes at five on weekdays.",
    "Our quarterly report shows revenue grew in every region.",
    "Bring a raincoat: the forecast calls for showers all afternoon.",
    "The train to the airport leaves every fifteen minutes.",
    "He planted tomatoes, basil and peppers in the garden.",
    "Whisk the eggs with sugar until the mixture is pale.",
    "The chess tournament ended in a draw after five hours.",
    "She practised the violin every evening before dinner.",
]


def build(name, seed_topics, extra_queries):
    corpus, qrels, queries = [], [], []
    for topic, texts in TOPICS.items():
        if topic not in seed_topics:
            continue
        for i, t in enumerate(texts):
            corpus.append({"_id": f"{topic}-{i}", "title": topic.capitalize(), "text": t})
    for i, t in enumerate(DISTRACTORS):
        corpus.append({"_id": f"misc-{i}", "title": "", "text": t})
    corpus.append({"_id": "empty-doc", "title": "Nothing", "text": ""})  # dropped: no text
    for qid, text, rel in extra_queries:
        queries.append({"_id": qid, "text": text})
        for doc, score in rel:
            qrels.append((qid, doc, score))
    d = os.path.join(FIX, name)
    os.makedirs(os.path.join(d, "qrels"), exist_ok=True)
    with open(os.path.join(d, "corpus.jsonl"), "w") as f:
        for c in corpus:
            f.write(json.dumps(c) + "\n")
    with open(os.path.join(d, "queries.jsonl"), "w") as f:
        for q in queries:
            f.write(json.dumps(q) + "\n")
    with open(os.path.join(d, "qrels", "test.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, c, s in qrels:
            f.write(f"{q}\t{c}\t{s}\n")
    return corpus, queries, qrels


def as_evaluator_inputs(corpus, queries, qrels):
    """What the reference evaluator receives: text-only documents, non-empty texts,
    judgements with score > 0 (unknown documents kept, unknown queries ignored)."""
    corpus_dict = {c["_id"]: c["text"] for c in corpus if len(c["text"]) > 0}
    queries_dict = {q["_id"]: q["text"] for q in queries if len(q["text"]) > 0}
    relevant = {}
    for q, c, s in qrels:
        if s > 0:
            relevant.setdefault(q, set()).add(c)
    return corpus_dict, queries_dict, relevant


def evaluate(name, corpus, queries, qrels, model):
    from sentence_transformers.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator

    corpus_dict, queries_dict, relevant = as_evaluator_inputs(corpus, queries, qrels)
    ev = SparseInformationRetrievalEvaluator(queries_dict, corpus_dict, relevant, name=name, batch_size=8,
                                             write_csv=False)
    metrics = ev(model)
    prefix = name + "_"
    clean = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    # The vectors the reference scored, for metric parity on identical inputs.
    q_ids = ev.queries_ids
    q_vec = model.encode_query([queries_dict[q] for q in q_ids], convert_to_tensor=True, convert_to_sparse_tensor=False)
    c_ids = list(corpus_dict)
    c_vec = model.encode_document([corpus_dict[c] for c in c_ids], convert_to_tensor=True, convert_to_sparse_tensor=False)
    with open(os.path.join(REF, f"eval-{name}-vectors.jsonl"), "w") as f:
        for kind, ids, vecs in (("query", q_ids, q_vec), ("doc", c_ids, c_vec)):
            for i, row in zip(ids, vecs):
                idx = torch.nonzero(row).flatten()
                f.write(json.dumps({"kind": kind, "id": i, "indices": idx.tolist(), "values": row[idx].tolist()}) + "\n")
    with open(os.path.join(REF, f"eval-{name}.json"), "w") as f:
        json.dump(clean, f, indent=1, sort_keys=True)
    return ev, clean


def write_parquet_copy(src, dst):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for sub in ("corpus", "queries", "qrels"):
        os.makedirs(os.path.join(dst, sub), exist_ok=True)
    with open(os.path.join(src, "corpus.jsonl")) as f:
        corpus = [json.loads(l) for l in f]
    with open(os.path.join(src, "queries.jsonl")) as f:
        queries = [json.loads(l) for l in f]
    with open(os.path.join(src, "qrels", "test.tsv")) as f:
        rows = [l.rstrip("\n").split("\t") for l in f][1:]
    pq.write_table(pa.table({"_id": [c["_id"] for c in corpus], "text": [c["text"] for c in corpus]}),
                   os.path.join(dst, "corpus", "train-00000-of-00001.parquet"))
    pq.write_table(pa.table({"_id": [q["_id"] for q in queries], "text": [q["text"] for q in queries]}),
                   os.path.join(dst, "queries", "train-00000-of-00001.parquet"))
    # NanoBEIR qrels carry no score: keep the positive judgements only.
    pos = [r for r in rows if float(r[2]) > 0]
    pq.write_table(pa.table({"query-id": [r[0] for r in pos], "corpus-id": [r[1] for r in pos]}),
                   os.path.join(dst, "qrels", "train-00000-of-00001.parquet"))


def main():
    from sentence_transformers import SparseEncoder

    torch.set_num_threads(os.cpu_count() or 1)
    model = SparseEncoder(MODEL, device="cpu")
    small = build("beir-small", set(TOPICS), [
        ("q-whisky", "how long is scotch whisky aged", [("whisky-0", 1), ("whisky-2", 1)]),
        ("q-peat", "why does islay whisky taste smoky", [("whisky-1", 2)]),
        ("q-moon", "who first walked on the moon", [("moon-0", 1)]),
        ("q-tides", "what causes ocean tides", [("moon-1", 1), ("glacier-1", 1)]),
        ("q-espresso", "how is espresso brewed", [("coffee-0", 1), ("coffee-2", 1), ("coffee-1", 0)]),
        ("q-bread", "what makes sourdough rise", [("bread-0", 1), ("bread-1", 1)]),
        ("q-heart", "how many times does the heart beat per minute", [("heart-1", 1)]),
        ("q-rust", "rust package manager", [("rust-1", 1)]),
        ("q-everest", "how tall is everest", [("everest-0", 1), ("everest-1", 1), ("missing-doc", 1)]),
        # Relevant document shares nothing with the query: no hit in the top 10.
        ("q-nohit", "violin practice schedule", [("glacier-0", 1)]),
        ("q-unjudged", "a query nobody judged", []),
        ("q-emptytext", "", [("moon-0", 1)]),
    ])
    # A judgement for a query id that does not exist.
    with open(os.path.join(FIX, "beir-small", "qrels", "test.tsv"), "a") as f:
        f.write("q-ghost\tmoon-0\t1\n")
    small = (small[0], small[1], small[2] + [("q-ghost", "moon-0", 1)])
    other = build("beir-other", {"coffee", "bread", "heart", "glacier"}, [
        ("o-latte", "espresso with steamed milk", [("coffee-2", 1)]),
        ("o-beans", "where do arabica beans grow", [("coffee-1", 1)]),
        ("o-gluten", "why knead dough", [("bread-1", 1)]),
        ("o-ice", "how do glaciers move", [("glacier-0", 1), ("glacier-1", 1)]),
        ("o-blood", "where does the heart pump blood", [("heart-0", 1)]),
    ])
    write_parquet_copy(os.path.join(FIX, "beir-small"), os.path.join(FIX, "nanobeir-small"))
    ev_small, m_small = evaluate("beir-small", *small, model)
    ev_other, m_other = evaluate("beir-other", *other, model)
    # The mean as SparseNanoBEIREvaluator aggregates it.
    mean = {k: (m_small[k] + m_other[k]) / 2 for k in m_small}
    lens_q = [len(ev_small.queries), len(ev_other.queries)]
    lens_c = [len(ev_small.corpus), len(ev_other.corpus)]
    for key in ("query_active_dims", "query_sparsity_ratio", "corpus_active_dims", "corpus_sparsity_ratio"):
        lens = lens_q if key.startswith("query") else lens_c
        mean[key] = (m_small[key] * lens[0] + m_other[key] * lens[1]) / sum(lens)
    q = (ev_small.count_vectors["query"] + ev_other.count_vectors["query"]) / sum(lens_q)
    c = (ev_small.count_vectors["corpus"] + ev_other.count_vectors["corpus"]) / sum(lens_c)
    mean["avg_flops"] = float(torch.dot(q, c))
    with open(os.path.join(REF, "eval-mean.json"), "w") as f:
        json.dump(mean, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
