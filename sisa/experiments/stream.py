"""SISA's own regime: a stream of deletion requests arriving one after another.

Per seed (the model's initialisation, the partition and the requests all follow it; every
method sees the same requests, so comparisons are paired over seeds) and per scenario (requests
of 1 id, requests of 10 ids), every method handles the stream request by request, interleaved:

* `retrain per request`: the monolithic model (S=1, R=1) retrained from scratch by the engine on
  the data left after each request: the gold standard of the approximate methods;
* SISA at a few (S, R): `sisa.forget` of each request as it comes;
* SISA batched: requests accumulated and forgotten together every `batch` requests (and at the
  end); in between, the served model still holds the pending ids;
* approximate methods (sisa.unlearn.baselines), each applied to its own current model at every
  request: forget set = the request's ids, retain set = everything not forgotten so far.

Recorded per request: wall seconds (compilation included and excluded), examples×epochs, test
accuracy. At a few points of the stream (after the first request, 25%, 50%, 100%), the drift
from the gold: agreement with its labels on the test split and on everything forgotten so far,
and the test-accuracy gap; for SISA also against SISA retrained from scratch on the data left
(the same config): the promise is bit-for-bit equality, measured as the max |Δ| of the
ensemble's log-probabilities and of the constituents' parameters.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

import numpy as np

from sisa.eval import metrics
from sisa.experiments import compiling_what_runs, deletion
from sisa.experiments.deletion import Data, Engine

RETRAIN = "retrain per request"


@dataclasses.dataclass(frozen=True)
class Approximate:
    """An approximate method as the stream runs it: its budget (sisa.unlearn.baselines.Budget
    fields) and fixed hyper-parameters."""

    name: str
    budget: dict
    hparams: dict = dataclasses.field(default_factory=dict)


# Budgets as in experiments/compare_mnist5k.toml; each fixed hyper-parameter is the value of that
# file's grid that the compare benchmark's search chose for its "random 1%" scenario (search
# seed 0, experiments/results/compare_mnist5k/results.json), the closest to small requests.
APPROXIMATE = (
    Approximate("grad_ascent", {"epochs": 5, "batch_size": 64, "learning_rate": 1e-4}),
    Approximate("fine_tune", {"epochs": 2, "batch_size": 64, "learning_rate": 3e-3}),
    Approximate("npo", {"epochs": 5, "batch_size": 64, "learning_rate": 1e-4}, {"beta": 0.1, "retain_weight": 1.0}),
    Approximate("scrub", {"epochs": 3, "batch_size": 64, "learning_rate": 5e-4},
                {"gamma": 0.99, "alpha": 0.001, "max_epochs": 2, "temperature": 1.0}),
)


@dataclasses.dataclass(frozen=True)
class Scenario:
    requests: int
    size: int  # ids per request

    @property
    def name(self) -> str:
        return f"{self.requests} requests × {self.size} id{'s' * (self.size > 1)}"


@dataclasses.dataclass(frozen=True)
class Plan:
    data: Data = dataclasses.field(default_factory=Data)
    engine: Engine = dataclasses.field(default_factory=Engine)
    seeds: tuple[int, ...] = (0, 1, 2)
    scenarios: tuple[Scenario, ...] = (Scenario(200, 1), Scenario(20, 10))
    sisa: tuple[tuple[int, int], ...] = ((5, 4), (10, 10), (20, 1))  # (S, R), one request at a time
    batched: tuple[int, int] = (5, 4)  # (S, R) of SISA with batched requests
    batch: int = 10  # requests per batched forget
    approximate: tuple[Approximate, ...] = APPROXIMATE
    checkpoints: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)  # fractions of the stream: request max(1, ceil(f n))

    def points(self, requests: int) -> list[int]:
        """1-based request numbers after which the drift is measured."""
        return sorted({max(1, math.ceil(f * requests)) for f in self.checkpoints})


# Full: about 35 minutes on 2 CPU cores; quick: about 3.
FULL = Plan()
QUICK = Plan(seeds=(0,), scenarios=(Scenario(20, 1), Scenario(5, 10)), checkpoints=(0.0, 0.5, 1.0))
PREDICTIONS = "predictions.npz"


def run(out: Path, *, quick: bool, progress: bool, plan: Plan | None = None) -> dict:
    plan = plan or (QUICK if quick else FULL)
    t0 = time.perf_counter()
    ds = plan.data.load()
    runs, saved = [], {}
    overall = deletion.bar(len(plan.seeds) * len(plan.scenarios), f"stream {plan.data.label}", progress, unit="stream",
                           leave=True)
    for seed in plan.seeds:
        with compiling_what_runs(), deletion.workspace() as work:
            initial = _train_initial(plan, ds, seed, work)
            for index, scenario in enumerate(plan.scenarios):
                runs.append(_run_stream(plan, ds, seed, index, scenario, initial, work, saved, progress))
                overall.update()
    overall.close()
    np.savez_compressed(Path(out) / PREDICTIONS, **saved)
    results = {
        "experiment": "stream", "quick": quick, "wall_seconds": time.perf_counter() - t0,
        "environment": deletion.environment(),
        "plan": {"data": plan.data.label, "train_examples": len(ds.ids), "test_examples": len(ds.y_test),
                 "engine": dataclasses.asdict(plan.engine), "seeds": list(plan.seeds),
                 "scenarios": [dataclasses.asdict(s) | {"name": s.name} for s in plan.scenarios],
                 "sisa": [list(x) for x in plan.sisa], "batched": list(plan.batched), "batch": plan.batch,
                 "approximate": [dataclasses.asdict(a) for a in plan.approximate],
                 "checkpoints": list(plan.checkpoints)},
        "runs": runs,
    }
    return deletion.finish(out, results, render)


def regenerate(out: Path) -> dict:
    return deletion.regenerate(out, render)


def sisa_name(shards: int, slices: int, batch: int = 1) -> str:
    return f"SISA S={shards} R={slices}" + (f", batches of {batch}" if batch > 1 else "")


# --------------------------------------------------------------------------------------------
# The methods


class _Method:
    """A model that handles requests (`step`) and gives its outputs."""

    kind = ""

    def __init__(self, name: str, ds):
        self.name, self.ds, self.forgotten = name, ds, []

    def step(self, i: int, ids: np.ndarray) -> dict:
        self.forgotten += ids.tolist()
        cost = self._forget(i, ids)
        lp = self.log_probs({"test": self.ds.x_test})[0]["test"]
        return {**cost, "test_acc": metrics.accuracy(lp, self.ds.y_test), "pending": self.pending}

    @property
    def pending(self) -> int:
        return 0

    def retain(self):
        keep = ~np.isin(self.ds.ids, self.forgotten)
        return self.ds.x[keep], self.ds.y[keep]


class _Retrain(_Method):
    kind = "retrain"

    def __init__(self, ds, cfg, root: Path, params):
        super().__init__(RETRAIN, ds)
        self.cfg, self.root, self.params = cfg, root, params
        self.trainer = deletion.trainer(root)

    def _forget(self, i, ids):
        self.params, cost = deletion.retrain(self.root, self.cfg, self.ds.without(self.forgotten))
        return {k: cost[k] for k in ("seconds", "compile_seconds", "examples_epochs")}

    def log_probs(self, xs):
        return deletion.single_log_probs(self.trainer, self.params, xs), self.params


class _Sisa(_Method):
    kind = "sisa"

    def __init__(self, ds, cfg, root: Path, batch: int, last: int):
        super().__init__(sisa_name(cfg.partition.shards, cfg.partition.slices, batch), ds)
        self.cfg, self.root, self.batch, self.last, self.waiting, self.cache = cfg, root, batch, last, [], {}

    def _forget(self, i, ids):
        self.waiting.append(ids)
        if len(self.waiting) < self.batch and i != self.last:
            return {"seconds": 0.0, "compile_seconds": 0.0, "examples_epochs": 0, "shards_retrained": 0}
        cost = deletion.forget(self.root, np.concatenate(self.waiting))
        self.waiting = []
        return {"seconds": cost["seconds"], "compile_seconds": cost["compile_seconds"],
                "examples_epochs": cost["examples_epochs"], "shards_retrained": len(cost["affected_shards"])}

    @property
    def pending(self) -> int:
        return int(sum(len(w) for w in self.waiting))

    def log_probs(self, xs):
        return deletion.sisa_log_probs(self.root, xs, self.cache)


class _Approximate(_Method):
    kind = "approximate"

    def __init__(self, ds, spec: Approximate, trainer, params, key):
        super().__init__(spec.name, ds)
        self.spec, self.trainer, self.params, self.key = spec, trainer, params, key

    def _forget(self, i, ids):
        import jax

        from sisa.unlearn.baselines import BASELINES, Budget

        rows = np.isin(self.ds.ids, ids)
        res = BASELINES[self.spec.name](self.trainer, self.params, (self.ds.x[rows], self.ds.y[rows]), self.retain(),
                                        Budget(**self.spec.budget), jax.random.fold_in(self.key, i),
                                        **self.spec.hparams)
        self.params = res.params
        return {"seconds": res.seconds, "compile_seconds": res.compile_seconds, "examples_epochs": res.examples_passes}

    def log_probs(self, xs):
        return deletion.single_log_probs(self.trainer, self.params, xs), self.params


# --------------------------------------------------------------------------------------------
# Running


def _configs(plan: Plan, seed: int) -> dict:
    name = plan.data.name
    out = {(s, r): plan.engine.config(name, s, r, seed) for s, r in (*plan.sisa, plan.batched)}
    return {"monolithic": plan.engine.config(name, seed=seed), **out}


def _train_initial(plan: Plan, ds, seed: int, work: Path) -> dict:
    """Every model's starting point, trained on all of D once per seed (copied per scenario)."""
    out = {}
    for key, cfg in _configs(plan, seed).items():
        root = work / f"initial-{key}"
        out[key] = {"root": root, "cfg": cfg, "cost": deletion.train(root, cfg, ds)}
    return out


