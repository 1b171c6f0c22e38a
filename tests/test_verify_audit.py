"""`verify` certifies an exact deletion and catches a swapped checkpoint; `audit` finds leftovers."""

import shutil

import pytest

import sisa
from sisa.cli import main
from sisa.workdir import Workdir
from tests.conftest import npz_dataset


@pytest.fixture(scope="module")
def before_and_after(tmp_path_factory, tiny_cfg):
    """A run on an .npz data set, copied before and after forgetting ids in shard 1."""
    tmp = tmp_path_factory.mktemp("va")
    sisa.train(tmp / "before", tiny_cfg, dataset=npz_dataset(tmp), progress=False)
    store = Workdir.open(tmp / "before").store()
    ids = store.ids[(store.shard == 1) & (store.slice == 0)][:2].tolist()
    shutil.copytree(tmp / "before", tmp / "after")
    sisa.forget(tmp / "after", ids, progress=False)
    return tmp / "before", tmp / "after", ids


@pytest.fixture
def after(before_and_after, tmp_path):
    shutil.copytree(before_and_after[1], tmp_path / "after")
    return tmp_path / "after"


def test_verify_certifies_a_committed_forget(after):
    cert = sisa.verify(after, progress=False)
    assert cert["verdict"] == "verified", cert["problems"]
    assert all(r["identical"] and r["served"] for r in cert["shards"].values())
    assert cert["ledger_head"] == sisa.ledger(after)["head"]
    assert cert["environment"]["same"]


def test_verify_fails_on_a_checkpoint_trained_with_the_forgotten_id(before_and_after, after):
    before = before_and_after[0]
    shutil.rmtree(after / "checkpoints" / "shard_0001")
    shutil.copytree(before / "checkpoints" / "shard_0001", after / "checkpoints" / "shard_0001")
    cert = sisa.verify(after, [1], progress=False)
    assert cert["verdict"] == "FAILED"
    assert any("lineage holds forgotten ids" in p for p in cert["problems"])
    assert not cert["shards"][1]["identical"]
    assert main(["verify", "--workdir", str(after), "--shards", "1"]) == 1


def test_audit_is_clean_after_forget_and_finds_unpurged_bytes(before_and_after, after):
    before, _, ids = before_and_after
    report = sisa.audit(after)
    assert report["clean"] and report["rows_scanned_for"] == len(ids), report
    shutil.copy(before / "data" / "train.npz", after / "data" / "train.npz")  # as if the purge never ran
    report = sisa.audit(after)
    assert not report["clean"]
    assert any("train.npz holds the feature bytes of forgotten id" in f for f in report["findings"])
    assert main(["audit", "--workdir", str(after)]) == 1


def test_verify_fails_when_the_stored_partition_is_not_what_partitioning_afresh_gives(after):
    """As with a partition that depended on other examples: the stored assignment of the survivors
    differs from the one training on them from scratch would compute."""
    import dataclasses

    from sisa.data.store import Store

    wd = Workdir.open(after)
    store = wd.store()
    moved = store.shard.copy()
    moved[:3] = (moved[:3] + 1) % 3
    dataclasses.replace(store, shard=moved).save(wd.store_path)
    cert = sisa.verify(after, [0], progress=False)
    assert cert["verdict"] == "FAILED"
    assert any("3 example(s) sit in another (shard, slice)" in p for p in cert["problems"])
    assert Store.load(wd.store_path).check_partition(shards=3, slices=3, strategy="uniform", seed=0) == store.ids[:3].tolist()
