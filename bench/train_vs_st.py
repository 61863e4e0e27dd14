#!/usr/bin/env python3
"""sparq train vs sentence-transformers' SparseEncoderTrainer: training throughput on the same
pairs, model, steps, batch size and threads, side by side in one run, on CPU.

  train_vs_st.py --model DIR --steps N --batch-size B --threads T [--pairs FILE.parquet]
                 [--write-pairs FILE.parquet] [--seed S] [--label TEXT]

--pairs: a parquet file whose first two columns are (query, answer); without it, one is made
offline in the manner of bench/make_corpus.py (CPython's pydoc topics): answer = consecutive
sentences of ~60 tokens (GooAQ-like lognormal lengths, 12..199), query = 9 lowercased words cut
from it; N*B + max(B, N*B/10) distinct rows (seed S, default 13). --write-pairs keeps that file.

Contenders (each in its own process, OMP/MKL/rayon threads = T):
  sentence-transformers  SparseEncoderTrainer with SpladeLoss(SparseMultipleNegativesRankingLoss,
                         lambda_d 3e-5, lambda_q 5e-5), lr 2e-5, warmup_ratio 0.1,
                         NO_DUPLICATES batches, drop_last, seed 12, max_steps N, no saving, on
                         CPU with torch.set_num_threads(T). Timed: trainer.train() alone (model
                         load, dataset and trainer set-up excluded); the whole process as well.
  sparq train            target/release/sparq train with the same settings; timed as a whole
                         process (load included), and by its own JSON log (training loop only),
                         when it prints one.
samples/s = N * B / seconds. Peak RSS is each process's ru_maxrss (os.wait4).
Both sides keep their defaults for everything else (weight decay 0, max_grad_norm 1, AdamW).
Run on a quiet machine: numbers taken beside a build are meaningless.
"""
import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARQ = os.path.join(ROOT, "target", "release", "sparq")
LR = 2e-5
WARMUP_RATIO = 0.1
SEED = 12
LAMBDA_Q = 5e-5
LAMBDA_D = 3e-5

ST_CHILD = r"""
import json, sys, tempfile, time
cfg = json.loads(sys.argv[1])
t_start = time.perf_counter()
import torch
torch.set_num_threads(cfg["threads"])
try:
    import datasets, accelerate  # noqa: F401  (the trainer needs both)
except ImportError as e:
    sys.exit(f"{e}: the trainer needs `pip install 'sentence-transformers[train]'` (datasets, accelerate)")
import pyarrow.parquet as pq
from datasets import Dataset
from sentence_transformers import SparseEncoder
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

table = pq.read_table(cfg["pairs"])
dataset = Dataset.from_dict({name: table.column(name).to_pylist() for name in table.column_names[:2]})
model = SparseEncoder(cfg["model"], device="cpu")
loss = SpladeLoss(model, loss=SparseMultipleNegativesRankingLoss(model),
                  document_regularizer_weight=cfg["lambda_d"], query_regularizer_weight=cfg["lambda_q"])
with tempfile.TemporaryDirectory() as out:
    args = SparseEncoderTrainingArguments(
        output_dir=out, max_steps=cfg["steps"], per_device_train_batch_size=cfg["batch_size"],
        learning_rate=cfg["lr"], warmup_ratio=cfg["warmup_ratio"], batch_sampler=BatchSamplers.NO_DUPLICATES,
        logging_steps=cfg["steps"], save_strategy="no", report_to="none", seed=cfg["seed"],
        dataloader_drop_last=True, use_cpu=True, disable_tqdm=True)
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    t0 = time.perf_counter()
    result = trainer.train()
    secs = time.perf_counter() - t0
print(json.dumps({"seconds": secs, "setup_seconds": t0 - t_start, "steps": result.global_step,
                  "metrics": result.metrics, "log_history": trainer.state.log_history}))
"""


