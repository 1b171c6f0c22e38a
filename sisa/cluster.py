"""One run over several JAX processes (multi-host): shards are spread over the processes.

Shard s belongs to process `s % P`. Shards never exchange anything, so each process trains
its own shards on its own devices and writes their checkpoints itself; there is no
collective in the training programs. Process 0, the leader, runs the command as in a
single process (lock, ledger, data store, recovery, serving). Whenever it has shards to
train it posts the list to the others through the JAX distributed key-value store; each
process trains its part, waits for its checkpoints to be on disk and posts a report. The
leader goes on only when every report is in. The other processes, the followers, do
nothing else: they serve the leader's requests until it dismisses them.

Started by `jax.distributed.initialize` when the environment asks for it:
JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (any machine), or
SISA_DISTRIBUTED=1 where JAX detects the cluster itself (SLURM, Open MPI, TPU pod slices).
"""

from __future__ import annotations

import functools
import itertools
import json
import os

from sisa.errors import SisaError

# Followers wait for the leader's next request while it trains its own shards; 24 h by
# default (SISA_CLUSTER_TIMEOUT, seconds).
_TIMEOUT_MS = int(float(os.environ.get("SISA_CLUSTER_TIMEOUT", "86400")) * 1000)


@functools.cache
def initialize() -> None:
    """Join the cluster the environment describes; nothing for a single process."""
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address and os.environ.get("SISA_DISTRIBUTED") != "1":
        return
    import jax

    if address:
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if v not in os.environ]
        if missing:
            raise SisaError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not")
        jax.distributed.initialize(address, int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()  # cluster auto-detection
    if jax.process_count() > 1:
        _write_numpy_locally()
    _JOINED.append(True)


_JOINED: list[bool] = []


def joined() -> bool:
    """Whether this process joined a cluster (jax.distributed is running)."""
    return bool(_JOINED)


def count() -> int:
    """Processes in the run (1 unless `initialize` joined a cluster)."""
    import jax

    return jax.process_count()


def index() -> int:
    import jax

    return jax.process_index()


def owner(shard: int) -> int:
    return shard % count()


def owned(shards) -> list[int]:
    me = index()
    return [s for s in shards if owner(s) == me]


def _client():
    from orbax.checkpoint import multihost

    return multihost.get_jax_distributed_client()


def _write_numpy_locally() -> None:
    """Orbax writes a numpy leaf only from process 0 (it assumes host arrays are replicated);
    here each process's checkpoints hold its own shards, so every process writes its own."""
    import asyncio
    import logging

    import numpy as np
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.serialization import tensorstore_utils, type_handlers

    class LocalNumpyHandler(type_handlers.NumpyHandler):
        async def _background_serialize(self, values, infos, args=None):
            writes = []
            for value, info, arg in zip(values, infos, args or [ocp.SaveArgs()] * len(values)):
                await info.await_path_creation()
                spec = tensorstore_utils.build_array_write_spec(
                    info=info, arg=arg, global_shape=value.shape, local_shape=value.shape, dtype=value.dtype,
                    use_ocdbt=info.is_ocdbt_checkpoint, metadata_key=self._metadata_key,
                    process_index=type_handlers.ocdbt_utils.get_process_index_for_subdir(
                        use_ocdbt=info.is_ocdbt_checkpoint, override_ocdbt_process_id=self._override_ocdbt_process_id),
                )
                writes.append(self._open_and_write(value, spec.json, info.ts_context))
            await asyncio.gather(*writes)

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns about every override; this one is meant
    try:
        ocp.type_handlers.register_type_handler(np.ndarray, LocalNumpyHandler(), override=True)
    finally:
        absl.setLevel(level)


# Requests are numbered alike on every process: request n is posted under "sisa/request/n",
# and process p's report on it under "sisa/request/n/p".
_requests = itertools.count()


def _post(message: dict) -> str:
    key = f"sisa/request/{next(_requests)}"
    _client().key_value_set(key, json.dumps(message))
    return key


def complete_everywhere(root, todo: list[int], train_own) -> list[dict]:
    """Leader: have every process train its shards of `todo`; returns every process's report
    (the leader's first). `train_own(shards)` trains this process's part."""
    key = _post({"op": "complete", "root": str(root), "todo": todo})
    reports = [train_own(owned(todo))]
    failures = []
    for p in range(1, count()):
        report = json.loads(_client().blocking_key_value_get(f"{key}/{p}", _TIMEOUT_MS))
        if "error" in report:
            failures.append(f"process {p}: {report['error']}")
        reports.append(report)
    if failures:
        raise SisaError("training failed on other processes: " + "; ".join(failures))
    return reports


def dismiss() -> None:
    """Leader: the command is over; followers return."""
    _post({"op": "exit"})


def follow() -> dict:
    """Follower: train this process's shards whenever the leader asks, until dismissed."""
    from sisa.training.loop import train_shards
    from sisa.workdir import Workdir

    me, trained, errors = index(), [], []
    while True:
        key = f"sisa/request/{next(_requests)}"
        message = json.loads(_client().blocking_key_value_get(key, _TIMEOUT_MS))
        if message["op"] == "exit":
            if errors:
                raise SisaError(f"process {me}: " + "; ".join(errors))
            return {"process": me, "role": "follower", "shards_trained": sorted(set(trained))}
        try:
            report = train_shards(Workdir.open(message["root"]), owned(message["todo"]), progress=False)
            trained += report["shards_trained"]
        except Exception as e:  # reported to the leader, which fails the command
            report = {"error": f"{type(e).__name__}: {e}"}
            errors.append(report["error"])
        _client().key_value_set(f"{key}/{me}", json.dumps(report))


def collective(command):
    """Run an API command on every process of a cluster: the leader runs it, the others follow."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from sisa import runtime

        runtime.setup()
        if count() == 1:
            return command(*args, **kwargs)
        if index() != 0:
            return follow()
        try:
            return command(*args, **kwargs)
        finally:
            dismiss()

    return run