def _run_stream(plan, ds, seed, index, scenario, initial, work, saved, progress) -> dict:
    import jax

    requests = deletion.request_ids(ds.ids, scenario.requests, scenario.size, seed, 29, index)
    last, points = scenario.requests - 1, plan.points(scenario.requests)
    mono = initial["monolithic"]
    original = deletion.monolithic_params(mono["root"])
    trainer = deletion.trainer(mono["root"])

    def copy(key, name):
        root = work / name
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(initial[key]["root"], root)
        return root

    methods = [_Retrain(ds, mono["cfg"], copy("monolithic", "retrain"), original)]
    methods += [_Sisa(ds, initial[k]["cfg"], copy(k, f"sisa-{k[0]}-{k[1]}"), 1, last) for k in plan.sisa]
    methods.append(_Sisa(ds, initial[plan.batched]["cfg"], copy(plan.batched, "sisa-batched"), plan.batch, last))
    key = jax.random.fold_in(jax.random.key(seed), index)
    methods += [_Approximate(ds, spec, trainer, original, jax.random.fold_in(key, j))
                for j, spec in enumerate(plan.approximate)]
    drifts = {m.name: [] for m in methods}

    def after(i: int) -> None:
        if i + 1 in points:
            keep = i == last and seed == plan.seeds[0]  # the first seed's predictions, at the end
            _measure_drift(ds, methods, initial, i + 1, work, drifts, saved if keep else None,
                           f"{scenario.name}|seed {seed}")

    bar = deletion.bar(scenario.requests, f"seed {seed}, {scenario.name}", progress)
    traces = deletion.sequential(requests, {m.name: m.step for m in methods}, bar, after=after)
    bar.close()
    for m in methods:
        if m.kind == "sisa":
            shutil.rmtree(m.root, ignore_errors=True)
    return {
        "scenario": scenario.name, "seed": seed, "requests": requests.tolist(), "points": points,
        "initial": {m.name: (initial[(m.cfg.partition.shards, m.cfg.partition.slices)]["cost"] if m.kind == "sisa"
                             else mono["cost"]) for m in methods},
        "methods": {m.name: {"kind": m.kind, "trace": traces[m.name], "drift": drifts[m.name]} for m in methods},
    }


