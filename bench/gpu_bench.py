#!/usr/bin/env python3
"""sparq vs sentence-transformers on one GPU, steady state, in one run (driven by bench/gpu.sh).

  gpu_bench.py OUT_DIR [--docs N] [--long-docs M] [--device cuda|cpu] [--deadline-s S] [--tiny]

1. The card's bf16 matmul rate (8192^3 products, timed with CUDA sync).
2. Parity on the card, sparq's packed encoder vs sentence-transformers: the bundled model and a
   BERT-base-size SPLADE (12 x 768, 30522 vocab, random weights seeded as
   tests/reference/make_reference.py does, decoder bias shifted to ~150 active dims, max length
   512) in fp32 (largest weight difference, rows whose dimensions differ) and bf16 (mean cosine
   to the fp32 reference), on realistic and long texts.
3. Two corpora made here (bench/make_corpus.py --fast): N documents of the realistic mix (mean
   ~60 tokens, max 256) and M of the long mix (mean ~200, max 512).
4. Per mix, bf16: sentence-transformers `encode_document` (its faster of batch 64 and 256,
   warmed up, on a subset: its rate is flat), `sparq encode-text` and `sparq encode` (parquet to
   parquet, one worker on cuda:0) on the whole corpus with SPARQ_PROFILE=counts (no added
   synchronisation): wall time, model load, and the steady-state rate sparq measures (batches
   after the first tenth); host waits per batch, distinct shapes, batch intervals with cold and
   warm shapes; time per stage from a separate SPARQ_PROFILE=1 run; the fraction of the
   measured bf16 matmul rate (2 x 108.9M matmul parameters per token plus attention at the
   corpus's length); a --batch-tokens sweep for `sparq encode`.
Writes OUT_DIR/gpu.md (markdown) and OUT_DIR/<date>-<card>.json (one row per mix and mode),
both rewritten after every row. Past --deadline-s seconds the optional parts (further
--batch-tokens budgets, the stage profile, the long mix) are skipped and said so. --tiny puts the
bundled tiny model where the BERT-base-size one would be (a CPU dry run in seconds).
"""
import argparse
import json
import os
import re
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
ROWS = []
DEV = "cuda"  # --device cpu runs the same steps on a CPU (a dry run of the script, small --docs)
START = time.perf_counter()
DEADLINE = float("inf")  # seconds from START after which optional parts are skipped


def past_deadline(what):
    if time.perf_counter() - START < DEADLINE:
        return False
    say(f"(skipped: {what}, past --deadline-s)")
    return True
# Matmul parameters of BERT-base SPLADE: 12 x (4 x 768^2 + 2 x 768 x 3072) + 768^2 + 768 x 30522.
MATMUL_PARAMS = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 768 * 768 + 768 * 30522


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


def run_sparq(args, stdin_path=None, env=None, stdout_path=None):
    """Runs sparq; returns (seconds, stderr). Raises with the stderr tail on failure."""
    env = dict(os.environ, **(env or {}))
    t = time.perf_counter()
    fin = open(stdin_path) if stdin_path else subprocess.DEVNULL
    fout = open(stdout_path, "w") if stdout_path else subprocess.DEVNULL
    try:
        p = subprocess.run([SPARQ, *args], stdin=fin, stdout=fout, stderr=subprocess.PIPE, text=True, env=env)
    finally:
        if stdin_path:
            fin.close()
        if stdout_path:
            fout.close()
    secs = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"sparq {' '.join(args[:3])} failed ({p.returncode}): {p.stderr[-2000:]}")
    return secs, p.stderr