def thread_env(threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS"):
        env[k] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "true"
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    return env


def run(cmd, env, tmp, name):
    """Runs cmd with stdout/stderr to files; returns (seconds, peak RSS MiB, exit code, stdout, stderr)."""
    out_path, err_path = os.path.join(tmp, f"{name}.out"), os.path.join(tmp, f"{name}.err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, text=True)
        except OSError as e:
            return 0.0, 0.0, -1, "", str(e)
        _, status, usage = os.wait4(p.pid, 0)
        secs = time.perf_counter() - t0
    with open(out_path) as f:
        stdout = f.read()
    with open(err_path) as f:
        stderr = f.read()
    code = os.waitstatus_to_exitcode(status)
    return secs, usage.ru_maxrss / 1024, code, stdout, stderr


def json_lines(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def make_pairs(path, rows, model_dir, seed):
    """(query, answer) pairs from CPython's pydoc topics, as bench/make_corpus.py cuts passages."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_corpus import sentences
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    pool = list(dict.fromkeys(sentences()))
    lengths = {s: len(tok(s, add_special_tokens=False)["input_ids"]) for s in pool}
    queries, answers, seen_q, seen_a = [], [], set(), set()
    tries = 0
    while len(answers) < rows:
        tries += 1
        if tries > 20 * rows + 1000:
            sys.exit(f"could only make {len(answers)} distinct pairs of the {rows} needed")
        # GooAQ answers: mean ~60 tokens, 14..201 (lognormal fits the shape), as make_corpus.py.
        target = min(199, max(12, int(rng.lognormvariate(4.15, 0.45))))
        # Consecutive sentences from a random start, as make_corpus.py; once those repeat (the
        # pool has ~2,400 sentences, so past ~15,000 rows), sentences drawn at random.
        consecutive = tries <= 3 * rows
        start = rng.randrange(len(pool))
        parts, n = [], 0
        for i in range(len(pool)):
            sentence = pool[(start + i) % len(pool)] if consecutive else rng.choice(pool)
            if n + lengths[sentence] > target and parts:
                break
            parts.append(sentence)
            n += lengths[sentence]
        answer = " ".join(parts)
        words = answer.split()
        if len(words) < 12 or answer in seen_a:
            continue
        cut = rng.randrange(len(words) - 9)
        query = " ".join(words[cut:cut + 9]).lower()
        if query in seen_q:
            continue
        seen_a.add(answer)
        seen_q.add(query)
        answers.append(answer)
        queries.append(query)
    pq.write_table(pa.table({"query": queries, "answer": answers}), path)


def token_stats(path, model_dir, limit=2000):
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    table = pq.read_table(path)
    names = table.column_names[:2]
    tok = AutoTokenizer.from_pretrained(model_dir)
    stats = {"rows": table.num_rows}
    for name in names:
        texts = table.column(name).to_pylist()[:limit]
        n = [len(tok(t, truncation=True, max_length=256)["input_ids"]) for t in texts]
        stats[name] = sum(n) / max(1, len(n))
    return names, stats


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}"


def versions():
    out = []
    for mod in ("torch", "sentence_transformers", "transformers"):
        try:
            out.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    try:
        rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if rev:
            out.append(f"sparq {rev}")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ", ".join(out)


def tail(text, lines=30):
    return "\n".join(text.strip().splitlines()[-lines:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--pairs", help="parquet of (query, answer) pairs; made offline if absent")
    ap.add_argument("--write-pairs", help="where to keep the generated pairs")
    ap.add_argument("--seed", type=int, default=13, help="seed of the generated pairs")
    ap.add_argument("--sparq", default=SPARQ)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    model = os.path.abspath(a.model)
    n, b, t = a.steps, a.batch_size, a.threads
    samples = n * b

    with tempfile.TemporaryDirectory(prefix="train_vs_st-") as tmp:
        pairs = a.pairs
        if not pairs:
            pairs = a.write_pairs or os.path.join(tmp, "pairs.parquet")
            make_pairs(pairs, samples + max(b, samples // 10), model, a.seed)
        pairs = os.path.abspath(pairs)
        names, stats = token_stats(pairs, model)
        if stats["rows"] < samples:
            sys.exit(f"{pairs} has {stats['rows']} rows; {n} steps of {b} need {samples}")
        env = thread_env(t)
        rows, failures = [], []

        # sentence-transformers
        cfg = {"threads": t, "model": model, "pairs": pairs, "steps": n, "batch_size": b, "lr": LR,
               "warmup_ratio": WARMUP_RATIO, "seed": SEED, "lambda_q": LAMBDA_Q, "lambda_d": LAMBDA_D}
        wall, rss, code, out, err = run([sys.executable, "-c", ST_CHILD, json.dumps(cfg)], env, tmp, "st")
        st = json_lines(out)[-1] if code == 0 and json_lines(out) else None
        if st is None:
            failures.append(("sentence-transformers", code, err))
        else:
            loss = next((h.get("loss") for h in st["log_history"] if "loss" in h), None)
            rows.append(("sentence-transformers SparseEncoderTrainer.train()", st["steps"], samples / st["seconds"], rss, loss))
            rows.append(("sentence-transformers, whole process (load included)", st["steps"], samples / wall, rss, None))

        # sparq
        out_dir = os.path.join(tmp, "sparq-out")
        cmd = [a.sparq, "train", "--model", model, "--train-data", pairs, "--output", out_dir,
               "--max-steps", str(n), "--batch-size", str(b), "--learning-rate", str(LR),
               "--warmup-ratio", str(WARMUP_RATIO), "--seed", str(SEED), "--threads", str(t),
               "--logging-steps", str(n), "--save-steps", "0"]
        wall, rss, code, out, err = run(cmd, env, tmp, "sparq")
        if code != 0:
            failures.append(("sparq train", code, err))
        else:
            logs = json_lines(out)
            steps = [l for l in logs if "step" in l and "loss" in l]
            summary = next((l["train_summary"] for l in logs if "train_summary" in l), None)
            done = (summary or {}).get("steps") or (steps[-1]["step"] if steps else n)
            loss = steps[-1]["loss"] if steps else None
            rows.append(("sparq train, whole process (load included)", done, samples / wall, rss, loss))
            # Its last step line times the loop alone; the summary (printed after the final save)
            # is the fallback.
            loop = (steps[-1].get("samples_per_s") if steps else None) or (summary or {}).get("samples_per_s")
            if loop:
                rows.append(("sparq train, training loop (its own log)", done, loop, rss, None))

    base = rows[0][2] if rows and rows[0][0].startswith("sentence-transformers") else None
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{a.label} {date}; {machine()}; {versions()}")
    print(f"{n} steps x {b} pairs, {t} threads; pairs {stats['rows']} rows, mean tokens "
          + ", ".join(f"{k} {stats[k]:.1f}" for k in names))
    print("| contender | steps | samples/s | ratio vs ST | peak RSS MiB | last logged loss |")
    print("|---|---|---|---|---|---|")
    for name, steps, rate, rss, loss in rows:
        ratio = f"{rate / base:.2f}x" if base else ""
        loss = f"{loss:.4f}" if isinstance(loss, (int, float)) else ""
        print(f"| {name} | {steps} | {rate:.1f} | {ratio} | {rss:.0f} | {loss} |")
    for name, code, err in failures:
        print(f"| {name} | failed (exit {code}) | | | | |")
    for name, code, err in failures:
        print(f"\n{name} failed (exit {code}); its stderr ends:\n{tail(err)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