def _measure_drift(ds, methods, initial, t: int, work: Path, drifts: dict, saved: dict | None, tag: str):
    """Drift of every method at request t from its gold; for SISA also from SISA retrained from
    scratch on the data left (its own config), trained here once per config."""
    forgotten = methods[0].forgotten
    rows = np.isin(ds.ids, forgotten)
    xs, ys = {"test": ds.x_test, "forget": ds.x[rows]}, {"test": ds.y_test, "forget": ds.y[rows]}
    gold = methods[0].log_probs(xs)[0]  # the monolithic model retrained on D \ K_t
    sisa_golds = {}
    for m in methods[1:]:
        lp, params = m.log_probs(xs)
        row = {"request": t, "forgotten": len(forgotten), "pending": m.pending, **deletion.drift(lp, gold, ys)}
        if m.kind == "sisa":
            k = (m.cfg.partition.shards, m.cfg.partition.slices)
            if k not in sisa_golds:
                root = work / "gold"
                shutil.rmtree(root, ignore_errors=True)
                deletion.train(root, initial[k]["cfg"], ds.without(forgotten))
                sisa_golds[k] = deletion.sisa_log_probs(root, xs)
                shutil.rmtree(root)
            own_lp, own_params = sisa_golds[k]
            row["own_gold"] = {**deletion.drift(lp, own_lp, ys), "max_abs_delta": deletion.max_abs_delta(lp, own_lp),
                               "max_abs_delta_params": deletion.max_abs_delta(params, own_params)}
            if saved is not None:
                saved[f"{tag}|{m.name}|test"] = lp["test"]
                saved[f"{tag}|gold of {sisa_name(*k)}|test"] = own_lp["test"]
        drifts[m.name].append(row)


