"""Readers and writers, and creation (issue 11).

* Readers (predict, status, audit) take no lock: looping in their own processes while another
  process forgets id after id, none of them fails, no forget is refused, and no prediction used
  a checkpoint that saw an id whose request was recorded before the prediction started.
* Two trains of one new workdir at once are serialised: one trains, the other is told the
  workdir is in use (or, if it came second, finds nothing to do); the result verifies and is
  bitwise what one train gives.
* A first train that fails leaves no workdir behind, and the corrected retry trains.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sisa
from sisa import config as config_lib
from sisa.checkpoint import lineage_digest
from sisa.cli import main
from sisa.data.store import Store
from sisa.errors import SisaError
from sisa.verification import final_digests
from sisa.workdir import Workdir
from tests.conftest import npz_dataset

REPO = Path(__file__).resolve().parents[1]

# A reader process: loops one read-only command until the stop file appears (then once more),
# recording every exception. For predict, also how many requests the ledger held just before
# the call and which checkpoint (lineage digest) served each shard.
READER = r"""
import json, sys, time, traceback
from pathlib import Path
import numpy as np
from sisa import api

kind, root, stop, out = sys.argv[1:5]
x = np.load(Path(root) / "data" / "test.npz")["x"][:8]
calls, errors, predictions, statuses, audits = 0, [], [], [], []
ready, deadline, last = Path(out + ".ready"), time.monotonic() + 600, False
while time.monotonic() < deadline:
    last = Path(stop).exists()
    try:
        if kind == "predict":
            before = len(api.ledger(root)["entries"])
            r = api.predict(root, x)
            predictions.append({"before": before, "served": r["served"], "pending": r["left_out"]["pending"]})
        elif kind == "status":
            r = api.status(root)
            statuses.append({k: r[k] for k in ("examples", "deleted", "pending_requests")})
        else:
            r = api.audit(root)
            audits.append({"clean": r["clean"], "findings": r["findings"]})
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    calls += 1
    ready.touch()
    if last:
        break
    time.sleep(0.01)  # leave the forgets some of the CPUs
Path(out).write_text(json.dumps({"calls": calls, "errors": errors, "predictions": predictions,
                                 "statuses": statuses, "audits": audits}))
"""

# The writer: forgets the given ids one request at a time, in this one process.
FORGETTER = r"""
import json, sys, time
from sisa import api

root, out, ids = sys.argv[1], sys.argv[2], [int(i) for i in sys.argv[3:]]
results, t0 = [], time.monotonic()
for i in ids:
    try:
        api.forget(root, [i], progress=False)
        results.append("ok")
    except Exception as e:
        results.append(f"{type(e).__name__}: {e}")
