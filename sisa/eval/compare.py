"""The benchmark: approximate unlearning baselines and SISA exact deletion against retraining.

    from sisa.eval import compare
    compare.run("experiments/compare_mnist5k.toml", "runs/compare/mine")

Once: LiRA's shadow models (`sisa.eval.shadows`), of each target architecture (the monolithic
model and every SISA S), on random halves of the whole data set. Per seed: hold out a
validation split (never trained on, not the test split) from the training data D; train the
monolithic model (the engine with S=1, R=1) and one SISA ensemble per S on D; then, for each
forget scenario K (random fractions of D, one whole class):

* monolithic gold: the engine (S=1, R=1) retrained on D \\ K, the reference of the baselines;
* every configured baseline, starting from the monolithic model, hyper-parameters chosen once
  per scenario by `baselines.search` on the search seed's validation split;
* SISA gold: each SISA ensemble retrained from scratch on D \\ K (the reference of SISA);
* SISA: `sisa.forget(K)` on a copy of each ensemble; its outputs are the aggregated ensemble,
  and its largest difference from the SISA gold's outputs is measured (0 when exact).

Every number is kept per seed (`rows`); `compare_report` pairs them over seeds and writes
`report.md`, `results.json` and the plots to `out_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from sisa import config as config_lib
from sisa.config import Config
from sisa.errors import SisaError
from sisa.eval import compare_report
from sisa.unlearn.baselines.common import BUDGET_FIELDS, Budget

GOLD, ORIGINAL = "retrain (gold)", "original (no unlearning)"


def sisa_names(shards: int) -> tuple[str, str, str]:
    """(forget row, its gold, its no-op) method names of the SISA run with `shards` shards."""
    return (f"SISA S={shards} (exact)", f"SISA S={shards} retrained (gold)", f"SISA S={shards} before forget")


# --------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One baseline as the benchmark runs it: its budget, fixed hyper-parameters, search grid."""

    name: str
    budget: Budget
    hparams: dict = dataclasses.field(default_factory=dict)
    grid: dict = dataclasses.field(default_factory=dict)  # hyper-parameter or budget field -> values


def check_methods(methods, registry: dict) -> None:
    """Each MethodSpec names a method of `registry` (name -> unlearn function), sets only its
    hyper-parameters (and, in a grid, budget fields), gives non-empty lists to search, and comes once."""
    names = [m.name for m in methods]
    for m in methods:
        if m.name not in registry:
            raise SisaError(f"unknown method {m.name!r}; known: {', '.join(sorted(registry))}")
        fn = registry[m.name]
        for what, keys, known in (("hparams", m.hparams, set(fn.defaults)),
                                  ("grid", m.grid, set(fn.defaults) | set(BUDGET_FIELDS))):
            if set(keys) - known:
                raise SisaError(f"[methods.{m.name}] {what}: unknown key(s) {sorted(set(keys) - known)}; "
                                f"known: {sorted(known)}")
        if any(not isinstance(v, list) or not v for v in m.grid.values()):
            raise SisaError(f"[methods.{m.name}] grid values must be non-empty lists")
    if len(set(names)) != len(names):
        raise SisaError(f"a method is listed twice: {names}")


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    name: str = "compare"
    seeds: tuple[int, ...] = (0, 1, 2)
    validation_fraction: float = 0.1  # of the training split, held out of every model's training
    forget_fractions: tuple[float, ...] = (0.01, 0.1)  # random subsets of D
    forget_class: bool = True  # also forget one whole class (class = seed % num_classes)
    sisa_shards: tuple[int, ...] = (5, 10)
    sisa_slices: int = 4
    shadows: int = 16  # LiRA shadow models per target architecture (even)
    search_seed: int | None = None  # seed whose validation split picks hyper-parameters (default: first)
    utility_margin: float = 0.02  # accuracy a method may lose against its reference (search and verdict)
    engine: Config = Config()  # data, model, train (and partition strategy) of every trained model
    methods: tuple[MethodSpec, ...] = ()

    def __post_init__(self):
        from sisa.unlearn.baselines import BASELINES

        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise SisaError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        if not 0 < self.validation_fraction < 1:
            raise SisaError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction}")
        if any(not 0 < f < 1 for f in self.forget_fractions):
            raise SisaError(f"forget fractions must lie in (0, 1), got {list(self.forget_fractions)}")
        if not self.forget_fractions and not self.forget_class:
            raise SisaError("no forget scenario: give [forget] random fractions or class = true")
        if not self.sisa_shards or min(self.sisa_shards) < 2 or self.sisa_slices < 1:
            raise SisaError(f"[sisa] needs shards >= 2 (got {list(self.sisa_shards)}) and slices >= 1")
        if self.shadows < 2 or self.shadows % 2:
            raise SisaError(f"shadows must be an even number >= 2 (each example in half of them), got {self.shadows}")
        if not 0 <= self.utility_margin < 1:
            raise SisaError(f"utility_margin must lie in [0, 1), got {self.utility_margin}")
        if self.search_seed is not None and self.search_seed not in self.seeds:
            raise SisaError(f"search seed {self.search_seed} is not one of the seeds {list(self.seeds)}")
        if any(m.name == "retrain" for m in self.methods):
            raise SisaError("`retrain` is the gold standard and always runs; do not list it under [methods]")
        check_methods(self.methods, {k: v for k, v in BASELINES.items() if k != "retrain"})

    @property
    def first_seed(self) -> int:
        return self.seeds[0] if self.search_seed is None else self.search_seed


