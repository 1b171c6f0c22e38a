"""The paper's Purchase configuration, S=20 and R=50, against the monolithic model, in one run.

    python scripts/bench_paper.py [--n 200000] [--epochs 5] [--schedules fractional,budget]
                                  [--repeats 2] [--forgets 9] [--cli-forgets 3] [--quick]
                                  [--json] [--out F.json] [--plot F.png]

Data: the Purchase-like synthetic set (`sisa.data.synthetic.purchase_like`, 600 binary
features, 100 classes), `--n` examples. Models: the default MLP, batch 32, E = `--epochs`.

1. Training. Monolithic = S=1, R=1 (one model, E epochs, one checkpoint). SISA = S=20, R=50
   under each of `--schedules`. Each config trains once cold (compiles), then `--repeats`
   warm rounds, interleaved (every round runs every config once), in fresh workdirs.
   Reported: the library's training seconds (`report["seconds"]`: store, every stage, every
   checkpoint saved and synced) and the examples x epochs trained; ratio = SISA / monolithic
   (medians). Target (issue "Fast from the first call"): <= 1.2 under "fractional".
2. Deletion. On the last warm SISA workdir of each schedule, `--forgets` requests of one
   random id each (`sisa.forget` in this process, after the train: its programs were compiled
   ahead, so none should compile; counted with jax.monitoring). Speed-up = the monolithic
   model's warm training time / the request's wall time, median and mean over the requests.
   Target: >= 4.63 (Bourtoule et al.'s Purchase figure), measured against the monolithic
   retrain a user would otherwise run. The work speed-up (examples x epochs) and the paper's
   formula 3SR/(2R+1) beside it.
3. `--cli-forgets` more requests as `sisa forget` in a fresh process each (interpreter,
   imports, program cache): their wall time against the same in-process monolithic training
   (which pays no start-up: the comparison favours the monolithic model).

Everything runs in a temporary directory, removed at the end; results go to stdout (and to
`--out` / `--plot` when given), nothing committed is overwritten unless asked.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

TRAIN_TARGET, SPEEDUP_TARGET = 1.2, 4.63
SHARDS, SLICES = 20, 50


def train(ds, cfg, root: Path) -> dict:
    import sisa

    t = time.perf_counter()
    report = sisa.train(root, cfg, dataset=ds, progress=False)
    return {"seconds": report["seconds"], "wall": time.perf_counter() - t, "examples_epochs": report["examples_epochs"]}


def forgets(wd: Path, ids: list[int], compiles: list[int]) -> list[dict]:
    import sisa

    out = []
    for i in ids:
        c0, t = compiles[0], time.perf_counter()
        report = sisa.forget(wd, [i], progress=False)
        out.append({"id": i, "seconds": time.perf_counter() - t, "compiles": compiles[0] - c0,
                    "examples_epochs": report["examples_epochs_retrained"],
                    "full_examples_epochs": report["examples_epochs_full_retrain"]})
    return out


def cli_forgets(wd: Path, ids: list[int]) -> list[float]:
    sisa_cmd = str(Path(sys.executable).with_name("sisa"))
    out = []
    for i in ids:
        t = time.perf_counter()
        subprocess.run([sisa_cmd, "forget", "--workdir", str(wd), str(i)], check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    return out


def bench(args, root: Path, log) -> dict:
    import numpy as np

    from sisa.config import Config
    from sisa.data.synthetic import purchase_like

    ds = purchase_like(n=args.n, features=600, classes=100, seed=0)
    base = Config().replace(data={"dataset": "purchase-synth"}, train={"epochs": args.epochs})
    configs = {"monolithic": base.replace(partition={"shards": 1, "slices": 1})}
    for schedule in args.schedules:
        configs[schedule] = base.replace(partition={"shards": SHARDS, "slices": SLICES}, train={"schedule": schedule})
    compiles = [0]
    benchlib.count_compiles(compiles)
    runs: dict[str, dict] = {name: {"cold": None, "warm": []} for name in configs}
    for name, cfg in configs.items():
        runs[name]["cold"] = train(ds, cfg, root / f"{name}-cold")
        log(f"cold {name}: {runs[name]['cold']['seconds']:.1f} s")
    last: dict[str, Path] = {}
    for rnd in range(args.repeats):
        order = list(configs)
        random.Random(rnd).shuffle(order)
        for name in order:
            wd = root / f"{name}-{rnd}"
            runs[name]["warm"].append(train(ds, configs[name], wd))
            log(f"round {rnd} {name}: {runs[name]['warm'][-1]['seconds']:.1f} s")
            if name in last and name != "monolithic":
                import shutil

                shutil.rmtree(last[name])  # keep one workdir per schedule (disk)
            last[name] = wd
    mono_s = statistics.median(r["seconds"] for r in runs["monolithic"]["warm"])
    mono_ee = runs["monolithic"]["cold"]["examples_epochs"]
    rng = np.random.default_rng(0)
    out = {"n": args.n, "shards": SHARDS, "slices": SLICES, "epochs": args.epochs, "repeats": args.repeats,
           "monolithic": {"train_seconds_median": mono_s, "examples_epochs": mono_ee, **runs["monolithic"]},
           "paper_formula_speedup": 3 * SHARDS * SLICES / (2 * SLICES + 1), "schedules": {}}
    for schedule in args.schedules:
        train_s = statistics.median(r["seconds"] for r in runs[schedule]["warm"])
        ids = rng.choice(ds.ids, args.forgets + args.cli_forgets, replace=False).tolist()
        done = forgets(last[schedule], ids[: args.forgets], compiles)
        log(f"{schedule}: {len(done)} forgets, median {statistics.median(d['seconds'] for d in done):.2f} s")
        cli = cli_forgets(last[schedule], ids[args.forgets :])
        seconds = [d["seconds"] for d in done]
        full_ee = done[-1]["full_examples_epochs"]
        out["schedules"][schedule] = {
            **runs[schedule], "train_seconds_median": train_s, "examples_epochs": runs[schedule]["cold"]["examples_epochs"],
            "train_ratio": train_s / mono_s,
            "train_work_ratio": runs[schedule]["cold"]["examples_epochs"] / mono_ee,
            "forgets": done, "forget_seconds_median": statistics.median(seconds),
            "forget_seconds_mean": statistics.mean(seconds),
            "speedup_median": mono_s / statistics.median(seconds), "speedup_mean": mono_s / statistics.mean(seconds),
            "work_speedup_vs_own_full": full_ee / statistics.mean(d["examples_epochs"] for d in done),
            "work_speedup_vs_monolithic": mono_ee / statistics.mean(d["examples_epochs"] for d in done),
            "compiles_during_forgets": sum(d["compiles"] for d in done),
            "cli_forget_seconds": cli,
            "cli_speedup_median": mono_s / statistics.median(cli) if cli else None,
        }
    return out


def table(res: dict) -> str:
    mono = res["monolithic"]
    lines = [f"Purchase-like {res['n']} x 600, E={res['epochs']}, S={res['shards']}, R={res['slices']}; "
             f"warm = median of {res['repeats']}; monolithic training {mono['train_seconds_median']:.2f} s "
             f"({mono['examples_epochs']} example-epochs)",
             f"{'schedule':<11} {'train s':>8} {'ratio':>6} {'work':>6} {'forget s':>9} {'speed-up':>9} "
             f"{'(mean)':>7} {'work x':>7} {'CLI s':>6} {'CLI x':>6} {'compiles':>8}"]
    for name, r in res["schedules"].items():
        cli = statistics.median(r["cli_forget_seconds"]) if r["cli_forget_seconds"] else float("nan")
        lines.append(
            f"{name:<11} {r['train_seconds_median']:>8.2f} {r['train_ratio']:>6.2f} {r['train_work_ratio']:>6.2f} "
            f"{r['forget_seconds_median']:>9.2f} {r['speedup_median']:>9.2f} {r['speedup_mean']:>7.2f} "
            f"{r['work_speedup_vs_monolithic']:>7.1f} {cli:>6.2f} {(r['cli_speedup_median'] or float('nan')):>6.2f} "
            f"{r['compiles_during_forgets']:>8}")
    lines += [f"targets: train ratio <= {TRAIN_TARGET} (fractional), speed-up >= {SPEEDUP_TARGET}; the paper's "
              f"formula 3SR/(2R+1) = {res['paper_formula_speedup']:.1f} (work)",
              "ratio = SISA training / monolithic training (seconds); work = the same in examples x epochs;",
              "speed-up = monolithic training / one single-id forget (in process); work x = monolithic examples x",
              "epochs / the forget's; CLI = `sisa forget` in a fresh process each (start-up included)"]
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["monolithic train"]
    values = [res["monolithic"]["train_seconds_median"]]
    for name, r in res["schedules"].items():
        names += [f"{name}: train", f"{name}: forget", f"{name}: forget (CLI)"]
        values += [r["train_seconds_median"], r["forget_seconds_median"],
                   statistics.median(r["cli_forget_seconds"]) if r["cli_forget_seconds"] else 0.0]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(names, values, color=["0.4"] + ["C0", "C1", "C2"] * len(res["schedules"]))
    ax.axvline(res["monolithic"]["train_seconds_median"] / SPEEDUP_TARGET, color="k", ls="--", lw=1,
               label=f"monolithic / {SPEEDUP_TARGET}")
    ax.set_xlabel("seconds")
    ax.set_title(f"Purchase-like {res['n']}: S={res['shards']}, R={res['slices']}")
    ax.legend(loc="lower right")
    ax.invert_yaxis()
    benchlib.save_figure(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="examples (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=5, help="E (default: %(default)s)")
    ap.add_argument("--schedules", default="fractional,budget",
                    help="SISA epoch schedules to run, comma list (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="warm training rounds (default: %(default)s)")
    ap.add_argument("--forgets", type=int, default=9, help="single-id requests in process (default: %(default)s)")
    ap.add_argument("--cli-forgets", type=int, default=3,
                    help="single-id requests as `sisa forget` processes (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="smoke version: 20,000 examples, 1 round, 3 forgets")
    benchlib.output_flags(ap, "also draw the times as a bar chart here (default: none)")
    args = ap.parse_args()
    args.schedules = [s for s in args.schedules.split(",") if s]
    if args.quick:
        args.n, args.repeats, args.forgets, args.cli_forgets = 20_000, 1, 3, 1
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    with tempfile.TemporaryDirectory(prefix="sisa-bench-paper-") as tmp:
        res = bench(args, Path(tmp), log)
    if not benchlib.finish(res, args, lambda p: plot(res, p)):
        print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