# --------------------------------------------------------------------------------------------
# Report and plots (from results.json)


def summarize(results: dict) -> dict:
    """scenario -> method -> per-seed end-of-stream numbers, and drift per checkpoint."""
    out = {}
    for run in results["runs"]:
        sc = out.setdefault(run["scenario"], {"points": run["points"], "methods": {}})
        base = run["methods"][RETRAIN]["trace"]
        for name, m in run["methods"].items():
            t = m["trace"]
            d = sc["methods"].setdefault(name, {"kind": m["kind"], "seeds": [], "end": {}, "drift": {}, "curves": {}})
            d["seeds"].append(run["seed"])
            end = {
                "cum_seconds": t["cum_seconds"][-1], "cum_compute_seconds": t["cum_compute_seconds"][-1],
                "cum_examples_epochs": t["cum_examples_epochs"][-1], "test_acc": t["test_acc"][-1],
                "time_ratio": base["cum_compute_seconds"][-1] / max(t["cum_compute_seconds"][-1], 1e-12),
                "acc_minus_retrain": t["test_acc"][-1] - base["test_acc"][-1],
                "retrain_acc": base["test_acc"][-1],
            }
            for k, v in end.items():
                d["end"].setdefault(k, []).append(v)
            for k in ("cum_compute_seconds", "cum_seconds", "test_acc", "cum_examples_epochs"):
                d["curves"].setdefault(k, []).append(t[k])
            for row in m["drift"]:
                p = d["drift"].setdefault(row["request"], {})
                for k, v in row.items():
                    if k == "own_gold":
                        for kk, vv in v.items():
                            p.setdefault(f"own_{kk}", []).append(vv)
                    elif k != "request":
                        p.setdefault(k, []).append(v)
    return out


def _order(methods: dict) -> list[str]:
    rank = {"retrain": 0, "sisa": 1, "approximate": 2}
    return sorted(methods, key=lambda n: (rank[methods[n]["kind"]], list(methods).index(n)))


