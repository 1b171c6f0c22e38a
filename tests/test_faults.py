"""Kill `sisa forget` (SIGKILL) at each named crash point; the next command must recover to
exactly the state an uninterrupted forget gives, with nothing of the forgotten ids left."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

import sisa
from sisa.deletion_ledger import Ledger
from sisa.verification import final_digests
from sisa.workdir import Workdir
from tests.conftest import assert_served_clean, npz_dataset

# Forgetting ids in shard 1 slice 1 and shard 2 slice 0 (3 shards x 3 slices, 2 epochs a stage)
# deletes 5 stale checkpoints, trains 6 epochs and saves 5 new checkpoints in 3 saves (one per
# stage: shard 2's stage 0, then shards 1 and 2 together), each followed by one record per shard.
CRASH_POINTS = (
    ["mid-ledger-append:1", "after-request:1", "before-rename:1", "after-purge:1", "mid-ledger-append:2"]
    # the store's purge: new features files for shards 1 and 2, then the index, then the old files removed
    + ["before-rename:2", "before-rename:3", "after-features:1", "after-index:1"]
    + [f"after-delete-stage:{n}" for n in range(1, 6)]
    + [f"after-epoch:{n}" for n in range(1, 7)]
    + [f"after-save-started:{n}" for n in range(1, 4)]
    + ["after-record:2", "after-record:3"]  # stage 1: shard 1 recorded, shard 2 not yet; then both
    + ["after-retrained:1", "before-commit:1", "mid-ledger-append:4"]
    + ["before-ledger-anchor:1", "before-ledger-anchor:4"]  # the record durable, the manifest's head one behind
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_cfg):
    tmp = tmp_path_factory.mktemp("faults")
    sisa.train(tmp / "base", tiny_cfg, dataset=npz_dataset(tmp), progress=False)
    store = Workdir.open(tmp / "base").store()
    ids = (store.ids[(store.shard == 1) & (store.slice == 1)][:1].tolist()
           + store.ids[(store.shard == 2) & (store.slice == 0)][:1].tolist())
    shutil.copytree(tmp / "base", tmp / "reference")
    sisa.forget(tmp / "reference", ids, progress=False)
    return tmp, ids, final_digests(Workdir.open(tmp / "reference"))


def test_crash_point_list_is_long_enough():
    assert len(set(CRASH_POINTS)) >= 20


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_forget_killed_at_any_point_recovers_exactly(runs, tmp_path, point):
    tmp, ids, reference = runs
    root = tmp_path / "run"
    shutil.copytree(tmp / "base", root)
    env = {**os.environ, "SISA_CRASH_AT": point}
    proc = subprocess.run([sys.executable, "-m", "sisa.cli", "forget", "--workdir", str(root), *map(str, ids)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])

    acknowledged = any(e["ids"] == sorted(ids) for e in Ledger(root / "ledger.jsonl").entries())
    # Meanwhile a reader serves at once what saw none of the ids: shard 0 (not affected) its final
    # stage, shard 1 (its id in slice 1) at least its stage 0, shard 2 whatever it has retrained.
    served = sisa.predict(root, Workdir.open(root).test_split()[0][:5])["served"]
    if acknowledged:
        assert_served_clean(root, served, ids)
        assert served[0]["stage"] == 2 and 1 in served
    else:
        assert {s: v["stage"] for s, v in served.items()} == {0: 2, 1: 2, 2: 2}
    sisa.train(root, progress=False)  # any writing command recovers first
    if not acknowledged:  # killed before the request was on disk: it never happened; ask again
        sisa.forget(root, ids, progress=False)
    [entry] = Ledger(root / "ledger.jsonl").entries()
    assert entry["state"] == "committed" and entry["ids"] == sorted(ids)
    wd = Workdir.open(root)
    assert final_digests(wd) == reference
    assert sisa.audit(root)["clean"]
    assert not list(root.rglob("*orbax-checkpoint-tmp*")) and not list(root.rglob(".*.tmp"))
    assert all(c.stages() == [0, 1, 2] for c in wd.checkpoints)
