"""The promise: forget(train(D), K) is bit for bit train(D \\ K), and nothing of K is left."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import sisa
from sisa.errors import SisaError
from sisa.verification import compare
from sisa.workdir import Workdir
from tests.conftest import file_digests, store_bytes


def _train(root, cfg, ds):
    sisa.train(root, cfg, dataset=ds, progress=False)
    return Workdir.open(root)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_ds, tiny_cfg):
    root = tmp_path_factory.mktemp("base") / "run"
    _train(root, tiny_cfg, tiny_ds)
    return root


@pytest.fixture
def run(base, tmp_path):
    """A fresh copy of the trained base run."""
    shutil.copytree(base, tmp_path / "run")
    return tmp_path / "run"


def _ids_where(root, shard=None, slice_=None, n=1):
    store = Workdir.open(root).store()
    sel = np.ones(len(store), bool)
    if shard is not None:
        sel &= store.shard == shard
    if slice_ is not None:
        sel &= store.slice == slice_
    return store.ids[sel][:n].tolist()


def _assert_exact(root, cfg, ds, forget_ids, tmp_path):
    sisa.forget(root, forget_ids, progress=False)
    scratch = _train(tmp_path / "scratch", cfg, ds.without(forget_ids))
    result = compare(Workdir.open(root), scratch)
    assert result["identical"], result
    x = ds.x_test
    for agg in ("vote", "softmax"):
        a, b = sisa.predict(root, x, agg), sisa.predict(scratch.root, x, agg)
        assert a["labels"] == b["labels"] and a["probabilities"] == b["probabilities"]


@pytest.mark.parametrize(
    "where",
    ["first_slice", "last_slice", "one_shard_many", "across_shards"],
)
def test_forget_equals_retrain_from_scratch(run, tiny_cfg, tiny_ds, tmp_path, where):
    last = tiny_cfg.partition.slices - 1
    ids = {
        "first_slice": lambda: _ids_where(run, shard=0, slice_=0),
        "last_slice": lambda: _ids_where(run, shard=1, slice_=last),
        "one_shard_many": lambda: _ids_where(run, shard=2, n=7),
        "across_shards": lambda: sum((_ids_where(run, shard=s, slice_=s % 3, n=2) for s in range(3)), []),
    }[where]()
    _assert_exact(run, tiny_cfg, tiny_ds, ids, tmp_path)


@pytest.mark.parametrize("seed", [1, 2])
def test_exact_for_other_seeds_and_repeated_requests(tiny_cfg, tiny_ds, tmp_path, seed):
    cfg = tiny_cfg.replace(partition={"seed": seed}, train={"seed": seed})
    root = tmp_path / "run"
    _train(root, cfg, tiny_ds)
    first = _ids_where(root, n=3)
    sisa.forget(root, first, progress=False)
    second = _ids_where(root, shard=1, slice_=1, n=2)
    _assert_exact(root, cfg, tiny_ds.without(first), second, tmp_path)  # scratch: without both requests


def _shard_files(digests: dict, shard: int, save: str = "") -> dict:
    """A shard's files among `digests` (of W/checkpoints): its parts of the saves and its records
    or, given `save`, its part of that save alone; not the saves' shared metadata."""
    prefix = f"saves/{save}/" if save else "saves/"
    parts = (f"/state/shard_{shard:04d}/", f"/lineage_{shard:04d}.json")
    return {k: v for k, v in digests.items()
            if (k.startswith(prefix) and any(p in k for p in parts)) or (not save and k.startswith(f"shard_{shard:04d}."))}


def test_only_affected_shards_retrain_and_their_files_alone_change(run):
    before = file_digests(run / "checkpoints")
    save0 = Workdir.open(run).checkpoints[1].stage_path(0).parent.parent.name
    report = sisa.forget(run, _ids_where(run, shard=1, slice_=1), progress=False)
    assert report["affected_shards"] == [1]
    assert report["stages_retrained"] == {1: [1, 2]}
    after = file_digests(run / "checkpoints")
    for shard in (0, 2):
        assert _shard_files(before, shard) == _shard_files(after, shard) and _shard_files(before, shard)
    stage0 = {**_shard_files(before, 1, save0), "shard_0001.files/0.json": before["shard_0001.files/0.json"]}
    assert stage0 and all(after.get(k) == v for k, v in stage0.items())  # before the affected slice
    assert report["examples_epochs_retrained"] < report["examples_epochs_full_retrain"] / 3


