#!/usr/bin/env python3
"""Writes the ModernBERT SPLADE fixture and its reference vectors (sentence-transformers, fp32, CPU).

  make_modernbert_reference.py fixtures
      A random-weight ModernBertForMaskedLM SparseEncoder (v6 layout: Transformer +
      SpladePooling, saved with SparseEncoder.save) in tests/fixtures/models/modernbert-tiny:
      hidden 32, 4 layers with global_attn_every_n_layers 3 (layers 0 and 3 global, 1 and 2
      sliding-window), local_attention 16 (|i - j| <= 8) and max_seq_length 96, so most texts
      run past the window. Its tokenizer is a byte-level BPE trained here on the repository's
      README.md with ModernBERT's special tokens and [CLS] $A [SEP] template, saved through
      transformers' PreTrainedTokenizerFast (as ModernBERT ships it). The decoder bias is
      shifted so documents get ~60 active dims. References for tests/fixtures/texts.jsonl plus
      tests/fixtures/modernbert-texts.jsonl (multilingual and long texts) go to
      tests/reference/modernbert-{documents,queries}.jsonl, and the token ids transformers
      gives each text to tests/reference/modernbert-token-ids.jsonl. Outputs are committed:
      tests need no Python. Rerun from the repository root with the reference environment:
          .venv/bin/python tests/reference/make_modernbert_reference.py fixtures

  make_modernbert_reference.py base OUT_DIR
      A ModernBERT-base-size SPLADE model (22 layers, hidden 768, intermediate 1152, 12 heads,
      vocab 50,368, global_attn_every_n_layers 3, local_attention 128, random weights, seed
      1234, decoder bias shifted to ~150 active dims, max_seq_length 256) in OUT_DIR/model, for
      bench/run.sh. Its byte-level BPE tokenizer is trained on CPython's pydoc topics, the
      source of the benchmark corpus, so token counts are realistic (the text yields ~9,200
      tokens of the 50,280 asked for; the vocabulary projection is the model's 50,368 rows
      either way). Too large to commit; about 2.5 minutes on 2 cores.
"""
import json
import os
import shutil
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF = os.path.join(ROOT, "tests", "reference")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "models", "modernbert-tiny")
TEXT_FILES = [os.path.join(ROOT, "tests", "fixtures", f) for f in ("texts.jsonl", "modernbert-texts.jsonl")]
# ModernBERT's added tokens (answerdotai/ModernBERT-base tokenizer.json), in its order.
SPECIALS = ["|||IP_ADDRESS|||", "<|padding|>", "<|endoftext|>", "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def load_texts():
    texts = []
    for path in TEXT_FILES:
        with open(path, encoding="utf8") as f:
            texts.extend(json.loads(line) for line in f)
    return texts


def write_vectors(path, dense):
    with open(path, "w") as f:
        for row in dense:
            idx = torch.nonzero(row).flatten()
            f.write(json.dumps({"indices": idx.tolist(), "values": row[idx].tolist()}) + "\n")


def readme_lines():
    with open(os.path.join(ROOT, "README.md"), encoding="utf8") as f:
        return f.read().split("\n")


def build_tokenizer(out_dir, vocab_size, corpus):
    """Trains a byte-level BPE on `corpus` (lines of text) and saves it as transformers saves
    ModernBERT's."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens([AddedToken(t, lstrip=(t == "[MASK]"), normalized=False) for t in SPECIALS])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[CLS]", eos_token="[SEP]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"], model_max_length=8192)
    fast.save_pretrained(out_dir)
    return fast


def shift_bias_for_sparsity(model, texts, target_dims):
    """Shifts the decoder bias so documents get about `target_dims` active dims on average
    (random weights activate about half the vocabulary; trained SPLADE models ~100-200 dims).
    Max pooling + relu: with a large positive bias every logit is positive, so one pass gives
    each document's max logit per vocabulary entry, and a bisection finds the shift."""
    bias = model[0].model.decoder.bias
    original = bias.detach().clone()
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


def spread_weights(model):
    """Replaces ModernBERT's initialisation (std 0.02, zero biases, unit norms) with weights under
    which every part of the forward pass shows in the output: at the stock scale attention barely
    moves the residual stream (a wrong window or rotary base would still match within 1e-4), and
    zero biases or unit norms would hide a bias or norm weight that is never applied."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "tok_embeddings" in name:
                p.normal_(0.0, 0.25)  # also the tied decoder: logits of a few units
            else:
                p.normal_(0.0, p.shape[1] ** -0.5)
            if name.endswith("Wqkv.weight"):
                p.mul_(1.5)  # sharper attention: the window and the positions matter


def make_model(out, config, tokenizer_dir, max_seq_length, texts, target_dims, spread=False):
    from transformers import ModernBertForMaskedLM
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    hf = out + ".hf"
    shutil.rmtree(hf, ignore_errors=True)
    mlm = ModernBertForMaskedLM(config)
    if spread:
        spread_weights(mlm)
    mlm.save_pretrained(hf)
    for name in os.listdir(tokenizer_dir):
        if name.startswith("tokenizer") or name == "special_tokens_map.json":
            shutil.copy(os.path.join(tokenizer_dir, name), hf)
    model = SparseEncoder(modules=[Transformer(hf, transformer_task="fill-mask", max_seq_length=max_seq_length), SpladePooling("max")],
                          device="cpu")
    shift_bias_for_sparsity(model, texts, target_dims)
    shutil.rmtree(out, ignore_errors=True)
    model.save(out)
    shutil.rmtree(hf)
    return SparseEncoder(out, device="cpu")


def fixtures():
    from transformers import ModernBertConfig

    texts = load_texts()
    torch.manual_seed(11)
    tok_dir = FIXTURE + ".tok"
    shutil.rmtree(tok_dir, ignore_errors=True)
    fast = build_tokenizer(tok_dir, 600, readme_lines())
    config = ModernBertConfig(
        vocab_size=640, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=2,
        global_attn_every_n_layers=3, local_attention=16, max_position_embeddings=256,
        pad_token_id=fast.pad_token_id, bos_token_id=fast.cls_token_id, eos_token_id=fast.sep_token_id,
        cls_token_id=fast.cls_token_id, sep_token_id=fast.sep_token_id,
        # Non-default settings that the forward pass must honour: biases everywhere, a different
        # local rotary base, and tanh GELU in the MLP (the head keeps exact GELU).
        norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True,
        hidden_activation="gelu_pytorch_tanh", global_rope_theta=160000.0, local_rope_theta=1000.0)
    model = make_model(FIXTURE, config, tok_dir, 96, texts, 60, spread=True)
    report_window_effect(model, texts)
    shutil.rmtree(tok_dir)
    for kind, encode in (("documents", model.encode_document), ("queries", model.encode_query)):
        dense = encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False, batch_size=8).cpu()
        write_vectors(os.path.join(REF, f"modernbert-{kind}.jsonl"), dense)
    tokenizer = model.tokenizer
    with open(os.path.join(REF, "modernbert-token-ids.jsonl"), "w") as f:
        for t in texts:
            ids = tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"]
            f.write(json.dumps(ids) + "\n")


def report_window_effect(model, texts):
    """Prints how far the reference moves when local layers see the whole sequence: the band
    mask must matter for the fixture to test it."""
    mlm = model[0].model
    kw = dict(convert_to_tensor=True, convert_to_sparse_tensor=False)
    banded = model.encode_document(texts, **kw)
    saved = mlm.config.local_attention
    mlm.config.local_attention = 4096
    wide = model.encode_document(texts, **kw)
    mlm.config.local_attention = saved
    moved = ((banded - wide).abs().max(dim=1).values > 1e-3).sum().item()
    print(f"local window: {moved} of {len(texts)} documents move by > 1e-3 without it, "
          f"max {(banded - wide).abs().max().item():.4f}")


def base(out):
    from pydoc_data.topics import topics
    from transformers import ModernBertConfig

    texts = load_texts()
    torch.manual_seed(1234)
    tok_dir = os.path.join(out, "tokenizer")
    shutil.rmtree(tok_dir, ignore_errors=True)
    # The benchmark corpus's source (bench/make_corpus.py), so token counts are realistic.
    build_tokenizer(tok_dir, 50_280, [line for text in topics.values() for line in text.split("\n")])
    config = ModernBertConfig()  # ModernBERT-base: 22 x 768, 1152 GLU, 12 heads, 50368 vocab, local 128
    make_model(os.path.join(out, "model"), config, tok_dir, 256, texts, 150)
    shutil.rmtree(tok_dir)


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    if sys.argv[1:] == ["fixtures"]:
        fixtures()
    elif len(sys.argv) == 3 and sys.argv[1] == "base":
        base(sys.argv[2])
    else:
        sys.exit(__doc__)
