"""One request of many ids vs one retrain of the shards it affects.

    python scripts/bench_batch.py [--dataset mnist5k] [--shards 20] [--slices 4] [--ids 1000]
                                  [--rounds 3] [--quick] [--json] [--out F.json] [--plot F.png]

A trained run (S shards) gets one deletion request of K random ids, written to a file and
sent as `sisa forget --ids-file` in a fresh process, as a user would. It is compared with
`sisa train`, in a fresh process, of the affected shards from scratch on the data without
those ids: the cheapest way to get the same model without SISA's checkpoints. (With K in the
hundreds every shard is affected at its first slice, so that is a full training.) Each round
copies the trained run, then times the two commands back to back; medians over the rounds.
Also in process (programs compiled): `sisa.forget` vs `sisa.train`. Target: forget <= 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib


def cli(*args) -> tuple[float, dict]:
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "sisa.cli", *args, "--json"], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"sisa {args[0]} failed: {run.stderr[-2000:]}")
    return seconds, json.loads(run.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--ids", type=int, default=1000, help="ids in the one request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="S=5, 100 ids, 1 round (a smoke run)")
    benchlib.output_flags(ap, "bar chart of forget vs retrain seconds")
    args = ap.parse_args(argv)
    if args.quick:
        args.shards, args.ids, args.rounds = 5, 100, 1

    import numpy as np

    import sisa
    from sisa.config import dumps
    from sisa.data import datasets

    ds = datasets.load(args.dataset)
    ids = np.sort(np.random.default_rng(0).choice(ds.ids, args.ids, replace=False))
    rest = ds.without(ids)
    cfg = sisa.Config().replace(data={"dataset": args.dataset}, partition={"shards": args.shards, "slices": args.slices})
    rows = []
    with tempfile.TemporaryDirectory(prefix="sisa-bench-batch-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("SISA_CACHE_DIR", str(tmp / "xla"))  # every child shares one compile cache
        (tmp / "ids.txt").write_text("\n".join(map(str, ids)))
        np.savez(tmp / "rest.npz", x=rest.x, y=rest.y, id=rest.ids, x_test=rest.x_test, y_test=rest.y_test)
        (tmp / "rest.toml").write_text(dumps(cfg.replace(data={"dataset": str(tmp / "rest.npz")})))
        sisa.train(tmp / "trained", cfg, dataset=ds, progress=False)
        # Warm-up, not timed: both commands once, so the compile cache holds their programs.
        shutil.copytree(tmp / "trained", tmp / "warm")
        sisa.forget(tmp / "warm", ids.tolist(), progress=False)
        sisa.train(tmp / "warm_retrain", cfg, dataset=rest, progress=False)
        for r in range(args.rounds):
            shutil.copytree(tmp / "trained", tmp / f"f{r}")
            f_s, f = cli("forget", "--workdir", str(tmp / f"f{r}"), "--ids-file", str(tmp / "ids.txt"))
            t_s, t = cli("train", "--workdir", str(tmp / f"t{r}"), "--config", str(tmp / "rest.toml"))
            shutil.copytree(tmp / "trained", tmp / f"g{r}")
            t0 = time.perf_counter()
            sisa.forget(tmp / f"g{r}", ids.tolist(), progress=False)
            g_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            sisa.train(tmp / f"u{r}", cfg, dataset=rest, progress=False)
            u_s = time.perf_counter() - t0
            rows.append({"forget_cli_s": f_s, "retrain_cli_s": t_s, "forget_s": g_s, "retrain_s": u_s,
                         "affected_shards": len(f["affected_shards"]),
                         "forget_examples_epochs": f["examples_epochs_retrained"],
                         "retrain_examples_epochs": t["examples_epochs"]})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    out = {"dataset": args.dataset, "shards": args.shards, "slices": args.slices, "ids": args.ids,
           "rounds": rows, "median": med, "cli_ratio": med["forget_cli_s"] / med["retrain_cli_s"],
           "in_process_ratio": med["forget_s"] / med["retrain_s"],
           "work_ratio": med["forget_examples_epochs"] / med["retrain_examples_epochs"]}
    out["target_met"] = out["cli_ratio"] <= 1.0

    def plot(path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        labels = ["fresh process", "in process"]
        x = np.arange(2)
        ax.bar(x - 0.2, [med["forget_cli_s"], med["forget_s"]], 0.4, label=f"forget {args.ids} ids (one request)")
        ax.bar(x + 0.2, [med["retrain_cli_s"], med["retrain_s"]], 0.4, label="retrain affected shards")
        ax.set_xticks(x, labels)
        ax.set_ylabel("seconds (median)")
        ax.set_title(f"{args.dataset}, S={args.shards}, R={args.slices}")
        ax.legend()
        benchlib.save_figure(fig, path)

    if benchlib.finish(out, args, plot):
        return 0
    print(f"== {args.ids} ids in one request vs retraining the affected shards: {args.dataset}, S={args.shards}, "
          f"R={args.slices}, median of {args.rounds}")
    print(f"{'':24} {'forget':>8} {'retrain':>8} {'ratio':>6}")
    print(f"{'fresh process (CLI) s':24} {med['forget_cli_s']:>8.2f} {med['retrain_cli_s']:>8.2f} {out['cli_ratio']:>6.2f}")
    print(f"{'in process s':24} {med['forget_s']:>8.2f} {med['retrain_s']:>8.2f} {out['in_process_ratio']:>6.2f}")
    print(f"{'examples x epochs':24} {med['forget_examples_epochs']:>8.0f} {med['retrain_examples_epochs']:>8.0f} "
          f"{out['work_ratio']:>6.2f}")
    print(f"affected shards: {med['affected_shards']:.0f} of {args.shards}; target forget <= 1x retrain: "
          f"{'met' if out['target_met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
