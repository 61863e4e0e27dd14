#!/usr/bin/env python3
"""Writes the committed training references for sparq's Rust training tests, computed with
sentence-transformers (the installed one is the reference), fp32 on CPU.

  .venv/bin/python tests/reference/make_train_reference.py [--out DIR]

DIR defaults to tests/reference/train/ and receives:

  reference.json           the texts of 2 fixed batches of 4 (anchor, positive, negative) triplets,
                           per batch the SpladeLoss components and active-dimension counts, and the
                           optimizer run (losses, gradient norms, which parameters skip weight decay).
  grads-<b>.safetensors    for batch b = 0, 1: the fp32 gradient of the total loss at the original
                           weights, for every parameter of the BertForMaskedLM, keyed by its
                           Hugging Face state_dict name (see "Tensor layout" below).
  after-3-steps.safetensors  the parameters after 3 AdamW steps on batches [0, 1, 0].
  optimizer-only-3-steps.safetensors  the parameters after the same 3 optimizer steps fed the
                           stored gradients grads-0, grads-1, grads-0 (not recomputed at the
                           moved weights): tests clipping + AdamW + decay groups on exact inputs.

Tolerances: the gradients are well conditioned (compare relative to each tensor's largest
entry). after-3-steps is not, by nature of Adam: its first steps move each entry by about
lr * sign(g), so entries whose gradient is near zero or pure rounding noise (the attention key
biases have a true gradient of exactly 0; batch 0's ranking gradient is 1 - softmax ~ 1e-4
computed in fp32) move up to lr per step either way. reference.json's optimizer.sensitivity
records, per tensor, how far float64 and fused-AdamW reruns land from the fp32 file: compare
after-3-steps by the fraction of entries within 1e-5 plus a max bound of a few lr, and
optimizer-only-3-steps tightly.

Loss, exactly as SparseEncoderTrainer computes it (sentence_transformers.base.trainer.compute_loss):
  SpladeLoss(model, SparseMultipleNegativesRankingLoss(model) [scale 1, dot product],
             document_regularizer_weight=3e-5, query_regularizer_weight=5e-5)
  which returns {"base_loss", "document_regularizer_loss", "query_regularizer_loss"}; both
  regularizer entries already include their lambda. total = torch.stack(values).sum().
  FLOPS(E) = sum_j (mean_i E_ij)^2 over the rows of E; the query term uses the B anchor vectors,
  the document term the 2B positive+negative vectors concatenated (positives first).
  base_loss = mean_i [ logsumexp_j(q_i . d_j) - q_i . p_i ] over the 2B documents [pos; neg].
  Each column is tokenized like the trainer's data collator does: model.preprocess(texts,
  prompt=None, task=None) (no prompts, no router), i.e. the tokenizer with padding to the
  longest text of that column and truncation to max_seq_length (256). As in
  sentence_transformers.base.losses.merged_forward.embed_columns, the anchor column gets its own
  forward pass and the positive and negative columns share one forward pass (zero-padded to
  the wider of the two); this only changes results by float rounding.

Dropout is off: the model is in eval() mode, except SpladePooling, which is left in train()
mode because its eval path applies log1p in place on the ReLU output, which autograd rejects
("modified by an inplace operation"); both modes compute the same function.

Tensor layout of the .safetensors files: keys are BertForMaskedLM state_dict names. The decoder
weight is tied to bert.embeddings.word_embeddings.weight and the decoder bias to
cls.predictions.bias, so neither cls.predictions.decoder.* key appears: the gradient stored under
the embedding (and bias) name is the sum over both uses. Note that nn.Embedding(padding_idx=0)
gives the [PAD] row no gradient from the lookup; it still gets one from the decoder.
The (30522 x 128) word embedding is stored by rows to keep the files small:
  <name>.rows   int64 [R]     row ids, ascending
  <name>.values float32 [R, 128]
  in grads-<b>: the rows with any non-zero gradient; every other row's gradient is exactly 0.
  in after-3-steps and optimizer-only-3-steps: the rows with a non-zero gradient in any of the
  3 steps (so the two files list different rows); every other row
  equals the original row multiplied by float32(1 - lr * weight_decay) once per step (AdamW's
  decoupled decay with a zero Adam update), which the script checks bit for bit.
All other parameters are stored whole under their own name.

Optimizer run: from the original weights, for batch in [0, 1, 0]: zero grads, total loss,
backward, g = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) (the pre-clip L2 norm over
all parameters, recorded), torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8) step. Weight
decay 0.01 except for the parameters that transformers' Trainer.get_decay_parameter_names
excludes (LayerNorm modules and any name containing "bias", "layernorm", "rmsnorm", "norm" as
a name component, or "_norm"); those get 0 and are listed in reference.json. Constant lr, lambdas
fixed at their final values (no SpladeRegularizerWeightSchedulerCallback ramp). AdamW is
torch's default single-tensor CPU implementation (the Trainer itself defaults to fused=True,
"adamw_torch_fused"; both implement the same update up to rounding).
"""
import argparse
import json
import os

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_REL = "models/splade-bert-tiny-nq"
MODEL = os.path.join(ROOT, MODEL_REL)
OUT = os.path.join(ROOT, "tests", "reference", "train")

