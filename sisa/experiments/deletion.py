"""What the deletion experiments share (`speedup`, `stream`): data, engine, costs, the request
loop, the gold retrain, and writing results.

Costs are measured in this process: wall seconds with `sisa.eval.timing.Stopwatch` (and the
part JAX spent tracing and compiling, so that every time is reported with compilation included
and excluded) and examples×epochs, what the engine reports it trained. Requests are handled one
after another (`sequential`); the gold standard is the engine's own monolithic model (one shard,
one slice) trained from scratch (`retrain`). `finish` writes results.json and then builds
report.md and the plots from the JSON read back from disk (`regenerate` redraws a saved run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sisa.config import Config
from sisa.errors import SisaError

RESULTS, REPORT = "results.json", "report.md"


# --------------------------------------------------------------------------------------------
# Data and engine


@dataclasses.dataclass(frozen=True)
class Data:
    """A data set by name or path (sisa.data.datasets.load). `n`: purchase-synth only, generate
    `n` training rows (test n // 10) instead of 200,000: the same generator at a smaller size."""

    name: str = "mnist5k"
    n: int | None = None

    def load(self):
        from sisa.data import datasets

        if self.n is None:
            return datasets.load(self.name)
        if self.name != "purchase-synth":
            raise SisaError(f"a size n is only for purchase-synth (generated), not {self.name!r}")
        from sisa.data.synthetic import purchase_like

        return purchase_like(n=self.n)

    @property
    def label(self) -> str:
        return self.name if self.n is None else f"{self.name} (n={self.n:,})"


@dataclasses.dataclass(frozen=True)
class Engine:
    """The model and training recipe of every trained model: the compare benchmark's
    (experiments/compare_mnist5k.toml: MLP 784-128-10, 10 epochs, batch 32, Adam 1e-3), with the
    engine's default epoch schedule ("budget": ceil(2E/(R+1)) epochs per stage)."""

    hidden: tuple[int, ...] = (128,)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3

    def config(self, dataset: str, shards: int = 1, slices: int = 1, seed: int = 0) -> Config:
        return Config().replace(
            data={"dataset": dataset},
            model={"name": "mlp", "hidden": tuple(self.hidden)},
            train={"epochs": self.epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                   "optimizer": "adam", "seed": seed},
            partition={"shards": shards, "slices": slices, "seed": seed},
        )


def request_ids(ids: np.ndarray, count: int, size: int, *seed) -> np.ndarray:
    """[count, size] distinct ids drawn uniformly at random (without replacement), by `seed` words."""
    if count * size >= len(ids):
        raise SisaError(f"{count} requests of {size} ids need more than the {len(ids)} training examples")
    return np.random.default_rng(list(seed)).choice(ids, count * size, replace=False).reshape(count, size)




@contextlib.contextmanager
def workspace():
    """A scratch folder for workdirs, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="sisa-experiment-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Costs: training, forgetting, the gold retrain


def measured(fn: Callable):
    """(fn(), {"seconds", "compile_seconds"})."""
    from sisa.eval.timing import Stopwatch

    with Stopwatch() as sw:
        out = fn()
    return out, {"seconds": sw.seconds, "compile_seconds": sw.compile_seconds}


def train(root: Path, cfg: Config, ds) -> dict:
    """`sisa.train` of a new workdir: its cost, and `training_seconds`, the engine's own time for
    the training proper (restore, epochs, checkpoint saves; no data store or manifest)."""
    import sisa

    rep, cost = measured(lambda: sisa.train(root, cfg, dataset=ds, progress=False))
    return {**cost, "examples_epochs": int(rep["examples_epochs"]), "training_seconds": rep["seconds"]}


def forget(root: Path, ids) -> dict:
    """`sisa.forget` of `ids` (one request): its cost and what it retrained."""
    import sisa

    rep, cost = measured(lambda: sisa.forget(root, [int(i) for i in np.ravel(ids)], progress=False))
    return {**cost, "examples_epochs": int(rep["examples_epochs_retrained"]),
            "full_examples_epochs": int(rep["examples_epochs_full_retrain"]), "affected_shards": rep["affected_shards"]}


def retrain(root: Path, cfg: Config, ds) -> tuple[dict, dict]:
    """The gold standard: the monolithic model (S=1, R=1, `cfg` otherwise) trained from scratch on
    `ds` by the engine in a new workdir at `root` (what was there is removed first). (params, cost)."""
    shutil.rmtree(root, ignore_errors=True)
    cost = train(root, cfg.replace(partition={"shards": 1, "slices": 1}), ds)
    return monolithic_params(root), cost


def monolithic_params(root: Path) -> dict:
    from sisa.workdir import Workdir

    return Workdir.open(root).checkpoints[0].restore(0)[0]["params"]


def trainer(root: Path):
    from sisa.workdir import Workdir

    return Workdir.open(root).trainer


# --------------------------------------------------------------------------------------------
# Outputs and their comparison


def single_log_probs(trainer, params, xs: dict) -> dict:
    """split -> [N, C] log-probabilities of one model."""
    from sisa.eval import metrics

    return {k: metrics.log_probs(trainer, params, x) for k, x in xs.items()}


def sisa_log_probs(root: Path, xs: dict, cache: dict | None = None) -> tuple[dict, dict]:
    """(split -> [N, C] log of the served ensemble's softmax mean, the constituents' stacked
    params). `cache`: kept between calls, so that only retrained shards are read again."""
    from sisa import serve
    from sisa.eval import metrics
    from sisa.workdir import Workdir

    wd = Workdir.open(root)
    members = serve.constituents(wd, cache)
    lp = {k: _softmax_mean(metrics.ensemble_log_probs(wd.trainer, members.params, x)) for k, x in xs.items()}
    return lp, members.params


def _softmax_mean(lp: np.ndarray) -> np.ndarray:
    """[S, N, C] -> [N, C] log of the constituents' mean softmax (the engine's `softmax` rule), in
    numpy: `metrics.softmax_mean` compiles a program for every N, and N grows along a stream."""
    from scipy.special import logsumexp

    return (logsumexp(lp, axis=0) - np.log(lp.shape[0])).astype(np.float32)


def max_abs_delta(a, b) -> float:
    """The largest |a - b| over every array of two pytrees of the same structure."""
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        return float("inf")
    out = 0.0
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return float("inf")
        if x.size:
            out = max(out, float(np.abs(x - y).max()))
    return out


def drift(lp: dict, gold: dict, y: dict) -> dict:
    """Agreement with the gold model's labels on every split, and the accuracy gap on each."""
    from sisa.eval import metrics

    out = {}
    for k, v in lp.items():
        out[f"agree_{k}"] = metrics.agreement(v, gold[k])
        out[f"acc_gap_{k}"] = metrics.accuracy(v, y[k]) - metrics.accuracy(gold[k], y[k])
    return out


