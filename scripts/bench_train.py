"""Training cost of S shards x R slices against one monolithic model, side by side in one run.

    python scripts/bench_train.py [--datasets mnist5k,purchase] [--shards 1,5,10,20] [--slices 1,5,10]
                                  [--repeats 3] [--quick] [--json] [--out F.json] [--plot F.png]

Definitions
-----------
* A run = `sisa.train` of a fresh workdir. "train s" is the training proper as the library
  reports it (`report["seconds"]`: load the store, train every stage of every shard, save and
  wait for every checkpoint); "wall s" adds creating the workdir (partition, data store, manifest).
* Monolithic = S=1, R=1: one model on all the data, E epochs.
* Same data, same `--epochs` E for every config. With the default "budget" schedule each of
  the R stages trains ceil(2E/(R+1)) epochs on slices 0..r, which is about E passes over a
  shard in all but, through the ceil, sometimes more (E=10, R=5: 12 passes). So two ratios:
    ratio          = train s (S, R) / train s (monolithic)              (wall time, as configured)
    ratio/ex-ep    = (train s / examples_epochs) (S, R) / same for monolithic
  where examples_epochs = sum over stages of examples seen x epochs (the library's count).
  The second is the overhead of sharding itself; the target is <= 1.05 on CPU.
* Cold = the config's first run in this process (traces and compiles its programs, lane width
  and capacity fixed per config). Warm = the median of `--repeats` later runs. Runs are
  interleaved: every round runs every config once, in a shuffled order.
* Checkpoint time, two ways:
    ckpt s = time spent inside ShardCheckpoints.save_stage (one orbax save per stage holding
      every shard trained in it: lineages, digests, the write, fsyncs, the shards' records),
      mostly in the saver thread while the next stage trains, plus .wait; measured by wrapping
      those functions. "ms/ckpt" is that time per shard-stage checkpoint, "ms/save" per
      save_stage call. Saves overlapping training are not on its critical path, though on 2
      cores they slow the training they overlap.
    no-save (ablation, `--ablate`) = a run of the same config with saves, lineages and waits
      replaced by no-ops; "train s - no-save s" is then the whole cost of checkpointing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import sisa
from sisa.data import datasets

TARGET = 1.05


def load(name: str, args) -> datasets.Dataset:
    if name == "purchase":
        from sisa.data.synthetic import purchase_like

        return purchase_like(n=args.purchase_n, features=600, classes=100, seed=0)
    return datasets.load(name)


@contextlib.contextmanager
def probes(acc: collections.Counter, *, no_save: bool = False):
    """Time (or, with no_save, skip) checkpoint saves, waits and lineage building."""
    from sisa.checkpoint import ShardCheckpoints
    from sisa.workdir import Workdir

    patched = []

    def patch(owner, name, key, skipped=None, count=None):
        raw = owner.__dict__[name]
        orig = getattr(owner, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return skipped if no_save else orig(*a, **k)
            finally:
                acc[key] += time.perf_counter() - t0
                if count is not None:
                    count(*a)

        patched.append((owner, name, raw))
        setattr(owner, name, staticmethod(timed) if isinstance(raw, staticmethod) else timed)

    def saved(stage, items):
        acc["saves"] += 1
        acc["checkpoints"] += len(items)

    patch(ShardCheckpoints, "save_stage", "save", count=saved)  # lineages are built inside it
    patch(ShardCheckpoints, "wait", "wait")
    patch(Workdir, "lineage", "lineage", skipped={})
    try:
        yield acc
    finally:
        for owner, name, raw in reversed(patched):
            setattr(owner, name, raw)


def run(ds, shards: int, slices: int, epochs: int, root: Path, *, no_save: bool = False,
        schedule: str = "budget") -> dict:
    cfg = sisa.Config().replace(partition={"shards": shards, "slices": slices},
                                train={"epochs": epochs, "schedule": schedule})
    wd = Path(tempfile.mkdtemp(dir=root)) / "run"
    acc = collections.Counter()
    with probes(acc, no_save=no_save):
        t0 = time.perf_counter()
        report = sisa.train(wd, cfg, dataset=ds, progress=False)
        wall = time.perf_counter() - t0
    shutil.rmtree(wd.parent)
    return {"wall_s": wall, "train_s": report["seconds"], "examples_epochs": report["examples_epochs"],
            "ckpt_s": acc["save"] + acc["wait"], "save_s": acc["save"], "wait_s": acc["wait"],
            "lineage_s": acc["lineage"], "saves": acc["saves"], "checkpoints": acc["checkpoints"],
            "ms_per_checkpoint": 1e3 * acc["save"] / acc["checkpoints"] if acc["checkpoints"] else None,
            "ms_per_save": 1e3 * acc["save"] / acc["saves"] if acc["saves"] else None}


def bench_dataset(name: str, args, root: Path, log) -> dict:
    ds = load(name, args)
    epochs = args.purchase_epochs if name == "purchase" else args.epochs
    configs = [(1, 1)] + [(s, r) for s in args.shards for r in args.slices if (s, r) != (1, 1)]
    ablate = name in args.ablate
    runs = {c: {"cold": None, "warm": [], "no_save": []} for c in configs}
    log(f"{ds.name}: {len(ds.ids)} x {ds.x.shape[1:]}, E={epochs}, configs {configs}")
    for c in configs:  # round 0: each config's first run compiles its programs
        runs[c]["cold"] = run(ds, *c, epochs, root, schedule=args.schedule)
        log(f"  cold S={c[0]:>2} R={c[1]:>2}: {runs[c]['cold']['train_s']:.2f} s")
    rng = random.Random(0)
    for rep in range(args.repeats):
        order = [(c, False) for c in configs] + [(c, True) for c in configs if ablate]
        rng.shuffle(order)
        for c, no_save in order:
            r = run(ds, *c, epochs, root, no_save=no_save, schedule=args.schedule)
            runs[c]["no_save" if no_save else "warm"].append(r)
        log(f"  round {rep + 1}/{args.repeats} done")

    med = lambda rs, k: statistics.median(r[k] for r in rs) if rs else None
    mono = runs[(1, 1)]
    mono_s, mono_ee = med(mono["warm"], "train_s"), mono["cold"]["examples_epochs"]
    rows = []
    for (s, r), d in runs.items():
        ee = d["cold"]["examples_epochs"]
        warm = med(d["warm"], "train_s")
        row = {
            "shards": s, "slices": r, "examples_epochs": ee,
            "epochs_per_stage": sisa.Config().replace(partition={"slices": r}, train={"epochs": epochs}).epochs_for_stage(0),
            "cold_train_s": d["cold"]["train_s"], "warm_train_s": warm, "warm_wall_s": med(d["warm"], "wall_s"),
            "warm_train_s_all": [x["train_s"] for x in d["warm"]],
            "us_per_example_epoch": 1e6 * warm / ee,
            "ckpt_s": med(d["warm"], "ckpt_s"),
            "ckpt_breakdown_s": {k: med(d["warm"], k) for k in ("save_s", "wait_s", "lineage_s")},
            "checkpoints": s * r,
            "saves": d["cold"]["saves"],
            "ms_per_checkpoint": med(d["warm"], "ms_per_checkpoint"),
            "ms_per_save": med(d["warm"], "ms_per_save"),
            "no_save_train_s": med(d["no_save"], "train_s"),
            "ratio": warm / mono_s,
            "ratio_per_example_epoch": (warm / ee) / (mono_s / mono_ee),
        }
        if row["no_save_train_s"] is not None:
            row["ckpt_ablation_s"] = warm - row["no_save_train_s"]
            mono_ns = med(mono["no_save"], "train_s")
            row["ratio_per_example_epoch_no_save"] = (row["no_save_train_s"] / ee) / (mono_ns / mono_ee)
        row["meets_target"] = row["ratio_per_example_epoch"] <= TARGET
        rows.append(row)
    return {"dataset": ds.name, "examples": len(ds.ids), "input_shape": list(ds.x.shape[1:]), "epochs": epochs,
            "repeats": args.repeats, "schedule": args.schedule, "monolithic_warm_train_s": mono_s, "configs": rows}


def table(res: dict) -> str:
    lines = [(f"{res['dataset']}: {res['examples']} x {res['input_shape']}, E={res['epochs']} ({res.get('schedule', 'budget')} schedule), "
              f"warm = median of {res['repeats']}; monolithic {res['monolithic_warm_train_s']:.2f} s")]
    abl = any(r["no_save_train_s"] is not None for r in res["configs"])
    head = (f"{'S':>3}{'R':>4}{'ep/stg':>7}{'ex*ep':>10}{'cold s':>8}{'warm s':>8}{'us/ex*ep':>9}"
            f"{'ckpts':>6}{'saves':>6}{'ckpt s':>8}{'ms/ckpt':>8}{'ms/save':>8}" + (f"{'no-save s':>10}" if abl else "")
            + f"{'ratio':>7}{'ratio/ex*ep':>12}" + (f"{'(no-save)':>10}" if abl else ""))
    lines.append(head)
    for r in res["configs"]:
        line = (f"{r['shards']:>3}{r['slices']:>4}{r['epochs_per_stage']:>7}{r['examples_epochs']:>10}"
                f"{r['cold_train_s']:>8.2f}{r['warm_train_s']:>8.2f}{r['us_per_example_epoch']:>9.1f}"
                f"{r['checkpoints']:>6}{r['saves']:>6}{r['ckpt_s']:>8.2f}{r['ms_per_checkpoint'] or 0:>8.1f}"
                f"{r['ms_per_save'] or 0:>8.1f}")
        if abl:
            line += f"{r['no_save_train_s']:>10.2f}"
        line += f"{r['ratio']:>7.2f}{r['ratio_per_example_epoch']:>11.2f}{'*' if not r['meets_target'] else ' '}"
        if abl:
            line += f"{r['ratio_per_example_epoch_no_save']:>10.2f}"
        lines.append(line)
    lines.append(f"  * ratio/ex*ep above the {TARGET} target")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results):
        for r in sorted({c["slices"] for c in res["configs"]}):
            pts = sorted((c["shards"], c["ratio_per_example_epoch"], c["ratio"]) for c in res["configs"] if c["slices"] == r)
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"R={r} per ex*ep")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "x--", color=line.get_color(), alpha=0.6, label=f"R={r} wall")
        ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("shards S")
        ax.set_ylabel("time / monolithic")
        ax.set_title(f"{res['dataset']} ({res['examples']} ex, E={res['epochs']})")
        ax.legend(fontsize=7)
    benchlib.save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(v) for v in s.split(",")]
    ap.add_argument("--datasets", default="mnist5k,purchase", help="comma list: mnist5k, digits, purchase")
    ap.add_argument("--shards", type=ints, default=[1, 5, 10, 20])
    ap.add_argument("--slices", type=ints, default=[1, 5, 10])
    ap.add_argument("--epochs", type=int, default=10, help="E for the registered sets")
    ap.add_argument("--purchase-n", type=int, default=200_000)
    ap.add_argument("--purchase-epochs", type=int, default=5, help="E for the purchase-like set")
    ap.add_argument("--schedule", default="budget", choices=["budget", "fractional"],
                    help="train.schedule of every config (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=None, help="warm rounds (default 3; 1 for purchase)")
    ap.add_argument("--ablate", default="mnist5k", help="datasets that also get no-save runs (comma list, or none)")
    ap.add_argument("--quick", action="store_true", help="~1 min smoke version")
    benchlib.output_flags(ap, "write a PNG of the ratios here")
    args = ap.parse_args()
    # Cold must mean compiled here: no persistent compile cache unless asked for.
    os.environ.setdefault("SISA_CACHE_DIR", "off")
    if args.quick:
        args.shards, args.slices, args.purchase_n, args.purchase_epochs = [1, 10], [1, 5], 20_000, 5
    args.ablate = [] if args.ablate == "none" else args.ablate.split(",")
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: None)

    import jax

    root = Path(tempfile.mkdtemp(prefix="sisa-bench-train-"))
    results = []
    try:
        for name in args.datasets.split(","):
            a = argparse.Namespace(**vars(args))
            if a.repeats is None:
                a.repeats = 1 if (name == "purchase" and not args.quick) else (1 if args.quick else 3)
            results.append(bench_dataset(name, a, root, log))
            if not args.json:
                print(table(results[-1]), flush=True)
                print()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {"backend": jax.default_backend(), "devices": jax.local_device_count(), "target_ratio": TARGET,
           "quick": args.quick, "results": results}
    benchlib.finish(out, args, lambda path: plot(results, path))


if __name__ == "__main__":
    main()
