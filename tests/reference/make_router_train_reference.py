#!/usr/bin/env python3
"""Writes the committed references for training an inference-free Router model, computed with
sentence-transformers 6.2 (the installed one is the reference), fp32 on CPU.

  .venv/bin/python tests/reference/make_router_train_reference.py [--out DIR]

The model is tests/fixtures/models/router-static (query route: SparseStaticEmbedding; document
route: BERT MLMTransformer + SpladePooling) with its static weights made trainable: the fixture
saves `"frozen": true`, so the script copies it to target/router-train-model/ and writes
`{"frozen": false}` into the static route's config.json (the Rust tests do the same).

DIR defaults to tests/reference/train-router/ and receives:

  reference.json          the 2 batches (texts of tests/reference/make_train_reference.py), the
                          router_mapping, per batch the SpladeLoss parts, and the optimizer run
                          (learning_rate_mapping, per-step learning rates of every group, gradient
                          norms before clipping, which parameters skip weight decay).
  grads-<b>.safetensors   for batch b = 0, 1: the gradient of the total loss at the original weights
                          of every parameter, keyed by sparq's names (below).
  optimizer-only-4-steps.safetensors  the parameters after 4 optimizer steps fed the stored
                          gradients of batches [0, 1, 0, 1] (not recomputed at the moved weights):
                          clipping, AdamW, the decay groups, learning_rate_mapping's groups and the
                          linear schedule with warm-up, on exact inputs.

Loss, as SparseEncoderTrainer computes it for the inference-free setup:
  SpladeLoss(model, SparseMultipleNegativesRankingLoss(model), document_regularizer_weight=3e-5,
             query_regularizer_weight=None)   # document regularizer only
  total = torch.stack(parts.values()).sum(). Columns are tokenized by the trainer's data collator
  with router_mapping {"anchor": "query", "positive": "document", "negative": "document"}: the
  anchors go through SparseStaticEmbedding (tokenized without special tokens, presence · weight),
  the other columns through the MLM route. Dropout off (eval mode; SpladePooling left in train
  mode, whose forward is the same function without the in-place log1p autograd rejects).

Optimizer: the real SparseEncoderTrainer (optim "adamw_torch", the single-tensor AdamW) builds
its optimizer and scheduler with create_optimizer_and_scheduler(4): learning_rate 1e-3,
weight_decay 0.01, warmup_steps 1, learning_rate_mapping LR_MAPPING (patterns searched in the
trainer's parameter names, `model.0.sub_modules.<route>.<i>....`). Each step: gradients set,
clip_grad_norm_(all parameters, 1.0), optimizer.step(), lr_scheduler.step().

sparq's names: the static weight is `<route module folder>.weight`
(`query_0_SparseStaticEmbedding.weight`), the MLM parameters their Hugging Face state-dict names
(`bert.encoder...`, the decoder tied to the word embeddings, listed once).
"""
import argparse
import importlib.util
import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "models", "router-static")
MODEL = os.path.join(ROOT, "target", "router-train-model")
OUT = os.path.join(ROOT, "tests", "reference", "train-router")

LAMBDA_D = 3e-5
LR = 1e-3
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
TOTAL_STEPS = 4
WARMUP_STEPS = 1
ORDER = [0, 1, 0, 1]
ROUTER_MAPPING = {"anchor": "query", "positive": "document", "negative": "document"}
LR_MAPPING = {r"sub_modules\.query\.": 1e-2, r"predictions\.transform": 3e-3}
STATIC = "query_0_SparseStaticEmbedding"
STATIC_PREFIX = "0.sub_modules.query.0."
MLM_PREFIX = "0.sub_modules.document.0.model."
COLUMNS = ["anchor", "positive", "negative"]


