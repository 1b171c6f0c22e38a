"""`verify` certifies an exact deletion and catches a swapped checkpoint; `audit` finds leftovers
and says what it could not check."""

import shutil
import socket
import subprocess
import tempfile

import numpy as np
import pytest

import sisa
from sisa.cli import main
from sisa.data import datasets
from sisa.errors import SisaError
from sisa.workdir import Workdir
from tests.conftest import file_digests, npz_dataset, restore_store


@pytest.fixture(scope="module")
def before_and_after(tmp_path_factory, tiny_cfg):
    """A run on an .npz data set named by a relative path at training, copied before and after
    forgetting ids in shard 1."""
    tmp = tmp_path_factory.mktemp("va")
    npz_dataset(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        ds = datasets.load("blobs.npz")
    sisa.train(tmp / "before", tiny_cfg, dataset=ds, progress=False)
    store = Workdir.open(tmp / "before").store()
    ids = store.ids[(store.shard == 1) & (store.slice == 0)][:2].tolist()
    shutil.copytree(tmp / "before", tmp / "after")
    sisa.forget(tmp / "after", ids, progress=False)
    return tmp / "before", tmp / "after", ids


@pytest.fixture
def after(before_and_after, tmp_path):
    shutil.copytree(before_and_after[1], tmp_path / "after")
    return tmp_path / "after"


@pytest.fixture
def source(before_and_after):
    """The run's original data file, as the user keeps it; restored after the test."""
    path = before_and_after[0].parent / "blobs.npz"
    saved = path.read_bytes()
    yield path
    path.write_bytes(saved)


@pytest.fixture
def own_tempdir(tmp_path, monkeypatch):
    """tempfile.gettempdir() for this test: an empty directory, to see what lands there."""
    d = tmp_path / "tempdir"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_verify_certifies_a_committed_forget(after, own_tempdir):
    cert = sisa.verify(after, progress=False)
    assert not (after / ".scratch").exists() and not list(own_tempdir.iterdir())
    assert cert["verdict"] == "verified", cert["problems"]
    assert all(r["identical"] and r["served"] for r in cert["shards"].values())
    assert cert["ledger_head"] == sisa.ledger(after)["head"]
    assert cert["environment"]["same"]


def test_verify_fails_on_a_checkpoint_trained_with_the_forgotten_id(before_and_after, after):
    before = before_and_after[0]
    shutil.rmtree(after / "checkpoints")  # the forget retrained shard 1 alone: the others are the same
    shutil.copytree(before / "checkpoints", after / "checkpoints")
    cert = sisa.verify(after, [1], progress=False)
    assert cert["verdict"] == "FAILED"
    assert any("lineage holds forgotten ids" in p for p in cert["problems"])
    assert not cert["shards"][1]["identical"]
    assert main(["verify", "--workdir", str(after), "--shards", "1"]) == 1


def test_audit_is_clean_after_forget_and_finds_unpurged_bytes(before_and_after, after):
    before, _, ids = before_and_after
    listed = file_digests(after), sorted(map(str, after.rglob("*")))
    report = sisa.audit(after)
    assert report["clean"] and report["rows_scanned_for"] == len(ids), report
    assert (file_digests(after), sorted(map(str, after.rglob("*")))) == listed  # an audit writes nothing
    restore_store(before, after)  # as if the purge never ran
    report = sisa.audit(after)
    assert not report["clean"]
    assert any("holds the feature bytes of forgotten id" in f for f in report["findings"])
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


# Audit: fails closed when the bytes of forgotten rows cannot be checked.

def test_audit_from_another_directory_rereads_the_source_by_its_absolute_path(after, source, tmp_path, monkeypatch):
    assert Workdir.open(after).manifest["dataset"]["name"] == str(source)  # trained as "blobs.npz"
    monkeypatch.chdir(tmp_path)
    report = sisa.audit(after)
    assert report["clean"] and report["rows_scanned_for"] == 2 and not report["unchecked"], report


def test_audit_is_not_clean_when_the_source_is_moved_deleted_or_unreadable(after, source, tmp_path):
    moved = tmp_path / "moved.npz"
    source.rename(moved)
    report = sisa.audit(after)
    assert not report["clean"] and not report["findings"] and report["rows_scanned_for"] == 0
    assert [u for u in report["unchecked"] if str(source) in u and "missing" in u and "--source" in u], report
    assert main(["audit", "--workdir", str(after)]) == 1
    assert main(["audit", "--workdir", str(after), "--source", str(moved)]) == 0  # the user's copy
    assert sisa.audit(after, str(moved))["rows_scanned_for"] == 2
    moved.unlink()
    assert main(["audit", "--workdir", str(after), "--source", str(moved)]) == 1
    source.write_bytes(b"not a zip")
    report = sisa.audit(after)
    assert not report["clean"] and any("could not be read" in u for u in report["unchecked"]), report


def test_audit_is_not_clean_when_a_kept_row_of_the_source_changed(after, source):
    with np.load(source) as f:
        a = dict(f)
    a["x"][np.flatnonzero(~np.isin(a["id"], sisa.ledger(after)["entries"][0]["ids"]))[0]] += 1
    np.savez(source, **a)
    report = sisa.audit(after)
    assert not report["clean"] and report["rows_scanned_for"] == 0
    assert any("differs from the data trained on" in u for u in report["unchecked"]), report
    assert main(["audit", "--workdir", str(after)]) == 1


def test_audit_is_not_clean_when_the_source_lacks_a_forgotten_id(before_and_after, after, source):
    missing = before_and_after[2][0]
    with np.load(source) as f:
        a = dict(f)
    keep = a["id"] != missing
    np.savez(source, **{**a, "x": a["x"][keep], "y": a["y"][keep], "id": a["id"][keep]})
    report = sisa.audit(after)
    assert not report["clean"] and report["rows_scanned_for"] == 1
    assert any(f"not in {source} (first: {missing})" in u for u in report["unchecked"]), report
    assert main(["audit", "--workdir", str(after)]) == 1


def test_audit_scans_the_scratch_area_and_skips_files_that_vanish(before_and_after, after, monkeypatch):
    """Bytes of a forgotten row in a scratch dir are found; a file deleted mid-scan is skipped."""
    store = Workdir.open(before_and_after[0]).store()
    leak = np.asarray(store.x)[np.isin(store.ids, before_and_after[2])][0].tobytes()
    (after / ".scratch" / "verify-x-1").mkdir(parents=True)
    (after / ".scratch" / "verify-x-1" / "state").write_bytes(b"..." + leak)
    (after / "checkpoints" / "gone").write_bytes(b"")
    from pathlib import Path

    real = Path.read_bytes

    def vanishing(p):
        if p.name == "gone":
            p.unlink()  # as a concurrent forget deleting checkpoints
        return real(p)

    monkeypatch.setattr(Path, "read_bytes", vanishing)
    report = sisa.audit(after)
    assert not report["clean"] and not report["unchecked"]
    assert any(f.startswith(".scratch/verify-x-1/state holds the feature bytes") for f in report["findings"]), report


# Verify: works in the workdir's own scratch area, never on unpurged rows, and cleans up.

def test_verify_refuses_while_a_request_is_pending_and_leaves_no_scratch(before_and_after, after, monkeypatch):
    from sisa import fsutil

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = after / ".scratch" / f"verify-{socket.gethostname()}-{dead.pid}"  # a verify that was killed
    stale.mkdir(parents=True)
    restore_store(before_and_after[0], after)  # a restored backup
    with pytest.raises(SisaError, match=r"ids of request #1 are in the data store again: run `sisa train"):
        sisa.verify(after, progress=False)
    assert not (after / ".scratch").exists()
    restore_store(before_and_after[1], after)
    store = Workdir.open(after).store()

    def full_disk(path, write, **_):  # every durable write of bytes, npz and npy goes through it
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fsutil, "atomic_write", full_disk)
    with pytest.raises(SisaError, match="recorded in the ledger"):
        sisa.forget(after, store.ids[store.shard == 0][:1].tolist(), progress=False)
    monkeypatch.undo()
    with pytest.raises(SisaError, match=r"request #2 is pending: run `sisa train --workdir .*` to finish it, then verify"):
        sisa.verify(after, progress=False)
    assert main(["verify", "--workdir", str(after)]) == 1
    assert not (after / ".scratch").exists()


