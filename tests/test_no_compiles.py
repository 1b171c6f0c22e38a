"""No deletion compiles: `sisa.train` compiles ahead every program a later forget (of 1, 2 or
all S shards, or one that halves the data padding) or predict can need, so a fresh process
lowers and compiles nothing, and gets the bits of a run with the cache off."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sisa
from sisa.training import aot
from sisa.verification import final_digests
from sisa.workdir import Workdir

_FRESH = """
import json, sys
import jax
import numpy as np
events = []
jax.monitoring.register_event_duration_secs_listener(lambda e, s, **_: events.append(e))
import sisa
root, requests, x = sys.argv[1], json.loads(sys.argv[2]), np.load(sys.argv[3])
affected = [sisa.forget(root, ids, progress=False)["affected_shards"] for ids in requests]
probabilities = [sisa.predict(root, x.astype(t))["probabilities"] for t in (x.dtype, np.float64, np.float16)]
print(json.dumps({"events": {e: events.count(e) for e in set(events)}, "affected": affected,
                  "probabilities": probabilities}))
"""
COMPILE, LOWER = "/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration"


def _requests(store, shards: int, batch_size: int) -> list[list[int]]:
    """Ids hitting 1 shard, then 2, then all of them, then enough of every shard to halve the
    data padding (Store.capacity)."""
    def pick(shard, n, skip=0):
        return store.ids[store.shard == shard][skip : skip + n].tolist()

    out = [pick(0, 1), pick(1, 1) + pick(2, 1), [i for s in range(shards) for i in pick(s, 1, skip=1)]]
    half = store.capacity(shards, batch_size) // 2
    out.append([i for s in range(shards) for i in pick(s, max(0, int((store.shard == s).sum()) - 2 - half), skip=2)])
    return out


@pytest.mark.parametrize("devices", [1, 2])
def test_fresh_process_forgets_and_predicts_without_compiling(tiny_ds, tiny_cfg, tmp_path, monkeypatch, devices):
    cfg = tiny_cfg.replace(model={"hidden": (20 + devices,)})  # programs no other test compiled
    shards = cfg.partition.shards
    cache, run, reference = tmp_path / "programs", tmp_path / "run", tmp_path / "reference"
    monkeypatch.setenv("SISA_PRECOMPILE", "on")
    monkeypatch.setenv("SISA_CACHE_DIR", str(cache))
    monkeypatch.setenv("SISA_DEVICES", str(devices))
    compiled = aot.counts["compiled"]
    sisa.train(run, cfg, dataset=tiny_ds, progress=False)
    assert aot.counts["compiled"] - compiled >= 4  # trained: init, epoch; ahead: epoch at the padding below, predict

    store = Workdir.open(run).store()
    requests = _requests(store, shards, cfg.train.batch_size)
    x = tmp_path / "x.npy"
    np.save(x, tiny_ds.x_test)
    child = subprocess.run([sys.executable, "-c", _FRESH, str(run), json.dumps(requests), str(x)],
                           capture_output=True, text=True, env=dict(os.environ))
    assert child.returncode == 0, child.stderr[-3000:]
    got = json.loads(child.stdout.strip().splitlines()[-1])
    assert [len(a) for a in got["affected"]] == [1, 2, shards, shards]
    batch = cfg.train.batch_size
    assert Workdir.open(run).store().capacity(shards, batch) == store.capacity(shards, batch) // 2  # crossed a bucket
    assert got["events"].get(COMPILE, 0) == 0, (got["events"], child.stderr[-3000:])
    assert got["events"].get(LOWER, 0) == 0, got["events"]

    monkeypatch.setenv("SISA_CACHE_DIR", "off")  # the same commands, every program compiled afresh here, one device
    monkeypatch.setenv("SISA_DEVICES", "1")
    sisa.train(reference, cfg, dataset=tiny_ds, progress=False)
    for ids in requests:
        sisa.forget(reference, ids, progress=False)
    assert final_digests(Workdir.open(run)) == final_digests(Workdir.open(reference))
    expected = sisa.predict(reference, tiny_ds.x_test)["probabilities"]
    assert got["probabilities"][0] == expected  # in any input dtype, one serving program:
    assert got["probabilities"][1] == expected  # float64 rounds to float32 as JAX would round it
    assert got["probabilities"][2] == sisa.predict(reference, tiny_ds.x_test.astype(np.float16))["probabilities"]


@pytest.mark.parametrize("how", ["cache off", "SISA_PRECOMPILE=off"])
def test_nothing_is_compiled_ahead_when_turned_off(tiny_ds, tiny_cfg, tmp_path, monkeypatch, how):
    monkeypatch.setenv("SISA_CACHE_DIR", "off" if how == "cache off" else str(tmp_path / "programs"))
    monkeypatch.setenv("SISA_PRECOMPILE", "off" if how != "cache off" else "on")
    compiled = aot.counts["compiled"]
    sisa.train(tmp_path / "run", tiny_cfg.replace(model={"hidden": (31 if how == "cache off" else 37,)}), dataset=tiny_ds,
               progress=False)
    assert aot.counts["compiled"] - compiled == 2  # init and epoch, at the width and padding trained
