"""Checkpoints: one orbax save per stage for every shard trained in it, each shard's part of it
finished only once durable and recorded, and each shard's stages deletable on their own."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sisa import checkpoint
from sisa.checkpoint import CheckpointCorrupted, ShardCheckpoints, state_digest


def _state(shard: int, stage: int) -> dict:
    rng = np.random.default_rng(100 * shard + stage)
    return {"params": {"w": rng.normal(size=(7, 5)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)},
            "opt_state": (np.int32(stage), {"mu": rng.normal(size=(7, 5)).astype(np.float32)}),
            "step": np.asarray(stage * 3, np.int32)}


def _abstract():
    return _state(0, 0)


def _lineage(shard: int, stage: int) -> dict:
    return {"shard": shard, "stage": stage, "ids": list(range(shard * 100, shard * 100 + 10 * (stage + 1)))}


def _ckpts(root: Path, shards: int = 3) -> list[ShardCheckpoints]:
    return [ShardCheckpoints(root, s, _abstract) for s in range(shards)]


def _save(ckpts, stage, shards=None):
    shards = range(len(ckpts)) if shards is None else shards
    ShardCheckpoints.save_stage(stage, [(ckpts[s], _state(s, stage), _lineage(s, stage)) for s in shards])


def _same(a, b) -> bool:
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb))


def test_one_save_per_stage_holds_every_shard_and_each_restores_bit_for_bit(tmp_path):
    ckpts = _ckpts(tmp_path)
    for stage in range(3):
        _save(ckpts, stage)
    saves = sorted(p.name for p in (tmp_path / "saves").iterdir())
    assert len(saves) == 3  # not S x R
    for c in ckpts:
        assert c.stages() == [0, 1, 2]
        for stage in range(3):
            state, lineage = c.restore(stage)
            assert _same(state, _state(c.shard, stage)) and lineage["ids"] == _lineage(c.shard, stage)["ids"]
            assert lineage["state_digest"] == state_digest(_state(c.shard, stage))
            assert c.lineage(stage) == lineage  # read as a plain file, without orbax
            assert c.files_intact(stage)
    assert len({c.stage_path(1).parent.parent for c in ckpts}) == 1  # one save


def test_one_shards_stages_are_deleted_alone(tmp_path):
    ckpts = _ckpts(tmp_path)
    for stage in range(3):
        _save(ckpts, stage)
    save1 = ckpts[1].stage_path(1).parent.parent
    assert ckpts[1].delete_from(1) == [2, 1]
    assert ckpts[1].stages() == [0] and ckpts[0].stages() == [0, 1, 2] and ckpts[2].stages() == [0, 1, 2]
    assert not (save1 / "state" / "shard_0001").exists() and not (save1 / "lineage_0001.json").exists()
    assert not (tmp_path / "shard_0001.files" / "1.json").exists()
    left = [json.loads(p.read_text()) for p in (tmp_path / "saves").rglob("lineage_*.json")]
    assert not [lin for lin in left if lin["shard"] == 1 and lin["stage"] >= 1]  # nothing of those stages stays
    for c in (ckpts[0], ckpts[2]):  # the others still read their parts of the same saves
        c._verified.clear()
        assert _same(c.restore(1)[0], _state(c.shard, 1)) and c.files_intact(1)
    # A save goes with its last shard.
    for c in (ckpts[0], ckpts[2]):
        c.delete(2)
    assert ckpts[0].stage_path(2) is None
    assert len(list((tmp_path / "saves").iterdir())) == 2
    # Retraining shard 1 writes new saves, beside the others' old ones.
    _save(ckpts, 1, [1])
    _save(ckpts, 2, [1])
    assert ckpts[1].stages() == [0, 1, 2] and _same(ckpts[1].restore(2)[0], _state(1, 2))
    assert not list(tmp_path.rglob("*orbax-checkpoint-tmp*"))


@pytest.mark.parametrize("mode", ["syncfs", "fsync"])
def test_a_stage_is_listed_only_once_its_files_are_synced_and_its_record_written(tmp_path, monkeypatch, mode):
    """When a shard's record is renamed into place (the moment its stage is finished), every
    file of its part of the save and of the save's shared metadata, the save's folders and the
    record's own bytes have been made durable (by one syncfs of the file system after they were
    all written, or where there is none by an fsync of each); before it, `stages()` does not
    list the stage."""
    if mode == "syncfs" and checkpoint._SYNCFS is None:
        pytest.skip("no syncfs(2) here")
    ckpts = _ckpts(tmp_path)
    synced, checked = set(), []  # paths made durable so far
    real_fsync, real_replace, real_syncfs = os.fsync, os.replace, checkpoint._SYNCFS

    def fsync(fd):
        real_fsync(fd)
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))

    def syncfs(fd):
        everything = {str(p.resolve()) for p in tmp_path.rglob("*")} | {str(tmp_path.resolve())}
        out = real_syncfs(fd)
        synced.update(everything)  # what existed when the file system was synced
        return out

    def replace(src, dst):
        dst = Path(dst)
        if dst.parent.name.endswith(".files"):
            c = next(c for c in ckpts if c.records == dst.parent)
            stage = int(dst.stem)
            assert stage not in c.stages()  # not finished before its record is there
            assert str(Path(src).resolve()) in synced  # the record's bytes are durable
            record = json.loads(Path(src).read_text())
            save = c.directory / record["save"]
            files = [p for p in save.rglob("*") if str(p.relative_to(save)) in record["files"]]
            assert len(files) == len(record["files"]) > 0
            unsynced = [p for p in files if str(p.resolve()) not in synced]
            assert not unsynced
            assert all(str(d.resolve()) in synced for d in (save, save / "state", save / "state" / c.name, c.directory))
            checked.append((c.shard, stage))
        real_replace(src, dst)
        if dst.parent.name.endswith(".files"):
            assert int(dst.stem) in next(c for c in ckpts if c.records == dst.parent).stages()

    monkeypatch.setattr(os, "replace", replace)
    if mode == "fsync":
        monkeypatch.setattr(checkpoint, "_SYNCFS", None)
        monkeypatch.setattr(os, "fsync", fsync)
    else:
        monkeypatch.setattr(checkpoint, "_SYNCFS", syncfs)
    _save(ckpts, 0)
    _save(ckpts, 1, [0, 2])
    assert checked == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1)]


def test_an_unrecorded_part_is_unfinished_and_cleared_alone(tmp_path, monkeypatch):
    """A crash after the save but before a shard's record: that shard's stage is not listed
    (never restored or served) and the next writer removes its part, keeping the recorded ones."""
    ckpts = _ckpts(tmp_path)
    _save(ckpts, 0)
    real = os.replace
    calls = []

    def crash_on_second(src, dst):
        if Path(dst).parent.name.endswith(".files"):
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt  # as if killed between two records
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _save(ckpts, 1)
    monkeypatch.undo()
    ckpts = _ckpts(tmp_path)
    assert [c.stages() for c in ckpts] == [[0, 1], [0], [0]]
    assert [bool(c.unfinished()) for c in ckpts] == [False, True, True]
    with pytest.raises(CheckpointCorrupted):
        ckpts[1].lineage(1)
    for c in ckpts:
        c.remove_temporaries()
    assert [c.unfinished() for c in ckpts] == [[], [], []]
    save = ckpts[0].stage_path(1).parent.parent
    assert sorted(p.name for p in save.iterdir() if p.name.startswith("lineage_")) == ["lineage_0000.json"]
    assert sorted(p.name for p in (save / "state").iterdir() if p.name.startswith("shard_")) == ["shard_0000"]
    assert _same(ckpts[0].restore(1)[0], _state(0, 1))


def test_damage_to_one_shards_part_is_that_shards_alone(tmp_path):
    ckpts = _ckpts(tmp_path)
    _save(ckpts, 0)
    victim = max((p for p in ckpts[1].stage_path(0).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert [c.files_intact(0) for c in ckpts] == [True, False, True]
    with pytest.raises(CheckpointCorrupted):
        ckpts[1].restore(0)
    assert _same(ckpts[2].restore(0)[0], _state(2, 0))
