#!/usr/bin/env python3
"""sparq train vs sentence-transformers' SparseEncoderTrainer on one GPU (and several when the
machine has them), in one run (driven by bench/gpu_train.sh).

  gpu_train.py OUT_DIR [--steps 200] [--batches 16,64] [--budget-s 420] [--dry]

1. A BERT-base-size SPLADE (12 x 768, 30522 vocab, random weights, made here as
   bench/gpu_bench.py makes it) and (query, answer) pairs (bench/train_vs_st.py's offline
   GooAQ-like pairs); both contenders read the same files.
2. Per batch size (the seed recipe's settings, configs/train-reference.toml: SpladeLoss over
   SparseMultipleNegativesRankingLoss, lambda_q 5e-5, lambda_d 3e-5, lr 2e-5, 10% warm-up,
   no-duplicates batches, seed 12), STEPS steps each, every step's loss logged:
     sentence-transformers  SparseEncoderTrainer, bf16=True; timed: trainer.train() alone
     sparq train            --dtype bf16 (CUDA autocast to bf16, fp32 master weights); timed by
                            its own log (the training loop)
   samples/s = steps x batch / seconds; peak GPU memory of each process (nvidia-smi polled every
   0.2 s: memory used on the card above what it held before the run, CUDA context included,
   the same measure for both; sentence-transformers' torch.cuda.max_memory_reserved too).
   Loss curves: the largest per-step difference over the STEPS steps between sparq and
   sentence-transformers, against the reference's run-to-run spread (sentence-transformers with
   seed 12 vs seed 13: another data order and dropout), raw and over 10-step means.
3. NCCL with world size 1: sparq --collective nccl at the first batch size (every gradient
   bucket through NCCL), against the run without a collective.
4. With N > 1 GPUs: sparq --nproc-per-node N --collective nccl (and tcp): the parameters'
   hash compared across ranks at every logged step (the run fails if they differ), and scaling
   efficiency = samples/s(N) / (N x samples/s(1)) at the same per-GPU batch.
Writes OUT_DIR/gpu_train.md and OUT_DIR/<date>-<card>-train.json (one row per run). Optional
runs are skipped, and said so, once --budget-s seconds have passed; both files are rewritten after
every row, so a run stopped from outside (bench/gpu_all.sh's deadline) still leaves what it had.
--dry: the whole script on the CPU with the bundled tiny model, 5 steps (or --steps), f32 (bf16
training is CUDA only), TCP with two CPU ranks standing in for several GPUs: proves the script
end to end.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import train_vs_st  # noqa: E402  (pairs, process timing, JSON lines)

SPARQ = os.path.join(ROOT, "target", "release", "sparq")
TINY = os.path.join(ROOT, "models", "splade-bert-tiny-nq")
REPORT, ROWS = [], []
START = time.perf_counter()

ST_CHILD = r"""
import json, sys, tempfile, time
cfg = json.loads(sys.argv[1])
import torch
import pyarrow.parquet as pq
from datasets import Dataset
from sentence_transformers import SparseEncoder
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

table = pq.read_table(cfg["pairs"])
dataset = Dataset.from_dict({name: table.column(name).to_pylist() for name in table.column_names[:2]})
cuda = cfg["device"] == "cuda"
model = SparseEncoder(cfg["model"], device=cfg["device"])
loss = SpladeLoss(model, loss=SparseMultipleNegativesRankingLoss(model),
                  document_regularizer_weight=cfg["lambda_d"], query_regularizer_weight=cfg["lambda_q"])
