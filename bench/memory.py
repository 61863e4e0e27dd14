#!/usr/bin/env python3
"""Peak memory of `sparq encode` on a large corpus: samples the RSS of the coordinator and its
workers twice a second and prints the peak per process, the peak of the whole tree, and the
tree's RSS at each quarter of the run (flat means memory does not grow with corpus size).

  memory.py CORPUS_DIR [--workers N] [--model DIR]
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    stat = f.read()
                if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                    out.append(int(p))
            except OSError:
                pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "splade-bert-tiny-nq"))
    a = ap.parse_args()
    out = tempfile.mkdtemp()
    t0 = time.time()
    p = subprocess.Popen([os.path.join(ROOT, "target", "release", "sparq"), "encode", "--input", a.corpus,
                          "--output", out, "--model", a.model, "--workers", str(a.workers)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    samples, peak_proc, peak_tree = [], {}, 0.0
    while p.poll() is None:
        pids = [p.pid] + children(p.pid)
        rss = {q: rss_mib(q) for q in pids}
        for q, r in rss.items():
            peak_proc[q] = max(peak_proc.get(q, 0.0), r)
        tree = sum(rss.values())
        peak_tree = max(peak_tree, tree)
        samples.append((time.time() - t0, tree))
        time.sleep(0.5)
    summary = json.loads(p.stdout.read().strip().splitlines()[-1])
    quarters = [round(max((s[1] for s in samples if k / 4 * samples[-1][0] <= s[0] <= (k + 1) / 4 * samples[-1][0]), default=0)) for k in range(4)]
    print(json.dumps({"docs": summary["docs"], "seconds": round(summary["seconds"]), "workers": a.workers,
                      "peak_rss_mib_per_process": sorted(round(v) for v in peak_proc.values()),
                      "peak_rss_mib_tree": round(peak_tree), "tree_rss_mib_by_quarter": quarters}))


if __name__ == "__main__":
    main()