def render(results: dict, out: Path) -> tuple[str, list[str]]:
    from sisa.eval import stats

    plan = results["plan"]
    summary = summarize(results)
    approx = ", ".join(f"`{a['name']}` ({', '.join(f'{k}={v:g}' for k, v in {**a['budget'], **a['hparams']}.items())})"
                       for a in plan["approximate"])
    lines = [
        "# A stream of deletion requests: SISA, retraining, approximate unlearning", "",
        (f"{plan['data']}: {plan['train_examples']:,} training, {plan['test_examples']:,} test examples; MLP "
        f"{plan['engine']['hidden']} hidden, E={plan['engine']['epochs']}, batch {plan['engine']['batch_size']}, "
        f"Adam {plan['engine']['learning_rate']:g}. Seeds {plan['seeds']} (the model, the partition and the "
        "requests follow the seed; every method sees the same requests, so differences are paired over seeds: "
        "mean ± 95% t interval, `sisa.eval.stats`). Requests: uniformly random ids, without replacement, "
        "handled one after another, every method in turn at each request (interleaved, so they share the "
        "machine's load alike)."),
        "",
        (f"Methods: `{RETRAIN}` (the monolithic model, S=1 R=1, retrained from scratch by the engine after every "
        "request: the gold standard of the approximate methods); SISA at "
        f"{', '.join(f'S={s} R={r}' for s, r in plan['sisa'])}, forgetting each request as it comes; SISA "
        f"S={plan['batched'][0]} R={plan['batched'][1]} with requests accumulated and forgotten together every "
        f"{plan['batch']} requests (and at the end: in between, the served model still holds the pending ids); "
        f"approximate methods applied to their own current model at every request (forget set = the request, "
        f"retain set = all not forgotten so far): {approx}. Budgets as in experiments/compare_mnist5k.toml; each "
        "fixed hyper-parameter is the grid value the compare benchmark's search chose for its \"random 1%\" "
        "scenario."),
        "",
        ("Times are wall seconds with JAX compilation excluded (the headline; included in brackets), measured "
        "with `sisa.eval.timing.Stopwatch` around the deletion call only (evaluation is outside); the initial "
        "trainings on all the data are not counted. Trainings compile only what they run "
        "(`SISA_PRECOMPILE=off`), so a method's first request, and a SISA request that needs a new lane width, "
        "compiles its program. Examples×epochs: what the engine reports it trained, or the examples an "
        "approximate method back-propagated."),
        "",
        (f"Run: {results['wall_seconds'] / 60:.1f} min, {'quick budget' if results['quick'] else 'full'}; "
        f"{results['environment']['processor']}, {results['environment']['cpu_count']} CPUs; load average at the "
        f"end {', '.join(f'{x:.1f}' for x in results['environment']['load_average'])}."),
        "",
    ]
    for scenario, sc in summary.items():
        ms = sc["methods"]
        names = _order(ms)
        lines += [f"## {scenario}", "", "### At the end of the stream", ""]
        body = []
        for n in names:
            e = ms[n]["end"]
            gap = stats.paired(e["test_acc"], e["retrain_acc"]) if n != RETRAIN else None
            body.append([n, deletion.ci(e["cum_compute_seconds"], 1) + f" ({deletion.mean(e['cum_seconds']):.1f})",
                         f"{deletion.mean(e['cum_examples_epochs']):,.0f}",
                         deletion.ci(e["time_ratio"], 2) if n != RETRAIN else "1",
                         deletion.ci(e["test_acc"], 3),
                         "–" if gap is None else stats.fmt(gap, 3) + (f" (p={gap['p']:.2g})" if np.isfinite(gap["p"]) else "")])
        lines += [deletion.table(["method", "cumulative s (incl. compile)", "cumulative examples×epochs",
                                  "× faster than retrain per request", "test accuracy",
                                  "accuracy − retrain's (paired)"], body), ""]
        lines += _drift_tables(sc, names)
        lines += _verdict(scenario, sc, names)
    plots = [_plot_curves(summary, out / "stream_time.png", "cum_compute_seconds",
                          "cumulative wall s (compile excl.)", log=True),
             _plot_curves(summary, out / "stream_accuracy.png", "test_acc", "test accuracy", log=False),
             _plot_drift(summary, out / "stream_drift.png")]
    lines += ["## Plots", "", "![cumulative time](stream_time.png)", "", "![test accuracy](stream_accuracy.png)", "",
              "![drift from the gold](stream_drift.png)", "",
              (f"`{PREDICTIONS}` holds the test-split log-probabilities of every SISA variant and of SISA retrained "
              "from scratch on the data left, at the end of each stream of the first seed: the bitwise check can be "
              "redone from it."), ""]
    return "\n".join(lines), plots


