"""Disk vs deletion cost: keep every k-th stage checkpoint (`train.checkpoint_every = k`).

    python scripts/bench_storage.py [--dataset mnist5k] [--shards 5] [--slices 8]
                                    [--every 1,2,4,8] [--requests 8] [--quick]
                                    [--json] [--out F.json] [--plot F.png]

One run per k on the same data, partition and seed. Disk: the checkpoint bytes `sisa status`
reports after training. Cost: the same single-id requests are sent to every run, interleaved
(request i to k = 1, 2, ... before request i + 1), so machine noise hits every k alike; a
deletion restarts from the latest kept checkpoint before the affected stage, so larger k
retrains more. Reported: checkpoints kept, disk, median seconds and mean examples x epochs
retrained per request, each also relative to k = 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--every", default="1,2,4,8", help="values of checkpoint_every")
    ap.add_argument("--requests", type=int, default=8, help="single-id requests per run")
    ap.add_argument("--quick", action="store_true", help="2 values of k, 3 requests (a smoke run)")
    benchlib.output_flags(ap, "plot disk vs retrained work per request")
    args = ap.parse_args(argv)
    every = [1, 2] if args.quick else [int(k) for k in args.every.split(",")]
    requests = 3 if args.quick else args.requests

    import numpy as np

    import sisa
    from sisa.data import datasets

    ds = datasets.load(args.dataset)
    ids = np.random.default_rng(0).choice(ds.ids, requests + 1, replace=False).tolist()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="sisa-bench-storage-") as tmp:
        for k in every:
            cfg = sisa.Config().replace(data={"dataset": args.dataset}, train={"checkpoint_every": k},
                                        partition={"shards": args.shards, "slices": args.slices})
            wd = Path(tmp) / f"every_{k}"
            sisa.train(wd, cfg, dataset=ds, progress=False)
            status = sisa.status(wd)
            sisa.forget(wd, [ids[-1]], progress=False)  # compiles this run's lane width, not timed
            runs[k] = {"every": k, "checkpoints": sum(1 for _ in (wd / "checkpoints").glob("shard_*/[0-9]*")),
                       "checkpoint_bytes": status["disk_bytes"]["checkpoints"], "seconds": [], "examples_epochs": []}
        for i in ids[:-1]:
            for k in every:
                t0 = time.perf_counter()
                report = sisa.forget(Path(tmp) / f"every_{k}", [i], progress=False)
                runs[k]["seconds"].append(time.perf_counter() - t0)
                runs[k]["examples_epochs"].append(report["examples_epochs_retrained"])
    base = runs[every[0]]
    rows = []
    for k in every:
        r = runs[k]
        r["median_seconds"] = statistics.median(r["seconds"])
        r["mean_examples_epochs"] = statistics.fmean(r["examples_epochs"])
        r["disk_x"] = r["checkpoint_bytes"] / base["checkpoint_bytes"]
        r["work_x"] = r["mean_examples_epochs"] / base["mean_examples_epochs"]
        r["time_x"] = r["median_seconds"] / base["median_seconds"]
        rows.append(r)
    out = {"dataset": args.dataset, "shards": args.shards, "slices": args.slices, "requests": requests,
           "backend": __import__("jax").default_backend(), "runs": rows}

    def plot(path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot([r["checkpoint_bytes"] / 2**20 for r in rows], [r["mean_examples_epochs"] for r in rows], "o-")
        for r in rows:
            ax.annotate(f"k={r['every']}", (r["checkpoint_bytes"] / 2**20, r["mean_examples_epochs"]),
                        textcoords="offset points", xytext=(5, 5))
        ax.set_xlabel("checkpoint disk (MiB)")
        ax.set_ylabel("examples x epochs retrained per single-id request")
        ax.set_title(f"checkpoint_every: {args.dataset}, S={args.shards}, R={args.slices}")
        benchlib.save_figure(fig, path)

    if benchlib.finish(out, args, plot):
        return 0
    print(f"== checkpoint_every = k: {args.dataset}, S={args.shards}, R={args.slices}, {requests} single-id requests "
          f"({out['backend']})")
    print(f"{'k':>3} {'ckpts':>6} {'disk MiB':>9} {'disk x':>7} {'ex*ep/req':>10} {'work x':>7} {'s/req':>7} {'time x':>7}")
    for r in rows:
        print(f"{r['every']:>3} {r['checkpoints']:>6} {r['checkpoint_bytes'] / 2**20:>9.1f} {r['disk_x']:>7.2f} "
              f"{r['mean_examples_epochs']:>10.0f} {r['work_x']:>7.2f} {r['median_seconds']:>7.2f} {r['time_x']:>7.2f}")
    print("  disk x, work x, time x: relative to the first k; s/req: median; ex*ep/req: mean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
