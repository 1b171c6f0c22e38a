"""A keyed 32-bit integer hash that numpy (host) and jax.numpy (device) compute alike.

Used for the deletion-stable partition (host) and per-epoch example order (device):
an example's hash depends only on its own id and the keys, never on the other examples.
"""

import numpy as np

_GOLDEN = 0x9E3779B9


def mix32(x, xp=np):
    """lowbias32 finaliser (C. Wellons): a bijection on uint32 with good avalanche."""
    x = xp.asarray(x).astype(xp.uint32)
    if xp is np:  # uint32 wrap-around is the point; numpy warns on 0-d arrays
        with np.errstate(over="ignore"):
            return _mix(x, xp)
    return _mix(x, xp)


def _mix(x, xp):
    x = x ^ (x >> 16)
    x = x * xp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * xp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def keyed_hash(ids, *keys, xp=np):
    """Hash of `ids` (int array) under the integer `keys` (scalars or arrays, broadcast)."""
    h = mix32(xp.asarray(ids).astype(xp.uint32), xp)
    for k in keys:
        k = xp.asarray(k).astype(xp.uint32)
        h = mix32(h ^ mix32(k * xp.uint32(_GOLDEN) + xp.uint32(1), xp), xp)
    return h
