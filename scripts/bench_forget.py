"""Forgetting against training everything, measured side by side in one run.

    python scripts/bench_forget.py [--dataset mnist5k] [--shards 5] [--slices 4] [--forgets 8]
                                   [--quick] [--json] [--out F.json] [--plot F.png]

Three sections.

1. Overview (config --shards x --slices): training everything vs forgetting one id, in
   process with programs compiled ("warm"), in process on the first call (compiles), and
   in a fresh process each (`sisa train` / `sisa forget` as a user runs them: Python and JAX
   start-up; a private persistent compile cache, filled by one untimed train and one
   untimed forget first, as a user's would be).

2. Batched requests: K random ids (K = 1, 10, 100) forgotten in ONE request, warm, each K
   repeated `--repeats` times in interleaved order, medians. A request whose set of affected
   shards needs a lane width not run before in this process compiles a program (counted with
   jax.monitoring); such requests are left out of the medians and the target, and listed.
   Compared with
   (a) theoretical = examples_epochs_retrained (the request's own count) x c, where
       c = seconds / examples_epochs of a warm full training of the same config (the
       measured cost of one example-epoch, checkpointing included). Target:
       forget <= 1.2 x theoretical + 0.5 s.
   (b) a full retrain: the warm full training time.
   (c) the expected cost under uniformly random requests (see below), x c.

3. Speed-up table as in Bourtoule et al. (S = 5, 10, 20; R = 1, 5, 10, 50): for each config
   one cold training, one warm training (= full retrain time), one untimed forget (compiles the
   deletion's lane width), then `--forgets` single-id requests. Reported: work speed-up =
   full-retrain examples x epochs / mean retrained; time speed-up = warm training s / median
   forget s; the exact expectation for this partition; and the paper's formula.

Expected cost (budget schedule: every stage trains e' = ceil(2E/(R+1)) epochs on slices 0..r)
------------------------------------------------------------------------------------------
Shard of n = N/S examples, R equal slices; stage r costs e' (r+1) n/R example-epochs, and a
full SISA training costs e' N (R+1)/2 (= E N when 2E/(R+1) is whole). One id, uniform over
the data: it lies in slice j (uniform) of one shard, and stages j..R-1 of that shard retrain:

    E[cost_1] = (1/R) sum_j sum_{r>=j} e' (r+1) n/R = e' n (R+1)(2R+1) / (6R)
              = E N (2R+1) / (3 S R)          -> speed-up over full retraining 3SR/(2R+1).

K requests handled one by one: K E[cost_1] (speed-up 3SR/(K(2R+1))).

K ids in one batched request: stage r of a shard is retrained iff at least one of the K ids
lies in that shard's slices 0..r, a set holding (r+1)/(SR) of the data, so (drawing with
replacement) with probability 1 - (1 - (r+1)/(SR))^K; summing over S shards and R stages:

    E[cost_K] = e' (N/R) sum_{r=0}^{R-1} (r+1) [1 - (1 - (r+1)/(SR))^K].

K = 1 gives E[cost_1]; for large K every stage of every shard is hit and the cost tends to a
full retrain (a shard is affected at all with probability 1-(1-1/S)^K). "exact" columns use
the run's real slice sizes m_sr (examples of shard s in slices 0..r) and draws without
replacement: E[cost_K] = sum_{s,r} e' m_sr [1 - C(N-m_sr, K) / C(N, K)].
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import numpy as np

import sisa
from sisa.data import datasets
from sisa.workdir import Workdir

TARGET_FACTOR, TARGET_SLACK = 1.2, 0.5


COMPILES = [0]  # XLA backend compilations so far in this process (jax.monitoring)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def timed_compiles(fn):
    """(result, seconds, compilations during the call)."""
    c0 = COMPILES[0]
    out, seconds = timed(fn)
    return out, seconds, COMPILES[0] - c0


def cli(*args) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sisa.cli", *map(str, args), "--json"], check=True, capture_output=True)
    return time.perf_counter() - t0


def config(dataset: str, shards: int, slices: int, epochs: int) -> sisa.Config:
    return sisa.Config().replace(data={"dataset": dataset}, partition={"shards": shards, "slices": slices},
                                 train={"epochs": epochs})


# ---- expectations -------------------------------------------------------------------------

def paper_speedup(shards: int, slices: int, k: int = 1) -> float:
    """Bourtoule et al.: full retraining / expected cost of k single-id requests one by one."""
    return 3 * shards * slices / (k * (2 * slices + 1))


def ideal_batched_cost(n: int, shards: int, slices: int, epochs_per_stage: int, k: int) -> float:
    """E[examples x epochs] for k ids in one request, equal slices, drawing with replacement."""
    return epochs_per_stage * (n / slices) * sum(
        (r + 1) * (1 - (1 - (r + 1) / (shards * slices)) ** k) for r in range(slices))


def exact_batched_cost(counts: np.ndarray, epochs_per_stage: int, k: int) -> float:
    """E[examples x epochs] for k distinct uniformly drawn ids in one request, real slice sizes."""
    n = counts.sum()
    m = counts.cumsum(axis=1)  # [S, R]: examples in slices 0..r of each shard
    # P(none of the k ids among m of n) = prod_{i<k} (n - m - i) / (n - i)
    none = np.ones_like(m, dtype=np.float64)
    for i in range(k):
        none *= np.clip(n - m - i, 0, None) / (n - i)
    return float(epochs_per_stage * (m * (1 - none)).sum())


def full_cost(counts: np.ndarray, epochs_per_stage: int) -> int:
    return int(epochs_per_stage * counts.cumsum(axis=1).sum())


# ---- sections -----------------------------------------------------------------------------

def overview(ds, args, root: Path, ids: list[int]) -> dict:
    cfg = config(args.dataset, args.shards, args.slices, args.epochs)
    _, train_cold = timed(lambda: sisa.train(root / "cold", cfg, dataset=ds, progress=False))
    train_warm_report, train_warm = timed(lambda: sisa.train(root / "warm", cfg, dataset=ds, progress=False))
    forgets = []
    for i in ids[: args.forgets]:
        report, seconds = timed(lambda i=i: sisa.forget(root / "warm", [i], progress=False))
        forgets.append({"id": i, "seconds": seconds, "shards": report["affected_shards"],
                        "examples_epochs": report["examples_epochs_retrained"],
                        "work_fraction": report["examples_epochs_retrained"] / report["examples_epochs_full_retrain"]})
    first, warm = forgets[0]["seconds"], statistics.median(f["seconds"] for f in forgets[1:])
    cli_env = os.environ.get("SISA_CACHE_DIR")
    os.environ["SISA_CACHE_DIR"] = str(root / "xla")  # the CLI as users run it: with a compile cache
    try:
        train_args = ("--dataset", args.dataset, "--shards", args.shards, "--slices", args.slices, "--epochs", args.epochs)
        cli("train", "--workdir", root / "cli0", *train_args)  # fills the (fresh) cache; a user's is warm
        cli_train = cli("train", "--workdir", root / "cli", *train_args)
        cli("forget", "--workdir", root / "cli", ids[-3])  # fills the cache with the deletion's program
        cli_forget = statistics.median(cli("forget", "--workdir", root / "cli", i) for i in ids[-2:])
    finally:
        os.environ.pop("SISA_CACHE_DIR") if cli_env is None else os.environ.update(SISA_CACHE_DIR=cli_env)
    return {
        "shards": args.shards, "slices": args.slices, "epochs": args.epochs,
        "train_seconds": {"in_process_cold": train_cold, "in_process_warm": train_warm, "fresh_process": cli_train},
        "train_examples_epochs": train_warm_report["examples_epochs"],
        "train_seconds_library": train_warm_report["seconds"],
        "forget_seconds": {"in_process_first": first, "in_process_warm_median": warm, "fresh_process_median": cli_forget},
        "ratios": {"warm_forget_over_warm_train": warm / train_warm,
                   "first_forget_over_cold_train": first / train_cold,
                   "fresh_process_forget_over_train": cli_forget / cli_train},
        "shards_retrained_per_forget": [len(f["shards"]) for f in forgets],
        "mean_work_fraction": statistics.mean(f["work_fraction"] for f in forgets),
    }


def batched(ds, args, root: Path, ov: dict, ks: list[int]) -> list[dict]:
    """K ids per request on the overview's warm workdir (already compiled and warmed up)."""
    wd = root / "warm"
    cost = ov["train_seconds_library"] / ov["train_examples_epochs"]  # s per example-epoch, warm
    full_s = ov["train_seconds_library"]
    epochs_per_stage = config(args.dataset, args.shards, args.slices, args.epochs).epochs_for_stage(0)
    rng = np.random.default_rng(1)
    order = [k for _ in range(args.repeats) for k in ks]
    random.Random(1).shuffle(order)
    runs = {k: [] for k in ks}
    for k in order:
        st = sisa.status(wd)
        counts = np.asarray(st["examples_per_shard_slice"])
        remaining = Workdir.open(wd).store().ids
        ids = rng.choice(remaining, k, replace=False).tolist()
        report, seconds, compiles = timed_compiles(lambda ids=ids: sisa.forget(wd, ids, progress=False))
        ee = report["examples_epochs_retrained"]
        runs[k].append({"seconds": seconds, "compiles": compiles, "examples_epochs": ee,
                        "shards": len(report["affected_shards"]),
                        "theoretical_s": ee * cost,
                        # expectations for the data as it was when the request came
                        "expected_examples_epochs": exact_batched_cost(counts, epochs_per_stage, k),
                        "expected_ideal": ideal_batched_cost(int(counts.sum()), args.shards, args.slices,
                                                             epochs_per_stage, k),
                        "expected_one_by_one": k * exact_batched_cost(counts, epochs_per_stage, 1),
                        "full_examples_epochs": report["examples_epochs_full_retrain"]})
    out = []
    for k in ks:
        compiling = [r for r in runs[k] if r["compiles"]]
        rs = [r for r in runs[k] if not r["compiles"]] or runs[k]
        med = lambda key, rs=rs: statistics.median(r[key] for r in rs)
        sec, theo = med("seconds"), med("theoretical_s")
        expected_ee = statistics.mean(r["expected_examples_epochs"] for r in rs)
        out.append({
            "k": k, "seconds_median": sec, "seconds_all": [r["seconds"] for r in runs[k]],
            "requests": len(runs[k]), "requests_that_compiled": len(compiling),
            "seconds_of_requests_that_compiled": [r["seconds"] for r in compiling],
            "examples_epochs_median": med("examples_epochs"), "shards_retrained": [r["shards"] for r in rs],
            "theoretical_s_median": theo,
            "overhead_over_theoretical_s": sec - theo,
            "target_s": TARGET_FACTOR * theo + TARGET_SLACK,
            "meets_target": all(r["seconds"] <= TARGET_FACTOR * r["theoretical_s"] + TARGET_SLACK for r in rs),
            "meets_target_median": sec <= TARGET_FACTOR * theo + TARGET_SLACK,
            "full_retrain_s": full_s, "speedup_vs_full_retrain": full_s / sec,
            "expected_examples_epochs_exact": expected_ee,
            "expected_examples_epochs_ideal": statistics.mean(r["expected_ideal"] for r in rs),
            "expected_examples_epochs_one_by_one": statistics.mean(r["expected_one_by_one"] for r in rs),
            "expected_s": expected_ee * cost,
            "full_examples_epochs": statistics.median(r["full_examples_epochs"] for r in rs),
        })
    return out