def profile_of(stderr):
    """The fields of sparq's profile line."""
    line = next((l for l in stderr.splitlines() if "profile:" in l), "")
    num = lambda pat: (lambda m: float(m.group(1)) if m else None)(re.search(pat, line))
    return {
        "line": line.split("profile:", 1)[-1].strip(),
        "load_s": num(r"model load ([\d.]+) s"),
        "batches": num(r"(\d+) batches"),
        "waits_per_batch": num(r"\(([\d.]+) per batch\)"),
        "shapes": num(r"(\d+) token shapes"),
        "steady_tokens_per_s": num(r"steady (\d+) tokens/s"),
        "cold_ms": num(r"batch interval ([\d.]+) ms with a cold shape"),
        "warm_ms": num(r"([\d.]+) ms warm"),
    }


def read_vectors(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


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


def write_texts(path, texts):
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")


def parity(name, model_dir, texts, tmp, batch=32):
    """fp32 sparq vs sentence-transformers (documents and queries), and bf16 sparq's cosine."""
    from sentence_transformers import SparseEncoder

    m = SparseEncoder(model_dir, device=DEV)
    path = os.path.join(tmp, f"parity-{name}.jsonl")
    write_texts(path, texts)
    for query in (False, True):
        ref = reference(m, texts, batch, query)
        args = ["encode-text", "--model", model_dir, "--device", DEV, "--batch-size", str(batch)]
        args += ["--query"] if query else []
        run_sparq(args + ["--dtype", "f32"], path, stdout_path=path + ".f32")
        got = dense_of(read_vectors(path + ".f32"), ref.shape[1])
        diff = (got - ref).abs().max().item()
        dims = ((got != 0) != (ref != 0)).any(1).sum().item()
        run_sparq(args + ["--dtype", "bf16"], path, stdout_path=path + ".bf16")
        cos = torch.nn.functional.cosine_similarity(dense_of(read_vectors(path + ".bf16"), ref.shape[1]), ref, dim=1)
        say(f"| {name} {'queries' if query else 'documents'} | {len(texts)} | {diff:.2e} | {dims} | {cos.mean().item():.5f} (min {cos.min().item():.4f}) |")
    del m
    if DEV == "cuda":
        torch.cuda.empty_cache()


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
    model = SparseEncoder(modules=[MLMTransformer(hf, max_seq_length=512), SpladePooling("max")], device=DEV)
    shift_bias_for_sparsity(model, load_texts(), 150)
    model.save(os.path.join(out, "model"))
    return os.path.join(out, "model")


def make_corpus(tmp, mix, docs):
    out = os.path.join(tmp, f"corpus-{mix}")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "make_corpus.py"), out, "--docs", str(docs),
                        "--queries", "0", "--mix", mix, "--fast"], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    import pyarrow.parquet as pq

    folder = os.path.join(out, "in")
    os.makedirs(folder, exist_ok=True)
    table = pq.read_table(os.path.join(out, "corpus.parquet"))
    pq.write_table(table, os.path.join(folder, "corpus.parquet"), row_group_size=5000)
    texts = table.column("text").to_pylist()
    path = os.path.join(out, "texts.jsonl")
    write_texts(path, texts)
    return folder, texts, path


def token_stats(texts, max_len):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY)
    lens = [len(ids) for ids in tok(texts, truncation=True, max_length=max_len)["input_ids"]]
    total = sum(lens)
    # Attention work per token grows with the length of its sequence: sum(L^2) / sum(L).
    return total, sum(l * l for l in lens) / total


def st_rate(model_dir, texts):
    """sentence-transformers bf16: its faster of batch 64 and 256, warmed up; docs/s."""
    from sentence_transformers import SparseEncoder

    m = SparseEncoder(model_dir, device=DEV)
    m.to(torch.bfloat16)
    best = None
    for batch in (64, 256):
        m.encode_document(texts[:512], batch_size=batch)
        sync()
        t = time.perf_counter()
        reference(m, texts, batch)
        sync()
        rate = len(texts) / (time.perf_counter() - t)
        say(f"  sentence-transformers bf16 batch {batch}: {rate:.0f} docs/s on {len(texts)} docs")
        best = max(best or 0, rate)
    del m
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return best


