#!/usr/bin/env python3
"""sparq vs sentence-transformers on one GPU, in one run (driven by bench/gpu.sh).

  gpu_bench.py CORPUS.parquet OUT_DIR [--docs N]

1. The card's bf16 matmul rate (8192^3 products, timed with CUDA sync).
2. Parity on the card: the bundled model and a BERT-base-size SPLADE (12 x 768, 30522 vocab,
   random weights seeded as tests/reference/make_reference.py does, decoder bias shifted to
   ~150 active dims) in fp32, sparq vs sentence-transformers: largest weight difference and
   rows whose dimensions differ.
3. Timings, bf16, the same N documents: sentence-transformers `encode_document` (batch 64,
   warmed up, model load excluded), `sparq encode-text` (texts piped in, vectors out, process
   start and model load included) at batch 64 and 256, and `sparq encode` on the parquet
   (coordinator + one worker on cuda:0, everything included). Tokens/s, the ratio to
   sentence-transformers, the fraction of the card's bf16 matmul rate (BERT-base: 227 MFLOP
   per token), and agreement with the reference (mean cosine, top-10 overlap).
Prints a markdown report and writes it to OUT_DIR/gpu.md (the log to OUT_DIR/gpu.log).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARQ = os.path.join(ROOT, "target", "release", "sparq")
TINY = os.path.join(ROOT, "models", "splade-bert-tiny-nq")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "texts.jsonl")
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))

REPORT = []
DEV = "cuda"  # --device cpu runs the same steps on a CPU (a dry run of the script, small --docs)


def say(line=""):
    print(line, flush=True)
    REPORT.append(line)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def matmul_rate():
    n, reps = (8192, 50) if DEV == "cuda" else (1024, 5)
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return reps * 2 * n**3 / (time.perf_counter() - t)


def sparq(args, texts_path, out_path):
    """Runs `sparq encode-text` on the file of JSON lines; returns (seconds, vectors)."""
    t = time.perf_counter()
    with open(texts_path) as fin, open(out_path, "w") as fout:
        p = subprocess.run([SPARQ, "encode-text", *args], stdin=fin, stdout=fout, stderr=subprocess.PIPE, text=True)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"sparq encode-text {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    with open(out_path) as f:
        return secs, [json.loads(line) for line in f]


def dense_of(vectors, dim):
    rows = torch.cat([torch.full((len(v["indices"]),), i) for i, v in enumerate(vectors)])
    cols = torch.cat([torch.tensor(v["indices"], dtype=torch.long) for v in vectors])
    vals = torch.cat([torch.tensor(v["values"], dtype=torch.float32) for v in vectors])
    out = torch.zeros(len(vectors), dim, device=DEV)
    out[rows.to(DEV), cols.to(DEV)] = vals.to(DEV)
    return out


def reference(model, texts, batch, query=False):
    enc = model.encode_query if query else model.encode_document
    emb = enc(texts, batch_size=batch, convert_to_tensor=True, convert_to_sparse_tensor=True)
    return emb.coalesce().float().to(DEV).to_dense()


def agreement(a, b):
    """Mean cosine and mean top-10 Jaccard overlap of the rows of two dense [n, vocab] tensors."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    both_zero = (a.abs().sum(1) == 0) & (b.abs().sum(1) == 0)
    cos = torch.where(both_zero, torch.ones_like(cos), cos)
    ta, tb = a.topk(10, dim=1), b.topk(10, dim=1)
    overlap = []
    for ia, va, ib, vb in zip(ta.indices.tolist(), ta.values.tolist(), tb.indices.tolist(), tb.values.tolist()):
        sa = {i for i, v in zip(ia, va) if v > 0}
        sb = {i for i, v in zip(ib, vb) if v > 0}
        overlap.append(len(sa & sb) / len(sa | sb) if sa | sb else 1.0)
    return cos.mean().item(), sum(overlap) / len(overlap)