def _drift_tables(sc: dict, names: list[str]) -> list[str]:
    ms, points = sc["methods"], sc["points"]
    lines = ["### Drift from the gold", "",
             ("Gold: the monolithic model retrained from scratch on the data left (for every method, SISA "
             "included: an ensemble of S models is a different model from the monolithic one). Cells: mean ± 95% "
             "CI over seeds, after the request named in the header."), ""]
    for key, what in (("agree_test", "agreement with the gold's labels, test split"),
                      ("agree_forget", "agreement with the gold's labels, examples forgotten so far"),
                      ("acc_gap_test", "test accuracy − the gold's")):
        body = [[n] + [deletion.ci(ms[n]["drift"][p][key], 3) if p in ms[n]["drift"] else "–"
                       for p in points] for n in names if ms[n]["drift"]]
        lines += [f"**{what}**", "", deletion.table(["method"] + [f"request {p}" for p in points], body), ""]
    body = []
    for n in names:
        if ms[n]["kind"] != "sisa":
            continue
        cells = []
        for p in points:
            d = ms[n]["drift"][p]
            cells.append(f"{max(d['own_max_abs_delta']):.3g} / {max(d['own_max_abs_delta_params']):.3g}"
                         + (f" ({max(d['pending'])} pending)" if max(d["pending"]) else ""))
        body.append([n] + cells)
    lines += [("**SISA against SISA retrained from scratch on the data left** (same config): the largest |Δ| over "
              "every seed of the ensemble's log-probabilities (test split and forgotten examples) / of the "
              "constituents' parameters; 0 is bit-for-bit equality."), "",
              deletion.table(["method"] + [f"request {p}" for p in points], body), ""]
    return lines


def _verdict(scenario: str, sc: dict, names: list[str]) -> list[str]:
    ms = sc["methods"]
    end = {n: ms[n]["end"] for n in names}
    last = sc["points"][-1]
    t = {n: deletion.mean(end[n]["cum_compute_seconds"]) for n in names}
    acc = {n: deletion.mean(end[n]["test_acc"]) for n in names}
    sisa = [n for n in names if ms[n]["kind"] == "sisa"]
    approx = [n for n in names if ms[n]["kind"] == "approximate"]
    fastest = min(names, key=t.get)
    exact = [n for n in sisa if max(ms[n]["drift"][last]["own_max_abs_delta"]) == 0]
    agree = {n: deletion.mean(ms[n]["drift"][last]["agree_test"]) for n in sisa + approx}
    agree_f = {n: deletion.mean(ms[n]["drift"][last]["agree_forget"]) for n in sisa + approx}
    cheaper = [n for n in approx if t[n] < min(t[s] for s in sisa)]
    work = {n: deletion.mean(end[n]["cum_examples_epochs"]) for n in names}
    first = {n: float(np.mean([c[0] for c in ms[n]["curves"]["test_acc"]])) for n in names}
    worse = [n for n in approx if acc[n] < first[n] - 0.02]
    requests = len(ms[RETRAIN]["curves"]["test_acc"][0])
    per_request = float(np.mean([t[n] / requests for n in sisa if "batches" not in n]))
    lines = [
        "### Who wins", "",
        f"- **Time.** Fastest over the whole stream: {fastest} ({t[fastest]:.1f} s). Retrain per request took "
        f"{t[RETRAIN]:.1f} s; {', '.join(f'{n}: {t[n]:.1f} s (speed-up {t[RETRAIN] / t[n]:.1f}×)' for n in sisa)}; "
        f"approximate {', '.join(f'{n}: {t[n]:.1f} s' for n in approx)}. "
        + (f"Cheaper than every SISA variant: {', '.join(cheaper)}." if cheaper else
           "No approximate method is cheaper than the fastest SISA variant.")
        + " In examples×epochs SISA retrained "
        + ", ".join(f"{work[RETRAIN] / max(work[n], 1):.1f}× less ({n})" for n in sisa)
        + f" than retrain per request; the gap to the time speed-up is each request's fixed cost (ledger, data "
          f"store, checkpoints; see the speedup experiment): a SISA request took {per_request:.2f} s on average "
          f"(one request at a time), a whole monolithic retrain {t[RETRAIN] / requests:.2f} s.",
        (f"- **Accuracy** at the end (retrain per request: {acc[RETRAIN]:.3f}): "
        f"{', '.join(f'{n} {acc[n]:.3f}' for n in sisa)}; approximate {', '.join(f'{n} {acc[n]:.3f}' for n in approx)}. "
        f"Best: {max(names, key=acc.get)}."
        + (" Degrading along the stream: " + ", ".join(f"{n} ({first[n]:.3f} after the first request, {acc[n]:.3f} "
                                                        "after the last)" for n in worse) + "." if worse else "")),
        (f"- **Drift** after the last request, agreement with the monolithic gold on the test split / on the "
        f"forgotten examples: {', '.join(f'{n} {agree[n]:.3f} / {agree_f[n]:.3f}' for n in approx + sisa)}. "
        f"SISA variants equal to SISA retrained from scratch bit for bit at the end: "
        f"{', '.join(exact) if exact else 'none'} (of {len(sisa)}). SISA's agreement with the monolithic gold "
        "measures how far an ensemble of S smaller models is from the monolithic model, not anything left of "
        "the forgotten data (against its own gold it is exact); the approximate methods have no such "
        "guarantee, and their distance from the gold is what they leave of the forgotten data's influence "
        "plus their own noise."),
        "",
    ]
    return lines


