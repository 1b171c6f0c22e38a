"""Deletion-stable partition and order; persisted strategies."""

import dataclasses
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sisa
from sisa.data import datasets, partition
from sisa.data.datasets import MAX_ID
from sisa.errors import SisaError
from sisa.hashing import keyed_hash
from sisa.workdir import Workdir
from tests.conftest import blobs


def test_uniform_is_a_pure_function_of_id_and_seed():
    ids = np.arange(0, 5000, 3)
    shard, slc = partition.uniform(ids, shards=7, slices=5, seed=3)
    keep = np.random.default_rng(0).random(len(ids)) > 0.3
    shard2, slc2 = partition.uniform(ids[keep], shards=7, slices=5, seed=3)
    assert np.array_equal(shard[keep], shard2) and np.array_equal(slc[keep], slc2)
    assert np.array_equal(partition.uniform(ids[::-1], shards=7, slices=5, seed=3)[0], shard[::-1])
    counts = np.bincount(shard, minlength=7)
    assert counts.min() > 0.8 * counts.mean()  # roughly balanced
    assert not np.array_equal(partition.uniform(ids, shards=7, slices=5, seed=4)[0], shard)


def test_host_and_device_hash_agree():
    ids = np.arange(1000)
    host = keyed_hash(ids, 3, 1, 2, 0)
    device = np.asarray(keyed_hash(jnp.asarray(ids), 3, 1, 2, 0, xp=jnp))
    assert np.array_equal(host, device)
    assert len(np.unique(host)) > 990


def test_grouped_keeps_a_group_in_one_shard():
    ds = blobs(n_train=400)
    groups = np.arange(400) // 7
    shard, _ = partition.assign(ds.ids, ds.y, groups, shards=4, slices=3, strategy="grouped", seed=0)
    for g in np.unique(groups):
        assert len(np.unique(shard[groups == g])) == 1
    with pytest.raises(SisaError, match="group"):
        partition.assign(ds.ids, ds.y, None, shards=4, slices=3, strategy="grouped", seed=0)