def speedups(ds, args, root: Path) -> list[dict]:
    rows = []
    rng = np.random.default_rng(2)
    for s in args.table_shards:
        for r in args.table_slices:
            cfg = config(args.dataset, s, r, args.epochs)
            cold = sisa.train(root / f"t{s}x{r}c", cfg, dataset=ds, progress=False)
            warm = sisa.train(root / f"t{s}x{r}w", cfg, dataset=ds, progress=False)
            shutil.rmtree(root / f"t{s}x{r}c")
            wd = root / f"t{s}x{r}w"
            counts = np.asarray(sisa.status(wd)["examples_per_shard_slice"])
            ids = rng.choice(ds.ids, args.table_forgets + 1, replace=False).tolist()
            first = sisa.forget(wd, [ids[0]], progress=False)  # compiles the deletion's lane width
            c0 = COMPILES[0]
            reps = [sisa.forget(wd, [i], progress=False) for i in ids[1:]]
            compiles = COMPILES[0] - c0
            full_ee = reps[-1]["examples_epochs_full_retrain"]
            mean_ee = statistics.mean(x["examples_epochs_retrained"] for x in reps)
            eps = cfg.epochs_for_stage(0)
            cost = warm["seconds"] / warm["examples_epochs"]  # s per example-epoch, this config
            theory = [cost * x["examples_epochs_retrained"] for x in reps]
            rows.append({
                "shards": s, "slices": r, "epochs_per_stage": eps,
                "train_cold_s": cold["seconds"], "train_warm_s": warm["seconds"], "first_forget_s": first["seconds"],
                "forget_s_median": statistics.median(x["seconds"] for x in reps),
                "forget_s_all": [x["seconds"] for x in reps], "compiles_during_timed_forgets": compiles,
                "examples_epochs_retrained": [x["examples_epochs_retrained"] for x in reps],
                "full_examples_epochs": full_ee,
                "theoretical_s_median": statistics.median(theory),
                "meets_target": all(x["seconds"] <= TARGET_FACTOR * t + TARGET_SLACK for x, t in zip(reps, theory)),
                "work_speedup": full_ee / mean_ee,
                "time_speedup": warm["seconds"] / statistics.median(x["seconds"] for x in reps),
                "expected_speedup_exact": full_cost(counts, eps) / exact_batched_cost(counts, eps, 1),
                "paper_speedup": paper_speedup(s, r),
            })
            shutil.rmtree(wd)
            if args.json:
                print(f"  speed-up S={s} R={r} done", file=sys.stderr, flush=True)
    return rows


