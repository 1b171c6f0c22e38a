"""Bits do not depend on the device layout: 1, 2, 4 or 8 host devices, the same final states.

The device count is fixed when jax is imported, so each layout runs in a child process:
XLA_FLAGS forces 8 host devices and SISA_DEVICES says how many of them the shards are laid
over; the reference is a plain process with JAX's single CPU device. A child trains a tiny
run per job, optionally forgets two ids of shard 1's slice 1 (shard 0's when S = 1: a
deletion that retrains one shard, so fewer lanes), and prints the sha256 digest of every shard's final state (params,
optimizer state, step: `sisa.verification.final_digests`) after each. The parent checks
that every run of the same S gives the same digests, trained and after the forget.

The case this pins: as many devices as shards put one lane on each device, and XLA lowers a
vmap of width one to unbatched kernels whose float results differ from the batched ones
(`sisa.training.ensemble.lane_bucket`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# argv: workdir root, JSON list of jobs [shards, train_devices, forget_devices or null].
# Prints one JSON line: a list of {"job", "trained": {shard: digest}, "forgotten": ... or
# null, "retrained": [shards the forget retrained] or null}.
_CHILD = """
import json, os, sys
from pathlib import Path
import sisa
from sisa.verification import final_digests
from sisa.workdir import Workdir
from tests.conftest import blobs

root, jobs = Path(sys.argv[1]), json.loads(sys.argv[2])
ds = blobs()
out = []
for n, (shards, train_devices, forget_devices) in enumerate(jobs):
    wd = root / str(n)
    cfg = sisa.Config().replace(
        data={"dataset": "blobs"}, partition={"shards": shards, "slices": 3},
        model={"hidden": (16,)}, train={"epochs": 2, "batch_size": 16, "learning_rate": 1e-2})
    os.environ["SISA_DEVICES"] = str(train_devices)
    sisa.train(wd, cfg, dataset=ds, progress=False)
    result = {"job": [shards, train_devices, forget_devices], "trained": final_digests(Workdir.open(wd)),
              "forgotten": None, "retrained": None}
    if forget_devices:
        store = Workdir.open(wd).store()
        shard = min(1, shards - 1)
        ids = store.ids[(store.shard == shard) & (store.slice == 1)][:2].tolist()
        os.environ["SISA_DEVICES"] = str(forget_devices)
        result["retrained"] = sisa.forget(wd, ids, progress=False)["affected_shards"]
        result["forgotten"] = final_digests(Workdir.open(wd))
    out.append(result)
print(json.dumps(out))
"""


def _start(tmp_path: Path, name: str, forced: int | None, jobs: list) -> subprocess.Popen:
    """A child with `forced` host devices (None: JAX's own single CPU device) running `jobs`."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    if forced is not None:
        flags.append(f"--xla_force_host_platform_device_count={forced}")
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "SISA_CACHE_DIR": str(tmp_path / "programs"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    root = tmp_path / name
    root.mkdir()
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(root), json.dumps(jobs)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(tmp_path: Path, children: dict[str, tuple[int | None, list]]) -> list[dict]:
    """Every child's results, the reference (first) child's first. Children run two at a time:
    most of their time is compiling, on a 2-core machine."""
    items, out = list(children.items()), []
    for i in range(0, len(items), 2):
        running = {name: _start(tmp_path, name, forced, jobs) for name, (forced, jobs) in items[i:i + 2]}
        for name, child in running.items():
            stdout, stderr = child.communicate(timeout=900)
            assert child.returncode == 0, f"child {name} failed:\n{stderr[-4000:]}"
            out += json.loads(stdout.strip().splitlines()[-1])
    return out


def _assert_layout_free(results: list[dict]) -> None:
    """Per S: every run's trained digests equal the first run's, and every forget's too; the
    forget retrained its one shard alone. Differences are listed all at once."""
    first: dict = {}
    differ = []
    for r in results:
        shards, train_devices, forget_devices = r["job"]
        assert None not in r["trained"].values(), r
        if forget_devices:
            assert r["retrained"] == [min(1, shards - 1)] and None not in r["forgotten"].values(), r
        for what, devices in (("trained", f"{train_devices}"), ("forgotten", f"{train_devices}+{forget_devices}")):
            if r[what] is None:
                continue
            ref_devices, ref = first.setdefault((shards, what), (devices, r[what]))
            bad = sorted(int(s) for s, d in ref.items() if r[what].get(s) != d)
            if bad or r[what].keys() != ref.keys():
                differ.append(f"S={shards} {what} on {devices} vs {ref_devices} device(s): shard(s) {bad}")
    assert not differ, "final states depend on the device layout: " + "; ".join(differ)
    for (shards, what), _ in first.items():  # every (S, trained/forgotten) was compared at all
        assert sum(1 for r in results if r["job"][0] == shards and r[what] is not None) >= 2, (shards, what)


def test_lone_shard_runs_on_one_device(monkeypatch):
    """S = 1 runs at width 1 (unbatched), so it must never be spread over devices."""
    import jax

    from sisa import runtime
    from sisa.training.ensemble import lane_bucket

    for devices in ("all", str(jax.local_device_count())):
        monkeypatch.setenv("SISA_DEVICES", devices)
        assert runtime.device_count(1) == 1
    assert lane_bucket(1, 1, 1) == 1


def test_one_lane_per_device_is_bitwise_one_device(tmp_path):
    """Default suite: S=2 on 2 devices and S=8 on 8 (one lane per device before the fix), and
    forgets on 2 and 8 devices (one retrained shard), one of a run trained on 1 device."""
    t0 = time.perf_counter()
    results = _run(tmp_path, {
        "plain": (None, [[2, 1, 1], [8, 1, 1]]),
        "forced-8": (8, [[2, 1, 2], [2, 2, None], [8, 8, 8]]),
    })
    _assert_layout_free(results)
    print(f"layout test: {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_every_layout_gives_the_same_bits(tmp_path):
    """1, 2, 4 and 8 devices with S in {1, 2, 3, 4, 8}: identical final states, bit for bit,
    trained and after a forget on the same layout; and trained on 1 device, forgotten on 4."""
    t0 = time.perf_counter()
    shards = (1, 2, 3, 4, 8)
    results = _run(tmp_path, {
        "plain": (None, [[s, 1, 1] for s in shards]),
        "forced-2": (8, [[s, 2, 2] for s in shards]),
        "forced-4": (8, [[s, 4, 4] for s in shards] + [[4, 1, 4]]),
        "forced-8": (8, [[s, 8, 8] for s in shards]),
    })
    _assert_layout_free(results)
    print(f"layout test: {time.perf_counter() - t0:.1f} s")