open(out, "w").write(json.dumps({"results": results, "seconds": time.monotonic() - t0}))
"""


def _env() -> dict:
    # conftest set XLA_FLAGS, SISA_DEVICES and a shared SISA_CACHE_DIR: the subprocesses inherit them
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _spawn(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def source(data_dir):
    """The tiny blobs data set, loaded from its .npz file."""
    return npz_dataset(data_dir)


@pytest.fixture(scope="module")
def source_path(source, data_dir) -> str:
    """The file `source` was loaded from, for the CLI."""
    return str(data_dir / "blobs.npz")


def _forget_order(root: Path, n: int) -> list[int]:
    """n ids cycling over the shards, from slices 0 and 1 (so forgets retrain several stages)."""
    store = Store.load(Workdir(root).store_path)
    shards = int(store.shard.max()) + 1
    pools = [store.ids[(store.shard == s) & (store.slice == k % 2)].tolist()
             for k in range(2) for s in range(shards)]
    order = []
    for k in range(n):
        order.append(pools[k % len(pools)].pop(0))
    return order


def _readers_during_forgets(tmp_path, source, tiny_cfg, forgets: int) -> dict:
    root = tmp_path / "run"
    sisa.train(root, tiny_cfg, dataset=source, progress=False)
    ids = _forget_order(root, forgets)
    store = Store.load(Workdir(root).store_path)
    # (shard, stage) -> the ids of the shard's slices 0..stage: what that stage's checkpoint saw
    initial = {(s, r): set(store.ids[(store.shard == s) & (store.slice <= r)].tolist())
               for s in np.unique(store.shard).tolist() for r in range(tiny_cfg.partition.slices)}

    stop = tmp_path / "stop"
    readers = {kind: (_spawn(READER, kind, root, stop, tmp_path / f"{kind}.json"), tmp_path / f"{kind}.json")
               for kind in ("predict", "status", "audit")}
    deadline = time.monotonic() + 300
    while not all(Path(f"{out}.ready").exists() for _, out in readers.values()):  # warm: imported, compiled
        assert time.monotonic() < deadline, "readers did not start"
        assert all(p.poll() is None for p, _ in readers.values()), [p.communicate() for p, _ in readers.values()]
        time.sleep(0.1)
    writer = _spawn(FORGETTER, root, tmp_path / "forgets.json", *ids)
    rc, _, err = _wait(writer)
    stop.touch()
    results = {}
    for kind, (proc, out) in readers.items():
        rc_r, _, err_r = _wait(proc)
        assert rc_r == 0, err_r
        results[kind] = json.loads(out.read_text())
    assert rc == 0, err
    forgot = json.loads((tmp_path / "forgets.json").read_text())

    # No forget refused or failed; every request committed.
    assert forgot["results"] == ["ok"] * forgets, forgot["results"]
    entries = sisa.ledger(root)["entries"]
    assert [e["ids"] for e in entries] == [[i] for i in ids]
    assert all(e["state"] == "committed" for e in entries)

    # No reader failed.
    errors = {kind: r["errors"] for kind, r in results.items() if r["errors"]}
    assert not errors, json.dumps(errors, indent=1)[:6000]

    # Each prediction served, per shard, a stage whose lineage is the ids of the shard's slices up
    # to it less the first k forgotten ones, with k at least the number of requests recorded before
    # the prediction began (a shard retraining answers from an earlier stage that saw none of them).
    expected = {}  # (shard, stage, digest) -> every k it stands for
    for (s, r), members in initial.items():
        for k in range(forgets + 1):
            expected.setdefault((s, r, lineage_digest(sorted(members - set(ids[:k])))), set()).add(k)
    for p in results["predict"]["predictions"]:
        for shard, got in p["served"].items():
            ks = expected.get((int(shard), got["stage"], got["ids_digest"]))
            assert ks is not None, f"shard {shard} served a checkpoint with an unexpected lineage: {p}"
            assert max(ks) >= p["before"], f"shard {shard} served a checkpoint that saw a forgotten id: {p}"

    # Each status was one consistent read of the ledger and the data store.
    n = len(store)
    for st in results["status"]["statuses"]:
        assert n - st["deleted"] <= st["examples"] <= n - st["deleted"] + len(st["pending_requests"]), st

    # Once the forgets are done, the last audit is clean.
    assert results["audit"]["audits"][-1]["clean"], results["audit"]["audits"][-1]
    return {"forget_seconds": forgot["seconds"], **{k: r["calls"] for k, r in results.items()},
            "pending_seen": sum(bool(p["pending"]) for p in results["predict"]["predictions"])}


def test_readers_never_fail_nor_block_forgets(tmp_path, source, tiny_cfg):
    report = _readers_during_forgets(tmp_path, source, tiny_cfg, forgets=10)
    print("readers during 10 forgets:", report)
    assert min(report["predict"], report["status"], report["audit"]) >= 5, report  # they did run alongside


@pytest.mark.slow
def test_readers_never_fail_nor_block_forgets_20(tmp_path, source, tiny_cfg):
    report = _readers_during_forgets(tmp_path, source, tiny_cfg, forgets=20)
    print("readers during 20 forgets:", report)
    assert min(report["predict"], report["status"], report["audit"]) >= 5, report


def test_predict_never_takes_the_writer_lock(tmp_path, source, tiny_cfg):
    root = tmp_path / "run"
    sisa.train(root, tiny_cfg, dataset=source, progress=False)
    with Workdir(root).lock():  # a writer at work: readers go on
        assert sisa.predict(root, source.x_test[:3])["shards"] == [0, 1, 2]
        assert sisa.status(root)["examples"] == len(source.x)


# ---------------------------------------------------------------------------- creation


# A train waiting at a barrier, so that two of them ask for the lock at the same moment.
TRAINER = r"""
import sys, time
from pathlib import Path
from sisa.cli import main
import jax  # imported before the barrier
barrier, ready, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
ready.touch()
while not barrier.exists():
    time.sleep(0.002)
