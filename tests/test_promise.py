"""Nothing computed over forgotten data survives a forget; reads never write; the environment
is part of the proof."""

import json
import shutil

import numpy as np
import pytest

import sisa
from sisa import environment
from sisa.errors import SisaError
from sisa.workdir import Workdir
from tests.conftest import assert_served_clean, file_digests, npz_dataset, restore_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cfg):
    tmp = tmp_path_factory.mktemp("promise")
    ds = npz_dataset(tmp)
    sisa.train(tmp / "run", tiny_cfg, dataset=ds, progress=False)
    return tmp / "run", ds


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained[0], tmp_path / "run")
    return tmp_path / "run"


def _ids(root, n=3, shard=None):
    store = Workdir.open(root).store()
    sel = store.ids if shard is None else store.ids[store.shard == shard]
    return sel[:n].tolist()


def _lineages(root) -> dict:
    """Every lineage, without the ledger head it anchors (the ledger holds the requests by design)."""
    out, wd = {}, Workdir.open(root)
    for ckpt in wd.checkpoints:
        for stage in ckpt.stages():
            lineage = ckpt.lineage(stage)
            wd.ledger().check_anchor(lineage.pop("ledger_head"), f"shard {ckpt.shard} stage {stage}")
            out[f"shard {ckpt.shard} stage {stage}"] = lineage
    assert len(list((root / "checkpoints").rglob("lineage_*.json"))) == len(out)  # no other lineage on disk
    return out


def test_after_a_forget_manifest_and_every_lineage_are_those_of_training_without_the_ids(run, trained, tiny_cfg,
                                                                                       tmp_path):
    """Nothing in them was computed over the forgotten examples: they are what training on D \\ K
    writes, up to the manifest's creation time and the ledger head both anchor."""
    _, ds = trained
    ids = _ids(run, 2, shard=0) + _ids(run, 2, shard=2)
    sisa.forget(run, ids, progress=False)
    sisa.train(tmp_path / "scratch", tiny_cfg, dataset=ds.without(ids), progress=False)
    a, b = (json.loads((r / "sisa.json").read_text()) for r in (run, tmp_path / "scratch"))
    a.pop("created"), b.pop("created"), a.pop("ledger_head"), b.pop("ledger_head")
    assert a == b
    assert _lineages(run) == _lineages(tmp_path / "scratch")
    assert sisa.audit(run)["clean"]


def test_no_file_of_the_run_holds_a_digest_of_the_original_data_set(run, trained):
    _, ds = trained
    sisa.forget(run, _ids(run, 3), progress=False)
    digest = ds.fingerprint().encode()  # the digest earlier versions kept in the manifest and lineages
    assert not [p for p in run.rglob("*") if p.is_file() and digest in p.read_bytes()]


def test_audit_reports_a_manifest_field_sisa_does_not_write(run):
    sisa.forget(run, _ids(run, 1), progress=False)
    manifest = json.loads((run / "sisa.json").read_text())
    manifest["dataset"]["fingerprint"] = "0123456789abcdef"
    (run / "sisa.json").write_text(json.dumps(manifest))
    report = sisa.audit(run)
    assert not report["clean"] and any("dataset.fingerprint" in f for f in report["findings"])


def test_reads_never_write_even_with_a_request_pending(run, monkeypatch):
    from sisa import fsutil

    ids = _ids(run, 2, shard=1)

    def full_disk(path, write, **_):  # every durable write of bytes, npz and npy goes through it
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fsutil, "atomic_write", full_disk)
    with pytest.raises(SisaError, match="recorded in the ledger"):
        sisa.forget(run, ids, progress=False)
    monkeypatch.undo()
    before = file_digests(run)
    x = np.asarray(Workdir.open(run).test_split()[0])
    served = sisa.predict(run, x)
    assert 1 in served["left_out"]["pending"]
    assert_served_clean(run, served["served"], ids)
    assert_served_clean(run, sisa.evaluate(run)["served"], ids)
    status = sisa.status(run)
    assert status["pending_requests"] == [1] and any("purge" in step for step in status["pending_plan"])
    sisa.ledger(run)
    assert not sisa.audit(run)["clean"]  # the unpurged rows are a finding, not a repair
    with pytest.raises(SisaError, match="request #1 is pending"):
        sisa.verify(run, [0], progress=False)
    assert file_digests(run) == before


def _foreign(now):
    return {**now, "versions": {**now["versions"], "jax": "0.0.1"}}