def _plot_curves(summary: dict, path: Path, key: str, ylabel: str, *, log: bool) -> str:
    from matplotlib.ticker import MaxNLocator

    fig, axes = deletion.figure(1, len(summary), (6.5 * len(summary), 4.5))
    for ax, (scenario, sc) in zip(axes[0], summary.items()):
        for n in _order(sc["methods"]):
            curves = np.asarray(sc["methods"][n]["curves"][key], np.float64)
            xs = np.arange(1, curves.shape[1] + 1)
            style = {"retrain": "k-", "sisa": "-", "approximate": "--"}[sc["methods"][n]["kind"]]
            ax.plot(xs, curves.mean(axis=0), style, label=n, lw=1.5 if style == "k-" else 1.2)
        if log:
            deletion.plain_log_axes(ax, x=False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("request")
        ax.set_ylabel(f"{ylabel} (mean over seeds)")
        ax.set_title(scenario)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return deletion.save(fig, path)


def _plot_drift(summary: dict, path: Path) -> str:
    from sisa.eval import stats

    keys = (("agree_test", "agreement with the gold, test"), ("agree_forget", "agreement with the gold, forgotten"),
            ("acc_gap_test", "test accuracy − gold's"))
    fig, axes = deletion.figure(len(summary), len(keys), (5.5 * len(keys), 4 * len(summary)))
    for row, (scenario, sc) in enumerate(summary.items()):
        for col, (key, label) in enumerate(keys):
            ax = axes[row][col]
            for n in _order(sc["methods"]):
                drift = sc["methods"][n]["drift"]
                if not drift:
                    continue
                xs = sorted(drift)
                cis = [stats.mean_ci(drift[p][key]) for p in xs]
                mean = np.array([c["mean"] for c in cis])
                half = np.array([0.0 if np.isnan(c["half"]) else c["half"] for c in cis])
                lo, hi = (mean, 1 - mean) if key.startswith("agree") else (half, half)  # agreement lies in [0, 1]
                style = "o-" if sc["methods"][n]["kind"] == "sisa" else "s--"
                ax.errorbar(xs, mean, yerr=[np.minimum(half, lo), np.minimum(half, hi)], fmt=style, capsize=3,
                            label=n)
            deletion.plain_log_axes(ax, y=False)
            ax.set_xticks(sc["points"])
            ax.set_xticklabels([str(p) for p in sc["points"]])
            if key.startswith("acc_gap"):
                ax.axhline(0, color="k", lw=0.8)
            ax.set_xlabel("after request")
            ax.set_ylabel(label)
            ax.set_title(scenario)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return deletion.save(fig, path)
