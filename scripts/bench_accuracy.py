"""Accuracy of the SISA aggregate vs the monolithic model under one training recipe.

    python scripts/bench_accuracy.py [--seeds 0 1 2] [--slices 1 4] [--set train.epochs=20 ...]
                                     [--config experiments/mnist5k.toml] [--json] [--out DIR]

For each seed (partition.seed = train.seed = seed) it trains, on mnist5k:

* the monolithic model: S=1, R=1, the same recipe (every knob of the config but the partition);
* the S-shard ensemble (default S=5) for each R in --slices (default 1 and 4);

and evaluates each on the test split. Printed: test accuracy (softmax and vote aggregate)
mean +- 95% CI over seeds (Student t), the paired gap monolithic - SISA per seed (mean +- 95%
CI), and the wall seconds of `sisa.api.train` (compile included, SISA_PRECOMPILE=off).

The recipe is `--config` (default: Config()'s defaults) with `--set section.key=value`
overrides (values parsed as TOML: `--set model.hidden=[256] --set train.lr_schedule='"cosine"'`;
a bare word is taken as a string). The partition's shards, slices and seed are set per run.

Workdirs and results go into a fresh temporary directory (removed afterwards) unless `--out`
is given; `--out` must not hold a results.json already: committed results are never overwritten.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path

os.environ.setdefault("SISA_PRECOMPILE", "off")  # no background compiles competing with the timed training

# Two-sided 95% Student t quantiles, by degrees of freedom.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    if df <= 0:
        return float("nan")
    if df > 30:
        return 1.96
    return _T95[max(k for k in _T95 if k <= df)]  # between tabled values: the wider one below


def mean_ci(xs: list[float]) -> dict:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return {"mean": m, "ci95": float("nan"), "n": n}
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return {"mean": m, "ci95": t95(n - 1) * sd / math.sqrt(n), "n": n}


def parse_set(items: list[str]) -> dict:
    """["train.epochs=20", ...] -> {"train": {"epochs": 20}, ...} (values as TOML)."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key and key != "aggregation":
            raise SystemExit(f"bench_accuracy: --set wants section.key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word: a string
        if isinstance(value, list):
            value = tuple(value)
        if key == "aggregation":
            out["aggregation"] = value
            continue
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def base_config(path: str | None, sets: dict):
    from sisa import config as config_lib

    cfg = config_lib.load(path) if path else config_lib.Config()
    return cfg.replace(**sets)


def run_one(root: Path, cfg, name: str) -> dict:
    import sisa.api as api

    wd = root / name
    t0 = time.perf_counter()
    trained = api.train(wd, cfg, progress=False)
    seconds = time.perf_counter() - t0
    ev = api.evaluate(wd)
    shutil.rmtree(wd, ignore_errors=True)  # only the numbers are kept
    per_shard = list(ev["per_shard"].values())
    return {
        "softmax": ev["accuracy_softmax"], "vote": ev["accuracy_vote"],
        "constituent_mean": sum(per_shard) / len(per_shard),
        "train_seconds": seconds, "examples_epochs": trained.get("examples_epochs"),
    }


def bench(cfg, seeds: list[int], shards: int, slices: list[int], root: Path, log=print) -> dict:
    runs = {"monolithic": {}} | {f"S{shards}_R{r}": {} for r in slices}
    for seed in seeds:
        mono = cfg.replace(partition={"shards": 1, "slices": 1, "seed": seed}, train={"seed": seed})
        runs["monolithic"][seed] = run_one(root, mono, f"mono_seed{seed}")
        log(f"seed {seed} monolithic: {runs['monolithic'][seed]}")
        for r in slices:
            c = cfg.replace(partition={"shards": shards, "slices": r, "seed": seed}, train={"seed": seed})
            runs[f"S{shards}_R{r}"][seed] = run_one(root, c, f"S{shards}_R{r}_seed{seed}")
            log(f"seed {seed} S={shards} R={r}: {runs[f'S{shards}_R{r}'][seed]}")
    summary = {}
    for name, per_seed in runs.items():
        row = {k: mean_ci([per_seed[s][k] for s in seeds]) for k in ("softmax", "vote", "constituent_mean",
                                                                       "train_seconds")}
        if name != "monolithic":
            for agg in ("softmax", "vote"):
                row[f"gap_{agg}"] = mean_ci([runs["monolithic"][s]["softmax"] - per_seed[s][agg] for s in seeds])
        summary[name] = row
    return {"runs": {k: {str(s): v for s, v in r.items()} for k, r in runs.items()}, "summary": summary}


def fmt(d: dict, scale: float = 100.0, digits: int = 1) -> str:
    if math.isnan(d["ci95"]):
        return f"{d['mean'] * scale:.{digits}f}"
    return f"{d['mean'] * scale:.{digits}f} ± {d['ci95'] * scale:.{digits}f}"


def table(summary: dict) -> str:
    lines = ["| run | softmax acc % | vote acc % | mean constituent % | gap softmax (pts) | gap vote (pts) | train s |",
             "|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        gs = fmt(row["gap_softmax"], digits=2) if "gap_softmax" in row else "—"
        gv = fmt(row["gap_vote"], digits=2) if "gap_vote" in row else "—"
        lines.append(f"| {name} | {fmt(row['softmax'])} | {fmt(row['vote'])} | {fmt(row['constituent_mean'])} | "
                     f"{gs} | {gv} | {fmt(row['train_seconds'], scale=1, digits=0)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="recipe TOML (default: Config() defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a knob")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--slices", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--out", help="directory for workdirs and results.json (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    if len(args.seeds) < 2:
        print("bench_accuracy: note: one seed gives no confidence interval", file=sys.stderr)

    sets = parse_set(args.set)
    sets.setdefault("data", {})["dataset"] = args.dataset
    cfg = base_config(args.config, sets)
    tmp = None
    if args.out:
        root = Path(args.out)
        if (root / "results.json").exists():
            print(f"bench_accuracy: {root / 'results.json'} exists; not overwriting it", file=sys.stderr)
            return 1
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="sisa-bench-accuracy-")
        root = Path(tmp)
    try:
        t0 = time.perf_counter()
        res = bench(cfg, args.seeds, args.shards, args.slices, root, log=lambda m: print(m, file=sys.stderr))
        out = {"recipe": cfg.to_dict(), "seeds": args.seeds, "shards": args.shards, "slices": args.slices,
               "wall_seconds": time.perf_counter() - t0, **res}
        if args.out:
            (root / "results.json").write_text(json.dumps(out, indent=1))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        recipe = cfg.to_dict()
        recipe["partition"] = {"strategy": cfg.partition.strategy}  # shards, slices, seed: set per run
        print(f"recipe: {json.dumps(recipe)}")
        print(f"seeds {args.seeds}; gap = monolithic - SISA, paired per seed; ± = 95% CI (t)")
        print(table(res["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
