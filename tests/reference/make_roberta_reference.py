#!/usr/bin/env python3
"""Writes the RoBERTa-family fixtures of tests/family_roberta.rs and their reference outputs.

  make reference-scripts-env   # sentencepiece, protobuf, FlagEmbedding 1.4.2 (--no-deps), peft
  .venv/bin/python tests/reference/make_roberta_reference.py

Everything is made locally, with fixed seeds (no Hugging Face hub): tokenizers are trained with
`tokenizers` / `sentencepiece` on text of this repository plus a few sentences below, then built
through the transformers tokenizer class and saved with `save_pretrained`, so tokenizer.json is
what transformers itself writes. Models have random weights and tiny sizes. It writes, under
tests/fixtures/models/:

  roberta-tiny   RobertaForMaskedLM, byte-level BPE (RobertaTokenizer), saved by
                 sentence-transformers 6.2 (v6 layout: Transformer + SpladePooling max/relu) with
                 query/document prompts and max_seq_length 128.
  xlmr-tiny      XLMRobertaForMaskedLM, sentencepiece Unigram with the Precompiled + Replace
                 normalizer and the Metaspace pre-tokenizer as the hub's xlm-roberta-base ships
                 them (tokenizer_config.json without tokenizer_class, as the hub's), saved by
                 sentence-transformers (SpladePooling max/log1p_relu).
  mbert-tiny     BertForMaskedLM with a bert-base-multilingual-uncased-size WordPiece vocabulary
                 (105,879 tokens; hidden size 4 keeps it small), saved by sentence-transformers.
  bge-m3-tiny    BAAI/bge-m3's layout: XLMRobertaModel (pytorch_model.bin), Unigram tokenizer
                 (tokenizer_class XLMRobertaTokenizer), sparse_linear.pt and colbert_linear.pt
                 (torch.save'd state dicts), and the sentence-transformers dense pipeline files
                 bge-m3 also ships (modules.json, sentence_bert_config.json with 8192).

and tokenizer-only folders under tests/fixtures/tokenizers/ (byte-level BPE with
add_prefix_space true; a tokenizer.json whose normalizer and pre-tokenizer disagree with
tokenizer_config.json, which transformers 5 ignores when it rebuilds the pipeline).

References under tests/reference/, one JSON line per text of tests/fixtures/texts.jsonl then
tests/fixtures/texts-multilingual.jsonl:
  {name}-documents.jsonl / {name}-queries.jsonl  {"indices", "values"} from
      SparseEncoder.encode_document / encode_query (fp32, CPU), and for bge-m3-tiny
      BGEM3FlagModel(use_fp16=False, devices="cpu").encode_corpus / encode_queries(...,
      return_dense=False, return_sparse=True)["lexical_weights"];
  {name}-tokens.jsonl  {"ids"}: the token ids the reference's own tokenizer gives (SparseEncoder
      .tokenize for models, AutoTokenizer with truncation to 128 for tokenizer-only folders).
"""
import json
import os
import shutil
import sys
import tempfile
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF = os.path.join(ROOT, "tests", "reference")
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
TOKENIZERS = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
PICKLES = os.path.join(ROOT, "tests", "fixtures", "pickles")
TEXT_FILES = [os.path.join(ROOT, "tests", "fixtures", n) for n in ("texts.jsonl", "texts-multilingual.jsonl")]

# Tokenizer training text besides the repository's README (never used as test input).
EXTRA_TRAINING = """
Les moteurs de recherche pondèrent les termes rares plus fortement que les termes fréquents.
Die Indexierung großer Dokumentensammlungen benötigt viel Speicher und Rechenzeit.
La recuperación de información estudia cómo encontrar documentos relevantes.
検索エンジンは文書の中の単語に重みを付けます。日本語の文章を分割します。
信息检索系统根据查询返回相关的文档。中文分词很重要。
정보 검색 시스템은 관련 문서를 찾습니다. 한국어 형태소 분석.
Поисковые системы индексируют документы и отвечают на запросы пользователей.
يقوم محرك البحث بفهرسة المستندات والإجابة على الاستعلامات.
खोज इंजन दस्तावेज़ों को अनुक्रमित करता है।
เครื่องมือค้นหาจัดทำดัชนีเอกสาร
"""


def load_texts():
    texts = []
    for path in TEXT_FILES:
        with open(path, encoding="utf8") as f:
            texts.extend(json.loads(line) for line in f)
    return texts


def training_file(tmp):
    path = os.path.join(tmp, "train.txt")
    with open(os.path.join(ROOT, "README.md"), encoding="utf8") as f:
        readme = f.read()
    with open(path, "w", encoding="utf8") as f:
        f.write(readme + EXTRA_TRAINING * 3)
    return path


