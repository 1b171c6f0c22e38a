"""Damage and contention: corrupted checkpoints, ledgers and files, a second writer, a failing disk."""

import fcntl
import json
import shutil

import numpy as np
import pytest

import sisa
from sisa import fsutil
from sisa.errors import SisaError
from sisa.verification import final_digests
from sisa.workdir import Workdir
from tests.conftest import assert_served_clean, file_digests


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_ds, tiny_cfg):
    root = tmp_path_factory.mktemp("integrity") / "run"
    sisa.train(root, tiny_cfg, dataset=tiny_ds, progress=False)
    return root


@pytest.fixture
def run(base, tmp_path):
    shutil.copytree(base, tmp_path / "run")
    return tmp_path / "run"


def _largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _ids(root, shard, slice_, n=1):
    store = Workdir.open(root).store()
    return store.ids[(store.shard == shard) & (store.slice == slice_)][:n].tolist()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_final_checkpoint_is_detected_and_rebuilt_bit_for_bit(run, damage):
    expected = final_digests(Workdir.open(run))
    victim = _largest_file(Workdir.open(run).checkpoints[1].stage_path(2))  # its state's bytes
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert final_digests(Workdir.open(run))[1] == "corrupted"
    before = file_digests(run)
    ev = sisa.evaluate(run)  # a reader: serves what is intact (shard 1 its stage before), changes nothing
    assert sorted(ev["per_shard"]) == [0, 1, 2] and ev["left_out"]["pending"] == [1] and ev["served"][1]["stage"] == 1
    assert file_digests(run) == before
    sisa.train(run, progress=False)  # a writer: finds the damage by its file digests and rebuilds
    assert final_digests(Workdir.open(run)) == expected
    assert sorted(sisa.evaluate(run)["per_shard"]) == [0, 1, 2]


def test_a_read_error_on_intact_files_is_reported_never_repaired(run, monkeypatch):
    """An orbax error while the files match their digests (an I/O error, a library upgrade) is
    not damage: readers and writers stop with a message and delete no checkpoint for it."""
    from sisa import checkpoint

    monkeypatch.setattr(checkpoint.ShardCheckpoints, "_read", _failing_read)
    before = file_digests(run / "checkpoints")
    save = Workdir.open(run).checkpoints[1].stage_path(2).parent.parent.name  # shard 1 stage 2's save
    for read in (lambda: sisa.evaluate(run), lambda: sisa.predict(run, np.zeros((2, 8), np.float32))):
        with pytest.raises(checkpoint.CheckpointUnreadable, match="files are intact"):
            read()
    assert file_digests(run / "checkpoints") == before
    with pytest.raises(checkpoint.CheckpointUnreadable, match="shard 1 stage 1 .* files are intact"):
        sisa.forget(run, _ids(run, 1, 2), progress=False)  # must restore stage 1 to retrain stage 2
    after = file_digests(run / "checkpoints")
    # Only stage 2 of shard 1 is gone: it saw the forgotten id. Stages 0 and 1 were not taken for damage.
    gone = (f"saves/{save}/state/shard_0001/", f"saves/{save}/lineage_0001.json", "shard_0001.files/2.")
    assert after == {k: v for k, v in before.items() if not k.startswith(gone)}


def _failing_read(self, save):
    raise OSError(5, "Input/output error")


def test_damaged_intermediate_checkpoint_falls_back_and_forget_stays_exact(run, tiny_cfg, tiny_ds, tmp_path):
    victim = _largest_file(Workdir.open(run).checkpoints[0].stage_path(1))
    victim.write_bytes(victim.read_bytes()[:10])
    ids = _ids(run, 0, 2)
    sisa.forget(run, ids, progress=False)  # needs stage 1 of shard 0: corrupt, so from stage 0
    sisa.train(tmp_path / "scratch", tiny_cfg, dataset=tiny_ds.without(ids), progress=False)
    assert final_digests(Workdir.open(run)) == final_digests(Workdir.open(tmp_path / "scratch"))


def test_second_writer_is_stopped_and_readers_still_served(run):
    before = file_digests(run)
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SisaError, match="in use by another sisa process"):
            sisa.forget(run, _ids(run, 0, 0), progress=False)
        with pytest.raises(SisaError, match="in use"):
            sisa.train(run, progress=False)
        assert len(sisa.predict(run, Workdir.open(run).test_split()[0][:2])["labels"]) == 2
    assert file_digests(run) == before


def test_stale_lock_of_a_dead_process_does_not_block(run):
    (run / ".lock").write_text("999999")  # a pid that holds no lock: the OS released it
    report = sisa.forget(run, _ids(run, 1, 0), progress=False)
    assert report["affected_shards"] == [1]