LAMBDA_Q = 5e-5
LAMBDA_D = 3e-5
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
ORDER = [0, 1, 0]
PREFIX = "0.model."  # SparseEncoder module path of the BertForMaskedLM
WORD = "bert.embeddings.word_embeddings.weight"
# The parameters the Rust tests were asked to check at least; every parameter is stored anyway.
REQUESTED = [
    "bert.embeddings.LayerNorm.weight",
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.1.output.dense.weight",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.bias",
    WORD,
]

BATCHES = [
    {
        "anchor": [
            "what causes the northern lights in the sky",
            "how long should you boil an egg",
            "who invented the printing press in europe",
            "why do cats purr when they are happy",
        ],
        "positive": [
            "The northern lights, or aurora borealis, appear when charged particles from the sun collide "
            "with gases in the upper atmosphere. Oxygen emits green and red light, while nitrogen produces "
            "blue and purple hues near the magnetic poles.",
            "For a soft-boiled egg with a runny yolk, simmer it for about six minutes. A hard-boiled egg "
            "needs ten to twelve minutes, after which it should be cooled in ice water so the shell peels "
            "off easily.",
            "Johannes Gutenberg, a goldsmith from Mainz, developed a movable-type printing press around "
            "1440. His invention made books far cheaper to produce and helped spread literacy and new "
            "ideas across Europe.",
            "Cats purr by rapidly twitching the muscles of the larynx as they breathe in and out. Purring "
            "often signals contentment, but cats also purr when stressed or injured, possibly because the "
            "vibration aids healing.",
        ],
        "negative": [
            "The northern part of the country is known for its long winters, dense pine forests and small "
            "fishing villages. Tourists often visit in summer, when the days are long and the lakes are "
            "warm enough for swimming.",
            "Eggs are a common source of protein and contain vitamins such as B12 and D. Chickens typically "
            "lay one egg per day, and the colour of the shell depends on the breed of the hen rather than "
            "its diet.",
            "A hydraulic press uses a fluid-filled cylinder to generate a large compressive force. It is "
            "widely used in metal forming, car crushing and the manufacture of plastic parts in modern "
            "factories.",
            "Dogs wag their tails to communicate with people and other animals. A loose, wide wag usually "
            "means the dog is relaxed, whereas a stiff, high wag can be a sign of alertness or even "
            "aggression.",
        ],
    },
    {
        "anchor": [
            "what is the boiling point of water at altitude",
            "how do vaccines train the immune system",
            "when did humans first land on the moon",
            "best way to store fresh basil leaves",
        ],
        "positive": [
            "Water boils at a lower temperature at high altitude because the air pressure is lower. At "
            "about 3,000 metres above sea level it boils near 90 degrees Celsius, so pasta and rice take "
            "longer to cook.",
            "A vaccine exposes the immune system to a harmless piece or weakened form of a pathogen. The "
            "body produces antibodies and memory cells, so it can recognise and fight the real infection "
            "quickly in the future.",
            "The first crewed moon landing took place on 20 July 1969, when the Apollo 11 lunar module "
            "touched down in the Sea of Tranquility. Neil Armstrong and Buzz Aldrin walked on the surface "
            "while Michael Collins orbited above.",
            "Fresh basil keeps best at room temperature with its stems in a glass of water, loosely covered "
            "with a plastic bag. Refrigeration turns the leaves black, so only chill basil if you plan to "
            "use it within a day.",
        ],
        "negative": [
            # Hard negatives that share the query's words: this batch is ranking-dominated (base loss
            # ~2, one triplet near 50/50), where batch 0 is regularizer-dominated (base loss ~1e-4).
            "Water at sea level boils at 100 degrees Celsius. In a pressure cooker the sealed pot raises "
            "the pressure, so the water stays liquid well above its normal boiling point and food cooks "
            "faster.",
            "The immune system can be weakened by stress, poor sleep and some medicines. Vaccines cannot "
            "train it to fight every illness, and people with immune disorders should ask a doctor before "
            "travelling abroad.",
            "The far side of the moon was first photographed in 1959, when a Soviet probe sent back blurry "
            "pictures of its cratered surface. No spacecraft touched down there until the Chinese Chang'e 4 "
            "mission in 2019.",
            "Dried basil leaves lose their flavour after a few months, so the best way to store them is in "
            "an airtight jar away from heat and light. Fresh basil tastes stronger than dried.",
        ],
    },
]
COLUMNS = ["anchor", "positive", "negative"]


