"""Training with the shards spread over 1 vs 2 devices, and the results bit for bit.

    python scripts/bench_mesh.py [--dataset purchase] [--n 50000] [--shards 8] [--slices 4] [--epochs 10]
                                 [--repeats 3] [--quick] [--json] [--out F.json] [--plot F.png]

On a CPU machine JAX sees one device; XLA_FLAGS=--xla_force_host_platform_device_count=2
splits it into two, each running its own programs on its own thread. Every measurement is
a child process with that flag; SISA_DEVICES=1 or 2 says how many of the two devices the
shards are laid over (sisa.runtime.device_count), so the two sides differ in nothing else.

Each child trains the config twice on fresh workdirs: a warm-up run (compiles) and the
measured run (programs compiled, `report["seconds"]`). Children alternate 1, 2, 2, 1, ...
over `--repeats` rounds; medians. Speed-up = median 1-device seconds / median 2-device
seconds (target >= 1.3x). Bit-identity: `sisa.verification.final_digests` (sha256 of every
shard's final params, optimizer state and step) of the measured workdirs of all children
must all be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

TARGET = 1.3


def load(args):
    if args.dataset == "purchase":
        from sisa.data.synthetic import purchase_like

        return purchase_like(n=args.n)
    from sisa.data import datasets

    return datasets.load(args.dataset)


def child(args) -> dict:
    import jax

    import sisa

    ds = load(args)
    cfg = sisa.Config().replace(partition={"shards": args.shards, "slices": args.slices}, train={"epochs": args.epochs})
    root = Path(args.workdir)
    t0 = time.perf_counter()
    cold = sisa.train(root.with_name(root.name + "-warmup"), cfg, dataset=ds, progress=False)
    cold_wall = time.perf_counter() - t0
    warm = sisa.train(root, cfg, dataset=ds, progress=False)
    from sisa import runtime

    return {"devices_visible": jax.local_device_count(), "devices_used": runtime.device_count(args.shards),
            "cold_s": cold["seconds"], "cold_wall_s": cold_wall, "warm_s": warm["seconds"],
            "examples_epochs": warm["examples_epochs"]}


def digests(workdir: Path) -> dict:
    from sisa.verification import final_digests
    from sisa.workdir import Workdir

    return final_digests(Workdir.open(workdir))


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for d, marker in ((1, "o"), (2, "s")):
        ys = out["warm_s"][str(d)]
        ax.plot([d] * len(ys), ys, marker, alpha=0.6, label=f"{d} device(s), each run")
        ax.plot([d - 0.15, d + 0.15], [statistics.median(ys)] * 2, "k-")
    ax.set_xticks([1, 2])
    ax.set_xlim(0.5, 2.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("devices (SISA_DEVICES)")
    ax.set_ylabel("training seconds (warm)")
    ax.set_title(f"{out['dataset']} S={out['shards']} R={out['slices']}: {out['speedup']:.2f}x")
    ax.legend(fontsize=8)
    benchlib.save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="purchase", help="purchase (synthetic, --n rows) or a registered name")
    ap.add_argument("--n", type=int, default=50_000, help="rows of the purchase-like set")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="children per device count")
    ap.add_argument("--quick", action="store_true", help="~1 min smoke version (20,000 rows, one child each)")
    benchlib.output_flags(ap, "write a PNG of the per-run times here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.n, args.repeats = 20_000, 1
    me = str(Path(__file__).resolve())
    flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2") if f)
    runs = {"1": [], "2": []}
    with tempfile.TemporaryDirectory(prefix="sisa-bench-mesh-") as root:
        order = [d for rep in range(args.repeats) for d in ((1, 2) if rep % 2 == 0 else (2, 1))]
        for n, d in enumerate(order):
            wd = Path(root) / f"run{n}-dev{d}"
            p = subprocess.run(
                [sys.executable, me, "--child", "--workdir", str(wd), "--dataset", args.dataset, "--n", str(args.n),
                 "--shards", str(args.shards), "--slices", str(args.slices), "--epochs", str(args.epochs)],
                env={**os.environ, "XLA_FLAGS": flags, "SISA_DEVICES": str(d), "SISA_CACHE_DIR": "off"},
                check=True, capture_output=True, text=True)
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["workdir"] = wd
            runs[str(d)].append(r)
            print(f"  child {n + 1}/{len(order)}: {d} device(s) {r['warm_s']:.2f} s", file=sys.stderr, flush=True)
        ref = digests(runs["1"][0]["workdir"])
        identical = all(digests(r["workdir"]) == ref for rs in runs.values() for r in rs)
    med = {d: statistics.median(r["warm_s"] for r in rs) for d, rs in runs.items()}
    for rs in runs.values():
        for r in rs:
            r["workdir"] = str(r["workdir"])
    out = {
        "dataset": args.dataset if args.dataset != "purchase" else f"purchase-synth {args.n}x600",
        "shards": args.shards, "slices": args.slices, "epochs": args.epochs, "repeats": args.repeats,
        "quick": args.quick, "devices_used": {d: rs[0]["devices_used"] for d, rs in runs.items()},
        "warm_s": {d: [r["warm_s"] for r in rs] for d, rs in runs.items()},
        "cold_s": {d: [r["cold_s"] for r in rs] for d, rs in runs.items()},
        "median_warm_s": med, "speedup": med["1"] / med["2"], "target": TARGET,
        "meets_target": med["1"] / med["2"] >= TARGET, "bit_identical": identical,
        "shards_compared": len(ref), "examples_epochs": runs["1"][0]["examples_epochs"],
    }
    if benchlib.finish(out, args, lambda path: plot(out, path)):
        return
    print(f"{out['dataset']}, S={args.shards}, R={args.slices}, E={args.epochs}: 2 host devices "
          f"(--xla_force_host_platform_device_count=2), {args.repeats} child(ren) per side, medians")
    print(f"{'SISA_DEVICES':>13}{'used':>6}{'warm s':>9}{'cold s':>9}{'runs (warm s)':>30}")
    for d in ("1", "2"):
        print(f"{d:>13}{out['devices_used'][d]:>6}{med[d]:>9.2f}{statistics.median(out['cold_s'][d]):>9.2f}"
              f"{'  ' + ', '.join(f'{x:.2f}' for x in out['warm_s'][d]):>30}")
    print(f"speed-up {out['speedup']:.2f}x (target >= {TARGET}: {'met' if out['meets_target'] else 'NOT met'}); "
          f"final states of all {out['shards_compared']} shards bit-identical across all runs: {identical}")


if __name__ == "__main__":
    main()
