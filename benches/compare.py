#!/usr/bin/env python3
"""Side-by-side CPU comparison with the PyTorch reference (benches/compare.sh drives this).

Runs PyTorch (benches/reference/bench.py: the same UNet in PyTorch, benches/reference/unet.py)
and ours (the `workloads` bench binary, timed the same way) alternately, one process per (rep, workload, side), both pinned to the same thread
count, and appends every JSON line to a file; then prints, per workload, the median images/s of
each side with every rep, the ratio of the medians and the median of the per-rep ratios, peak
RSS (the maximum over reps), our fraction of the sgemm peak, and the other load the machine
carried during the timed region.

On a shared Linux box each run goes into its own session and autogroup at nice -20 (needs
root; otherwise it runs at normal priority and says so), as REFERENCE.md's "Reproduce" does.

  compare.py run --ref-py PY --ours EXE --reps N --threads T --out F W1 ...
  compare.py summary F
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# REFERENCE.md: best recorded f32 GEMM on this machine, 2 threads.
SGEMM_PEAK_GFLOPS = 167.0
# REFERENCE.md: counted conv/matmul GFLOP per image (train = 3x forward; sampling = steps x forward).
GFLOP_PER_IMAGE = {"W1": 8.67, "W2": 50 * 2.89, "W3": 0.368, "W4": 1000 * 0.123}
WORKLOADS = ["W1", "W2", "W3", "W4"]


def isolate():
    """Own session, autogroup nice -20 and nice -20; silently nothing where not permitted."""
    os.setsid()
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write("-20")
        os.nice(-20)
    except OSError:
        pass


def run_one(cmd, cwd, env, tag, out):
    """Run cmd, keep its JSON lines tagged with `tag`, append them to `out`."""
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                       preexec_fn=isolate)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        sys.stderr.write(f"compare: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}\n")
        return
    with open(out, "a") as f:
        for l in lines:
            row = json.loads(l)
            row.update(tag)
            f.write(json.dumps(row) + "\n")
            print(f"  {row['workload']} {row['impl']:10s} {row['images_per_s']:9.3f} images/s"
                  f"  rss {row.get('peak_rss_mb', 0):7.1f} MB"
                  f"  other load {row.get('other_load_cores', 0):.2f}", flush=True)


def run(a):
    threads = str(a.threads)
    env = dict(os.environ, REF_THREADS=threads, RAYON_NUM_THREADS=threads,
               OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[:3]}", flush=True)
    for rep in range(1, a.reps + 1):
        print(f"rep {rep}/{a.reps}", flush=True)
        for w in a.workloads:
            tag = {"rep": rep, "threads_requested": a.threads}
            ref = [a.ref_py, os.path.join(ROOT, "benches", "reference", "bench.py"),
                   "--device", "cpu", "--workload", w]
            ours = [a.ours, w]
            # Alternate which side goes first, so a drift in machine load hits both alike.
            pair = [(ref, ROOT), (ours, None)]
            for cmd, cwd in pair if rep % 2 else pair[::-1]:
                run_one(cmd, cwd, env, tag, a.out)
    summary(a.out)


def summary(path):
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    by = collections.defaultdict(list)
    for r in rows:
        if "images_per_s" in r:
            by[(r["workload"], r["impl"])].append(r)
    print(f"\n{path}: median images/s of alternating runs (each run in brackets), peak RSS = max over runs")
    print("| workload | PyTorch images/s | ours images/s | ours / PyTorch | median of per-rep ratios "
          "| PyTorch peak RSS MB | ours peak RSS MB | ours GFLOP/s | ours / sgemm peak "
          "| other load (cores) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w in WORKLOADS:
        t, o = by.get((w, "torch-ref"), []), by.get((w, "ddpm"), [])
        if not t or not o:
            continue
        ti = statistics.median(r["images_per_s"] for r in t)
        oi = statistics.median(r["images_per_s"] for r in o)
        each = lambda rs: ", ".join(f"{r['images_per_s']:.1f}" for r in rs)
        rss = lambda rs: max(r.get("peak_rss_mb", 0) for r in rs)
        load = max(r.get("other_load_cores", 0) for r in t + o)
        gflops = oi * GFLOP_PER_IMAGE[w]
        # The two runs of one rep ran back to back, so their ratio sees the same machine load.
        per_rep = {r["rep"]: r["images_per_s"] for r in o}
        paired = [per_rep[r["rep"]] / r["images_per_s"] for r in t if r["rep"] in per_rep]
        print(f"| {w} | {ti:.2f} ({each(t)}) | {oi:.2f} ({each(o)}) | **{oi / ti:.2f}x** "
              f"| {statistics.median(paired):.2f}x | {rss(t):.0f} | {rss(o):.0f} | {gflops:.0f} "
              f"| {gflops / SGEMM_PEAK_GFLOPS:.2f} | <= {load:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--ref-py", required=True)
    r.add_argument("--ours", required=True)
    r.add_argument("--reps", type=int, default=5)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--out", required=True)
    r.add_argument("workloads", nargs="*", default=WORKLOADS)
    s = sub.add_parser("summary")
    s.add_argument("out")
    a = ap.parse_args()
    if a.cmd == "run":
        a.workloads = a.workloads or WORKLOADS
        run(a)
    else:
        summary(a.out)


if __name__ == "__main__":
    main()
