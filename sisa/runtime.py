"""Process-wide JAX settings, applied once, when a command first needs JAX."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def setup() -> None:
    """Persistent compilation cache, so a fresh process reuses compiled programs.

    SISA_CACHE_DIR picks the directory ("off" disables); compiled programs hold no data.
    """
    import jax

    where = os.environ.get("SISA_CACHE_DIR", str(Path.home() / ".cache" / "sisa" / "xla"))
    if where != "off":
        jax.config.update("jax_compilation_cache_dir", where)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