def test_a_writer_refuses_another_environment_and_names_both(run, monkeypatch):
    Workdir.open(run).checkpoints[0].delete(2)  # so that `train` has work to do
    real = environment.current
    monkeypatch.setattr(environment, "current", lambda shards: _foreign(real(shards)))
    before = file_digests(run)
    for write in (lambda: sisa.forget(run, _ids(run, 1), progress=False), lambda: sisa.train(run, progress=False)):
        with pytest.raises(SisaError, match=r"another environment \(jax .* -> 0\.0\.1\)"):
            write()
    assert file_digests(run) == before and not (run / "ledger.jsonl").exists()


def test_an_allowed_environment_change_is_recorded_and_shown_by_verify(run, monkeypatch):
    real = environment.current
    monkeypatch.setattr(environment, "current", lambda shards: _foreign(real(shards)))
    sisa.forget(run, _ids(run, 1), progress=False, allow_environment_change=True)
    sisa.forget(run, _ids(run, 1, shard=2), progress=False)  # accepted once: the same environment goes on
    records = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    changes = [r for r in records if r["kind"] == "environment"]
    assert len(changes) == 1 and changes[0]["to"]["versions"]["jax"] == "0.0.1"
    cert = sisa.verify(run, [1], progress=False)
    assert cert["environment"]["accepted_changes"] and "jax" in cert["environment"]["note"]


def test_the_layout_is_recorded_in_manifest_and_certificate(run):
    layout = Workdir.open(run).manifest["environment"]["layout"]
    assert layout == {"devices": 1, "processes": 1}
    cert = sisa.verify(run, [0], progress=False)
    assert cert["environment"]["at_training"]["layout"] == layout and "layout" in cert["environment"]["now"]


def test_a_shard_serves_the_same_bits_whichever_other_shards_are_served(run):
    """Serving runs at one lane width, so a pending shard does not change the others' outputs."""
    from sisa import serve

    x = Workdir.open(run).test_split()[0]
    _, every = serve.shard_probabilities(Workdir.open(run), x)
    for gone in (0, 1):
        Workdir.open(run).checkpoints[gone].delete_from(0)  # no stage left to serve
    members, rest = serve.shard_probabilities(Workdir.open(run), x)
    assert members.shards == [2] and members.pending == [0, 1]
    assert np.array_equal(rest[0], every[2])


def test_a_restored_backup_brings_nothing_back(run, trained, tiny_cfg, tmp_path):
    """An old data store and old checkpoints copied back over a forgotten run: the next writer
    purges the ids again and rebuilds the stale checkpoints; readers never serve them meanwhile."""
    from sisa.verification import compare

    _, ds = trained
    backup = tmp_path / "backup"
    shutil.copytree(run, backup)
    ids = _ids(run, 2, shard=1)
    sisa.forget(run, ids, progress=False)
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(backup / "checkpoints", run / "checkpoints")
    restore_store(backup, run)
    assert 1 in sisa.evaluate(run)["left_out"]["pending"]
    assert any("purge" in step for step in sisa.status(run)["pending_plan"])
    sisa.train(run, progress=False)
    assert not Workdir.open(run).store().contains(ids).any()
    sisa.train(tmp_path / "scratch", tiny_cfg, dataset=ds.without(ids), progress=False)
    assert compare(Workdir.open(run), Workdir.open(tmp_path / "scratch"))["identical"]
    assert sisa.audit(run)["clean"]


@pytest.mark.parametrize("devices", ["0", "abc", "99"])
def test_a_bad_device_count_is_refused_before_the_request_is_recorded(run, monkeypatch, devices):
    monkeypatch.setenv("SISA_DEVICES", devices)
    before = file_digests(run)
    with pytest.raises(SisaError, match=f"SISA_DEVICES='{devices}': give a number from 1 to"):
        sisa.forget(run, _ids(run, 1), progress=False)
    assert file_digests(run) == before


@pytest.mark.parametrize("line", [b"[1, 2]\n", b"17\n", b'"text"\n', b"\xff\xfe\n"])
def test_a_ledger_line_that_is_no_record_is_refused(run, line):
    sisa.forget(run, _ids(run, 1), progress=False)
    with open(run / "ledger.jsonl", "ab") as f:
        f.write(line)
    for call in (lambda: sisa.ledger(run), lambda: sisa.status(run), lambda: sisa.forget(run, _ids(run, 1), progress=False)):
        with pytest.raises(SisaError, match="ledger .* corrupted: line 5"):
            call()