sys.exit(main(argv))
"""


def _train_argv(root, config, data) -> list[str]:
    return ["train", "--workdir", str(root), "--config", str(config), "--dataset", str(data)]


def test_concurrent_creation_is_serialised(tmp_path, source, source_path, tiny_cfg):
    config = tmp_path / "tiny.toml"
    config.write_text(config_lib.dumps(tiny_cfg))
    data = source_path
    root = tmp_path / "new" / "run"
    barrier, ready = tmp_path / "go", [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [_spawn(TRAINER, barrier, r, *_train_argv(root, config, data)) for r in ready]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    barrier.touch()
    outcomes = sorted((_wait(p) for p in procs), key=lambda o: o[0])
    (rc0, _, err0), (rc1, out1, err1) = outcomes
    print("concurrent trains:", rc0, rc1, (err1 or out1).strip()[-200:])
    assert rc0 == 0, err0
    if rc1 == 0:  # the second came after the first had finished
        assert "nothing to do" in out1, out1
    else:
        assert rc1 == 1, err1
        assert err1.startswith("sisa train: error: ") and "in use" in err1, err1
        assert len(err1.strip().splitlines()) == 1, err1
    assert sisa.verify(root, progress=False)["verdict"] == "verified"

    fresh = tmp_path / "fresh"
    assert main(_train_argv(fresh, config, data)) == 0
    a, b = final_digests(Workdir.open(root)), final_digests(Workdir.open(fresh))
    assert a == b and None not in a.values()


def test_a_train_waiting_on_the_lock_is_told_and_changes_nothing(tmp_path, source, source_path, tiny_cfg):
    config = tmp_path / "tiny.toml"
    config.write_text(config_lib.dumps(tiny_cfg))
    root = tmp_path / "run"
    root.mkdir()
    with Workdir(root).lock():  # another train creating it
        rc, _, err = _wait(_spawn("import sys; from sisa.cli import main; sys.exit(main(sys.argv[1:]))",
                                    *_train_argv(root, config, source_path)))
        assert rc == 1 and "in use" in err and len(err.strip().splitlines()) == 1, err
        assert os.listdir(root) == [".lock"]
    assert main(_train_argv(root, config, source_path)) == 0  # once it is free, it trains
    assert sisa.status(root)["pending_plan"] == []


def test_a_lock_file_removed_before_it_was_locked_guards_nothing(tmp_path, monkeypatch):
    """A failed first train removes its lock file while holding it; a train that had opened that
    file and locks it after must not go on: a third could lock the new lock file at the same time."""
    import fcntl

    from sisa import workdir
    from sisa.workdir import WorkdirBusy

    real = fcntl.flock

    def removed_first(f, op):
        if op & fcntl.LOCK_EX:
            os.unlink(tmp_path / ".lock")
        return real(f, op)

    monkeypatch.setattr(workdir.fcntl, "flock", removed_first)
    with pytest.raises(WorkdirBusy, match="in use"), Workdir(tmp_path).lock():
        pass


# ---------------------------------------------------------------------------- a failed first train


def _one_line_error(capsys, argv, phrase: str) -> None:
    capsys.readouterr()
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("sisa train: error: ") and phrase in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_first_train_leaves_nothing(tmp_path, source, source_path, tiny_cfg, monkeypatch, capsys, existed):
    from sisa.training import loop

    config = tmp_path / "tiny.toml"
    config.write_text(config_lib.dumps(tiny_cfg))
    root = tmp_path / "a" / "b" / "run"
    if existed:
        root.mkdir(parents=True)
    argv = _train_argv(root, config, source_path)

    def fail(*a, **k):
        raise SisaError("injected: training failed")

    monkeypatch.setattr(loop, "complete", fail)
    _one_line_error(capsys, argv, "injected: training failed")
    assert (os.listdir(root) == []) if existed else not (tmp_path / "a").exists()

    def crash(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(loop, "complete", crash)
    with pytest.raises(RuntimeError):
        sisa.train(root, tiny_cfg, dataset=source, progress=False)
    assert (os.listdir(root) == []) if existed else not (tmp_path / "a").exists()

    monkeypatch.setenv("SISA_DEVICES", "0")  # refused before anything is written
    _one_line_error(capsys, argv, "SISA_DEVICES")
    assert (os.listdir(root) == []) if existed else not (tmp_path / "a").exists()

    monkeypatch.undo()  # the corrected retry
    assert main(argv) == 0
    assert sisa.verify(root, progress=False)["verdict"] == "verified"


def test_an_interrupted_first_train_stays_and_resumes(tmp_path, source, tiny_cfg, monkeypatch):
    from sisa.training import loop

    root = tmp_path / "run"
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "complete", interrupt)
    with pytest.raises(KeyboardInterrupt):
        sisa.train(root, tiny_cfg, dataset=source, progress=False)
    assert (root / "sisa.json").exists()
    monkeypatch.undo()
    assert sisa.train(root, tiny_cfg, dataset=source, progress=False)["shards_trained"] == [0, 1, 2]


def test_workdir_paths_that_cannot_be_one(tmp_path, source, source_path, tiny_cfg, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(config_lib.dumps(tiny_cfg))
    a_file = tmp_path / "file"
    a_file.write_text("mine\n")
    _one_line_error(capsys, _train_argv(a_file, config, source_path), "not a directory")
    _one_line_error(capsys, _train_argv(a_file / "run", config, source_path), "cannot create workdir")
    for path, phrase in ((a_file, "not a directory"), (a_file / "run", "a folder on its path is a file")):
        with pytest.raises(SisaError, match=phrase):
            sisa.train(path, tiny_cfg, dataset=source, progress=False)
    assert a_file.read_text() == "mine\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_workdir_not_writable(tmp_path, source, source_path, tiny_cfg, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(config_lib.dumps(tiny_cfg))
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _one_line_error(capsys, _train_argv(locked, config, source_path), "cannot lock workdir")
        _one_line_error(capsys, _train_argv(locked / "run", config, source_path), "cannot create workdir")
    finally:
        locked.chmod(0o700)