def bench_mix(card, peak, model_name, model_dir, mix, folder, texts, texts_path, tmp, st_docs, budgets):
    tokens, l_eff = token_stats(texts, 512)
    flop_per_token = 2 * MATMUL_PARAMS + 12 * 4 * l_eff * 768
    say(f"\n### {model_name}, {mix} mix: {len(texts)} docs, {tokens} tokens (mean {tokens/len(texts):.0f}, "
        f"attention length {l_eff:.0f}), {flop_per_token/1e6:.0f} MFLOP/token")
    try:
        st = st_rate(model_dir, texts[:st_docs])
    except Exception as e:
        say(f"FAILED: sentence-transformers: {e}")
        st = None
    tokens_per_doc = tokens / len(texts)
    base = ["--model", model_dir, "--dtype", "bf16"]
    say("| mode | wall s | load s | steady tokens/s | steady docs/s | vs ST | matmul fraction | waits/batch | shapes | cold / warm batch ms |")
    say("|---|---|---|---|---|---|---|---|---|---|")

    def row(mode, label, secs, prof, exact=None):
        steady = prof["steady_tokens_per_s"] or tokens / secs
        docs_s = steady / tokens_per_doc
        frac = steady * flop_per_token / peak
        ratio = docs_s / st if st else None
        say(f"| {label} | {secs:.1f} | {prof['load_s'] or 0:.2f} | {steady:.0f} | {docs_s:.0f} | "
            f"{f'{ratio:.2f}x' if ratio else '-'} | {frac:.1%} | {prof['waits_per_batch']} | {prof['shapes']} | "
            f"{prof['cold_ms']} / {prof['warm_ms']} |" + ("" if exact is None else f" {exact}"))
        ROWS.append({
            "card": card, "matmul_tflops": round(peak / 1e12, 1), "model": model_name, "mix": mix, "mode": mode,
            "docs": len(texts), "tokens": tokens, "wall_s": round(secs, 2), "load_s": prof["load_s"],
            "tokens_per_s": round(steady), "fraction_of_matmul_rate": round(frac, 4),
            "sparq_docs_per_s": round(docs_s), "st_docs_per_s": round(st) if st else None,
            "ratio_to_st": round(ratio, 2) if ratio else None, "host_waits_per_batch": prof["waits_per_batch"],
            "token_shapes": prof["shapes"], "cold_batch_ms": prof["cold_ms"], "warm_batch_ms": prof["warm_ms"],
            "label": label,
        })
        write_json()

    batch = 1024 if mix == "realistic" else 256
    try:
        secs, err = run_sparq(["encode-text", *base, "--device", DEV, "--batch-size", str(batch)], texts_path,
                              env={"SPARQ_PROFILE": "counts"})
        row("encode-text", f"encode-text, batch {batch}", secs, profile_of(err))
    except Exception as e:
        say(f"FAILED: {e}")
    for i, budget in enumerate(budgets):
        if i > 0 and past_deadline(f"--batch-tokens {budget} on the {mix} mix"):
            continue
        out = os.path.join(tmp, f"out-{mix}-{budget}")
        try:
            secs, err = run_sparq(["encode", *base, "--input", folder, "--output", out, "--devices",
                                   "cuda:0" if DEV == "cuda" else "cpu", "--batch-tokens", str(budget)],
                                  env={"SPARQ_PROFILE": "counts"})
            import pyarrow.parquet as pq

            ids = []
            for f in sorted(os.listdir(out)):
                if f.startswith("part-"):
                    ids += pq.read_table(os.path.join(out, f), columns=["id"]).column("id").to_pylist()
            exact = "each id once" if len(ids) == len(set(ids)) == len(texts) else "IDS WRONG"
            row("encode", f"encode parquet, --batch-tokens {budget}", secs, profile_of(err), exact)
        except Exception as e:
            say(f"FAILED: {e}")
    # Where the time goes: stage times (each stage closed by a synchronisation) on a subset.
    if past_deadline(f"the stage profile of the {mix} mix"):
        return
    sub = os.path.join(tmp, f"stages-{mix}.jsonl")
    write_texts(sub, texts[:20000])
    try:
        _, err = run_sparq(["encode-text", *base, "--device", DEV, "--batch-size", str(batch)], sub,
                           env={"SPARQ_PROFILE": "1"})
        say(f"\nstages ({min(20000, len(texts))} docs, SPARQ_PROFILE=1): {profile_of(err)['line']}")
    except Exception as e:
        say(f"FAILED: {e}")