_TOP = {"name", "seeds", "validation_fraction", "utility_margin", "shadows", "forget", "sisa", "search",
        "data", "model", "train", "partition", "methods"}
_SECTIONS = {"forget": {"random", "class"}, "sisa": {"shards", "slices"}, "search": {"seed"}}


def check_layout(d: dict, top: set, sections: dict, what: str) -> None:
    """Refuse keys of a config's TOML layout other than `top`, and keys of a `sections` table
    (name -> its keys) other than its own."""
    unknown = set(d) - top
    if unknown:
        raise SisaError(f"unknown {what} config key(s): {', '.join(sorted(unknown))}")
    for section, keys in sections.items():
        if not isinstance(d.get(section, {}), dict) or set(d.get(section, {})) - keys:
            raise SisaError(f"[{section}] takes only {', '.join(sorted(keys))}; got {sorted(d.get(section, {}))}")


def method_specs(tables: dict, registry: dict) -> tuple[MethodSpec, ...]:
    """The MethodSpecs of a config's [methods.NAME] tables (budget, hparams, grid), each budget on
    top of its method's default in `registry` (name -> unlearn function; see `check_methods`)."""
    methods = []
    for name, spec in tables.items():
        if not isinstance(spec, dict) or set(spec) - {"budget", "hparams", "grid"}:
            raise SisaError(f"[methods.{name}] takes only budget, hparams, grid")
        budget = spec.get("budget", {})
        if set(budget) - set(BUDGET_FIELDS):
            raise SisaError(f"[methods.{name}] budget: unknown key(s) {sorted(set(budget) - set(BUDGET_FIELDS))}")
        base = registry[name].default_budget if name in registry else Budget()
        methods.append(MethodSpec(name, dataclasses.replace(base, **budget), dict(spec.get("hparams", {})),
                                  dict(spec.get("grid", {}))))
    return tuple(methods)


