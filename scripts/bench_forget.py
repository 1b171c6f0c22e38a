"""Forgetting one id vs training everything, measured side by side in one run.

    python scripts/bench_forget.py [--dataset mnist5k] [--shards 5] [--slices 4] [--forgets 8] [--json]

In-process numbers (warm: programs compiled) isolate the work itself; fresh-process numbers
(`sisa train` / `sisa forget` as a user runs them) include Python and JAX start-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import sisa
from sisa.data import datasets
from sisa.workdir import Workdir


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cli(*args) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sisa.cli", *map(str, args), "--json"], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--forgets", type=int, default=8, help="single-id requests to time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sisa-bench-"))
    ds = datasets.load(args.dataset)
    cfg = sisa.Config().replace(data={"dataset": args.dataset}, partition={"shards": args.shards, "slices": args.slices})
    _, train_cold = timed(lambda: sisa.train(root / "cold", cfg, dataset=ds, progress=False))
    _, train_warm = timed(lambda: sisa.train(root / "warm", cfg, dataset=ds, progress=False))
    ids = np.random.default_rng(0).choice(ds.ids, args.forgets + 2, replace=False).tolist()
    forgets = []
    for i in ids[: args.forgets]:
        report, seconds = timed(lambda: sisa.forget(root / "warm", [i], progress=False))
        forgets.append({"id": i, "seconds": seconds, "shards": report["affected_shards"],
                        "work_fraction": report["examples_epochs_retrained"] / report["examples_epochs_full_retrain"]})
    first, warm = forgets[0]["seconds"], statistics.median(f["seconds"] for f in forgets[1:])
    # As a user runs them: a fresh process each.
    cli_train = cli("train", "--workdir", root / "cli", "--dataset", args.dataset, "--shards", args.shards, "--slices", args.slices)
    cli_forget = statistics.median(cli("forget", "--workdir", root / "cli", i) for i in ids[-2:])

    out = {
        "dataset": args.dataset, "shards": args.shards, "slices": args.slices,
        "train_seconds": {"in_process_cold": train_cold, "in_process_warm": train_warm, "fresh_process": cli_train},
        "forget_seconds": {"in_process_first": first, "in_process_warm_median": warm, "fresh_process_median": cli_forget},
        "ratios": {"warm_forget_over_warm_train": warm / train_warm,
                   "first_forget_over_cold_train": first / train_cold,
                   "fresh_process_forget_over_train": cli_forget / cli_train},
        "shards_retrained_per_forget": [len(f["shards"]) for f in forgets],
        "mean_work_fraction": statistics.mean(f["work_fraction"] for f in forgets),
        "backend": __import__("jax").default_backend(),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.dataset}, S={args.shards}, R={args.slices} ({out['backend']})")
    print(f"{'':34}{'train all':>12}{'forget 1 id':>14}{'ratio':>8}")
    rows = [("in process, programs compiled", train_warm, warm),
            ("in process, first call (compiles)", train_cold, first),
            ("fresh process (CLI)", cli_train, cli_forget)]
    for name, t, f in rows:
        print(f"{name:34}{t:>11.2f}s{f:>13.2f}s{f / t:>8.2f}")
    print(f"shards retrained per forget: {out['shards_retrained_per_forget']}; "
          f"examples x epochs retrained / full retrain: {out['mean_work_fraction']:.1%} on average")


if __name__ == "__main__":
    main()
