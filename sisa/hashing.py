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


def argsort_u32(keys):
    """`jnp.argsort(keys, stable=True)` of a 1-d uint32 array, the same permutation, by sorts of
    one uint32 operand each (jax.numpy).

    XLA's CPU sort of a (key, index) pair costs ~6x a sort of one uint32 operand (32 vs 5.7 ms
    for 20 lanes of 10,000 keys), and an epoch sorts its lane's keys once. So: a least-significant-
    digit radix sort. With k bits to number n positions, the key is cut into digits of 32 - k
    bits, lowest first; each pass sorts (digit << k | position in the previous pass's order) as
    one uint32, whose unique low bits make the sort's own stability moot and carry the order
    from pass to pass. Two passes up to 2**16 keys, three up to 2**21, four up to 2**24; past
    that it is the pair sort itself.
    """
    import jax.numpy as jnp

    n = keys.shape[0]
    k = max(1, (n - 1).bit_length())  # bits for a position
    digit = 32 - k
    passes = -(-32 // digit)
    if passes > 4:
        return jnp.argsort(keys, stable=True)
    position = jnp.arange(n, dtype=jnp.uint32)
    low, order = jnp.uint32((1 << k) - 1), position
    for p in range(passes):
        d = (keys[order] >> jnp.uint32(p * digit)) & jnp.uint32((1 << digit) - 1)
        order = order[jnp.sort((d << jnp.uint32(k)) | position) & low]
    return order.astype(jnp.int32)