# --------------------------------------------------------------------------------------------
# The request loop


class Trace:
    """One method's costs over a stream of requests, request by request, with running totals."""

    def __init__(self):
        self.columns: dict[str, list] = {}

    def add(self, row: dict) -> None:
        for k, v in row.items():
            self.columns.setdefault(k, []).append(v)

    def as_dict(self) -> dict:
        d = dict(self.columns)
        seconds = np.asarray(d.get("seconds", []), np.float64)
        compile_s = np.asarray(d.get("compile_seconds", np.zeros_like(seconds)), np.float64)
        d["compute_seconds"] = np.maximum(seconds - compile_s, 0.0).tolist()
        d["cum_seconds"] = np.cumsum(seconds).tolist()
        d["cum_compute_seconds"] = np.cumsum(d["compute_seconds"]).tolist()
        d["cum_examples_epochs"] = np.cumsum(np.asarray(d.get("examples_epochs", []), np.int64)).tolist()
        return d


def sequential(requests, steps: dict[str, Callable[[int, np.ndarray], dict]], bar=None,
               after: Callable[[int], None] | None = None) -> dict[str, dict]:
    """Handle `requests` one after another. At each request every method's step runs in turn
    (interleaved, so the methods see the machine's load alike); a step gets (index, ids) and
    returns the request's cost ({"seconds", "compile_seconds", "examples_epochs"}, and whatever
    else it records). `after(index)` runs once all steps of a request are done (measurements
    between requests). Returns method -> Trace.as_dict()."""
    traces = {name: Trace() for name in steps}
    for i, ids in enumerate(requests):
        for name, step in steps.items():
            traces[name].add(step(i, np.asarray(ids)))
        if after is not None:
            after(i)
        if bar is not None:
            bar.update()
    return {name: t.as_dict() for name, t in traces.items()}


def bar(total: int, desc: str, progress: bool, *, unit: str = "req", leave: bool = False):
    """A progress bar on stderr, with its rate and time left."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, file=sys.stderr, leave=leave,
                dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# Results, report, plots


def environment() -> dict:
    from sisa.eval.compare import environment as env

    return {**env(), "load_average": list(os.getloadavg())}


def jsonable(o):
    """Plain JSON: numpy scalars and arrays to Python, floats to 6 significant digits (a
    microsecond of a second is noise here; 0 stays 0), non-finite floats to null."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float):
        return float(f"{o:.6g}") if np.isfinite(o) else None
    return o


def dumps(results: dict) -> str:
    """Indented JSON with every array of numbers on one line (long traces stay small)."""
    text = json.dumps(jsonable(results), indent=1, allow_nan=False)
    return re.sub(r"\[[^\[\]{}\"]*\]", lambda m: "[" + " ".join(m.group()[1:-1].split()) + "]", text)


def finish(out: Path, results: dict, render: Callable[[dict, Path], tuple[str, list[str]]]) -> dict:
    """Write results.json, then report.md and the plots from it as read back (`regenerate`)."""
    (Path(out) / RESULTS).write_text(dumps(results))
    return regenerate(out, render)


def regenerate(out: Path, render: Callable[[dict, Path], tuple[str, list[str]]]) -> dict:
    """report.md and the plots of the results.json in `out` (`render(results, out)` -> (markdown, plot paths))."""
    out = Path(out)
    results = json.loads((out / RESULTS).read_text())
    text, plots = render(results, out)
    (out / REPORT).write_text(text)
    return {"report": str(out / REPORT), "results": str(out / RESULTS), "plots": plots}


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ci(values, digits: int = 2) -> str:
    """"mean ± half-width" of the 95% t interval over seeds (the mean alone for one seed)."""
    from sisa.eval import stats

    return stats.fmt(stats.mean_ci([np.nan if v is None else v for v in values]), digits)


def mean(values) -> float:
    v = np.asarray([np.nan if x is None else x for x in values], np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def figure(rows: int, cols: int, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=size, squeeze=False)


def plain_log_axes(ax, *, x: bool = True, y: bool = True) -> None:
    """Log scales labelled with plain numbers (1, 2, 5, 20), not powers of ten."""
    import math

    from matplotlib.ticker import FuncFormatter, NullFormatter

    def label(v, _):  # 1, 2 and 5 times a power of ten
        if v <= 0:
            return ""
        m = v / 10 ** math.floor(math.log10(v) + 1e-9)
        return f"{v:g}" if min(abs(m - k) for k in (1, 2, 5)) < 1e-6 else ""

    plain = FuncFormatter(label)
    for on, axis, scale in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
        if on:
            scale("log")
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(plain if axis is ax.yaxis else NullFormatter())


def save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
