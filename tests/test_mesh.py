"""Shards laid along the device mesh axis "ens" give the bits of a single-device run."""

import jax
import pytest

import sisa
from sisa.training.ensemble import lane_bucket
from sisa.verification import final_digests
from sisa.workdir import Workdir


def test_lane_buckets_fill_every_device_with_at_least_two_lanes():
    assert lane_bucket(5, 5, 2) == 6 and lane_bucket(1, 5, 2) == 4
    assert lane_bucket(1, 20, 4) == 8 and lane_bucket(20, 20, 4) == 20
    assert lane_bucket(3, 3, 1) == 3
    # As many devices as shards (or more): one real lane and one spare on each device, never
    # a single lane (a vmap of width one lowers to other kernels; tests/test_layout.py).
    assert lane_bucket(2, 2, 2) == 4 and lane_bucket(1, 2, 2) == 4
    assert lane_bucket(8, 8, 8) == 16 and lane_bucket(1, 8, 8) == 16 and lane_bucket(1, 4, 4) == 8
    assert lane_bucket(1, 1, 1) == 1  # a lone shard: unbatched, and always on one device


@pytest.mark.parametrize("devices", [2, 4])
def test_mesh_training_and_forget_are_bitwise_single_device(tiny_ds, tiny_cfg, tmp_path, monkeypatch, devices):
    assert jax.local_device_count() >= devices  # conftest forces 4 host devices
    cfg = tiny_cfg.replace(partition={"shards": 5})
    monkeypatch.setenv("SISA_DEVICES", "1")
    sisa.train(tmp_path / "one", cfg, dataset=tiny_ds, progress=False)
    monkeypatch.setenv("SISA_DEVICES", str(devices))
    sisa.train(tmp_path / "mesh", cfg, dataset=tiny_ds, progress=False)
    one, mesh = Workdir.open(tmp_path / "one"), Workdir.open(tmp_path / "mesh")
    assert final_digests(one) == final_digests(mesh)

    store = one.store()
    ids = store.ids[(store.shard == 3) & (store.slice == 1)][:2].tolist()
    sisa.forget(tmp_path / "mesh", ids, progress=False)  # 1 shard -> 2 lanes on each device
    monkeypatch.setenv("SISA_DEVICES", "1")
    sisa.train(tmp_path / "scratch", cfg, dataset=tiny_ds.without(ids), progress=False)
    assert final_digests(Workdir.open(tmp_path / "mesh")) == final_digests(Workdir.open(tmp_path / "scratch"))