def parity(name, model_dir, texts, tmp, batch=32):
    from sentence_transformers import SparseEncoder

    m = SparseEncoder(model_dir, device=DEV)
    path = os.path.join(tmp, f"parity-{name}.jsonl")
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")
    for query in (False, True):
        ref = reference(m, texts, batch, query)
        args = ["--model", model_dir, "--device", DEV, "--dtype", "f32", "--batch-size", str(batch)]
        _, vecs = sparq(args + (["--query"] if query else []), path, path + ".out")
        got = dense_of(vecs, ref.shape[1])
        diff = (got - ref).abs().max().item()
        dims = ((got != 0) != (ref != 0)).any(1).sum().item()
        say(f"| {name} {'queries' if query else 'documents'} fp32 | {len(texts)} | {diff:.2e} | {dims} |")
    del m
    if DEV == "cuda":
        torch.cuda.empty_cache()


def pooling_kernels():
    """Times the ways to max-pool packed logits on the card: 64 rows of ~60 tokens, bf16."""
    lengths = [70 - i * 20 // 64 for i in range(64)]
    x = torch.randn(sum(lengths), 30522, device=DEV, dtype=torch.bfloat16)
    segs = torch.tensor(lengths, device=DEV)

    def loop():
        out, s = [], 0
        for n in lengths:
            out.append(x[s:s + n].amax(0))
            s += n
        return torch.stack(out)

    def segment():
        return torch.segment_reduce(x, "max", lengths=segs, axis=0, unsafe=True, initial=0.0)

    def padded():
        return torch.nn.utils.rnn.pad_sequence(list(x.split(lengths)), batch_first=True,
                                               padding_value=float("-inf")).amax(1)

    def linear():  # the projection that produces such logits, for scale (BERT-base width)
        return h @ w.T

    h = torch.randn(sum(lengths), 768, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(30522, 768, device=DEV, dtype=torch.bfloat16)
    for name, f in (("per-row amax loop", loop), ("segment_reduce", segment), ("pad + amax", padded),
                    ("vocab projection (768 -> 30522)", linear)):
        for _ in range(3):
            f()
        sync()
        t = time.perf_counter()
        for _ in range(20):
            f()
        sync()
        say(f"| {name} | {(time.perf_counter() - t) / 20 * 1e3:.3f} ms |")


def attention_shapes():
    """Self-attention over 24 new (64, L) shapes, then the same shapes again: the fused op
    (cuDNN allowed, as by default), the fused op without cuDNN, and the explicit matmul form."""
    lengths = list(range(40, 208, 7))

    def inputs(n):
        q = torch.randn(64, 12, n, 64, device=DEV, dtype=torch.bfloat16)
        mask = torch.ones(64, 1, 1, n, device=DEV, dtype=torch.bool)
        mask[:, :, :, n - 5:] = False
        return q, mask

    def fused(q, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    def explicit(q, mask):
        s = (q @ q.transpose(-2, -1)) * 0.125
        return s.masked_fill(~mask, float("-inf")).softmax(-1, dtype=torch.float32).to(q.dtype) @ q

    for label, f, cudnn in (("fused, cuDNN allowed", fused, True), ("fused, cuDNN off", fused, False),
                            ("explicit matmul", explicit, True)):
        if DEV == "cuda":
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
        times = []
        for _ in range(2):
            sync()
            t = time.perf_counter()
            for n in lengths:
                f(*inputs(n))
            sync()
            times.append((time.perf_counter() - t) * 1e3)
        say(f"| {label} | {times[0]:.1f} ms | {times[1]:.1f} ms |")
    if DEV == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(True)


def profiles(models, texts_path, tmp):
    """sparq encode-text with SPARQ_PROFILE=1 (stage times with device syncs) and plain wall times."""
    one = os.path.join(tmp, "one.jsonl")
    with open(texts_path) as f, open(one, "w") as g:
        g.write(f.readline())
    say("| model | run | wall s | sparq's profile line |")
    say("|---|---|---|---|")
    for name, model_dir in models:
        runs = [("1 text (start-up)", one, ["--batch-size", "64"], {}),
                ("batch 64, profiled", texts_path, ["--batch-size", "64"], {"SPARQ_PROFILE": "1"}),
                ("batch 64, profiled, SPARQ_ATTENTION=fused", texts_path, ["--batch-size", "64"],
                 {"SPARQ_PROFILE": "1", "SPARQ_ATTENTION": "fused"}),
                ("batch 256, profiled", texts_path, ["--batch-size", "256"], {"SPARQ_PROFILE": "1"}),
                ("batch 256, profiled, SPARQ_ATTENTION=fused", texts_path, ["--batch-size", "256"],
                 {"SPARQ_PROFILE": "1", "SPARQ_ATTENTION": "fused"})]
        for label, path, extra, env in runs:
            env = dict(os.environ, **env)
            t = time.perf_counter()
            with open(path) as fin:
                p = subprocess.run([SPARQ, "encode-text", "--model", model_dir, "--device", DEV, "--dtype", "bf16", *extra],
                                   stdin=fin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            secs = time.perf_counter() - t
            line = " ".join(l for l in p.stderr.splitlines() if l.startswith("profile:")) or p.stderr[-300:].replace("\n", " ")
            say(f"| {name} | {label} | {secs:.2f} | {line} |")


def make_bert_base(out):
    """The BERT-base-size model of tests/reference/make_reference.py, built on the card."""
    from make_reference import load_texts, shift_bias_for_sparsity
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(1234)
    hf = os.path.join(out, "hf")
    BertForMaskedLM(BertConfig()).save_pretrained(hf)
    AutoTokenizer.from_pretrained(TINY).save_pretrained(hf)
    model = SparseEncoder(modules=[MLMTransformer(hf, max_seq_length=256), SpladePooling("max")], device=DEV)
    shift_bias_for_sparsity(model, load_texts(), 150)
    model.save(os.path.join(out, "model"))
    return os.path.join(out, "model")


def timings(name, model_dir, texts, texts_path, corpus, tmp, tokens, peak, flop_per_token, encode_variants):
    from sentence_transformers import SparseEncoder

    m = SparseEncoder(model_dir, device=DEV)
    m.to(torch.bfloat16)
    m.encode_document(texts[:512], batch_size=64)
    sync()
    t = time.perf_counter()
    ref = reference(m, texts, 64)
    sync()
    st = time.perf_counter() - t
    del m
    if DEV == "cuda":
        torch.cuda.empty_cache()
    rows = [("sentence-transformers bf16, batch 64 (load excluded)", st, None)]
    for batch in (64, 256):
        try:
            secs, vecs = sparq(["--model", model_dir, "--device", DEV, "--dtype", "bf16", "--batch-size", str(batch)],
                               texts_path, os.path.join(tmp, f"{name}-{batch}.jsonl"))
            rows.append((f"sparq encode-text bf16, batch {batch} (load included)", secs, agreement(dense_of(vecs, ref.shape[1]), ref)))
        except Exception as e:  # keep the other numbers
            say(f"FAILED: {e}")
    for budget in encode_variants:
        out = os.path.join(tmp, f"{name}-encode-{budget}")
        t = time.perf_counter()
        p = subprocess.run([SPARQ, "encode", "--model", model_dir, "--input", corpus, "--output", out,
                            "--devices", "cuda:0" if DEV == "cuda" else "cpu", "--batch-tokens", str(budget)], capture_output=True, text=True)
        secs = time.perf_counter() - t
        if p.returncode != 0:
            say(f"FAILED: sparq encode ({p.returncode}): {p.stderr[-2000:]}")
            continue
        import pyarrow.parquet as pq
        ids = []
        for f in sorted(os.listdir(out)):
            if f.endswith(".parquet"):
                ids += pq.read_table(os.path.join(out, f), columns=["id"]).column("id").to_pylist()
        exact = len(ids) == len(set(ids)) == len(texts)
        rows.append((f"sparq encode parquet, 1 worker cuda:0, --batch-tokens {budget} (all included; {len(ids)} rows, "
                     f"{'each id once' if exact else 'IDS WRONG'})", secs, None))
    say(f"\n{name}: {len(texts)} docs, {tokens} tokens")
    say("| contender | docs/s | tokens/s | ratio | matmul fraction | mean cosine | top-10 overlap |")
    say("|---|---|---|---|---|---|---|")
    for label, secs, agree in rows:
        frac = f"{flop_per_token * tokens / secs / peak:.1%}" if flop_per_token else ""
        cos, ov = (f"{agree[0]:.5f}", f"{agree[1]:.4f}") if agree else ("", "")
        say(f"| {label} | {len(texts)/secs:.0f} | {tokens/secs:.0f} | {st/secs:.2f}x | {frac} | {cos} | {ov} |")
    del ref
    if DEV == "cuda":
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--docs", type=int, default=50000)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    global DEV
    DEV = a.device
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    import tempfile

    tmp = tempfile.mkdtemp(prefix="sparq-gpu-")
    table = pq.read_table(a.corpus).slice(0, a.docs)
    corpus = os.path.join(tmp, "corpus")
    os.makedirs(corpus, exist_ok=True)
    pq.write_table(table, os.path.join(corpus, "corpus.parquet"), row_group_size=5000)
    texts = table.column("text").to_pylist()
    texts_path = os.path.join(tmp, "texts.jsonl")
    with open(texts_path, "w") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")
    tok = AutoTokenizer.from_pretrained(TINY)
    tokens = sum(len(ids) for ids in tok(texts, truncation=True, max_length=256)["input_ids"])

    card = torch.cuda.get_device_name() if DEV == "cuda" else "CPU (dry run)"
    say(f"# GPU run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {card}, "
        f"torch {torch.__version__}")
    peak = matmul_rate()
    say(f"bf16 matmul (8192^3, measured): {peak/1e12:.0f} TFLOP/s")

    say("\n## Parity on the card (fp32, sparq vs sentence-transformers)")
    say("| model / inputs | texts | max abs diff | rows with other dims |")
    say("|---|---|---|---|")
    fixture = [json.loads(line) for line in open(FIXTURE)]
    t = time.perf_counter()
    base = make_bert_base(os.path.join(tmp, "base"))
    print(f"(BERT-base model built in {time.perf_counter()-t:.0f} s)", flush=True)
    for name, model_dir, inputs in (("tiny", TINY, fixture), ("BERT-base", base, texts[:1000])):
        try:
            parity(name, model_dir, inputs, tmp)
        except Exception as e:  # keep going: the timings still say something
            say(f"FAILED: parity {name}: {e}")

    say("\n## Pooling kernels on the card (64 rows, 3,840 tokens, bf16)")
    say("| kernel | time |")
    say("|---|---|")
    try:
        pooling_kernels()
    except Exception as e:
        say(f"FAILED: {e}")
    say("\n## Self-attention over new shapes (64 x 12 heads x L x 64, 24 lengths 40..201, bf16)")
    say("| kernel | 24 new shapes | same 24 again |")
    say("|---|---|---|")
    try:
        attention_shapes()
    except Exception as e:
        say(f"FAILED: {e}")
    say("\n## Where sparq's time goes (encode-text, bf16)")
    profiles([("BERT-base", base), ("tiny", TINY)], texts_path, tmp)

    say("\n## Throughput, bf16")
    timings("BERT-base size", base, texts, texts_path, corpus, tmp, tokens, peak, 227e6, [16384, 65536])
    timings("tiny (bundled)", TINY, texts, texts_path, corpus, tmp, tokens, peak, None, [65536])
    with open(os.path.join(a.out, "gpu.md"), "w") as f:
        f.write("\n".join(REPORT) + "\n")


if __name__ == "__main__":
    main()
