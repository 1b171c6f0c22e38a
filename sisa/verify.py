"""Bitwise comparison of two runs' served constituents."""

from __future__ import annotations

import hashlib

import jax
import numpy as np


def state_digest(state) -> str:
    """sha256 over every leaf's dtype, shape and bytes, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def final_digests(wd) -> dict[int, str | None]:
    """Digest of each shard's final train state (params, optimizer state, step); None if pending."""
    last = wd.config.partition.slices - 1
    return {c.shard: state_digest(c.restore(last)[0]) if c.latest() == last else None for c in wd.checkpoints}


def compare(wd_a, wd_b) -> dict:
    """Per-shard bitwise equality of the final train states of two runs."""
    a, b = final_digests(wd_a), final_digests(wd_b)
    per_shard = {s: a[s] is not None and a[s] == b.get(s) for s in a}
    return {"identical": all(per_shard.values()) and a.keys() == b.keys(), "per_shard": per_shard}