def load():
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    model = SparseEncoder(MODEL, device="cpu")
    model.eval()  # dropout off
    model[1].train()  # SpladePooling: out-of-place log1p so autograd works (same function)
    for p in model.parameters():
        p.requires_grad_(True)
    loss = SpladeLoss(
        model,
        loss=SparseMultipleNegativesRankingLoss(model),
        document_regularizer_weight=LAMBDA_D,
        query_regularizer_weight=LAMBDA_Q,
    )
    return model, loss


def features_of(model, batch):
    """Tokenize the batch the way SparseEncoderTrainer does: its data collator, then collect_features."""
    from sentence_transformers.base.trainer import BaseTrainer
    from sentence_transformers.sparse_encoder.data_collator import SparseEncoderDataCollator

    collator = SparseEncoderDataCollator(preprocess_fn=model.preprocess, router_mapping={}, prompts=None)
    rows = [{c: batch[c][i] for c in COLUMNS} for i in range(len(batch["anchor"]))]
    inputs = collator(rows)
    features, labels = BaseTrainer.collect_features(None, inputs)
    assert len(features) == 3 and labels is None
    return features


def loss_components(model, loss, batch):
    """Returns (total, components dict, per-column features), as the trainer's compute_loss does."""
    features = features_of(model, batch)
    parts = loss(features, None)
    total = torch.stack(list(parts.values())).sum()
    return total, parts, features


def hf_name(name):
    assert name.startswith(PREFIX), name
    return name[len(PREFIX):]


def named_params(model):
    # named_parameters() lists a tied parameter once, under its first name (the embedding).
    return [(hf_name(n), p) for n, p in model.named_parameters()]


def f64(t):
    return float(t.detach().double().item())


def embeddings_of(model, features):
    with torch.no_grad():
        return [model(dict(f))["sentence_embedding"] for f in features]


def flops(e):
    return torch.sum(torch.mean(e, dim=0) ** 2)


def make_optimizer(params, decay_names, fused=False):
    """The Trainer's two groups (sentence_transformers BaseTrainer.get_optimizer_cls_and_kwargs)."""
    groups = [
        {"params": [p for n, p in params if n in decay_names], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in params if n not in decay_names], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, fused=fused or None)


def train(decay_names, dtype=torch.float32, fused=False, fixed_grads=None):
    """Steps on ORDER from freshly loaded weights: zero grads, loss + backward (or the given
    gradients), clip_grad_norm_(all parameters, 1.0), AdamW step."""
    model, loss = load()
    model.to(dtype)
    params = named_params(model)
    optimizer = make_optimizer(params, decay_names, fused)
    word = dict(params)[WORD]
    touched = torch.zeros(word.shape[0], dtype=torch.bool)
    losses, norms = [], []
    for step, b in enumerate(ORDER):
        optimizer.zero_grad(set_to_none=True)
        if fixed_grads is None:
            total, _, _ = loss_components(model, loss, BATCHES[b])
            total.backward()
            losses.append(f64(total))
        else:
            for n, p in params:
                p.grad = fixed_grads[step][n].to(dtype).clone()
        touched |= word.grad.abs().sum(dim=1) != 0
        norms.append(f64(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)))
        optimizer.step()
    return {"params": params, "losses": losses, "norms": norms, "touched": touched}


