"""Peak memory (RSS) of training S shards and forgetting one id, one fresh process per S.

    python scripts/bench_memory.py [--shards 1,10,50,100] [--slices 4] [--quick]
                                   [--json] [--out F.json] [--plot F.png]

Each S runs in its own child process (MLP, mnist5k by default, the default config otherwise):
import sisa and JAX, load the data, `sisa.train` a fresh workdir, then `sisa.forget` one id.
After each phase the child reads its own /proc/self/status: VmRSS (resident now) and VmHWM
(the peak resident set so far, the same number as getrusage's ru_maxrss). So "peak after
train" is the peak of imports + data + training, and "peak after forget" the peak of the
whole process. Target: peak <= 2 GB at S = 100. Memory is not timing: one run per S.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

TARGET_MB = 2048


def proc_status() -> dict:
    """Current and peak resident set in MiB, from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def child(args) -> dict:
    marks = {"start": proc_status()}
    import jax  # noqa: F401
    import numpy as np

    import sisa
    from sisa.data import datasets

    marks["imports"] = proc_status()
    ds = datasets.load(args.dataset)
    marks["data"] = proc_status()
    cfg = sisa.Config().replace(data={"dataset": args.dataset}, partition={"shards": args.child, "slices": args.slices})
    wd = Path(args.workdir)
    t0 = time.perf_counter()
    sisa.train(wd, cfg, dataset=ds, progress=False)
    train_s = time.perf_counter() - t0
    marks["train"] = proc_status()
    i = int(np.random.default_rng(0).choice(ds.ids))
    t0 = time.perf_counter()
    report = sisa.forget(wd, [i], progress=False)
    forget_s = time.perf_counter() - t0
    marks["forget"] = proc_status()
    import resource

    return {"shards": args.child, "slices": args.slices, "marks": marks, "train_s": train_s, "forget_s": forget_s,
            "forget_retrained_shards": report["affected_shards"],
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                                if line.startswith("Threads:")))}


def print_table(out: dict) -> None:
    print(f"peak resident memory (MiB), {out['dataset']}, MLP, R={out['slices']}; one fresh process per S; "
          f"target <= {TARGET_MB} MiB at S=100")
    print(f"{'S':>5}{'imports':>9}{'+ data':>9}{'peak train':>12}{'RSS after':>11}{'peak forget':>13}"
          f"{'train s':>9}{'forget s':>10}{'threads':>9}{'ok':>4}")
    for r in out["runs"]:
        m = r["marks"]
        print(f"{r['shards']:>5}{m['imports']['VmRSS']:>9.0f}{m['data']['VmRSS']:>9.0f}{m['train']['VmHWM']:>12.0f}"
              f"{m['train']['VmRSS']:>11.0f}{m['forget']['VmHWM']:>13.0f}{r['train_s']:>9.1f}{r['forget_s']:>10.2f}"
              f"{r['threads']:>9}{'yes' if r['peak_mb'] <= TARGET_MB else 'NO':>4}")
    print("  imports / + data: resident after importing sisa+JAX / after loading the data set;")
    print("  peak train: the process's peak up to the end of training; peak forget: its peak overall")


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["shards"] for r in out["runs"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["marks"]["forget"]["VmHWM"] for r in out["runs"]], "o-", label="peak (train + forget)")
    ax.plot(xs, [r["marks"]["train"]["VmRSS"] for r in out["runs"]], "s--", label="resident after train")
    ax.plot(xs, [r["marks"]["data"]["VmRSS"] for r in out["runs"]], "^:", label="after imports + data")
    ax.axhline(TARGET_MB, color="red", ls=":", label="target")
    ax.set_xlabel("shards S")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"resident memory, {out['dataset']}, R={out['slices']}")
    ax.legend(fontsize=8)
    benchlib.save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--shards", default="1,10,50,100", help="comma list")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="~1 min smoke version (S = 1, 10, 100 with R = 1)")
    benchlib.output_flags(ap, "write a PNG of peak RSS against S here")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.shards, args.slices = "1,10,100", 1
    runs = []
    with tempfile.TemporaryDirectory(prefix="sisa-bench-memory-") as root:
        for s in map(int, args.shards.split(",")):
            p = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(s), "--slices", str(args.slices),
                 "--dataset", args.dataset, "--workdir", str(Path(root) / f"s{s}")],
                env={**os.environ, "SISA_CACHE_DIR": os.environ.get("SISA_CACHE_DIR", "off")},
                check=True, capture_output=True, text=True)
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["peak_mb"] = r["marks"]["forget"]["VmHWM"]
            runs.append(r)
            print(f"  S={s}: peak {r['peak_mb']:.0f} MiB", file=sys.stderr, flush=True)
    by_s = {r["shards"]: r["peak_mb"] for r in runs}
    out = {"dataset": args.dataset, "slices": args.slices, "quick": args.quick, "target_mb": TARGET_MB,
           "runs": runs, "peak_mb_at_100": by_s.get(100),
           "meets_target": by_s.get(100, max(by_s.values())) <= TARGET_MB}
    if not benchlib.finish(out, args, lambda path: plot(out, path)):
        print_table(out)


if __name__ == "__main__":
    main()
