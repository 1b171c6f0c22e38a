"""Multi-host: one run over 2 local JAX processes (jax.distributed on CPU), driven by the CLI."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from sisa import api
from sisa.config import dumps
from sisa.verification import compare
from sisa.workdir import Workdir
from tests.conftest import npz_dataset

FORGET = ["8", "11", "200", "446", "650"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster(*args, processes=2) -> list[subprocess.CompletedProcess]:
    """Run `sisa ARGS` in `processes` processes that form one JAX cluster; each has 1 CPU device."""
    port, procs = _free_port(), []
    for p in range(processes):
        env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes),
               "JAX_PROCESS_ID": str(p), "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
               "SISA_CLUSTER_TIMEOUT": "120"}
        procs.append(subprocess.Popen([sys.executable, "-m", "sisa.cli", *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return npz_dataset(tmp_path_factory.mktemp("src"))


@pytest.mark.timeout(600)
def test_two_processes_train_and_forget_bitwise_like_one(source, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(data={"dataset": source.name}, partition={"shards": 4, "slices": 3})
    config = tmp_path / "run.toml"
    config.write_text(dumps(cfg))
    cluster = tmp_path / "cluster"

    for args in (["train", "--config", str(config)], ["forget", *FORGET]):
        runs = _cluster(args[0], "--workdir", str(cluster), *args[1:])
        for p, run in enumerate(runs):
            assert run.returncode == 0, f"process {p}: {run.stderr[-2000:]}"
        assert "for the leader" in runs[1].stdout  # process 1 followed, and said what it trained

    wd = Workdir(cluster)
    last = cfg.partition.slices - 1
    # Each shard's checkpoints were written by the process that owns it (shard % 2).
    assert [wd.checkpoints[s].lineage(last)["process"] for s in range(4)] == [0, 1, 0, 1]
    # The leader committed the deletion once, for the whole cluster.
    assert [e["state"] for e in api.ledger(cluster)["entries"]] == ["committed"]

    # Bit for bit what one process gets from the same train and forget.
    single = tmp_path / "single"
    api.train(single, cfg, dataset=source, progress=False)
    api.forget(single, [int(i) for i in FORGET], progress=False)
    assert compare(wd, Workdir(single))["identical"]
    assert api.audit(cluster)["clean"]
    assert not np.isin([int(i) for i in FORGET], wd.store().ids).any()