def write_vectors(path, rows):
    """rows: dense tensors or {id: weight} dicts."""
    with open(path, "w") as f:
        for row in rows:
            if isinstance(row, dict):
                items = sorted((int(k), float(v)) for k, v in row.items())
                idx, val = [k for k, _ in items], [v for _, v in items]
            else:
                nz = torch.nonzero(row).flatten()
                idx, val = nz.tolist(), row[nz].tolist()
            f.write(json.dumps({"indices": idx, "values": val}) + "\n")


def write_tokens(path, ids):
    with open(path, "w") as f:
        for row in ids:
            f.write(json.dumps({"ids": [int(i) for i in row]}) + "\n")


def rewrite_json(path, fn):
    with open(path, encoding="utf8") as f:
        data = json.load(f)
    data = fn(data)
    with open(path, "w", encoding="utf8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)


def st_tokens(model, texts):
    out = []
    for t in texts:
        enc = model.tokenize([t])
        n = int(enc["attention_mask"][0].sum())
        out.append(enc["input_ids"][0][:n].tolist())
    return out


def encode_both(model, texts, name):
    kw = dict(convert_to_tensor=True, convert_to_sparse_tensor=False, batch_size=8)
    write_vectors(os.path.join(REF, f"{name}-documents.jsonl"), model.encode_document(texts, **kw).cpu())
    write_vectors(os.path.join(REF, f"{name}-queries.jsonl"), model.encode_query(texts, **kw).cpu())
    write_tokens(os.path.join(REF, f"{name}-tokens.jsonl"), st_tokens(model, texts))


def sparsify(model, bias, texts, target_dims):
    """Shifts the MLM decoder bias so documents get about `target_dims` active dims: random
    weights activate half the vocabulary, which no trained SPLADE model does (and which would
    make references huge). Bisection on the shift."""
    original = bias.detach().clone()
    low, high = -20.0, 20.0
    for _ in range(16):
        mid = (low + high) / 2
        with torch.no_grad():
            bias.copy_(original - mid)
        emb = model.encode_document(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
        if (emb > 0).sum(dim=1).float().mean().item() > target_dims:
            low = mid
        else:
            high = mid
    with torch.no_grad():
        bias.copy_(original - high)


def save_sparse_encoder(hf_dir, out, texts, max_seq_length, pooling, prompts, target_dims):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    model = SparseEncoder(modules=[MLMTransformer(hf_dir, max_seq_length=max_seq_length), pooling],
                          device="cpu", prompts=prompts)
    mlm = model[0].auto_model
    head = mlm.lm_head.decoder if hasattr(mlm, "lm_head") else mlm.cls.predictions.decoder
    sparsify(model, head.bias, texts, target_dims)
    shutil.rmtree(out, ignore_errors=True)
    model.save(out)
    return SparseEncoder(out, device="cpu")


# --- tokenizers -------------------------------------------------------------------------------

def byte_level_bpe(tmp, out, add_prefix_space=False):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train([training_file(tmp)], vocab_size=2000, min_frequency=2,
              special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["<mask>"] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = RobertaTokenizer(vocab=vocab, merges=merges, add_prefix_space=add_prefix_space, model_max_length=128)
    tok.save_pretrained(out)
    return tok


def unigram(tmp, out, tokenizer_class=True, model_max_length=512):
    """A sentencepiece Unigram (nmt_nfkc) converted by transformers, then given the
    normalizer/pre-tokenizer layout of the hub's xlm-roberta-base tokenizer.json."""
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(input=training_file(tmp), model_prefix=prefix, vocab_size=1500,
                                   model_type="unigram", character_coverage=1.0,
                                   normalization_rule_name="nmt_nfkc", minloglevel=2)
    src = os.path.join(tmp, "spm-dir")
    os.makedirs(src, exist_ok=True)
    shutil.copy(prefix + ".model", os.path.join(src, "sentencepiece.bpe.model"))
    tok = XLMRobertaTokenizer.from_pretrained(src)
    tok.save_pretrained(out)

    def hub_layout(tok):
        charsmap = tok["normalizer"]["precompiled_charsmap"]
        tok["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": charsmap},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]}
        tok["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                                "split": True}
        return tok
    rewrite_json(os.path.join(out, "tokenizer.json"), hub_layout)
    if tokenizer_class:
        rewrite_json(os.path.join(out, "tokenizer_config.json"),
                     lambda c: dict(c, model_max_length=model_max_length))
    else:
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": model_max_length}, f)
    return len(tok)


def multilingual_wordpiece(tmp, out):
    """A WordPiece vocabulary of bert-base-multilingual-uncased's size (105,879): BERT's special
    and unused tokens, pieces trained on the repo text, filler, then whole scripts (CJK, kana,
    hangul jamo, Cyrillic, Arabic, Devanagari, Thai) at the top ids, so multilingual text
    tokenizes to ids above 65,535."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    size = 105879
    wp = BertWordPieceTokenizer(lowercase=True, strip_accents=True)
    wp.train([training_file(tmp)], vocab_size=3000, show_progress=False)
    trained = [t for t, _ in sorted(wp.get_vocab().items(), key=lambda x: x[1]) if not t.startswith("[")]
    head = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    scripts = [(0x4E00, 0x9FFF), (0x3040, 0x30FF), (0x1100, 0x11FF), (0x0400, 0x04FF), (0x0600, 0x06FF),
               (0x0900, 0x097F), (0x0E00, 0x0E7F)]
    chars = [chr(c) for lo, hi in scripts for c in range(lo, hi + 1)]
    tail = chars + ["##" + c for c in chars if not 0x4E00 <= ord(c) <= 0x9FFF]
    seen = set(head)
    body = [t for t in trained if t not in seen and t not in set(tail)]
    filler = [f"[unused{i}]" for i in range(100, 100 + size - len(head) - len(body) - len(tail))]
    vocab = head + body + filler + tail
    assert len(vocab) == size and len(set(vocab)) == size
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=128)
    assert len(tok) == size
    tok.save_pretrained(out)
    return size


# --- fixtures -------------------------------------------------------------------------------

def roberta(tmp, texts):
    from transformers import RobertaConfig, RobertaForMaskedLM
    from sentence_transformers.sparse_encoder.models import SpladePooling

    hf = os.path.join(tmp, "roberta-hf")
    tok = byte_level_bpe(tmp, hf)
    torch.manual_seed(11)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    RobertaForMaskedLM(cfg).save_pretrained(hf)
    model = save_sparse_encoder(hf, os.path.join(MODELS, "roberta-tiny"), texts, 128, SpladePooling("max"),
                                {"query": "query: ", "document": "passage: "}, 60)
    encode_both(model, texts, "roberta-tiny")


def xlmr(tmp, texts):
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM
    from sentence_transformers.sparse_encoder.models import SpladePooling

    hf = os.path.join(tmp, "xlmr-hf")
    vocab = unigram(tmp, hf, tokenizer_class=False, model_max_length=128)
    torch.manual_seed(12)
    cfg = XLMRobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu_new")
    XLMRobertaForMaskedLM(cfg).save_pretrained(hf)
    model = save_sparse_encoder(hf, os.path.join(MODELS, "xlmr-tiny"), texts, 128,
                                SpladePooling("max", activation_function="log1p_relu"), None, 60)
    encode_both(model, texts, "xlmr-tiny")


def mbert(tmp, texts):
    from transformers import BertConfig, BertForMaskedLM
    from sentence_transformers.sparse_encoder.models import SpladePooling

    hf = os.path.join(tmp, "mbert-hf")
    size = multilingual_wordpiece(tmp, hf)
    torch.manual_seed(13)
    cfg = BertConfig(vocab_size=size, hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=8, max_position_embeddings=128)
    BertForMaskedLM(cfg).save_pretrained(hf)
    model = save_sparse_encoder(hf, os.path.join(MODELS, "mbert-tiny"), texts, 128, SpladePooling("max"),
                                None, 80)
    encode_both(model, texts, "mbert-tiny")


def flag_embedding():
    # FlagEmbedding 1.4.2 imports transformers.modeling_attn_mask_utils (gone in transformers 5)
    # for its LLM rerankers only: a stand-in module lets BGEM3FlagModel import.
    stand_in = types.ModuleType("transformers.modeling_attn_mask_utils")

    class Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError("stand-in: not available under transformers 5")

    def attribute(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Unavailable
    stand_in.__getattr__ = attribute
    sys.modules["transformers.modeling_attn_mask_utils"] = stand_in
    from FlagEmbedding import BGEM3FlagModel
    return BGEM3FlagModel


def bge_m3(tmp, texts):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    out = os.path.join(MODELS, "bge-m3-tiny")
    shutil.rmtree(out, ignore_errors=True)
    vocab = unigram(tmp, out, tokenizer_class=True, model_max_length=8192)
    torch.manual_seed(14)
    cfg = XLMRobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=514, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    # Pickled weights, as BAAI/bge-m3 ships them (pytorch_model.bin, no safetensors).
    torch.save(XLMRobertaModel(cfg).state_dict(), os.path.join(out, "pytorch_model.bin"))
    cfg.architectures = ["XLMRobertaModel"]
    cfg.save_pretrained(out)
    sparse = torch.nn.Linear(32, 1)
    colbert = torch.nn.Linear(32, 32)
    # Saved as FlagEmbedding saves them (`_trans_state_dict`: an OrderedDict copy, without the
    # `_metadata` attribute a module's state_dict() carries).
    def trans(sd):
        return type(sd)({k: v.clone().cpu() for k, v in sd.items()})
    torch.save(trans(sparse.state_dict()), os.path.join(out, "sparse_linear.pt"))
    torch.save(trans(colbert.state_dict()), os.path.join(out, "colbert_linear.pt"))
    # A module's state_dict() as is (with `_metadata`), for the loader's tests.
    os.makedirs(PICKLES, exist_ok=True)
    torch.save(sparse.state_dict(), os.path.join(PICKLES, "sparse_linear_with_metadata.pt"))
    # The dense sentence-transformers pipeline bge-m3 ships beside its sparse head.
    with open(os.path.join(out, "modules.json"), "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                   {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
                  f, indent=2)
    with open(os.path.join(out, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 8192, "do_lower_case": False}, f)
    os.makedirs(os.path.join(out, "1_Pooling"))
    with open(os.path.join(out, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": True}, f)
    os.makedirs(os.path.join(out, "2_Normalize"))

    model = flag_embedding()(out, use_fp16=False, devices="cpu")
    kw = dict(batch_size=8, return_dense=False, return_sparse=True)
    docs = model.encode_corpus(texts, **kw)["lexical_weights"]
    queries = model.encode_queries(texts, **kw)["lexical_weights"]
    write_vectors(os.path.join(REF, "bge-m3-tiny-documents.jsonl"), docs)
    write_vectors(os.path.join(REF, "bge-m3-tiny-queries.jsonl"), queries)
    ids = [model.tokenizer(t, truncation=True, max_length=512)["input_ids"] for t in texts]
    write_tokens(os.path.join(REF, "bge-m3-tiny-tokens.jsonl"), ids)


def tokenizer_variants(tmp, texts):
    from transformers import AutoTokenizer

    def config(dir_, model_type, vocab):
        with open(os.path.join(dir_, "config.json"), "w") as f:
            json.dump({"architectures": ["RobertaForMaskedLM" if model_type == "roberta" else "XLMRobertaForMaskedLM"],
                       "model_type": model_type, "vocab_size": vocab, "hidden_size": 8,
                       "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 8,
                       "max_position_embeddings": 130, "type_vocab_size": 1, "pad_token_id": 1}, f)

    def record(name, dir_):
        tok = AutoTokenizer.from_pretrained(dir_)
        write_tokens(os.path.join(REF, f"tokens-{name}.jsonl"),
                     [tok(t, truncation=True, max_length=128)["input_ids"] for t in texts])

    shutil.rmtree(TOKENIZERS, ignore_errors=True)
    prefix = os.path.join(TOKENIZERS, "bpe-prefix-space")
    tok = byte_level_bpe(tmp, prefix, add_prefix_space=True)
    config(prefix, "roberta", len(tok))
    record("bpe-prefix-space", prefix)

    # tokenizer.json says lowercase + add_prefix_space; tokenizer_config.json says neither.
    diverging = os.path.join(TOKENIZERS, "bpe-json-diverges")
    tok = byte_level_bpe(tmp, diverging, add_prefix_space=False)
    config(diverging, "roberta", len(tok))

    def diverge(t):
        t["normalizer"] = {"type": "Lowercase"}
        t["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        return t
    rewrite_json(os.path.join(diverging, "tokenizer.json"), diverge)
    rewrite_json(os.path.join(diverging, "tokenizer_config.json"),
                 lambda c: {k: v for k, v in c.items() if k != "add_prefix_space"})
    record("bpe-json-diverges", diverging)

    # XLM-R hub layout with add_prefix_space false in tokenizer_config.json.
    no_prefix = os.path.join(TOKENIZERS, "unigram-no-prefix")
    vocab = unigram(tmp, no_prefix, tokenizer_class=True, model_max_length=128)
    rewrite_json(os.path.join(no_prefix, "tokenizer_config.json"), lambda c: dict(c, add_prefix_space=False))
    config(no_prefix, "xlm-roberta", vocab)
    record("unigram-no-prefix", no_prefix)


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    texts = load_texts()
    wanted = sys.argv[1:] or ["roberta", "xlmr", "mbert", "bge_m3", "tokenizer_variants"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            globals()[name](tmp, texts)
