"""Process-wide settings: cluster membership, the compiled-program cache, devices."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def setup() -> None:
    """Join a cluster if the environment names one (sisa.cluster)."""
    from sisa import cluster

    cluster.initialize()


def cache_dir() -> Path | None:
    """Where compiled programs are kept across processes (sisa.training.aot): SISA_CACHE_DIR,
    default ~/.cache/sisa/programs; "off" keeps none. Programs hold no training data. Used only
    if owned by this user and not writable by group or others (else compiled afresh, warned)."""
    where = os.environ.get("SISA_CACHE_DIR", str(Path.home() / ".cache" / "sisa" / "programs"))
    return None if where == "off" else Path(where)


def device_count(shards: int) -> int:
    """Devices to spread `shards` over: SISA_DEVICES (a number, or "all", the default), at
    most one per shard. Results are bitwise the same for any count."""
    import jax

    from sisa.errors import SisaError

    want = os.environ.get("SISA_DEVICES", "all")
    available = jax.local_device_count()
    n = available if want == "all" else int(want) if want.strip().isdigit() else 0
    if not 1 <= n <= available:
        raise SisaError(f"SISA_DEVICES={want!r}: give a number from 1 to {available} (this process's devices) or 'all'")
    return max(1, min(n, shards))
