"""Process-wide JAX settings, applied once, when a command first needs JAX."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def setup() -> None:
    """Join a cluster if the environment names one (sisa.cluster); persistent compilation
    cache, so a fresh process reuses compiled programs.

    SISA_CACHE_DIR picks the directory ("off" disables); compiled programs hold no data.
    """
    import jax

    from sisa import cluster

    cluster.initialize()
    where = os.environ.get("SISA_CACHE_DIR", str(Path.home() / ".cache" / "sisa" / "xla"))
    if where != "off":
        jax.config.update("jax_compilation_cache_dir", where)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def device_count(shards: int) -> int:
    """Devices to spread `shards` over: SISA_DEVICES (a number, or "all", the default), at
    most one per shard. Results are bitwise the same for any count."""
    import jax

    want = os.environ.get("SISA_DEVICES", "all")
    available = jax.local_device_count()
    n = available if want == "all" else int(want)
    if not 1 <= n <= available:
        from sisa.errors import SisaError

        raise SisaError(f"SISA_DEVICES={want}: this process has {available} device(s)")
    return max(1, min(n, shards))
