"""Time the light `sisa` commands, each in fresh processes: `--help`, `--version`, `status`,
`ledger`, `audit` on an mnist5k run (5 shards x 4 slices, 10 ids forgotten).

    python scripts/bench_cli.py [--runs 7] [--workdir DIR] [--json] [--out FILE]

Each command runs `--runs` times as a new process (the `sisa` script beside this Python);
the table shows the median and the fastest wall time, the 0.4 s target, and whether the
command imported JAX (checked once more in a process that lists its modules). The run is
trained into a temporary directory unless `--workdir` names one (trained there if it holds
none yet). Results go to stdout only; `--out FILE` also writes the JSON there: nothing
committed is overwritten unless asked.
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

TARGET_S = 0.4
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "torch")
FORGET = 10

# Run in a fresh process: the command through sisa.cli.main, then the heavy modules it imported.
PROBE = """
import contextlib, io, json, sys
from sisa.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})))
"""


def _sisa() -> list[str]:
    script = Path(sys.executable).with_name("sisa")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sisa.cli"]


def _prepare(workdir: Path, env: dict) -> None:
    """Train the mnist5k run (defaults: 5 shards x 4 slices) and forget 10 ids, in a child
    process so that this one never imports JAX. Nothing is done if it is already trained."""
    if (workdir / "sisa.json").exists():
        return
    code = f"""
import numpy as np, sisa
from sisa.data import datasets
ds = datasets.load("mnist5k")
cfg = sisa.Config().replace(data={{"dataset": "mnist5k"}}, partition={{"shards": 5, "slices": 4}})
sisa.train({str(workdir)!r}, cfg, dataset=ds, progress=False)
ids = np.random.default_rng(0).choice(ds.ids, {FORGET}, replace=False).tolist()
sisa.forget({str(workdir)!r}, ids, progress=False)
"""
    print(f"training mnist5k (5 shards x 4 slices) into {workdir} and forgetting {FORGET} ids ...", file=sys.stderr)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _time(argv: list[str], runs: int, env: dict) -> tuple[list[float], int]:
    times, rc = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        times.append(time.perf_counter() - t0)
        rc = rc or proc.returncode
    return times, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="fresh processes per command (default: 7)")
    ap.add_argument("--workdir", help="the mnist5k run to time (default: one trained into a temporary directory)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    ap.add_argument("--out", help="also write the JSON to this file (default: none)")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="sisa-bench-cli-"))
    try:
        run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args, scratch: Path) -> None:
    workdir = Path(args.workdir) if args.workdir else scratch / "run"
    # A program cache of this run's own: audit scans sisa's program cache too, and the user's
    # (~/.cache/sisa/programs) holds however many programs it holds.
    env = {**os.environ, "SISA_CACHE_DIR": os.environ.get("SISA_CACHE_DIR", str(workdir.parent / "programs"))}
    _prepare(workdir, env)
    wd = ["--workdir", str(workdir)]
    commands = {"--help": ["--help"], "--version": ["--version"], "status": ["status", *wd],
                "ledger": ["ledger", *wd], "audit": ["audit", *wd]}
    rows = {}
    for name, argv in commands.items():
        times, rc = _time([*_sisa(), *argv], args.runs, env)
        probe = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True,
                               text=True, env=env, check=True)
        heavy = json.loads(probe.stdout.splitlines()[-1])
        median = statistics.median(times)
        # A command that failed (e.g. a workdir of an older format) timed a refusal, not the command.
        rows[name] = {"median_s": median, "min_s": min(times), "runs": times, "exit": rc,
                      "heavy_modules": heavy, "within_target": rc == 0 and median <= TARGET_S}
    out = {"target_s": TARGET_S, "workdir": str(workdir), "runs": args.runs, "python": sys.version.split()[0],
           "cpus": os.cpu_count(), "commands": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    if args.json:
        print(json.dumps(out))
        return
    print(f"{'command':<10} {'median s':>9} {'min s':>7} {'target':>7}  {'exit':>4}  imports JAX")
    for name, r in rows.items():
        ok = "FAILED" if r["exit"] else "ok" if r["within_target"] else "OVER"
        print(f"{name:<10} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {ok:>7}  {r['exit']:>4}  "
              f"{'yes: ' + ', '.join(r['heavy_modules'][:3]) if r['heavy_modules'] else 'no'}")
    print(f"(median and fastest of {args.runs} fresh processes each; target {TARGET_S} s; {workdir})")


if __name__ == "__main__":
    main()