with tempfile.TemporaryDirectory() as out:
    args = SparseEncoderTrainingArguments(
        output_dir=out, max_steps=cfg["steps"], per_device_train_batch_size=cfg["batch_size"],
        learning_rate=cfg["lr"], warmup_ratio=cfg["warmup_ratio"], batch_sampler=BatchSamplers.NO_DUPLICATES,
        logging_steps=1, save_strategy="no", report_to="none", seed=cfg["seed"], bf16=cuda,
        dataloader_drop_last=True, use_cpu=not cuda, disable_tqdm=True)
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = trainer.train()
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
reserved = torch.cuda.max_memory_reserved() / 2**20 if cuda else None
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"seconds": secs, "steps": result.global_step, "losses": losses, "reserved_mib": reserved}))
"""


def say(line=""):
    print(line, flush=True)
    REPORT.append(line)


FILES = None  # (markdown, json), set once the card is known


def flush():
    """Rewrites the report and the rows so far (a run stopped from outside keeps them)."""
    if FILES is None:
        return
    with open(FILES[0], "w") as f:
        f.write("\n".join(REPORT) + "\n")
    with open(FILES[1], "w") as f:
        json.dump(ROWS, f, indent=1)


def elapsed():
    return time.perf_counter() - START


class GpuMemory:
    """Peak memory used on the cards while a run lasts, above what they held before it."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.peak = 0.0
        self.base = self.read() if enabled else []
        self.stop = threading.Event()
        self.thread = None

    @staticmethod
    def read():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            return [float(x) for x in out.split()]
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return []

    def __enter__(self):
        if self.enabled:
            def poll():
                while not self.stop.wait(0.2):
                    now = self.read()
                    if now and len(now) == len(self.base):
                        self.peak = max(self.peak, max(n - b for n, b in zip(now, self.base)))
            self.thread = threading.Thread(target=poll, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join()

    def mib(self):
        return round(self.peak) if self.enabled else None


def run_st(cfg, tmp, name, gpu):
    with GpuMemory(gpu) as mem:
        wall, rss, code, out, err = train_vs_st.run([sys.executable, "-c", ST_CHILD, json.dumps(cfg)],
                                                    ENV, tmp, name)
    lines = train_vs_st.json_lines(out)
    if code != 0 or not lines:
        say(f"FAILED: sentence-transformers {name} (exit {code}):\n{train_vs_st.tail(err)}")
        return None
    st = lines[-1]
    st["samples_per_s"] = cfg["steps"] * cfg["batch_size"] / st["seconds"]
    st["peak_gpu_mib"] = mem.mib()
    st["rss_mib"] = rss
    return st


def run_sparq(args, tmp, name, gpu, steps, batch, world=1):
    out_dir = os.path.join(tmp, f"{name}-out")
    cmd = [SPARQ, "train", "--train-data", PAIRS, "--output", out_dir, "--max-steps", str(steps),
           "--batch-size", str(batch), "--learning-rate", str(train_vs_st.LR),
           "--warmup-ratio", str(train_vs_st.WARMUP_RATIO), "--seed", str(train_vs_st.SEED),
           "--logging-steps", "1", "--save-steps", "0", *args]
    with GpuMemory(gpu) as mem:
        wall, rss, code, out, err = train_vs_st.run(cmd, ENV, tmp, name)
    if code != 0:
        say(f"FAILED: sparq {name} (exit {code}):\n{train_vs_st.tail(err)}")
        return None
    logs = [l for l in train_vs_st.json_lines(out) if "step" in l and "loss" in l]
    if len(logs) != steps:
        say(f"FAILED: sparq {name} logged {len(logs)} of {steps} steps")
        return None
    identical = [l.get("replicas_identical") for l in logs]
    return {"samples_per_s": logs[-1]["samples_per_s"], "losses": [l["loss"] for l in logs],
            "peak_gpu_mib": mem.mib(), "rss_mib": rss, "wall_s": wall,
            "replicas_checked": sum(1 for h in identical if isinstance(h, str)),
            "log_lines": len(logs), "world": world}


def max_abs_diff(a, b, window=1):
    if not a or not b:
        return None
    n = min(len(a), len(b))
    window = min(window, n)
    mean = lambda x, i: sum(x[i:i + window]) / window  # noqa: E731
    return max(abs(mean(a, i) - mean(b, i)) for i in range(0, n - window + 1))


def fmt(x, spec=".1f"):
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def main():
    global ENV, PAIRS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=None, help="200 (5 with --dry)")
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--budget-s", type=float, default=420, help="skip optional runs after this")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny model, 5 steps")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import torch

    dry = a.dry
    device = "cpu" if dry else "cuda"
    steps = a.steps or (5 if dry else 200)
    batches = [int(b) for b in a.batches.split(",")]
    gpus = 0 if dry else torch.cuda.device_count()
    if not dry and gpus == 0:
        sys.exit("no CUDA device: run with --dry (SPARQ_BENCH_DRY=1) for a CPU check of the script")
    card = torch.cuda.get_device_name() if not dry else "CPU (dry run)"
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    ENV = train_vs_st.thread_env(os.cpu_count() if not dry else 2)
    global FILES
    FILES = (os.path.join(a.out, "gpu_train.md"),
             os.path.join(a.out, f"{time.strftime('%Y-%m-%d', time.gmtime())}-{slug}-train.json"))
    say(f"# GPU training run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {card} x {max(gpus, 1)}; "
        f"{train_vs_st.versions()}")

    tmp = tempfile.mkdtemp(prefix="sparq-gpu-train-")
    if dry:
        model_dir, model_name = TINY, "splade-bert-tiny-nq"
    else:
        import gpu_bench
        gpu_bench.DEV = "cuda"
        model_dir, model_name = gpu_bench.make_bert_base(os.path.join(tmp, "base")), "BERT-base (random)"
    PAIRS = os.path.join(tmp, "pairs.parquet")
    # Enough distinct pairs for one epoch of the largest batch, and of the first batch on every rank.
    rows_needed = steps * max(max(batches), batches[0] * max(gpus, 2))
    train_vs_st.make_pairs(PAIRS, rows_needed + max(batches) * 4, model_dir, 13)
    say(f"(model and {rows_needed} pairs made in {elapsed():.0f} s)")
    dtype = ["--dtype", "f32"] if dry else ["--dtype", "bf16"]
    sparq_base = ["--model", model_dir, "--device", device, *dtype]
    st_cfg = {"model": model_dir, "pairs": PAIRS, "steps": steps, "lr": train_vs_st.LR, "device": device,
              "warmup_ratio": train_vs_st.WARMUP_RATIO, "lambda_q": train_vs_st.LAMBDA_Q,
              "lambda_d": train_vs_st.LAMBDA_D}
    gpu = not dry

    precision = "f32 on the CPU (dry run)" if dry else "bf16 (sparq --dtype bf16; SparseEncoderTrainer bf16=True)"
    say(f"\n## One {'process' if dry else 'GPU'}, {steps} steps, {precision}")
    say("| batch | collective | sparq samples/s | ST samples/s | ratio | sparq peak GPU MiB | ST peak GPU MiB "
        "| loss max abs diff (10-step means) | ST seed 12 vs 13 (10-step means) |")
    say("|---|---|---|---|---|---|---|---|---|")
    single = {}
    for batch in batches:
        st = run_st({**st_cfg, "batch_size": batch, "seed": train_vs_st.SEED}, tmp, f"st-b{batch}", gpu)
        spread = None
        if elapsed() < a.budget_s:
            st2 = run_st({**st_cfg, "batch_size": batch, "seed": train_vs_st.SEED + 1}, tmp, f"st2-b{batch}", gpu)
            if st and st2:
                spread = (max_abs_diff(st["losses"], st2["losses"]), max_abs_diff(st["losses"], st2["losses"], 10))
        else:
            say(f"(skipped: the run-to-run spread at batch {batch}, past --budget-s)")
        runs = [("none", [])]
        if batch == batches[0]:
            # World size 1 through NCCL: every bucket all-reduced by a one-rank communicator.
            runs.append(("nccl", ["--collective", "nccl"]) if not dry else ("tcp", ["--collective", "tcp"]))
        for collective, extra in runs:
            sp = run_sparq(sparq_base + extra + ["--threads", "2" if dry else "4"], tmp, f"sparq-b{batch}-{collective}", gpu, steps, batch)
            if sp is None:
                continue
            if collective == "none":
                single[batch] = sp
            diff = (max_abs_diff(sp["losses"], st["losses"]), max_abs_diff(sp["losses"], st["losses"], 10)) \
                if st else (None, None)
            ratio = sp["samples_per_s"] / st["samples_per_s"] if st else None
            say(f"| {batch} | {collective} (world 1) | {fmt(sp['samples_per_s'])} | {fmt(st and st['samples_per_s'])} "
                f"| {fmt(ratio, '.2f')}x | {fmt(sp['peak_gpu_mib'], 'd')} | {fmt(st and st['peak_gpu_mib'], 'd')} "
                f"| {fmt(diff[0], '.4f')} ({fmt(diff[1], '.4f')}) "
                f"| {fmt(spread and spread[0], '.4f')} ({fmt(spread and spread[1], '.4f')}) |")
            ROWS.append({"card": card, "model": model_name, "batch": batch, "world_size": 1,
                         "collective": collective, "steps": steps,
                         "sparq_samples_per_s": sp["samples_per_s"],
                         "st_samples_per_s": st and st["samples_per_s"],
                         "peak_gpu_mib": sp["peak_gpu_mib"], "st_peak_gpu_mib": st and st["peak_gpu_mib"],
                         "st_max_memory_reserved_mib": st and st["reserved_mib"],
                         "loss_max_abs_diff_200_steps": diff[0], "loss_max_abs_diff_10_step_means": diff[1],
                         "st_run_to_run_max_abs_diff": spread and spread[0],
                         "st_run_to_run_max_abs_diff_10_step_means": spread and spread[1],
                         "sparq_losses": sp["losses"], "st_losses": st and st["losses"]})
            flush()

    ranks = gpus if gpus > 1 else (2 if dry else 0)
    if ranks:
        batch = batches[0]
        say(f"\n## {ranks} {'CPU ranks standing in for GPUs' if dry else 'GPUs'}, batch {batch} per rank, "
            f"{steps} steps")
        say("| collective | samples/s | scaling efficiency | steps with parameters compared across ranks |")
        say("|---|---|---|---|")
        for collective in (["tcp"] if dry else ["nccl", "tcp"]):
            if collective == "tcp" and not dry and elapsed() > a.budget_s:
                say("(skipped: tcp across GPUs, past --budget-s)")
                continue
            sp = run_sparq(sparq_base + ["--nproc-per-node", str(ranks), "--collective", collective,
                                         "--threads", "2"], tmp, f"sparq-{ranks}x-{collective}", gpu, steps,
                           batch, ranks)
            if sp is None:
                continue
            base = single.get(batch)
            eff = sp["samples_per_s"] / (ranks * base["samples_per_s"]) if base else None
            say(f"| {collective} | {fmt(sp['samples_per_s'])} | {fmt(eff and 100 * eff)}% "
                f"| {sp['replicas_checked']} of {sp['log_lines']} (bit-identical, else the run fails) |")
            ROWS.append({"card": card, "model": model_name, "batch": batch, "world_size": ranks,
                         "collective": collective, "steps": steps, "sparq_samples_per_s": sp["samples_per_s"],
                         "st_samples_per_s": None, "peak_gpu_mib": sp["peak_gpu_mib"],
                         "loss_max_abs_diff_200_steps": None, "scaling_efficiency": eff,
                         "replicas_identical_steps": sp["replicas_checked"]})
            flush()
    else:
        say("\n(one GPU: no multi-GPU rows)")

    say(f"\n(total {elapsed():.0f} s)")
    flush()
    say(f"wrote {FILES[1]}")
    return 0 if ROWS else 1


if __name__ == "__main__":
    sys.exit(main())