def test_verify_cleans_up_after_an_error_during_the_retrain(after, own_tempdir, monkeypatch):
    from sisa.training import loop

    real, seen = loop.complete, []

    def crash(wd, **kwargs):
        real(wd, **kwargs)
        seen.extend(p.relative_to(after) for p in wd.root.rglob("*") if p.is_file())
        raise RuntimeError("injected")

    monkeypatch.setattr(loop, "complete", crash)
    with pytest.raises(RuntimeError, match="injected"):
        sisa.verify(after, [0], progress=False)
    assert seen and all(p.parts[0] == ".scratch" and p.parts[2] == "checkpoints" for p in seen)  # only checkpoints
    assert not (after / ".scratch").exists() and not list(own_tempdir.iterdir())


def test_a_forget_during_verify_removes_its_scratch_and_is_reported(after, monkeypatch):
    from sisa.training import loop

    real = loop.complete
    store = Workdir.open(after).store()

    def with_forget(wd, **kwargs):
        out = real(wd, **kwargs)
        monkeypatch.setattr(loop, "complete", real)  # the forget's own retrain
        sisa.forget(after, store.ids[store.shard == 0][:1].tolist(), progress=False)
        assert not wd.root.exists()  # its purge removed the scratch area
        return out

    monkeypatch.setattr(loop, "complete", with_forget)
    with pytest.raises(SisaError, match="a forget ran during verify; run verify again"):
        sisa.verify(after, [0], progress=False)
    assert not (after / ".scratch").exists()
    assert main(["verify", "--workdir", str(after), "--shards", "0"]) == 0
