#!/usr/bin/env python3
"""One summary of a bench/gpu_all.sh run: the encoder and training figures against issue 29's
targets (from issues 13 and 19), the --batch-tokens budget the sweep favours, and every FAILED
line of either part. Writes OUT_DIR/gpu_all.md (the summary, then both reports) and prints it.

  gpu_summary.py OUT_DIR [--encoder-rc N] [--train-rc N]

Exits 1 when a part wrote no rows or reported a failure, so a dry run in `make test` fails loudly.
"""
import argparse
import glob
import json
import os
import sys


def newest(out, pattern):
    files = sorted(glob.glob(os.path.join(out, pattern)), key=os.path.getmtime)
    return files[-1] if files else None


def load(path):
    if not path:
        return []
    with open(path) as f:
        return json.load(f)


def verdict(ok):
    return "-" if ok is None else ("met" if ok else "NOT met")


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def encoder_targets(rows):
    real = [r for r in rows if r["mix"] == "realistic"]
    best = max(real, key=lambda r: r["tokens_per_s"], default=None)
    text = next((r for r in real if r["mode"] == "encode-text"), None)
    enc = max((r for r in real if r["mode"] == "encode"), key=lambda r: r["tokens_per_s"], default=None)
    frac = best and best["fraction_of_matmul_rate"]
    ratio = best and best["ratio_to_st"]
    gap = enc and text and enc["tokens_per_s"] / text["tokens_per_s"]
    lines = [
        f"| encoder: fraction of the measured bf16 matmul rate (realistic mix) | >= 40% "
        f"| {fmt(frac and 100 * frac, '.1f')}% | {verdict(frac and frac >= 0.40)} |",
        f"| encoder: docs/s vs sentence-transformers bf16 (same run) | >= 10x "
        f"| {fmt(ratio, '.2f')}x | {verdict(ratio and ratio >= 10)} |",
        f"| encoder: `encode` (parquet) vs `encode-text` tokens/s | within 10% "
        f"| {fmt(gap and 100 * gap, '.0f')}% | {verdict(gap and gap >= 0.90)} |",
    ]
    sweep = [r for r in real if r["mode"] == "encode"]
    pick = max(sweep, key=lambda r: r["tokens_per_s"], default=None)
    note = None
    if pick:
        budget = pick["label"].rsplit(" ", 1)[-1]
        note = (f"--batch-tokens sweep (encode, realistic mix): "
                + ", ".join(f"{r['label'].rsplit(' ', 1)[-1]}: {r['tokens_per_s']} tokens/s" for r in sweep)
                + f"; fastest {budget}")
    return lines, note


def train_targets(rows):
    lines = []
    for r in (r for r in rows if r.get("world_size") == 1 and r["collective"] == "none"):
        st = r.get("st_samples_per_s")
        ratio = st and r["sparq_samples_per_s"] / st
        lines.append(f"| training: samples/s vs SparseEncoderTrainer, batch {r['batch']} | >= 2x "
                     f"| {fmt(ratio, '.2f')}x | {verdict(ratio and ratio >= 2)} |")
        diff, spread = r.get("loss_max_abs_diff_10_step_means"), r.get("st_run_to_run_max_abs_diff_10_step_means")
        ok = None if diff is None or spread is None else diff <= spread
        lines.append(f"| training: loss curve vs reference, batch {r['batch']} (10-step means) "
                     f"| within ST's seed spread ({fmt(spread, '.4f')}) | {fmt(diff, '.4f')} | {verdict(ok)} |")
    nccl = [r for r in rows if r.get("world_size") == 1 and r["collective"] == "nccl"]
    if nccl:
        lines.append(f"| training: NCCL at world size 1 | runs | {nccl[0]['sparq_samples_per_s']:.1f} samples/s "
                     f"| met |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--encoder-rc", type=int, default=0)
    ap.add_argument("--train-rc", type=int, default=0)
    a = ap.parse_args()
    enc_files = [p for p in glob.glob(os.path.join(a.out, "[0-9]*.json")) if not p.endswith("-train.json")]
    enc_path = max(enc_files, key=os.path.getmtime) if enc_files else None
    train_path = newest(a.out, "[0-9]*-train.json")
    enc_rows, train_rows = load(enc_path), load(train_path)
    reports = {}
    for name in ("gpu.md", "gpu_train.md"):
        p = os.path.join(a.out, name)
        reports[name] = open(p).read() if os.path.exists(p) else ""
    failed = [line for text in reports.values() for line in text.splitlines() if line.startswith("FAILED")]

    out = ["# GPU run summary (bench/gpu_all.sh)", "",
           f"encoder: {os.path.basename(enc_path) if enc_path else 'NO JSON'} ({len(enc_rows)} rows, "
           f"exit {a.encoder_rc}{', stopped at its hard deadline' if a.encoder_rc == 124 else ''}); "
           f"training: {os.path.basename(train_path) if train_path else 'NO JSON'} ({len(train_rows)} rows, "
           f"exit {a.train_rc}{', stopped at its hard deadline' if a.train_rc == 124 else ''})", "",
           "| target | goal | measured | verdict |", "|---|---|---|---|"]
    enc_lines, note = encoder_targets(enc_rows)
    out += enc_lines + train_targets(train_rows)
    if note:
        out += ["", note]
    if failed:
        out += ["", "Failures:"] + [f"- {f}" for f in failed]
    text = "\n".join(out) + "\n"
    with open(os.path.join(a.out, "gpu_all.md"), "w") as f:
        f.write(text + "\n" + reports["gpu.md"] + "\n" + reports["gpu_train.md"])
    print(text)
    return 1 if failed or not enc_rows or not train_rows else 0


if __name__ == "__main__":
    sys.exit(main())