# ---- output -------------------------------------------------------------------------------

def print_tables(out: dict) -> None:
    ov = out["overview"]
    print(f"== 1. overview: {out['dataset']}, S={ov['shards']}, R={ov['slices']}, E={ov['epochs']} ({out['backend']})")
    print(f"{'':34}{'train all':>12}{'forget 1 id':>14}{'ratio':>8}")
    t, f = ov["train_seconds"], ov["forget_seconds"]
    for name, a, b in (("in process, programs compiled", t["in_process_warm"], f["in_process_warm_median"]),
                       ("in process, first call (compiles)", t["in_process_cold"], f["in_process_first"]),
                       ("fresh process (CLI)", t["fresh_process"], f["fresh_process_median"])):
        print(f"{name:34}{a:>11.2f}s{b:>13.2f}s{b / a:>8.2f}")
    print(f"shards retrained per forget: {ov['shards_retrained_per_forget']}; "
          f"examples x epochs retrained / full retrain: {ov['mean_work_fraction']:.1%} on average")
    print()
    print(f"== 2. K ids in one request (median of {out['repeats']} less those that compiled); cost per example-epoch "
          f"{out['cost_per_example_epoch_us']:.1f} us; target forget <= {TARGET_FACTOR} x theoretical + {TARGET_SLACK} s")
    print(f"{'K':>5}{'forget s':>10}{'ex*ep':>9}{'theory s':>10}{'target s':>10}{'ok':>4}{'full s':>8}{'speedup':>9}"
          f"{'E[ex*ep]':>10}{'ideal':>9}{'1-by-1':>9}{'full ex*ep':>11}{'compiled':>10}")
    for b in out["batched"]:
        print(f"{b['k']:>5}{b['seconds_median']:>10.2f}{b['examples_epochs_median']:>9.0f}{b['theoretical_s_median']:>10.2f}"
              f"{b['target_s']:>10.2f}{'yes' if b['meets_target'] else 'NO':>4}{b['full_retrain_s']:>8.2f}"
              f"{b['speedup_vs_full_retrain']:>9.2f}{b['expected_examples_epochs_exact']:>10.0f}"
              f"{b['expected_examples_epochs_ideal']:>9.0f}{b['expected_examples_epochs_one_by_one']:>9.0f}"
              f"{b['full_examples_epochs']:>11.0f}"
              f"{b['requests_that_compiled']:>4} of {b['requests']}")
    print("  ex*ep = examples x epochs retrained (median); E[ex*ep] exact for this partition, ideal = equal slices,")
    print("  1-by-1 = the same K ids as K separate requests; speedup = full retrain s / forget s;")
    print("  compiled = requests that compiled a new lane width (left out of the medians; seconds in the JSON)")
    print()
    print(f"== 3. speed-up of one single-id request over retraining everything (E={out['overview']['epochs']}, "
          f"{out['table_forgets']} requests each)")
    print(f"{'S':>4}{'R':>4}{'ep/stg':>7}{'train s':>9}{'forget s':>10}{'theory s':>10}{'ok':>4}{'time x':>8}"
          f"{'work x':>8}{'E[work x]':>10}{'3SR/(2R+1)':>11}")
    for r in out["speedup"]:
        print(f"{r['shards']:>4}{r['slices']:>4}{r['epochs_per_stage']:>7}{r['train_warm_s']:>9.2f}"
              f"{r['forget_s_median']:>10.2f}{r['theoretical_s_median']:>10.2f}{'yes' if r['meets_target'] else 'NO':>4}"
              f"{r['time_speedup']:>8.2f}{r['work_speedup']:>8.2f}"
              f"{r['expected_speedup_exact']:>10.2f}{r['paper_speedup']:>11.2f}")
    print("  time x = warm full training s / median forget s; work x = full ex*ep / mean retrained ex*ep;")
    print("  E[work x] = the expectation for this run's slice sizes; theory s = retrained ex*ep x this config's")
    print(f"  training s per ex*ep (median); ok = every request <= {TARGET_FACTOR} x theory + {TARGET_SLACK} s")
    if any(r["compiles_during_timed_forgets"] for r in out["speedup"]):
        print("  note: some timed requests compiled (compiles_during_timed_forgets in the JSON)")


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    rows = out["speedup"]
    for s in sorted({r["shards"] for r in rows}):
        pts = sorted((r["slices"], r["time_speedup"], r["work_speedup"], r["paper_speedup"]) for r in rows if r["shards"] == s)
        xs = [p[0] for p in pts]
        line, = a.plot(xs, [p[3] for p in pts], "-", label=f"S={s} 3SR/(2R+1)")
        a.plot(xs, [p[2] for p in pts], "s", color=line.get_color(), mfc="none", label=f"S={s} work")
        a.plot(xs, [p[1] for p in pts], "o--", color=line.get_color(), label=f"S={s} time")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("slices R")
    a.set_ylabel("speed-up over full retrain")
    a.set_title(f"single-id forget, {out['dataset']}")
    a.legend(fontsize=6, ncol=3)
    bs = out["batched"]
    ks = [x["k"] for x in bs]
    b.plot(ks, [x["seconds_median"] for x in bs], "o-", label="forget (measured)")
    b.plot(ks, [x["theoretical_s_median"] for x in bs], "s--", label="theoretical (retrained ex*ep x cost)")
    b.plot(ks, [x["target_s"] for x in bs], ":", label="target 1.2 x theory + 0.5 s")
    b.plot(ks, [x["expected_s"] for x in bs], "^-.", label="expected (uniform requests)")
    b.axhline(bs[0]["full_retrain_s"], color="grey", label="full retrain")
    b.set_xscale("log")
    b.set_xlabel("ids per request K")
    b.set_ylabel("seconds")
    ov = out["overview"]
    b.set_title(f"batched forget, S={ov['shards']} R={ov['slices']}")
    b.legend(fontsize=7)
    benchlib.save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(v) for v in s.split(",")]
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--forgets", type=int, default=8, help="single-id requests timed in the overview")
    ap.add_argument("--ks", type=ints, default=[1, 10, 100], help="ids per batched request")
    ap.add_argument("--repeats", type=int, default=5, help="requests per K")
    ap.add_argument("--table-shards", type=ints, default=[5, 10, 20])
    ap.add_argument("--table-slices", type=ints, default=[1, 5, 10, 50])
    ap.add_argument("--table-forgets", type=int, default=5, help="single-id requests per speed-up config")
    ap.add_argument("--quick", action="store_true", help="~1 min smoke version")
    benchlib.output_flags(ap, "write a PNG (speed-up vs R, latency vs K) here")
    args = ap.parse_args()
    if args.quick:
        args.forgets, args.repeats, args.table_shards, args.table_slices, args.table_forgets = 3, 2, [5, 10], [1, 5], 3
    # In-process cold numbers must be compiles, not persistent cache hits.
    os.environ.setdefault("SISA_CACHE_DIR", "off")
    import jax

    benchlib.count_compiles(COMPILES)
    root = Path(tempfile.mkdtemp(prefix="sisa-bench-forget-"))
    try:
        ds = datasets.load(args.dataset)
        ids = np.random.default_rng(0).choice(ds.ids, args.forgets + 3, replace=False).tolist()
        ov = overview(ds, args, root, ids)
        bt = batched(ds, args, root, ov, args.ks)
        sp = speedups(ds, args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {"dataset": args.dataset, "backend": jax.default_backend(), "quick": args.quick, "repeats": args.repeats,
           "table_forgets": args.table_forgets,
           "cost_per_example_epoch_us": 1e6 * ov["train_seconds_library"] / ov["train_examples_epochs"],
           "overview": ov, "batched": bt, "speedup": sp}
    if not benchlib.finish(out, args, lambda path: plot(out, path)):
        print_tables(out)


if __name__ == "__main__":
    main()