def from_dict(d: dict) -> CompareConfig:
    """Build a CompareConfig from the TOML layout (see experiments/compare_mnist5k.toml)."""
    check_layout(d, _TOP, _SECTIONS, "compare")
    part = d.get("partition", {})
    if set(part) & {"shards", "slices"}:
        raise SisaError("set shards and slices under [sisa] (the monolithic model always has 1 and 1)")
    engine = config_lib.from_dict({k: d[k] for k in ("data", "model", "train", "partition") if k in d})
    from sisa.unlearn.baselines import BASELINES

    methods = method_specs(d.get("methods", {}), BASELINES)
    forget, sisa_, search = d.get("forget", {}), d.get("sisa", {}), d.get("search", {})
    defaults = CompareConfig.__dataclass_fields__
    try:
        return CompareConfig(
            name=d.get("name", defaults["name"].default),
            seeds=tuple(d.get("seeds", defaults["seeds"].default)),
            validation_fraction=d.get("validation_fraction", defaults["validation_fraction"].default),
            forget_fractions=tuple(forget.get("random", defaults["forget_fractions"].default)),
            forget_class=forget.get("class", True),
            sisa_shards=tuple(sisa_.get("shards", defaults["sisa_shards"].default)),
            sisa_slices=sisa_.get("slices", defaults["sisa_slices"].default),
            shadows=d.get("shadows", defaults["shadows"].default),
            search_seed=search.get("seed"),
            utility_margin=d.get("utility_margin", defaults["utility_margin"].default),
            engine=engine,
            methods=methods,
        )
    except TypeError as e:
        raise SisaError(f"compare config: {e}") from None