def test_disk_failure_mid_forget_is_recorded_and_finished_by_the_next_command(run, monkeypatch, tiny_cfg, tiny_ds, tmp_path):
    ids = _ids(run, 2, 1)
    real = fsutil.atomic_write

    def full_disk(path, write, **_):  # every durable write of bytes, npz and npy goes through it
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fsutil, "atomic_write", full_disk)
    with pytest.raises(SisaError, match="No space left on device.*recorded in the ledger"):
        sisa.forget(run, ids, progress=False)
    monkeypatch.setattr(fsutil, "atomic_write", real)
    assert sisa.ledger(run)["entries"][0]["state"] == "requested"
    # Not yet purged or retrained: shard 2 saw the ids, so it must not be served meanwhile.
    from sisa import serve

    members = serve.constituents(Workdir.open(run))
    assert 2 in members.pending  # served, if at all, from a stage before the ids' earliest slice
    assert_served_clean(run, members.served, ids)
    ev = sisa.evaluate(run)  # a reader: serves the safe stages, finishes nothing
    assert sisa.ledger(run)["entries"][0]["state"] == "requested"
    assert_served_clean(run, ev["served"], ids)
    assert any("purge" in step for step in sisa.status(run)["pending_plan"])
    sisa.train(run, progress=False)  # the next writer finishes the request
    ev = sisa.evaluate(run)
    assert sisa.ledger(run)["entries"][0]["state"] == "committed" and sorted(ev["per_shard"]) == [0, 1, 2]
    sisa.train(tmp_path / "scratch", tiny_cfg, dataset=tiny_ds.without(ids), progress=False)
    assert final_digests(Workdir.open(run)) == final_digests(Workdir.open(tmp_path / "scratch"))


def test_torn_ledger_tail_is_dropped(run):
    sisa.forget(run, _ids(run, 0, 0), progress=False)
    with open(run / "ledger.jsonl", "ab") as f:
        f.write(b'{"kind": "request", "seq": 2, "ids": [')  # a crash mid-append
    report = sisa.forget(run, _ids(run, 1, 1), progress=False)
    assert report["entry"] == 2
    assert [e["state"] for e in sisa.ledger(run)["entries"]] == ["committed", "committed"]


@pytest.mark.parametrize("edit", ["ledger", "manifest", "config", "store"])
def test_damaged_run_files_are_refused_with_a_clear_message(run, edit):
    if edit == "ledger":
        sisa.forget(run, _ids(run, 0, 0), progress=False)
        lines = (run / "ledger.jsonl").read_text().splitlines()
        rec = json.loads(lines[0])
        rec["ids"] = [rec["ids"][0] + 1]
        (run / "ledger.jsonl").write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
        phrase = "ledger .* corrupted"
    elif edit == "manifest":
        (run / "sisa.json").write_text("{not json")
        phrase = "manifest .* unreadable"
    elif edit == "config":
        (run / "config.toml").write_text((run / "config.toml").read_text().replace("shards = 3", "shards = 4"))
        phrase = "edited after training"
    else:
        (run / "data" / "train.npz").write_bytes(b"PK\x03\x04garbage")
        phrase = "data store .* unreadable"
    before = file_digests(run)
    calls = [lambda: sisa.forget(run, [5], progress=False), lambda: sisa.status(run)]
    if edit != "store":  # serving and a finished run's `train` have nothing to read the store for
        calls += [lambda: sisa.train(run, progress=False), lambda: sisa.evaluate(run)]
    for call in calls:
        with pytest.raises(SisaError, match=phrase):
            call()
    assert file_digests(run) == before


def test_fsutil_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(*a):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(fsutil.os, "replace", boom)
    with pytest.raises(OSError):
        fsutil.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"


def test_what_a_stage_saw_is_read_again_when_its_lineage_file_changes(tmp_path, tiny_cfg, tiny_ds):
    """`ShardCheckpoints.seen` keeps parsed lineages by file identity: the same ids as the file,
    and a rewritten file is read afresh (never a stale answer)."""
    import json

    from sisa.checkpoint import saw_any

    sisa.train(tmp_path / "run", tiny_cfg, dataset=tiny_ds, progress=False)
    wd = Workdir.open(tmp_path / "run")
    for ckpt in wd.checkpoints:
        for stage in ckpt.stages():
            ids, head = ckpt.seen(stage)
            lineage = ckpt.lineage(stage)
            assert ids.tolist() == sorted(lineage["ids"]) and head == lineage["ledger_head"]
            assert ckpt.seen(stage)[0] is ids  # kept
    ckpt = wd.checkpoints[0]
    path = ckpt.stage_path(0).parent.parent / ckpt.lineage_file  # <save>/lineage_NNNN.json
    lineage = json.loads(path.read_text())
    path.write_text(json.dumps({**lineage, "ids": [*lineage["ids"], 10**9]}))
    assert saw_any(ckpt.seen(0)[0], [10**9, 7]).tolist() == [10**9]


def test_saw_any_is_the_set_intersection():
    from sisa.checkpoint import saw_any

    rng = np.random.default_rng(0)
    for _ in range(200):
        seen = np.unique(rng.integers(0, 50, rng.integers(0, 20))).astype(np.int64)
        ids = rng.integers(0, 60, rng.integers(0, 8)).tolist()
        assert saw_any(seen, ids).tolist() == sorted(set(seen.tolist()) & set(ids))


def test_a_forget_leaves_no_parsed_lineage_of_a_removed_stage_in_memory(tmp_path, tiny_cfg, tiny_ds):
    """The writer's lineage cache drops the stages a deletion removes: no id list of a stage
    that saw a forgotten id stays in the process."""
    from sisa import checkpoint

    sisa.train(tmp_path / "run", tiny_cfg, dataset=tiny_ds, progress=False)
    wd = Workdir.open(tmp_path / "run")
    for ckpt in wd.checkpoints:
        for stage in ckpt.stages():
            ckpt.seen(stage)
    victim = int(wd.store().ids[0])
    sisa.forget(tmp_path / "run", [victim], progress=False)
    here = str(tmp_path / "run")
    kept = [ids for (path, _), (ids, _) in checkpoint._SEEN.items() if path.startswith(here)]
    assert kept and not any(victim in ids for ids in kept)
