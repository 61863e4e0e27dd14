#!/usr/bin/env python3
"""Two sparq binaries side by side on the same texts, alternated, in one run: the check that a
change is no slower (run it on a quiet machine).

  ab.py OLD_BINARY NEW_BINARY CORPUS.parquet [--model DIR] [--docs N] [--reps R]
        [--dtype f32 bf16] [--encode]

For each dtype: `encode-text` (texts piped in, vectors out, model load included), and with
--encode `sparq encode` on the same rows (one worker), R times each, old and new alternated.
Prints the median wall and CPU seconds (user + system: on a shared machine it drifts less than
wall time) and the new/old ratios, and checks that both wrote the same vectors (largest
weight difference).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time

import pyarrow.parquet as pq


CPU = {}


def run(cmd, stdin=None, stdout=None):
    """Wall seconds of the command; its CPU seconds (user + system, children included) go to
    CPU[id(cmd)]: on a shared machine CPU time drifts less than wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=stdin, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {p.stderr[-1500:]}")
    run.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall


def max_diff(a_path, b_path):
    worst = 0.0
    with open(a_path) as fa, open(b_path) as fb:
        for la, lb in zip(fa, fb):
            va, vb = json.loads(la), json.loads(lb)
            da = dict(zip(va["indices"], va["values"]))
            db = dict(zip(vb["indices"], vb["values"]))
            for k in set(da) | set(db):
                worst = max(worst, abs(da.get(k, 0.0) - db.get(k, 0.0)))
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("corpus")
    ap.add_argument("--model", default="models/splade-bert-tiny-nq")
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", nargs="+", default=["f32"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--encode", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sparq-ab-")
    table = pq.read_table(a.corpus).slice(0, a.docs)
    texts = os.path.join(tmp, "texts.jsonl")
    with open(texts, "w") as f:
        for t in table.column("text").to_pylist():
            f.write(json.dumps(t) + "\n")
    os.makedirs(os.path.join(tmp, "in"))
    pq.write_table(table, os.path.join(tmp, "in", "c.parquet"), row_group_size=1000)
    print(f"{a.docs} docs, model {a.model}, {a.threads} threads, {a.reps} alternated runs each")
    print("| command | dtype | old s (median) | new s (median) | new/old speed | old CPU s | new CPU s | new/old CPU | max weight diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype in a.dtype:
        times = {"old": [], "new": []}
        cpu = {"old": [], "new": []}
        outs = {}
        for rep in range(a.reps):
            for name in ("old", "new"):
                out = os.path.join(tmp, f"{name}-{dtype}.jsonl")
                with open(texts) as fin, open(out, "w") as fout:
                    times[name].append(run([getattr(a, name), "encode-text", "--model", a.model, "--dtype", dtype,
                                            "--threads", str(a.threads)], fin, fout))
                cpu[name].append(run.cpu)
                outs[name] = out
        o, n = statistics.median(times["old"]), statistics.median(times["new"])
        co, cn = statistics.median(cpu["old"]), statistics.median(cpu["new"])
        print(f"| encode-text | {dtype} | {o:.2f} | {n:.2f} | {o / n:.3f}x | {co:.2f} | {cn:.2f} | {co / cn:.3f}x | "
              f"{max_diff(outs['old'], outs['new']):.1e} |")
        if a.encode:
            times = {"old": [], "new": []}
            cpu = {"old": [], "new": []}
            for rep in range(a.reps):
                for name in ("old", "new"):
                    out = os.path.join(tmp, f"enc-{name}-{dtype}-{rep}")
                    times[name].append(run([getattr(a, name), "encode", "--model", a.model, "--dtype", dtype,
                                            "--input", os.path.join(tmp, "in"), "--output", out,
                                            "--threads", str(a.threads)]))
                    cpu[name].append(run.cpu)
            o, n = statistics.median(times["old"]), statistics.median(times["new"])
            co, cn = statistics.median(cpu["old"]), statistics.median(cpu["new"])
            print(f"| encode (1 worker) | {dtype} | {o:.2f} | {n:.2f} | {o / n:.3f}x | {co:.2f} | {cn:.2f} | {co / cn:.3f}x | |")


if __name__ == "__main__":
    main()
