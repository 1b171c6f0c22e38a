"""`sisa add`: data that grows. forget(add(add(train(D), A1), A2), K) equals training from scratch
on D + A1 + A2 minus K with the same arrival order, bit for bit; only the shards an add reaches
train; bad additions are refused and change nothing; a crash mid-add leaves it done or not."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from sisa import api
from sisa.data.datasets import Dataset
from sisa.errors import SisaError
from sisa.verification import compare, final_digests
from sisa.workdir import Workdir
from tests.conftest import blobs, file_digests


def pieces():
    """D and two arrivals, from one blobs set: ids 5 + 3k as blobs gives them."""
    full = blobs(n_train=360)
    d, a1, a2 = (dataclasses.replace(full, x=full.x[s], y=full.y[s], ids=full.ids[s])
                 for s in (slice(0, 300), slice(300, 330), slice(330, 360)))
    return full, d, a1, a2


def union(parts, arrivals) -> Dataset:
    base = parts[0]
    return dataclasses.replace(base, x=np.concatenate([p.x for p in parts]), y=np.concatenate([p.y for p in parts]),
                               ids=np.concatenate([p.ids for p in parts]),
                               arrival=np.concatenate([np.full(len(p.ids), a, np.int32) for p, a in zip(parts, arrivals)]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forget_after_adds_equals_training_from_scratch_in_arrival_order(tmp_path, tiny_cfg, seed):
    _, d, a1, a2 = pieces()
    root = tmp_path / "run"
    api.train(str(root), tiny_cfg, dataset=d, progress=False)
    r1 = api.add(str(root), a1, progress=False)
    r2 = api.add(str(root), a2, progress=False)
    assert (r1["arrival"], r1["stage"], r2["arrival"], r2["stage"]) == (1, 3, 2, 4)
    rng = np.random.default_rng(seed)
    forgotten = [*rng.choice(d.ids, 2, replace=False).tolist(), *rng.choice(a1.ids, 2, replace=False).tolist(),
                 *rng.choice(a2.ids, 1).tolist()]
    api.forget(str(root), forgotten, progress=False)
    scratch = tmp_path / "scratch"
    api.train(str(scratch), tiny_cfg, dataset=union([d, a1, a2], [0, 1, 2]).without(forgotten), progress=False)
    assert Workdir.open(root).stages() == Workdir.open(scratch).stages() == 5
    assert compare(Workdir.open(root), Workdir.open(scratch))["identical"]
    cert = api.verify(str(root), progress=False)
    assert cert["verdict"] == "verified", cert["problems"]
    assert api.audit(str(root))["clean"] or not api.audit(str(root))["findings"]


def test_only_the_shards_an_add_reaches_train(tmp_path, tiny_cfg):
    _, d, a1, _ = pieces()
    root = tmp_path / "run"
    api.train(str(root), tiny_cfg, dataset=d, progress=False)
    store = Workdir.open(root).store()
    from sisa.data import partition

    p = tiny_cfg.partition
    shard, _ = partition.assign(a1.ids, a1.y, None, shards=p.shards, slices=p.slices, strategy=p.strategy, seed=p.seed)
    one = dataclasses.replace(a1, x=a1.x[shard == 1], y=a1.y[shard == 1], ids=a1.ids[shard == 1])
    before = {c.shard: c.restore(2)[0] for c in Workdir.open(root).checkpoints}
    r = api.add(str(root), one, progress=False)
    assert r["shards"] == [1] and r["examples_epochs"] > 0
    wd = Workdir.open(root)
    for c in wd.checkpoints:
        assert c.stages() == [0, 1, 2, 3]
        same = all(np.array_equal(a, b) for a, b in zip(
            __import__("jax").tree.leaves(before[c.shard]), __import__("jax").tree.leaves(c.restore(3)[0])))
        assert same == (c.shard != 1), c.shard  # shards 0 and 2 keep their state; shard 1 trained
    assert int(np.sum(store.counts(3, 3)[1])) + len(one.ids) == int(wd.store().counts(3, 4)[1].sum())


def test_forgetting_a_whole_arrival_removes_its_stage(tmp_path, tiny_cfg):
    _, d, a1, _ = pieces()
    root = tmp_path / "run"
    api.train(str(root), tiny_cfg, dataset=d, progress=False)
    api.add(str(root), a1, progress=False)
    api.forget(str(root), a1.ids.tolist(), progress=False)
    wd = Workdir.open(root)
    assert wd.stages() == 3 and all(c.stages() == [0, 1, 2] for c in wd.checkpoints)
    api.train(str(tmp_path / "scratch"), tiny_cfg, dataset=d, progress=False)
    assert compare(wd, Workdir.open(tmp_path / "scratch"))["identical"]


@pytest.mark.parametrize("bad, match", [
    (lambda d, a: dataclasses.replace(a, ids=d.ids[:30]), "already in the run"),
    (lambda d, a: dataclasses.replace(a, x=a.x[:, :4]), "shape"),
    (lambda d, a: dataclasses.replace(a, y=np.full(len(a.y), 2, np.int32), num_classes=9), None),
    (lambda d, a: dataclasses.replace(a, y=np.full(len(a.y), 7, np.int32), num_classes=9), "3 classes"),
])
def test_bad_additions_are_refused_and_change_nothing(tmp_path, tiny_cfg, bad, match):
    _, d, a1, _ = pieces()
    root = tmp_path / "run"
    api.train(str(root), tiny_cfg, dataset=d, progress=False)
    before = file_digests(root)
    if match is None:  # a well-formed addition (labels within the run's classes): accepted
        api.add(str(root), bad(d, a1), progress=False)
        return
    with pytest.raises(SisaError, match=match):
        api.add(str(root), bad(d, a1), progress=False)
    assert file_digests(root) == before


def test_a_forgotten_id_is_never_added_again(tmp_path, tiny_cfg):
    _, d, a1, _ = pieces()
    root = tmp_path / "run"
    api.train(str(root), tiny_cfg, dataset=d, progress=False)
    api.forget(str(root), [int(d.ids[0])], progress=False)
    back = dataclasses.replace(a1, ids=np.concatenate([d.ids[:1], a1.ids[1:]]))
    before = file_digests(root)
    with pytest.raises(SisaError, match="never used again"):
        api.add(str(root), back, progress=False)
    assert file_digests(root) == before


def test_an_add_killed_after_its_record_added_nothing_and_can_be_done_again(tmp_path, tiny_cfg):
    _, d, a1, _ = pieces()
    root = tmp_path / "run"
    api.train(str(root), tiny_cfg, dataset=d, progress=False)
    path = tmp_path / "a1.npz"
    np.savez(path, x=a1.x, y=a1.y, id=a1.ids)
    cli = [sys.executable, "-m", "sisa.cli", "add", "--workdir", str(root), "--dataset", str(path)]
    killed = subprocess.run(cli, env={**os.environ, "SISA_CRASH_AT": "after-add-record"}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert Workdir.open(root).stages() == 3 and len(api.ledger(str(root))["entries"]) == 0
    done = subprocess.run([*cli, "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '"arrival": 2' in done.stdout  # arrival 1 was recorded and added nothing: its stage is empty
    scratch = tmp_path / "scratch"
    api.train(str(scratch), tiny_cfg, dataset=union([d, a1], [0, 2]), progress=False)
    assert compare(Workdir.open(root), Workdir.open(scratch))["identical"]
    assert final_digests(Workdir.open(root)) == final_digests(Workdir.open(scratch))
    assert api.verify(str(root), [0], progress=False)["verdict"] == "verified"
    shutil.rmtree(scratch)