def write_json():
    """Rewrites the rows and the report so far (a run stopped from outside keeps them)."""
    name = f"{time.strftime('%Y-%m-%d', time.gmtime())}-{CARD_SLUG}.json"
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(ROWS, f, indent=1)
    with open(os.path.join(OUT, "gpu.md"), "w") as f:
        f.write("\n".join(REPORT) + "\n")


def main():
    global DEV, OUT, CARD_SLUG
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--docs", type=int, default=200000)
    ap.add_argument("--long-docs", type=int, default=100000)
    ap.add_argument("--st-docs", type=int, default=20000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline-s", type=float, default=float("inf"), help="skip optional parts after this")
    ap.add_argument("--budgets", default="32768,65536,131072", help="--batch-tokens sweep of the realistic mix")
    ap.add_argument("--tiny", action="store_true", help="the bundled tiny model in place of BERT-base")
    a = ap.parse_args()
    global DEADLINE
    DEV, OUT, DEADLINE = a.device, a.out, a.deadline_s
    import tempfile

    tmp = tempfile.mkdtemp(prefix="sparq-gpu-")
    card = torch.cuda.get_device_name() if DEV == "cuda" else "CPU (dry run)"
    CARD_SLUG = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    say(f"# GPU run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {card}, torch {torch.__version__}")
    peak = matmul_rate()
    say(f"bf16 matmul (8192^3, measured): {peak/1e12:.0f} TFLOP/s")

    t = time.perf_counter()
    realistic = make_corpus(tmp, "realistic", a.docs)
    long_mix = make_corpus(tmp, "long", a.long_docs)
    base = TINY if a.tiny else make_bert_base(os.path.join(tmp, "base"))
    base_name = "tiny (stand-in)" if a.tiny else "BERT-base"
    say(f"(corpora and the BERT-base model made in {time.perf_counter()-t:.0f} s)")

    say("\n## Parity on the card (sparq's packed encoder vs sentence-transformers)")
    say("| model / inputs | texts | fp32 max abs diff | fp32 rows with other dims | bf16 mean cosine |")
    say("|---|---|---|---|---|")
    fixture = [json.loads(line) for line in open(FIXTURE)]
    cases = [("tiny", TINY, fixture)]
    if not a.tiny:  # with --tiny the stand-in is the model just checked
        cases += [(f"{base_name}, realistic", base, realistic[1][:500]), (f"{base_name}, long", base, long_mix[1][:500])]
    for name, model_dir, inputs in cases:
        if name.endswith("long") and past_deadline("parity on the long mix"):
            continue
        try:
            parity(name, model_dir, inputs, tmp)
        except Exception as e:  # keep going: the timings still say something
            say(f"FAILED: parity {name}: {e}")
    write_json()

    say("\n## Throughput, bf16, steady state")
    budgets = [int(b) for b in a.budgets.split(",")]
    bench_mix(card, peak, base_name, base, "realistic", *realistic, tmp, a.st_docs, budgets)
    if not past_deadline("the long mix"):
        bench_mix(card, peak, base_name, base, "long", *long_mix, tmp, a.st_docs // 2, [65536])
    say(f"\n(total {time.perf_counter() - START:.0f} s)")
    write_json()


if __name__ == "__main__":
    main()
