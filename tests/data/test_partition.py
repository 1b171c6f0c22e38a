"""Deletion-stable partition and order; persisted strategies."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import sisa
from sisa.data import partition
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


def test_stratified_spreads_every_class_evenly():
    ds = blobs(n_train=600, classes=4)
    shard, _ = partition.assign(ds.ids, ds.y, None, shards=5, slices=2, strategy="stratified", seed=0)
    for c in range(4):
        per = np.bincount(shard[ds.y == c], minlength=5)
        assert per.max() - per.min() <= 1


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
