"""The example order's sort: `argsort_u32` is `jnp.argsort(stable=True)`, permutation for permutation."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from sisa.hashing import argsort_u32

_sort = jax.jit(argsort_u32)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), spread=st.sampled_from([1, 2, 7, 1000, 2**32]), padded=st.floats(0, 1),
       seed=st.integers(0, 2**31))
def test_same_permutation_as_stable_argsort(n, spread, padded, seed):
    """Keys with many ties (spread 1: all equal), padding keys (0xFFFFFFFF, as an epoch's
    non-members), any length: the permutation is the stable argsort's, bit for bit."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, spread, size=n, dtype=np.uint64).astype(np.uint32)
    keys[rng.random(n) < padded] = np.uint32(0xFFFFFFFF)
    got = np.asarray(_sort(jnp.asarray(keys)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))


def test_every_pass_count():
    """Lengths whose positions take 1..24 bits use 2, 3 and 4 passes; 2**16 + 1 keys cross from
    two passes to three (a 17-bit position leaves 15-bit digits)."""
    rng = np.random.default_rng(0)
    for n in (2, 2**16, 2**16 + 1, 2**21 + 3):
        keys = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
        keys[::3] = keys[0]  # ties
        np.testing.assert_array_equal(np.asarray(_sort(jnp.asarray(keys))), np.argsort(keys, kind="stable"))