def test_no_checkpoint_that_saw_a_forgotten_id_remains(run):
    ids = _ids_where(run, n=12)
    sisa.forget(run, ids, progress=False)
    lineages = list((run / "checkpoints").rglob("lineage_*.json"))
    assert lineages
    seen = set()
    for f in lineages:
        if f.is_file():
            seen.update(json.loads(f.read_text())["ids"])
    assert seen and seen.isdisjoint(ids)
    assert not list((run / "checkpoints").rglob("*orbax-checkpoint-tmp*"))
    store = Workdir.open(run).store()
    assert not store.contains(ids).any()


def test_forgotten_feature_bytes_leave_the_data_store(run, tiny_ds):
    [i] = _ids_where(run, shard=0, n=1)
    row = tiny_ds.x[np.flatnonzero(tiny_ds.ids == i)[0]].tobytes()
    assert row in store_bytes(run)
    sisa.forget(run, [i], progress=False)
    assert row not in store_bytes(run)


def test_deleting_a_whole_shard_leaves_it_out(run, tiny_ds):
    ids = _ids_where(run, shard=2, n=10_000)
    sisa.forget(run, ids, progress=False)
    ev = sisa.evaluate(run)
    assert ev["left_out"]["empty"] == [2] and sorted(ev["per_shard"]) == [0, 1]


def test_forgetting_everything_is_refused(run):
    everything = Workdir.open(run).store().ids.tolist()
    before = file_digests(run)
    with pytest.raises(SisaError, match="no model"):
        sisa.forget(run, everything, progress=False)
    assert file_digests(run) == before


def test_ledger_records_committed_entries_and_detects_edits(run):
    ids = _ids_where(run, n=2)
    report = sisa.forget(run, ids, request="GDPR-17/42", progress=False)
    led = sisa.ledger(run)
    assert led["head"] == report["hash"]
    [entry] = led["entries"]
    assert entry["state"] == "committed" and entry["ids"] == sorted(ids) and entry["request"] == "GDPR-17/42"
    path = Path(run) / "ledger.jsonl"
    path.write_text(path.read_text().replace('"GDPR-17/42"', '"nothing"'))
    with pytest.raises(SisaError, match="hash chain"):
        sisa.forget(run, _ids_where(run, shard=0, n=1), progress=False)


def test_vote_and_softmax_aggregates_are_accurate(base):
    ev = sisa.evaluate(base)
    assert ev["accuracy_vote"] >= 0.9 and ev["accuracy_softmax"] >= 0.9


def test_cnn_forget_is_exact(tiny_cfg, tmp_path):
    from tests.conftest import blobs

    ds = blobs(features=16)  # 16 features -> 4x4 images
    cfg = tiny_cfg.replace(model={"name": "cnn", "hidden": (4,)}, train={"epochs": 1})
    root = tmp_path / "run"
    _train(root, cfg, ds)
    _assert_exact(root, cfg, ds, _ids_where(root, shard=1, slice_=1, n=2), tmp_path)


@pytest.mark.parametrize("name", ["mnist5k", "digits", "mnist5k_cnn"])
def test_experiment_configs_load(name):
    from sisa import config

    cfg = config.load(Path(__file__).parent.parent / "experiments" / f"{name}.toml")
    assert cfg.data.dataset in ("mnist5k", "digits")


def test_sparse_checkpoints_save_disk_and_stay_exact(tiny_ds, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(partition={"slices": 4}, train={"checkpoint_every": 2})
    root = tmp_path / "run"
    _train(root, cfg, tiny_ds)
    wd = Workdir.open(root)
    assert all(c.stages() == [1, 3] for c in wd.checkpoints)
    ids = _ids_where(root, shard=0, slice_=1)  # stage 1 is stale; restart from init, not stage 0
    report = sisa.forget(root, ids, progress=False)
    assert report["stages_retrained"] == {0: [0, 1, 2, 3]}
    scratch = _train(tmp_path / "scratch", cfg, tiny_ds.without(ids))
    assert compare(Workdir.open(root), scratch)["identical"]


def test_a_batched_request_retrains_each_affected_shard_once(run, tiny_cfg):
    store = Workdir.open(run).store()
    ids = store.ids[::7].tolist()  # ~43 ids over every shard and slice
    report = sisa.forget(run, ids, progress=False)
    after = Workdir.open(run).store()
    first = {s: int(store.slice[np.isin(store.ids, ids) & (store.shard == s)].min()) for s in report["affected_shards"]}
    assert report["stages_retrained"] == {s: list(range(r, 3)) for s, r in first.items()}
    counts = after.counts(3, 3).cumsum(axis=1)  # survivors in slices 0..r, per shard
    expected = sum(tiny_cfg.epochs_for_stage(r) * counts[s, r] for s, r0 in first.items() for r in range(r0, 3))
    assert report["examples_epochs_retrained"] == expected