def batches():
    spec = importlib.util.spec_from_file_location(
        "make_train_reference", os.path.join(ROOT, "tests", "reference", "make_train_reference.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BATCHES


def prepare_model():
    if os.path.exists(MODEL):
        shutil.rmtree(MODEL)
    shutil.copytree(FIXTURE, MODEL)
    with open(os.path.join(MODEL, STATIC, "config.json"), "w") as f:
        json.dump({"frozen": False}, f, indent=4)


def load():
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    model = SparseEncoder(MODEL, device="cpu")
    model.eval()
    model[0].sub_modules["document"][1].train()
    loss = SpladeLoss(
        model,
        loss=SparseMultipleNegativesRankingLoss(model),
        document_regularizer_weight=LAMBDA_D,
        query_regularizer_weight=None,
    )
    return model, loss


def sparq_name(name):
    if name.startswith(STATIC_PREFIX):
        return STATIC + "." + name[len(STATIC_PREFIX):]
    assert name.startswith(MLM_PREFIX), name
    return name[len(MLM_PREFIX):]


def features_of(model, batch):
    from sentence_transformers.base.trainer import BaseTrainer
    from sentence_transformers.sparse_encoder.data_collator import SparseEncoderDataCollator

    collator = SparseEncoderDataCollator(preprocess_fn=model.preprocess, router_mapping=ROUTER_MAPPING, prompts=None)
    rows = [{c: batch[c][i] for c in COLUMNS} for i in range(len(batch["anchor"]))]
    features, labels = BaseTrainer.collect_features(None, collator(rows))
    assert len(features) == 3 and labels is None
    return features


def trainer_for(model, loss, out_dir):
    from datasets import Dataset
    from sentence_transformers import SparseEncoderTrainer, SparseEncoderTrainingArguments

    args = SparseEncoderTrainingArguments(
        output_dir=out_dir,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=WARMUP_STEPS,
        max_steps=TOTAL_STEPS,
        max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        router_mapping=ROUTER_MAPPING,
        learning_rate_mapping=LR_MAPPING,
        report_to="none",
        use_cpu=True,
    )
    data = Dataset.from_dict({c: ["a", "b"] for c in COLUMNS})
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss)
    trainer.create_optimizer_and_scheduler(num_training_steps=TOTAL_STEPS)
    return trainer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=OUT)
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    prepare_model()
    model, loss = load()
    named = [(sparq_name(n), p) for n, p in model.named_parameters()]
    assert all(p.requires_grad for _, p in named)
    data = batches()

    per_batch, grads = [], []
    for b, batch in enumerate(data):
        model.zero_grad(set_to_none=True)
        parts = loss(features_of(model, batch), None)
        assert "query_regularizer_loss" not in parts
        total = torch.stack(list(parts.values())).sum()
        total.backward()
        g = {n: p.grad.detach().clone().contiguous() for n, p in named}
        assert g[STATIC + ".weight"].abs().sum() > 0 and g["cls.predictions.bias"].abs().sum() > 0
        grads.append(g)
        save_file(g, os.path.join(out, f"grads-{b}.safetensors"))
        per_batch.append(
            {
                **{c: batch[c] for c in COLUMNS},
                "loss": float(total),
                "base_loss": float(parts["base_loss"]),
                "document_regularizer_loss": float(parts["document_regularizer_loss"]),
            }
        )
    model.zero_grad(set_to_none=True)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_for(model, loss, tmp)
        optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
        names = {id(p): n for n, p in named}
        groups = [
            {
                "params": [names[id(p)] for p in g["params"]],
                "lr": g["initial_lr"],
                "weight_decay": g["weight_decay"],
            }
            for g in optimizer.param_groups
            if g["params"]
        ]
        lrs, norms = [], []
        for step, b in enumerate(ORDER):
            lrs.append([g["lr"] for g in optimizer.param_groups if g["params"]])
            for n, p in named:
                p.grad = grads[b][n].clone()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)))
            optimizer.step()
            scheduler.step()
    after = {n: p.detach().clone().contiguous() for n, p in named}
    save_file(after, os.path.join(out, f"optimizer-only-{TOTAL_STEPS}-steps.safetensors"))
    reference = {
        "model": "tests/fixtures/models/router-static with config.json of the static route {\"frozen\": false}",
        "router_mapping": ROUTER_MAPPING,
        "lambda_query": 0.0,
        "lambda_document": LAMBDA_D,
        "batches": per_batch,
        "optimizer": {
            "learning_rate": LR,
            "learning_rate_mapping": [[k, v] for k, v in LR_MAPPING.items()],
            "weight_decay": WEIGHT_DECAY,
            "max_grad_norm": MAX_GRAD_NORM,
            "total_steps": TOTAL_STEPS,
            "warmup_steps": WARMUP_STEPS,
            "order": ORDER,
            "groups": groups,
            "group_lrs_per_step": lrs,
            "grad_norms_before_clipping": norms,
        },
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    print(json.dumps({"losses": [b["loss"] for b in per_batch], "norms": norms, "lrs": lrs}))


if __name__ == "__main__":
    main()