def test_persisted_assignment_survives_deletion_and_one_user_touches_one_shard(tmp_path, tiny_cfg):
    ds = dataclasses.replace(blobs(), groups=np.arange(300) // 10)
    cfg = tiny_cfg.replace(partition={"strategy": "grouped"})
    sisa.train(tmp_path / "run", cfg, dataset=ds, progress=False)
    before = Workdir.open(tmp_path / "run").store()
    user = ds.ids[ds.groups == 4].tolist()
    report = sisa.forget(tmp_path / "run", user, progress=False)
    assert len(report["affected_shards"]) == 1
    after = Workdir.open(tmp_path / "run").store()
    kept = np.isin(before.ids, after.ids)
    assert np.array_equal(before.shard[kept], after.shard) and np.array_equal(before.slice[kept], after.slice)


def test_more_shards_than_examples_is_refused(tmp_path, tiny_cfg):
    with pytest.raises(SisaError, match="shards but only"):
        sisa.train(tmp_path / "run", tiny_cfg.replace(partition={"shards": 301}), dataset=blobs(), progress=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- stratified: balance

def _worst_class_deviation(shard, y, shards):
    """Max over classes and shards of |count - class mean| / class mean."""
    out = 0.0
    for c in np.unique(y):
        per = np.bincount(shard[y == c], minlength=shards)
        out = max(out, float(np.abs(per - per.mean()).max() / per.mean()))
    return out


def _stratified(ids, y, shards, seed=0):
    return partition.assign(ids, y, None, shards=shards, slices=3, strategy="stratified", seed=seed)[0]


def test_stratified_balances_mnist5k_and_matches_the_readme():
    # mnist5k's train split has ids 0..3999 and labels sorted, 400 per class (checked in
    # test_datasets); its ids and labels are all the partition sees, so build them directly.
    ids, y = np.arange(4000), np.repeat(np.arange(10), 400)
    keep = np.random.default_rng(0).random(4000) > 0.1  # "after deleting a random 10%"
    readme = {5: (0.26, 0.00, 0.28, 0.08), 20: (0.75, 0.00, 0.81, 0.26)}
    for shards, (uni, strat, uni_k, strat_k) in readme.items():
        s_shard = _stratified(ids, y, shards)
        u_shard = partition.uniform(ids, shards=shards, slices=3, seed=0)[0]
        assert np.array_equal(np.bincount(s_shard, minlength=shards), np.full(shards, 4000 // shards))
        got = [_worst_class_deviation(u_shard, y, shards), _worst_class_deviation(s_shard, y, shards),
               _worst_class_deviation(u_shard[keep], y[keep], shards),
               _worst_class_deviation(s_shard[keep], y[keep], shards)]
        assert np.allclose(got, [uni, strat, uni_k, strat_k], atol=0.005), got


def test_stratified_consecutive_ids_are_balanced_within_two():
    # classes of uneven sizes over consecutive ids at an offset not aligned to the blocks
    sizes = [97, 150, 33, 260, 61]
    ids = 1234 + np.arange(sum(sizes))
    y = np.repeat(np.arange(len(sizes)), sizes)
    for shards in (2, 3, 7, 16):
        for seed in range(5):
            shard = _stratified(ids, y, shards, seed)
            assert np.ptp(np.bincount(shard, minlength=shards)) <= 2
            for c in range(len(sizes)):
                assert np.ptp(np.bincount(shard[y == c], minlength=shards)) <= 2


def test_stratified_random_labels_loose_bound_and_no_worse_than_uniform():
    ds = blobs(n_train=600, classes=4)  # ids 5, 8, 11, ...; labels at random
    for seed in range(20):
        shard = _stratified(ds.ids, ds.y, 5, seed)
        for c in range(4):
            per = np.bincount(shard[ds.y == c], minlength=5)
            assert np.abs(per - per.mean()).max() <= 4 * np.sqrt(per.mean())  # worst seen over 500 seeds: 3.4

    def spread(rule):  # summed squared deviation from the class mean, over 100 seeds
        total = 0.0
        for seed in range(100):
            shard = rule(ds.ids, shards=5, slices=1, seed=seed)[0]
            for c in range(4):
                per = np.bincount(shard[ds.y == c], minlength=5)
                total += ((per - per.mean()) ** 2).sum()
        return total

    assert spread(partition.stratified) < 0.95 * spread(partition.uniform)  # theory ~0.89


def test_stratified_deleting_three_ids_moves_no_survivor():
    # the old rule (deal each class round-robin in hash order) moved 207 of the 597 survivors
    ds = blobs(n_train=600, classes=4)
    before = partition.assign(ds.ids, ds.y, None, shards=5, slices=4, strategy="stratified", seed=0)
    rest = ds.without(ds.ids[[10, 300, 555]])
    after = partition.assign(rest.ids, rest.y, None, shards=5, slices=4, strategy="stratified", seed=0)
    kept = np.isin(ds.ids, rest.ids)
    assert np.array_equal(before[0][kept], after[0]) and np.array_equal(before[1][kept], after[1])


def test_stratified_handles_the_largest_ids_and_one_shard():
    ids = np.array([MAX_ID, MAX_ID - 1, MAX_ID - 2, MAX_ID - 3, 0, 1])  # MAX_ID % 4 == 3
    shard, slc = partition.stratified(ids, shards=4, slices=2, seed=1)
    assert shard.dtype == np.int32 and shard.min() >= 0 and shard.max() < 4
    assert sorted(shard[:4]) == [0, 1, 2, 3]  # one full block: every shard once
    shard7 = partition.stratified(ids, shards=7, slices=2, seed=1)[0]  # a block reaching past MAX_ID
    assert shard7.min() >= 0 and shard7.max() < 7 and shard7[0] != shard7[1]
    assert not partition.stratified(ids, shards=1, slices=2, seed=1)[0].any()


# ---------------------------------------------------------------- every strategy: stability

_NAMES = [f"user-{k}" for k in range(40)] + ["alice", "Bob", "zoë", "名前", "a b", "0x1f", "12.5"]


@st.composite
def _case(draw):
    """Random D (ids, labels, int and string groups) and a random K of one of several kinds."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 250))
    layout = draw(st.sampled_from(["consecutive", "strided", "sparse", "runs", "top"]))
    if layout == "consecutive":
        ids = draw(st.integers(0, 10**6)) + np.arange(n)
    elif layout == "strided":
        ids = draw(st.integers(0, 10**6)) + draw(st.integers(2, 40)) * np.arange(n)
    elif layout == "sparse":
        ids = np.unique(rng.integers(0, MAX_ID + 1, 2 * n))[:n]
    elif layout == "runs":
        starts = rng.integers(0, 10**7, 1 + n // 20)
        ids = np.unique(np.concatenate([s + np.arange(25) for s in starts]))[:n]
    else:  # near the top of the id range
        ids = MAX_ID - np.sort(rng.choice(5 * n, n, replace=False))
    n = len(ids)
    ids = rng.permutation(ids)  # assignment must follow the ids, not the row order
    classes = draw(st.integers(1, 6))
    y = np.sort(rng.integers(0, classes, n)) if draw(st.booleans()) else rng.integers(0, classes, n)
    g = rng.integers(0, draw(st.integers(1, 12)), n)
    int_groups = g * draw(st.sampled_from([1, -7, 2**40 + 1]))
    str_groups = np.array(_NAMES)[rng.permutation(len(_NAMES))[g]]
    shards, slices = draw(st.integers(1, 24)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["one", "group", "spread", "random"]))
    if kind == "one":
        forget = ids[[rng.integers(n)]]
    elif kind == "group":
        forget = ids[g == g[rng.integers(n)]]
    elif kind == "spread":  # one id in every shard: chosen once the strategy's shards are known
        forget = None
    else:
        forget = ids[rng.random(n) < draw(st.floats(0, 1))]
    return dict(ids=ids, y=y.astype(np.int32), int_groups=int_groups, str_groups=str_groups,
                shards=shards, slices=slices, seed=seed, forget=forget)


def _forget(case, ids, shard):
    """K of the case; for kind "spread", the first id of every shard that has one."""
    if case["forget"] is not None:
        return case["forget"]
    return np.array([ids[shard == s][0] for s in np.unique(shard)])


def _assert_stable(before_ids, before, after_ids, after):
    """`after` (computed on D \\ K alone) equals `before` restricted to the ids both contain."""
    common = np.intersect1d(before_ids, after_ids)
    for b, a in zip(before, after):
        pos_b = dict(zip(before_ids.tolist(), b.tolist()))
        pos_a = dict(zip(after_ids.tolist(), a.tolist()))
        assert [pos_b[i] for i in common.tolist()] == [pos_a[i] for i in common.tolist()]


@pytest.mark.parametrize("strategy", ["uniform", "stratified", "grouped"])
@settings(max_examples=50, deadline=None, database=None)
@given(case=_case())
def test_every_strategy_is_deletion_stable(strategy, case):
    ids, y, groups = case["ids"], case["y"], case["int_groups"]
    kw = dict(shards=case["shards"], slices=case["slices"], strategy=strategy, seed=case["seed"])
    before = partition.assign(ids, y, groups, **kw)
    keep = ~np.isin(ids, _forget(case, ids, before[0]))
    after = partition.assign(ids[keep], y[keep], groups[keep], **kw)
    assert np.array_equal(before[0][keep], after[0]) and np.array_equal(before[1][keep], after[1])
    for a in before:
        assert a.dtype == np.int32 and len(a) == len(ids)
    assert (before[0] < case["shards"]).all() and (before[1] < case["slices"]).all()
    assert (before[0] >= 0).all() and (before[1] >= 0).all()


def _write(directory: Path, kind: str, ids, y, groups) -> str:
    x = np.stack([ids % 97, y], axis=1).astype(np.float32)
    if kind == "npz":  # every row is train (explicit test split)
        path = directory / "d.npz"
        np.savez(path, x=x, y=y, id=ids, group=groups, x_test=x[:1], y_test=y[:1])
    else:  # a CSV: rows at file index % 5 == 4 are held out as test
        path = directory / "d.csv"
        lines = ["id,label,group,f0,f1"] + [f"{i},{c},{g},{a},{b}" for i, c, g, (a, b) in zip(ids, y, groups, x)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _grouped_from_file(kind, case):
    ids, groups = case["ids"], case["str_groups"]
    y = np.zeros(len(ids), np.int32)  # grouped ignores labels; one class is never left empty by K
    kw = dict(shards=case["shards"], slices=case["slices"], strategy="grouped", seed=case["seed"])
    numbers = datasets._group_numbers(groups)  # as loading numbers them, to pick a "spread" K
    keep = ~np.isin(ids, _forget(case, ids, partition.assign(ids, y, numbers, **kw)[0]))
    if kind == "csv" and not keep.any():
        keep[0] = True  # a CSV needs a row
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        full = datasets.load(_write(Path(d1), kind, ids, y, groups))
        rest = datasets.load(_write(Path(d2), kind, ids[keep], y[keep], groups[keep])) if keep.any() else None
    before = partition.assign(full.ids, full.y, full.groups, **kw)
    # one number per string value (equal values, equal numbers), and a group shares one shard
    names = dict(zip(ids.tolist(), groups.tolist()))
    assert len(np.unique(full.groups)) == len({names[i] for i in full.ids.tolist()})
    for num in np.unique(full.groups):
        assert len({names[i] for i in full.ids[full.groups == num].tolist()}) == 1
        assert len(np.unique(before[0][full.groups == num])) == 1
    # retraining from scratch without K: as loaded from the smaller file, and as Dataset.without
    if rest is not None:
        if kind == "npz":
            assert np.isin(rest.ids, full.ids).all() and len(rest.ids) == keep.sum()
        _assert_stable(full.ids, before, rest.ids, partition.assign(rest.ids, rest.y, rest.groups, **kw))
    if kind == "npz" and keep.any():
        less = full.without(ids[~keep])
        after = partition.assign(less.ids, less.y, less.groups, **kw)
        _assert_stable(full.ids, before, less.ids, after)


@settings(max_examples=50, deadline=None, database=None)
@given(case=_case())
def test_grouped_string_groups_from_npz_are_deletion_stable(case):
    _grouped_from_file("npz", case)


@settings(max_examples=12, deadline=None, database=None)
@given(case=_case())
def test_grouped_string_groups_from_csv_are_deletion_stable(case):
    _grouped_from_file("csv", case)


def test_string_groups_keep_their_shard_when_a_whole_group_is_dropped(tmp_path):
    # the old numbering (position among the sorted unique groups) renumbered bob, carol, ... once
    # every "alice" row was gone, and moved their examples to other shards
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
    rows = [f"{3 * i + 1},{i % 3},{names[i % len(names)]},{i},{i * i % 17}" for i in range(200)]
    full_csv, rest_csv = tmp_path / "full.csv", tmp_path / "rest.csv"
    full_csv.write_text("\n".join(["id,label,group,a,b"] + rows) + "\n")
    rest_csv.write_text("\n".join(["id,label,group,a,b"] + [r for r in rows if ",alice," not in r]) + "\n")
    full, rest = datasets.load(str(full_csv)), datasets.load(str(rest_csv))
    kw = dict(shards=4, slices=2, strategy="grouped", seed=0)
    before = partition.assign(full.ids, full.y, full.groups, **kw)
    after = partition.assign(rest.ids, rest.y, rest.groups, **kw)
    common, i, j = np.intersect1d(full.ids, rest.ids, return_indices=True)
    assert len(common) > 100
    assert np.array_equal(full.groups[i], rest.groups[j])
    assert np.array_equal(before[0][i], after[0][j]) and np.array_equal(before[1][i], after[1][j])
    assert (full.groups >= 0).all() and full.groups.dtype == np.int64