def param_tensors(run, original, check_decay=True):
    """fp32 parameters keyed by HF name, the word embedding by the rows any step had a gradient
    for; checks that every other row is the original decayed once per step."""
    tensors = {}
    touched = run["touched"]
    for n, p in run["params"]:
        v = p.detach().float().clone()
        if n == WORD:
            if check_decay:
                factor = torch.tensor(1 - LR * WEIGHT_DECAY, dtype=torch.float32)
                expect = original[n].clone()
                for _ in ORDER:
                    expect = expect * factor
                assert torch.equal(v[~touched], expect[~touched]), "untouched rows are not pure decay"
            rows = torch.nonzero(touched).flatten()
            tensors[n + ".rows"] = rows.to(torch.int64).contiguous()
            tensors[n + ".values"] = v[rows].contiguous()
        else:
            tensors[n] = v.contiguous()
    return tensors


def stored_grads(path, original):
    """A grads-<b>.safetensors file back as full gradients keyed by HF name."""
    t = load_file(path)
    grads = {n: t[n] for n in original if n != WORD}
    full = torch.zeros_like(original[WORD])
    full[t[WORD + ".rows"]] = t[WORD + ".values"]
    grads[WORD] = full
    return grads


def compare(ref, other):
    out = {}
    for k, v in ref.items():
        if k.endswith(".rows"):
            continue
        o = other[k]
        if k.endswith(".values"):  # align rows: other may have touched a different row set
            name = k[: -len(".values")]
            pos = {int(r): i for i, r in enumerate(other[name + ".rows"])}
            keep = [i for i, r in enumerate(ref[name + ".rows"].tolist()) if r in pos]
            o = o[[pos[r] for r in ref[name + ".rows"][keep].tolist()]]
            v = v[keep]
        d = (o.double() - v.double()).abs()
        out[k] = {"max_abs_diff": float(d.max()), "fraction_over_1e-5": float((d > 1e-5).double().mean())}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one summation order, run to run

    texts = [t for b in BATCHES for c in COLUMNS for t in b[c]]
    assert len(texts) == 24 and len(set(texts)) == 24, "all texts must be distinct"

    model, loss = load()
    params = named_params(model)
    names = [n for n, _ in params]
    assert WORD in names and "cls.predictions.decoder.weight" not in names
    state = model[0].auto_model.state_dict()
    assert state["cls.predictions.decoder.weight"].data_ptr() == state[WORD].data_ptr(), "decoder not tied"
    assert state["cls.predictions.decoder.bias"].data_ptr() == state["cls.predictions.bias"].data_ptr()
    original = {n: p.detach().clone() for n, p in params}

    # ---- gradients at the original weights, one batch at a time ----
    batch_refs = []
    for b, batch in enumerate(BATCHES):
        model.zero_grad(set_to_none=True)
        total, parts, features = loss_components(model, loss, batch)
        total.backward()
        tensors = {}
        for n, p in params:
            g = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            if n == WORD:
                rows = torch.nonzero(g.abs().sum(dim=1) != 0).flatten()
                tensors[n + ".rows"] = rows.to(torch.int64).contiguous()
                tensors[n + ".values"] = g[rows].contiguous()
            else:
                tensors[n] = g.contiguous()
        save_file(tensors, os.path.join(a.out, f"grads-{b}.safetensors"),
                  metadata={"what": f"fp32 gradient of the total loss on batch {b}"})

        q, pos, neg = embeddings_of(model, features)
        docs = torch.cat([pos, neg])
        q_flops, d_flops = flops(q), flops(docs)
        # FLOPS definition check: SpladeLoss's regularizer terms are lambda * sum_j mean_i(E_ij)^2.
        assert torch.allclose(parts["query_regularizer_loss"], LAMBDA_Q * q_flops, rtol=1e-4, atol=0)
        assert torch.allclose(parts["document_regularizer_loss"], LAMBDA_D * d_flops, rtol=1e-4, atol=0)
        scores = q @ docs.T
        base = (torch.logsumexp(scores, dim=1) - scores.diagonal()).mean()
        assert torch.allclose(parts["base_loss"], base, rtol=1e-4, atol=1e-6)
        batch_refs.append({
            **{c: batch[c] for c in COLUMNS},
            "loss": f64(total),
            "base_loss": f64(parts["base_loss"]),
            "query_regularizer_loss": f64(parts["query_regularizer_loss"]),
            "document_regularizer_loss": f64(parts["document_regularizer_loss"]),
            "query_flops": f64(q_flops),
            "document_flops": f64(d_flops),
            "query_active_dims": f64((q != 0).sum(dim=1).double().mean()),
            "document_active_dims": f64((docs != 0).sum(dim=1).double().mean()),
            "word_embedding_rows_with_gradient": int(tensors[WORD + ".rows"].numel()),
            # q_i . d_j, documents in [positives; negatives] order (the logits of the ranking loss).
            "scores": [[float(x) for x in row] for row in scores.tolist()],
        })
        print(f"batch {b}: loss {batch_refs[-1]['loss']:.6f} base {batch_refs[-1]['base_loss']:.6f} "
              f"q_reg {batch_refs[-1]['query_regularizer_loss']:.6g} "
              f"d_reg {batch_refs[-1]['document_regularizer_loss']:.6g}")

    # ---- 3 AdamW steps from the original weights ----
    from transformers import Trainer

    decay_names = {hf_name(n[len("model."):]) for n in Trainer.get_decay_parameter_names(None, loss)
                   if n.startswith("model." + PREFIX)}
    no_decay = [n for n in names if n not in decay_names]
    max_seq_length = model.max_seq_length
    del model, loss, params

    run = train(decay_names)
    for b, l, g in zip(ORDER, run["losses"], run["norms"]):
        print(f"step on batch {b}: loss {l:.6f} grad norm {g:.6f}")
    after = param_tensors(run, original)
    save_file(after, os.path.join(a.out, "after-3-steps.safetensors"),
              metadata={"what": f"fp32 parameters after AdamW steps on batches {ORDER}"})

    # The same 3 optimizer steps fed the stored gradients (grads-0, grads-1, grads-0) instead of
    # recomputing them: a well-conditioned test of clipping + AdamW + decay groups alone.
    stored = [stored_grads(os.path.join(a.out, f"grads-{b}.safetensors"), original) for b in ORDER]
    fixed = train(decay_names, fixed_grads=stored)
    save_file(param_tensors(fixed, original), os.path.join(a.out, "optimizer-only-3-steps.safetensors"),
              metadata={"what": f"fp32 parameters after AdamW steps with the stored gradients of batches {ORDER}"})

    # How much after-3-steps moves under changes that should not matter: AdamW's first steps are
    # close to lr * sign(g), so entries whose gradient is near 0 or pure rounding noise (e.g. the
    # attention key biases, whose true gradient is 0) move by up to lr per step either way.
    sensitivity = {}
    for label, kwargs in [("float64", {"dtype": torch.float64}), ("fused_adamw", {"fused": True})]:
        other = param_tensors(train(decay_names, **kwargs), original, check_decay=False)
        sensitivity[label] = compare(after, other)
        worst = max(sensitivity[label].values(), key=lambda x: x["max_abs_diff"])
        print(f"sensitivity vs {label}: max |diff| {worst['max_abs_diff']:.3g}")

    ref = {
        "model": MODEL_REL,
        "lambda_query": LAMBDA_Q,
        "lambda_document": LAMBDA_D,
        "max_seq_length": max_seq_length,
        "requested_parameters": REQUESTED,
        "word_embedding_key": WORD,
        "batches": batch_refs,
        "optimizer": {
            "name": "torch.optim.AdamW (single-tensor CPU implementation)",
            "lr": LR,
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": WEIGHT_DECAY,
            "max_grad_norm": MAX_GRAD_NORM,
            "no_decay": no_decay,
            "order": ORDER,
            "losses": run["losses"],
            "grad_norms_before_clipping": run["norms"],
            "word_embedding_rows_updated": int(run["touched"].sum()),
            "optimizer_only": {
                "file": "optimizer-only-3-steps.safetensors",
                "gradients": [f"grads-{b}.safetensors" for b in ORDER],
                "grad_norms_before_clipping": fixed["norms"],
                "word_embedding_rows_updated": int(fixed["touched"].sum()),
            },
            # after-3-steps recomputed in float64 / with fused AdamW, against the fp32 file: per
            # tensor, the largest |diff| and the fraction of entries that differ by more than 1e-5.
            "sensitivity": sensitivity,
        },
        "versions": {
            "torch": torch.__version__,
            "sentence_transformers": __import__("sentence_transformers").__version__,
            "transformers": __import__("transformers").__version__,
        },
    }
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    for x in os.listdir(a.out):
        os.chmod(os.path.join(a.out, x), 0o644)
    total_size = sum(os.path.getsize(os.path.join(a.out, x)) for x in os.listdir(a.out))
    print(f"wrote {a.out} ({total_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