def load(path) -> CompareConfig:
    try:
        with open(path, "rb") as f:
            return from_dict(tomllib.load(f))
    except FileNotFoundError:
        raise SisaError(f"compare config not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise SisaError(f"compare config {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise SisaError(f"compare config {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except OSError as e:
        raise SisaError(f"cannot read compare config {path}: {e.strerror or e}") from None


def to_dict(cfg: CompareConfig) -> dict:
    """The TOML layout of `cfg` (round-trips through `from_dict`)."""
    engine = {k: v for k, v in cfg.engine.to_dict().items() if k in ("data", "model", "train", "partition")}
    engine["partition"] = {k: v for k, v in engine["partition"].items() if k not in ("shards", "slices")}
    d = {
        "name": cfg.name, "seeds": list(cfg.seeds), "validation_fraction": cfg.validation_fraction,
        "utility_margin": cfg.utility_margin, "shadows": cfg.shadows,
        "forget": {"random": list(cfg.forget_fractions), "class": cfg.forget_class},
        "sisa": {"shards": list(cfg.sisa_shards), "slices": cfg.sisa_slices},
        "search": {"seed": cfg.search_seed},
        **engine,
        "methods": {m.name: {"budget": {k: v for k, v in dataclasses.asdict(m.budget).items() if v is not None},
                             "hparams": m.hparams, "grid": m.grid} for m in cfg.methods},
    }
    return _drop_none(d)


def dumps(cfg: CompareConfig) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(cfg))


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


# --------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str  # "random 1%", "class"
    ids: np.ndarray  # forget ids
    detail: str


def scenarios(cfg: CompareConfig, train_ds, seed: int) -> list[Scenario]:
    out = []
    for frac in cfg.forget_fractions:
        rng = np.random.default_rng([seed, 1, round(frac * 1e6)])
        k = max(1, round(frac * len(train_ds.ids)))
        out.append(Scenario(f"random {frac * 100:g}%", np.sort(rng.choice(train_ds.ids, k, replace=False)),
                            f"{k} random training examples"))
    if cfg.forget_class:
        c = seed % train_ds.num_classes
        ids = train_ds.ids[train_ds.y == c]
        out.append(Scenario("class", np.sort(ids), f"all {len(ids)} training examples of class {c}"))
    return out


def quick(cfg: CompareConfig) -> CompareConfig:
    """A short budget of `cfg` (minutes, not an hour): two seeds (the fewest a paired interval
    needs), the smallest random forget fraction, no class scenario, the smallest SISA run, 4 shadow
    models, each method's grid cut to its first two values."""
    methods = tuple(dataclasses.replace(m, grid={k: v[:2] for k, v in m.grid.items()}) for m in cfg.methods)
    return dataclasses.replace(cfg, name=f"{cfg.name}-quick", seeds=cfg.seeds[:2], search_seed=None,
                               forget_fractions=tuple(sorted(cfg.forget_fractions)[:1]) or cfg.forget_fractions,
                               forget_class=cfg.forget_class and not cfg.forget_fractions,
                               sisa_shards=(min(cfg.sisa_shards),), shadows=min(cfg.shadows, 4), methods=methods)


def run(config, out_dir, *, dataset=None, progress: bool = True, keep_workdirs: bool = False,
        overwrite: bool = False, short: bool = False) -> dict:
    """Run the benchmark of `config` (a CompareConfig, its TOML layout as a dict, or a path to a
    TOML file) and write the report to `out_dir`, which must be new or empty unless `overwrite`
    (committed results are never replaced by accident). `short`: the `quick` budget. `dataset` (a
    Dataset) replaces the one the config names. Returns paths, wall time and the verdicts."""
    from sisa import runtime
    from sisa.data import datasets
    from sisa.eval import bias_lm
    from sisa.experiments import fresh_dir

    if bias_lm.wants(config):  # `experiment = "bias_lm"`: the language-model bias benchmark
        return bias_lm.run(config, out_dir, progress=progress, overwrite=overwrite, short=short,
                           keep_workdirs=keep_workdirs)
    if isinstance(config, (str, Path)):
        cfg, toml_text = load(config), Path(config).read_text()
    else:
        cfg = config if isinstance(config, CompareConfig) else from_dict(config)
        toml_text = dumps(cfg)
    if short:
        cfg = quick(cfg)
        toml_text = dumps(cfg)
    out = fresh_dir(out_dir, overwrite)
    runtime.setup()
    t0, load_before = time.perf_counter(), os.getloadavg()
    ds = dataset if dataset is not None else datasets.load(cfg.engine.data.dataset,
                                                           num_classes=cfg.engine.data.num_classes, data=cfg.engine.data)
    if ds.vocab_size is not None:
        raise SisaError("sisa compare runs the approximate baselines on classification of numeric features; "
                        f"{cfg.engine.data.dataset!r} is text")
    seeds = [cfg.first_seed] + [s for s in cfg.seeds if s != cfg.first_seed]
    rows, searches, facts = [], {}, {}
    work = Path(tempfile.mkdtemp(prefix="sisa-compare-", dir=out if keep_workdirs else None))
    try:
        bar = _bar(cfg, progress)
        shadows = _shadows(cfg, ds, work / "shadows", bar)
        for seed in seeds:
            seed_rows, seed_facts = _run_seed(cfg, ds, seed, work / f"seed{seed}", searches, shadows, bar)
            rows += seed_rows
            facts[seed] = seed_facts
            if not keep_workdirs:
                shutil.rmtree(work / f"seed{seed}", ignore_errors=True)
        bar.close()
    finally:
        if not keep_workdirs:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    results = {
        "name": cfg.name,
        "config": to_dict(cfg),
        "resolved": {"search_seed": cfg.first_seed},
        "config_toml": toml_text,
        "dataset": {"name": ds.name, "fingerprint": ds.fingerprint(), "train": len(ds.ids), "test": len(ds.y_test),
                    "num_classes": ds.num_classes},
        "environment": {**environment(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "wall_seconds": wall,
        "seeds": facts,
        "search": searches,
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1, allow_nan=False))
    written = compare_report.rerender(out)  # every table from the saved rows
    return {"out_dir": str(out), "report": str(out / "report.md"), "results": str(out / "results.json"),
            "plots": written["plots"], "wall_seconds": wall, "verdicts": compare_report.verdicts(written["summary"])}


def _bar(cfg, progress):
    from tqdm.auto import tqdm

    per_seed = 1 + len(cfg.sisa_shards) + (len(cfg.forget_fractions) + cfg.forget_class) * (
        2 + len(cfg.methods) + 2 * len(cfg.sisa_shards))
    total = cfg.shadows * (1 + len(cfg.sisa_shards)) + per_seed * len(cfg.seeds)
    return tqdm(total=total, desc=f"compare {cfg.name}", unit="model", disable=not progress, file=sys.stderr)


def _outputs(root, inputs: dict) -> dict:
    """name -> [N, C] log-probabilities of the run at `root` on each of `inputs` (name -> x): its
    constituents' softmax mean (one constituent: its own output). The workdir is read once."""
    from sisa import serve
    from sisa.eval import metrics
    from sisa.workdir import Workdir

    wd = Workdir.open(root)
    params = serve.constituents(wd).params
    return {k: metrics.softmax_mean(metrics.ensemble_log_probs(wd.trainer, params, x)) for k, x in inputs.items()}


def _architectures(cfg: CompareConfig) -> dict:
    """Target architecture -> its engine config: "monolithic" (S=1, R=1) and each SISA S."""
    archs = {"monolithic": cfg.engine.replace(partition={"shards": 1, "slices": 1})}
    for s in cfg.sisa_shards:
        archs[f"S={s}"] = cfg.engine.replace(partition={"shards": s, "slices": cfg.sisa_slices})
    return archs


def _shadows(cfg, ds, work: Path, bar) -> dict:
    from sisa.eval import shadows

    out = {}
    for name, engine in _architectures(cfg).items():
        bar.set_description(f"compare {cfg.name}: LiRA shadows, {name}")
        out[name] = shadows.train(engine, ds, cfg.shadows, seed=0, work=work / name.replace("=", ""),
                                  outputs=lambda root, x: _outputs(root, {"pool": x})["pool"], bar=bar)
    return out


def _run_seed(cfg: CompareConfig, ds, seed: int, work: Path, searches: dict, shadows: dict, bar) -> tuple[list, dict]:
    """Train the original model and the SISA ensembles on D, then run every scenario."""
    import jax

    import sisa
    from sisa.workdir import Workdir

    rng = np.random.default_rng([seed, 0])
    held = np.sort(rng.choice(len(ds.ids), round(cfg.validation_fraction * len(ds.ids)), replace=False))
    validation = (ds.x[held], ds.y[held])
    train = ds.without(ds.ids[held])
    archs = {k: v.replace(train={"seed": seed}, partition={"seed": seed}) for k, v in _architectures(cfg).items()}
    bar.set_description(f"compare {cfg.name}: seed {seed}, training")
    sisa.train(work / "original", archs["monolithic"], dataset=train, progress=False)
    bar.update()
    wd = Workdir.open(work / "original")
    trainer, original = wd.trainer, wd.checkpoints[0].restore(0)[0]["params"]
    ensembles = {}
    for s in cfg.sisa_shards:
        ensembles[s] = work / f"sisa{s}"
        sisa.train(ensembles[s], archs[f"S={s}"], dataset=train, progress=False)
        bar.update()

    rows, facts = [], {"validation_examples": len(held), "train_examples": len(train.ids), "scenarios": {}}
    for i, sc in enumerate(scenarios(cfg, train, seed)):
        facts["scenarios"][sc.name] = sc.detail
        is_f = np.isin(train.ids, sc.ids)
        forget, retain = (train.x[is_f], train.y[is_f]), (train.x[~is_f], train.y[~is_f])
        key = jax.random.fold_in(jax.random.key(seed), i)
        ev = _Evaluator(trainer, forget, retain, ds, _rows_of(ds.ids, sc.ids), shadows)
        bar.set_description(f"compare {cfg.name}: seed {seed}, {sc.name}, gold")
        rows += _reference_rows(ev, seed, sc, trainer, original, forget, retain, train.ids[~is_f], key)
        bar.update(2)
        for j, spec in enumerate(cfg.methods):
            bar.set_description(f"compare {cfg.name}: seed {seed}, {sc.name}, {spec.name}")
            pick = searches.setdefault(sc.name, {}).get(spec.name)
            if pick is None:  # the first (search) seed picks hyper-parameters on its validation split
                pick = searches[sc.name][spec.name] = _choose(cfg, spec, trainer, original, forget, retain, validation,
                                                               jax.random.fold_in(key, 10_000 + j))
            rows.append(_baseline_row(ev, seed, sc, spec.name, pick, trainer, original, forget, retain,
                                      jax.random.fold_in(key, j)))
            bar.update()
        for s, root in ensembles.items():
            bar.set_description(f"compare {cfg.name}: seed {seed}, {sc.name}, SISA S={s}")
            rows += _sisa_rows(ev, seed, sc, s, root, archs[f"S={s}"], train, work)
            bar.update(2)
    return rows, facts


def _rows_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in `ids` (in any order) of the ids `wanted`."""
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids, wanted, sorter=order)]


def _reference_rows(ev, seed, sc, trainer, original, forget, retain, retain_ids, key) -> list[dict]:
    """The monolithic gold standard (retrained by the engine) and the original model."""
    from sisa.unlearn.baselines import BASELINES

    gold = BASELINES["retrain"](trainer, original, forget, retain, key=key, retain_ids=retain_ids)
    gold_lp = ev.single(gold.params)
    ev.references[GOLD] = gold_lp
    return [_row(seed, sc, GOLD, "gold", GOLD, ORIGINAL, ev.metrics(gold_lp, "monolithic", GOLD), gold.seconds,
                 gold.compile_seconds, gold.examples_passes, {}),
            _row(seed, sc, ORIGINAL, "original", GOLD, ORIGINAL, ev.metrics(ev.single(original), "monolithic", GOLD),
                 0.0, 0.0, 0, {})]


def _choose(cfg, spec, trainer, original, forget, retain, validation, key) -> dict:
    from sisa.unlearn.baselines import search
    from sisa.unlearn.baselines.search import split

    found = {"best": {}, "eligible": None, "original": None, "trials": []}
    if spec.grid:
        found = search(spec.name, trainer, original, forget, retain, validation, spec.grid, budget=spec.budget,
                       hparams=spec.hparams, key=key, utility_margin=cfg.utility_margin)
    budget, hp = split(found["best"], spec.budget)
    return {**found, "budget": dataclasses.asdict(budget), "hparams": {**spec.hparams, **hp}}


def _baseline_row(ev, seed, sc, name, pick, trainer, original, forget, retain, key) -> dict:
    from sisa.unlearn.baselines import BASELINES

    res = BASELINES[name](trainer, original, forget, retain, Budget(**pick["budget"]), key, **pick["hparams"])
    return _row(seed, sc, name, "baseline", GOLD, ORIGINAL, ev.metrics(ev.single(res.params), "monolithic", GOLD),
                res.seconds, res.compile_seconds, res.examples_passes, res.hparams)


def _sisa_rows(ev, seed, sc, shards, root, engine, train, work: Path) -> list[dict]:
    """SISA S before the forget (its no-op), retrained from scratch on D \\ K (its gold), and
    `sisa.forget(K)` on a copy of the trained ensemble, with its largest output difference from
    that gold (0 when exact)."""
    import sisa
    from sisa.eval.timing import Stopwatch

    name, gold_name, noop_name = sisa_names(shards)
    arch = f"S={shards}"
    gold_root, copy = work / f"gold-sisa{shards}", work / f"forget-sisa{shards}"
    shutil.rmtree(gold_root, ignore_errors=True)
    with Stopwatch() as gold_sw:
        gold_rep = sisa.train(gold_root, engine, dataset=train.without(sc.ids), progress=False)
    gold_lp = ev.ensemble(gold_root)
    shutil.rmtree(gold_root, ignore_errors=True)
    ev.references[gold_name] = gold_lp
    rows = [_row(seed, sc, gold_name, "sisa-gold", gold_name, noop_name, ev.metrics(gold_lp, arch, gold_name),
                 gold_sw.seconds, gold_sw.compile_seconds, gold_rep["examples_epochs"], {"shards": shards}),
            _row(seed, sc, noop_name, "sisa-original", gold_name, noop_name,
                 ev.metrics(ev.ensemble(root), arch, gold_name), 0.0, 0.0, 0, {"shards": shards})]
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy)
    try:
        with Stopwatch() as sw:
            rep = sisa.forget(copy, sc.ids.tolist(), progress=False)
        lp = ev.ensemble(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    cost = {"shards_retrained": len(rep["affected_shards"]),
            "work_fraction": rep["examples_epochs_retrained"] / max(rep["examples_epochs_full_retrain"], 1)}
    rows.append(_row(seed, sc, name, "sisa", gold_name, noop_name, {**ev.metrics(lp, arch, gold_name), **cost},
                     sw.seconds, sw.compile_seconds, rep["examples_epochs_retrained"], {"shards": shards}))
    return rows


class _Evaluator:
    """Outputs of a model on one scenario's splits, and every metric computed from them.

    The attacks tell K (members of the original training set) from non-members of K's classes:
    the test examples of those classes (for a forgotten class, that class's test examples), so
    that an AUC measures membership, not how hard a class is."""

    def __init__(self, trainer, forget, retain, ds, forget_rows, shadows):
        self.trainer, self.shadows, self.references = trainer, shadows, {}
        classes = np.unique(forget[1])
        kept = np.isin(ds.y_test, np.unique(retain[1]))
        same = np.isin(ds.y_test, classes)
        self.x = {"forget": forget[0], "retain": retain[0], "test": ds.x_test, "nonmember": ds.x_test[same]}
        self.y = {"forget": forget[1], "retain": retain[1], "test": ds.y_test, "nonmember": ds.y_test[same]}
        self.kept = kept
        # Pool columns (sisa.eval.shadows.pool): training rows first, then the test split's.
        self.pool_index = np.concatenate([forget_rows, len(ds.ids) + np.flatnonzero(same)])

    def single(self, params) -> dict:
        from sisa.eval import metrics

        return {k: metrics.log_probs(self.trainer, params, x) for k, x in self.x.items()}

    def ensemble(self, root) -> dict:
        return _outputs(root, self.x)

    def metrics(self, lp: dict, arch: str, reference: str) -> dict:
        """Accuracy, loss, attacks (with `arch`'s shadows), and distance to `reference`'s outputs."""
        from sisa.eval import metrics, mia

        out = metrics.outputs_metrics({k: lp[k] for k in ("forget", "retain", "test")}, self.y)
        out["acc_test_kept"] = metrics.accuracy(lp["test"][self.kept], self.y["test"][self.kept])
        loss_f = metrics.losses(lp["forget"], self.y["forget"])
        out["forget_loss"] = float(loss_f.mean())
        n = len(loss_f)
        out["mia_loss_auc"] = mia.loss_attack(loss_f, metrics.losses(lp["nonmember"], self.y["nonmember"]))
        phi = np.concatenate([mia.logit_confidence(lp["forget"], self.y["forget"]),
                              mia.logit_confidence(lp["nonmember"], self.y["nonmember"])])
        shadow_phi, inside = self.shadows[arch].columns(self.pool_index)
        for variant, online in (("offline", False), ("online", True)):
            scores = mia.lira_scores(phi, shadow_phi, inside, online=online)
            out[f"mia_lira_{variant}_auc"] = mia.auc(scores[:n], scores[n:])
        ref = self.references[reference]
        for k in ("test", "forget"):
            out[f"agree_{k}"] = metrics.agreement(lp[k], ref[k])
            out[f"kl_{k}"] = metrics.mean_kl(lp[k], ref[k])
        out["max_abs_diff"] = float(max(np.abs(lp[k] - ref[k]).max(initial=0.0) for k in ("test", "forget")))
        return out


def _row(seed, sc, method, kind, reference, noop, m, seconds, compile_seconds, examples, extra) -> dict:
    return {"seed": seed, "scenario": sc.name, "method": method, "kind": kind, "reference": reference, "noop": noop,
            **m, "wall_seconds": seconds, "compile_seconds": compile_seconds,
            "seconds": max(seconds - compile_seconds, 0.0), "examples_passes": int(examples), "extra": extra}


def environment() -> dict:
    import jax

    from sisa.environment import versions

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "versions": versions(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None  # strict JSON has no NaN
    return o
