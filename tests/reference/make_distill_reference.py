#!/usr/bin/env python3
"""Writes the committed references of sparq's distillation losses and SpladeLoss options,
computed with sentence-transformers (the installed one is the reference), fp32 on CPU.

  .venv/bin/python tests/reference/make_distill_reference.py [--out DIR]

Same model and method as make_train_reference.py (models/splade-bert-tiny-nq, eval mode so
dropout is off, SpladePooling left in train mode for its out-of-place log1p, the trainer's data
collator and collect_features, one thread, deterministic algorithms), on one fixed batch of 3
rows with columns (anchor, positive, negative_1, negative_2) and teacher scores, for each case:

  margin_mse_1neg   SparseMarginMSELoss, columns anchor, positive, negative_1; the label column a
                    float per row (the gold margin).
  margin_mse_2neg   SparseMarginMSELoss, 2 negatives; the label a list of 3 teacher scores
                    [pos, neg1, neg2] (turned into margins by the loss).
  kl_default        SparseDistillKLDivLoss() (temperature 2.0), 2 negatives.
  kl_temperatures   SparseDistillKLDivLoss(student_temperature=1.5, teacher_temperature=0.7),
                    and query_regularizer_weight=None (no query term).
  thresholds        SparseMultipleNegativesRankingLoss with document_regularizer_threshold and
                    query_regularizer_threshold set between the rows' active-dimension counts.
  document_only     SparseMultipleNegativesRankingLoss, use_document_regularizer_only=True.

DIR defaults to tests/reference/distill/ and receives:

  reference.json    texts, labels, per case its options, loss components (as SpladeLoss returns
                    them, regularizers already times their weight; total = their sum) and, per
                    parameter, the L2 norm, sum and sum of absolute values of the full gradient.
  grads.safetensors per case, every parameter's gradient, sampled to keep the file small:
                    "<case>/<name>" = the flattened gradient at indices 0, STRIDE, 2*STRIDE, ...;
                    for the (30522 x 128) word embedding "<case>/<WORD>.rows" = the rows with any
                    non-zero gradient (all others are exactly 0) and "<case>/<WORD>.values" = those
                    rows at columns 0, ROW_STRIDE, ... . Keys are BertForMaskedLM state_dict names
                    (the tied decoder weight and bias are summed into the embedding and
                    cls.predictions.bias, as in make_train_reference.py).
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models/splade-bert-tiny-nq")
OUT = os.path.join(ROOT, "tests", "reference", "distill")
PREFIX = "0.model."
WORD = "bert.embeddings.word_embeddings.weight"
STRIDE = 13
ROW_STRIDE = 8
LAMBDA_Q = 2e-3
LAMBDA_D = 1e-3

BATCH = {
    "anchor": [
        "what causes the northern lights",
        "how long should you boil an egg",
        "who invented the printing press",
    ],
    "positive": [
        "The northern lights appear when charged particles from the sun collide with gases in the "
        "upper atmosphere.",
        "For a soft-boiled egg, simmer it for about six minutes; a hard-boiled egg needs ten minutes.",
        "Johannes Gutenberg developed a movable-type printing press in Mainz around 1440.",
    ],
    "negative_1": [
        "The northern part of the country has long winters and dense pine forests.",
        "Eggs are a common source of protein and contain vitamins such as B12.",
        "A hydraulic press uses a fluid-filled cylinder to generate a large force.",
    ],
    "negative_2": [
        "Charged batteries should be stored in a cool, dry place away from sunlight.",
        "Boiling water at altitude takes longer because the air pressure is lower.",
        "The press office published the minister's statement on Tuesday morning.",
    ],
}
# Teacher scores [positive, negative_1, negative_2] per row (cross-encoder-like logits).
TEACHER = [[9.5, 2.25, -1.5], [7.0, 4.5, 3.75], [8.25, 1.0, 0.5]]


def cases():
    from sentence_transformers.sparse_encoder.losses import (
        SparseDistillKLDivLoss,
        SparseMarginMSELoss,
        SparseMultipleNegativesRankingLoss,
    )

    three = ["anchor", "positive", "negative_1"]
    four = three + ["negative_2"]
    margins_1 = [row[0] - row[1] for row in TEACHER]
    return [
        ("margin_mse_1neg", three, margins_1, lambda m: SparseMarginMSELoss(m), {}),
        ("margin_mse_2neg", four, TEACHER, lambda m: SparseMarginMSELoss(m), {}),
        ("kl_default", four, TEACHER, lambda m: SparseDistillKLDivLoss(m), {}),
        (
            "kl_temperatures",
            four,
            TEACHER,
            lambda m: SparseDistillKLDivLoss(m, student_temperature=1.5, teacher_temperature=0.7),
            {"query_regularizer_weight": None},
        ),
        ("thresholds", three, None, lambda m: SparseMultipleNegativesRankingLoss(m), "thresholds"),
        (
            "document_only",
            three,
            None,
            lambda m: SparseMultipleNegativesRankingLoss(m),
            {"use_document_regularizer_only": True, "query_regularizer_weight": None},
        ),
    ]


def load_model():
    from sentence_transformers import SparseEncoder

    model = SparseEncoder(MODEL, device="cpu")
    model.eval()
    model[1].train()  # SpladePooling: out-of-place log1p (same function)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def features_of(model, columns, labels):
    from sentence_transformers.base.trainer import BaseTrainer
    from sentence_transformers.sparse_encoder.data_collator import SparseEncoderDataCollator

    collator = SparseEncoderDataCollator(preprocess_fn=model.preprocess, router_mapping={}, prompts=None)
    rows = []
    for i in range(len(BATCH["anchor"])):
        row = {c: BATCH[c][i] for c in columns}
        if labels is not None:
            row["label"] = labels[i]
        rows.append(row)
    features, label_tensor = BaseTrainer.collect_features(None, collator(rows))
    assert len(features) == len(columns)
    return features, label_tensor


def active_counts(model, features):
    with torch.no_grad():
        return [(model(dict(f))["sentence_embedding"] != 0).sum(dim=1).tolist() for f in features]


def main():
    from sentence_transformers.sparse_encoder.losses import SpladeLoss

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    model = load_model()
    params = [(n[len(PREFIX):], p) for n, p in model.named_parameters()]
    tensors, refs = {}, []
    for name, columns, labels, make_loss, options in cases():
        features, label_tensor = features_of(model, columns, labels)
        if options == "thresholds":
            counts = active_counts(model, features)
            q, d = sorted(counts[0]), sorted(x for c in counts[1:] for x in c)
            # Between two counts, so that some rows are kept and some dropped by each regularizer.
            options = {
                "query_regularizer_threshold": (q[0] + q[1]) // 2,
                "document_regularizer_threshold": (d[len(d) // 2 - 1] + d[len(d) // 2]) // 2,
            }
            counts_ref = counts
        else:
            counts_ref = None
        kwargs = {"document_regularizer_weight": LAMBDA_D, "query_regularizer_weight": LAMBDA_Q, **options}
        loss = SpladeLoss(model, loss=make_loss(model), **kwargs)
        model.zero_grad(set_to_none=True)
        parts = loss(features, label_tensor)
        total = torch.stack(list(parts.values())).sum()
        total.backward()
        stats = {}
        for n, p in params:
            g = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            stats[n] = {"norm": float(g.double().norm()), "sum": float(g.double().sum()),
                        "abs_sum": float(g.double().abs().sum())}
            if n == WORD:
                rows = torch.nonzero(g.abs().sum(dim=1) != 0).flatten()
                tensors[f"{name}/{n}.rows"] = rows.to(torch.int64).contiguous()
                tensors[f"{name}/{n}.values"] = g[rows][:, ::ROW_STRIDE].contiguous()
            else:
                tensors[f"{name}/{n}"] = g.flatten()[::STRIDE].contiguous()
        ref = {
            "name": name,
            "columns": columns,
            "labels": labels,
            "loss": type(loss.loss).__name__,
            "options": {k: v for k, v in kwargs.items()},
            "loss_config": loss.loss.get_config_dict(),
            "total": float(total),
            "components": {k: float(v) for k, v in parts.items()},
            "gradient_stats": stats,
        }
        if counts_ref is not None:
            ref["active_dims"] = counts_ref
        refs.append(ref)
        print(name, {k: round(float(v), 6) for k, v in parts.items()})

    out = {
        "model": "models/splade-bert-tiny-nq",
        "batch": BATCH,
        "teacher_scores": TEACHER,
        "stride": STRIDE,
        "row_stride": ROW_STRIDE,
        "word_embedding_key": WORD,
        "cases": refs,
        "versions": {
            "torch": torch.__version__,
            "sentence_transformers": __import__("sentence_transformers").__version__,
        },
    }
    save_file(tensors, os.path.join(a.out, "grads.safetensors"),
              metadata={"what": "sampled fp32 gradients of the total loss per case"})
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(a.out, x)) for x in os.listdir(a.out))
    print(f"wrote {a.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
