"""The promise, over the configuration space: forget(train(D), K) == train(D \\ K), bit for bit.

Each trial draws a configuration (optimizer x dropout x partition strategy x epoch schedule x
checkpoint_every, plus shards, slices, seeds), a tiny data set and a forget set K of one of
three kinds, then:

  1. trains D in workdir A, forgets K there;
  2. trains D \\ K from scratch in workdir B (same config, same seeds);
  3. checks every shard's final train state (params, optimizer state, step) bit for bit:
     `sisa.verification.compare` (sha256 of every leaf) and a leaf-by-leaf comparison that
     names the differing leaves; and predictions (labels + probabilities, vote and softmax);
  4. checks that no file under A holds the feature bytes of a forgotten row (unless a kept
     training row or a test row has the very same bytes).

The trials are not left to chance: the configurations form a seeded pairwise covering array
(every value of every axis, and every pair of values of any two axes, appears), and every
configuration is run with every kind of K. `test_default_matrix_covers_the_space` asserts it.
The default suite adds one pinned wide setting (8 shards, batch 32, uniform partition): a
deletion that retrains fewer shards than training did runs a narrower vmap, and the bits must
not depend on the lane count.

A failing trial names its configuration, data and K; rerun one with
`pytest tests/test_exactness_matrix.py -k <trial id>`.

The opt-in sweep (`pytest -m slow tests/test_exactness_matrix.py`, ~15 min on 2 cores) runs
240 trials (52 configurations: the covering array plus 40 random rows) on 300-900 examples,
2-8 shards, 1-5 slices, hidden 16/32, batch 16/32, 2-4 epochs.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from pathlib import Path

import numpy as np
import pytest

import sisa
from sisa.config import Config
from sisa.verification import compare
from sisa.workdir import Workdir
from tests.conftest import blobs

# The axes every trial draws from; all values (and all pairs of values) are covered.
AXES: dict[str, tuple] = {
    "optimizer": ("adam", "adamw", "sgd"),
    "dropout": (0.0, 0.2),
    "strategy": ("uniform", "stratified", "grouped"),
    "schedule": ("budget", "fractional", "uniform"),
    "checkpoint_every": (1, 2),
    "shards": (2, 3, 4),
    "slices": (2, 3, 4),
}
K_KINDS = ("single", "group", "spread")  # group: a whole group for `grouped`, else a random handful
GROUP_SIZE = 10  # examples per group (about)


@dataclasses.dataclass(frozen=True)
class Trial:
    name: str
    optimizer: str
    dropout: float
    strategy: str
    schedule: str
    checkpoint_every: int
    shards: int
    slices: int
    partition_seed: int
    train_seed: int
    hidden: tuple[int, ...]
    epochs: int
    batch_size: int
    n_train: int
    n_test: int
    data_seed: int
    k_kind: str
    k_seed: int

    def config(self) -> Config:
        return Config().replace(
            data={"dataset": "blobs"},
            partition={"shards": self.shards, "slices": self.slices, "strategy": self.strategy,
                       "seed": self.partition_seed},
            model={"hidden": self.hidden, "dropout": self.dropout},
            train={"epochs": self.epochs, "batch_size": self.batch_size, "learning_rate": 1e-2,
                   "optimizer": self.optimizer, "schedule": self.schedule,
                   "checkpoint_every": self.checkpoint_every, "seed": self.train_seed},
        )

    def dataset(self):
        ds = blobs(n_train=self.n_train, n_test=self.n_test, features=8, classes=3, seed=self.data_seed)
        if self.strategy != "grouped":
            return ds
        # ~GROUP_SIZE examples per group, groups interleaved over ids, arbitrary int64 group values.
        rng = np.random.default_rng(self.data_seed + 7919)
        n_groups = max(2, self.n_train // GROUP_SIZE)
        values = rng.choice(10**12, size=n_groups, replace=False).astype(np.int64)
        groups = values[rng.permutation(np.arange(self.n_train) % n_groups)]
        return dataclasses.replace(ds, groups=groups)

    def __str__(self) -> str:
        return (f"{self.name}: optimizer={self.optimizer} dropout={self.dropout} strategy={self.strategy} "
                f"schedule={self.schedule} checkpoint_every={self.checkpoint_every} shards={self.shards} "
                f"slices={self.slices} partition_seed={self.partition_seed} train_seed={self.train_seed} "
                f"hidden={self.hidden} epochs={self.epochs} batch_size={self.batch_size} lr=1e-2 | "
                f"data: blobs(n_train={self.n_train}, n_test={self.n_test}, features=8, classes=3, "
                f"seed={self.data_seed}){' + groups' if self.strategy == 'grouped' else ''} | "
                f"K: kind={self.k_kind} k_seed={self.k_seed}")


# --------------------------------------------------------------------------------------------
# Building the trials: a seeded pairwise covering array of configurations, each run with every
# kind of K (and a few more trials round-robin, up to the wanted count).


def _pairs(row: dict) -> set:
    names = list(AXES)
    return {(a, row[a], b, row[b]) for i, a in enumerate(names) for b in names[i + 1:]}


def all_pairs() -> set:
    names = list(AXES)
    return {(a, va, b, vb) for i, a in enumerate(names) for b in names[i + 1:] for va in AXES[a] for vb in AXES[b]}


def covering_rows(rng: random.Random, extra: int = 0) -> list[dict]:
    """Greedy pairwise covering array over AXES (deterministic for a seeded rng), then `extra`
    uniformly random rows."""
    uncovered, rows = all_pairs(), []
    while uncovered:
        todo = sorted(uncovered, key=repr)  # set order is not reproducible; sorted is
        best, gain = None, -1
        for _ in range(48):
            a, va, b, vb = rng.choice(todo)  # each candidate covers at least one new pair
            row = {n: rng.choice(v) for n, v in AXES.items()} | {a: va, b: vb}
            g = len(_pairs(row) & uncovered)
            if g > gain:
                best, gain = row, g
        rows.append(best)
        uncovered -= _pairs(best)
    rows += [{n: rng.choice(v) for n, v in AXES.items()} for _ in range(extra)]
    return rows


def make_trials(prefix: str, seed: int, count: int, *, extra_rows: int, n_train: tuple[int, int],
                hidden: tuple, epochs: tuple, batch_sizes: tuple, shards: tuple | None = None,
                slices: tuple | None = None, pinned: tuple[dict, ...] = ()) -> list[Trial]:
    """Trials over a pairwise covering array of AXES (+ `extra_rows` random rows, + one setting per
    `pinned` dict, whose keys override the drawn values)."""
    rng = random.Random(seed)
    rows = covering_rows(rng, extra_rows)
    rows += [{n: rng.choice(v) for n, v in AXES.items()} for _ in pinned]
    pins = [{}] * (len(rows) - len(pinned)) + list(pinned)
    settings = []
    for row, pin in zip(rows, pins):
        row = dict(row)
        if shards is not None:  # the slow sweep widens the range beyond the covered values
            row["shards"] = rng.choice(shards) if rng.random() < 0.5 else row["shards"]
        if slices is not None:
            row["slices"] = rng.choice(slices) if rng.random() < 0.5 else row["slices"]
        settings.append(dict(
            row, partition_seed=rng.randrange(1000), train_seed=rng.randrange(1000),
            hidden=rng.choice(hidden), epochs=rng.choice(epochs), batch_size=rng.choice(batch_sizes),
            n_train=rng.randint(*n_train),
        ) | pin)
    # Every setting with every kind of K first, then more trials round-robin over the settings.
    plan = [(i, kind) for i in range(len(settings)) for kind in rng.sample(K_KINDS, len(K_KINDS))]
    for j in itertools.count():
        if len(plan) >= count:
            break
        plan.append((j % len(settings), rng.choice(K_KINDS)))
    trials = []
    for t, (i, kind) in enumerate(plan):
        s = settings[i]
        name = (f"{prefix}{t:03d}-{s['optimizer']}-p{s['dropout']}-{s['strategy']}-{s['schedule']}"
                f"-ck{s['checkpoint_every']}-S{s['shards']}R{s['slices']}-{kind}")
        trials.append(Trial(name=name, n_test=30, data_seed=rng.randrange(10**6), k_kind=kind,
                            k_seed=rng.randrange(10**6), **s))
    return trials


# Default suite: tiny data, trials grouped by configuration so that compiled programs are reused.
# One pinned wide setting: 8 shards, batch 32, so that a deletion retraining 1-4 shards runs a
# narrower vmap (2 or 4 lanes) than the full training (8 lanes); at these shapes XLA on CPU has
# given different float bits for different lane counts.
# Uniform partition, so that a failure here cannot be the partition's.
WIDE = {"strategy": "uniform", "shards": 8, "slices": 2, "hidden": (16,), "batch_size": 32, "n_train": 200,
        "epochs": 2}
DEFAULT_TRIALS = make_trials("d", seed=20240611, count=40, extra_rows=0, n_train=(120, 200), hidden=((8,), (16,)),
                             epochs=(2, 3), batch_sizes=(16,), pinned=(WIDE,))
# Opt-in sweep: bigger data, more shards and slices, more random configurations.
SLOW_TRIALS = make_trials("s", seed=777, count=240, extra_rows=40, n_train=(300, 900), hidden=((16,), (32,)),
                          epochs=(2, 3, 4), batch_sizes=(16, 32), shards=(2, 3, 4, 5, 6, 8), slices=(1, 2, 3, 4, 5))


# --------------------------------------------------------------------------------------------
# One trial.


def draw_forget_set(trial: Trial, ds, store) -> list[int]:
    """K of the trial's kind, drawn from the trained run's data store (its shard/slice placement)."""
    rng = np.random.default_rng(trial.k_seed)
    n = len(store.ids)
    if trial.k_kind == "single":
        ids = [int(rng.choice(store.ids))]
    elif trial.k_kind == "group" and trial.strategy == "grouped":
        g = rng.choice(np.unique(ds.groups))
        ids = ds.ids[ds.groups == g].tolist()
    elif trial.k_kind == "group":  # a random handful
        ids = rng.choice(store.ids, size=int(rng.integers(2, 9)), replace=False).tolist()
    elif trial.k_kind == "spread":  # at least one id in every non-empty shard, from random slices
        ids = []
        for s in np.unique(store.shard):
            in_shard = store.shard == s
            for _ in range(int(rng.integers(1, 3))):
                r = rng.choice(np.unique(store.slice[in_shard]))
                pool = np.setdiff1d(store.ids[in_shard & (store.slice == r)], ids)
                if len(pool):
                    ids.append(int(rng.choice(pool)))
    else:
        raise AssertionError(trial.k_kind)
    ids = sorted(int(i) for i in ids)
    assert 0 < len(ids) < n, f"{trial}: K must be non-empty and not all the data (|K|={len(ids)}, n={n})"
    return ids


def _final_states(root, slices: int) -> dict:
    wd = Workdir.open(root)
    out = {}
    for c in wd.checkpoints:
        out[c.shard] = c.restore(slices - 1)[0] if c.latest() == slices - 1 else None
    return out


def _leaf_differences(a: dict, b: dict) -> list[str]:
    """Shard/leaf paths whose dtype, shape or bytes differ (every leaf of every final state)."""
    import jax

    diffs = []
    for shard in sorted(set(a) | set(b)):
        sa, sb = a.get(shard), b.get(shard)
        if sa is None or sb is None:
            if not (sa is None and sb is None):
                diffs.append(f"shard {shard}: final state present in one run only")
            continue
        la, ta = jax.tree_util.tree_flatten_with_path(sa)
        lb, tb = jax.tree_util.tree_flatten_with_path(sb)
        if ta != tb:
            diffs.append(f"shard {shard}: tree structures differ")
            continue
        for (path, x), (_, y) in zip(la, lb):
            x, y = np.asarray(x), np.asarray(y)
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                what = ""
                if x.shape == y.shape:
                    what = f" (max |diff| {np.max(np.abs(x.astype(float) - y.astype(float)))})"
                diffs.append(f"shard {shard} leaf {jax.tree_util.keystr(path)}{what}")
    return diffs


def _leaked_rows(root: Path, ds, forgotten: list[int]) -> list[str]:
    """Forgotten rows whose feature bytes are still in some file under root (rows whose bytes a
    kept training row or a test row shares are exempt)."""
    gone = np.isin(ds.ids, forgotten)
    allowed = {r.tobytes() for r in ds.x[~gone]} | {r.tobytes() for r in ds.x_test}
    needles = {int(i): ds.x[row].tobytes() for i, row in zip(ds.ids[gone], np.flatnonzero(gone))}
    needles = {i: b for i, b in needles.items() if b not in allowed}
    leaks = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        data = path.read_bytes()
        leaks += [f"id {i} in {path.relative_to(root)}" for i, b in needles.items() if b in data]
    return leaks


def run_trial(trial: Trial, tmp_path: Path) -> None:
    where = [f"trial {trial}"]
    try:
        problems = _trial_problems(trial, tmp_path, where)
    except Exception as e:  # whatever failed, name the trial and K
        if not isinstance(e, AssertionError):
            e.add_note("\n".join(where))
        raise
    assert not problems, "forget(train(D), K) != train(D \\ K):\n  " + "\n  ".join(problems) + "\n" + "\n".join(where)


def _trial_problems(trial: Trial, tmp_path: Path, where: list) -> list[str]:
    cfg, ds = trial.config(), trial.dataset()
    a, b = tmp_path / "forgotten", tmp_path / "scratch"
    sisa.train(a, cfg, dataset=ds, progress=False)
    ids = draw_forget_set(trial, ds, Workdir.open(a).store())
    where.append(f"K ({len(ids)} ids) = {ids}")
    sisa.forget(a, ids, progress=False)
    sisa.train(b, cfg, dataset=ds.without(ids), progress=False)

    problems = []
    result = compare(Workdir.open(a), Workdir.open(b))
    if not result["identical"]:
        problems.append(f"final train-state digests differ per shard: {result['per_shard']}")
    diffs = _leaf_differences(_final_states(a, trial.slices), _final_states(b, trial.slices))
    if diffs:
        problems.append(f"{len(diffs)} differing leaves: {diffs[:12]}")
    for agg in ("vote", "softmax"):
        pa, pb = sisa.predict(a, ds.x_test, agg), sisa.predict(b, ds.x_test, agg)
        for key in ("probabilities", "labels", "shards", "left_out"):
            if pa[key] != pb[key]:
                problems.append(f"predict({agg}) {key} differ")
    leaks = _leaked_rows(a, ds, ids)
    if leaks:
        problems.append(f"forgotten feature bytes still on disk: {leaks[:12]}")
    return problems


# --------------------------------------------------------------------------------------------
# Tests.


def test_default_matrix_covers_the_space():
    trials = DEFAULT_TRIALS
    assert len(trials) >= 40
    rows = [{n: getattr(t, n) for n in AXES} for t in trials]
    for name, values in AXES.items():
        assert {r[name] for r in rows} >= set(values), name
    assert set().union(*map(_pairs, rows)) >= all_pairs()  # every pair of values of any two axes
    assert {t.k_kind for t in trials} == set(K_KINDS)
    kinds = {}
    for t in trials:  # every configuration is tried with every kind of K
        kinds.setdefault(t.config().digest(), set()).add(t.k_kind)
    assert all(k == set(K_KINDS) for k in kinds.values())
    assert len({t.name for t in trials}) == len(trials)
    assert all(120 <= t.n_train <= 200 and t.hidden in ((8,), (16,)) and t.epochs in (2, 3) for t in trials)
    assert any(t.shards == 8 and t.batch_size == 32 and t.k_kind != "spread" for t in trials)  # narrower deletions


def test_slow_matrix_covers_the_space():
    trials = SLOW_TRIALS
    assert len(trials) >= 200 and len({t.name for t in trials}) == len(trials)
    rows = [{n: getattr(t, n) for n in AXES if n not in ("shards", "slices")} for t in trials]
    for name, values in AXES.items():
        if name not in ("shards", "slices"):
            assert {r[name] for r in rows} == set(values), name
    assert {t.k_kind for t in trials} == set(K_KINDS)


@pytest.mark.parametrize("trial", DEFAULT_TRIALS, ids=lambda t: t.name)
def test_forget_is_exact(trial, tmp_path):
    run_trial(trial, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("trial", SLOW_TRIALS, ids=lambda t: t.name)
def test_forget_is_exact_sweep(trial, tmp_path):
    run_trial(trial, tmp_path)
