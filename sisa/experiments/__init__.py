"""The SISA paper's experiments and sisa's own, one module each: `sisa experiment NAME`.

Each module `sisa.experiments.NAME` has `run(out: Path, *, quick: bool, progress: bool) -> dict`
that writes `results.json`, its plot(s) and `report.md` into `out` (new or empty, checked here)
and returns a summary with `"report"` (the report's path). `quick` is a budget of minutes that
shows the shape of the result, not the result.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from pathlib import Path

from sisa.errors import SisaError

# name -> one line; the modules are imported only when run (this stays light for `--help`).
EXPERIMENTS = {
    "accuracy_vs_shards": "test accuracy against the number of shards S (paper Fig. 5/6), per data set",
    "accuracy_vs_slices": "test accuracy against the number of slices R: slicing is free in accuracy",
    "aggregation": "the effect of the aggregation rule (softmax mean vs label vote) against S",
    "speedup": "speed-up of K sequential deletions over retraining, against S and R, beside the paper's formula",
    "stream": "a stream of sequential deletion requests: SISA vs retrain-per-request vs approximate methods",
}


@contextlib.contextmanager
def compiling_what_runs():
    """Training compiles only the programs it runs (SISA_PRECOMPILE=off), not ahead every lane
    width a later deletion could take (~15 s per configuration on 2 cores, for programs an
    experiment mostly never calls); a request that needs a new program compiles it then."""
    before = os.environ.get("SISA_PRECOMPILE")
    os.environ["SISA_PRECOMPILE"] = "off"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SISA_PRECOMPILE", None)
        else:
            os.environ["SISA_PRECOMPILE"] = before


def default_out(name: str, quick: bool) -> Path:
    """runs/experiments/<name>[-quick]-<time>: never the committed results."""
    return Path("runs") / "experiments" / f"{name}{'-quick' * quick}-{time.strftime('%Y%m%d-%H%M%S')}"


def fresh_dir(out, overwrite: bool) -> Path:
    """`out` created if missing; refused if it holds anything, unless `overwrite`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise SisaError(f"{out} exists and is not empty: give another --out (or --overwrite to replace what is there)",
                        kind="usage")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run(name: str, out=None, *, quick: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    if name not in EXPERIMENTS:
        raise SisaError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}", kind="usage")
    from sisa import runtime

    out = fresh_dir(default_out(name, quick) if out is None else out, overwrite)
    runtime.setup()
    t0 = time.perf_counter()
    result = importlib.import_module(f"sisa.experiments.{name}").run(out, quick=quick, progress=progress)
    return {"experiment": name, "out_dir": str(out), "wall_seconds": time.perf_counter() - t0, **result}
