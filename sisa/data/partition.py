"""Assign every example to a (shard, slice).

`uniform` (default) is a pure function of (id, seed): removing examples never moves another
one, so retraining on D \\ K partitions the survivors exactly as before. `stratified` and
`grouped` need global information; their assignment is computed once and persisted in the
run's data store.
"""

from __future__ import annotations

import numpy as np

from sisa.errors import SisaError
from sisa.hashing import keyed_hash

_SHARD, _SLICE = 0, 1  # hash streams


def assign(ids, labels, groups, *, shards: int, slices: int, strategy: str, seed: int):
    """Returns (shard, slice) int32 arrays aligned with `ids`."""
    ids = np.asarray(ids)
    if strategy == "uniform":
        return uniform(ids, shards=shards, slices=slices, seed=seed)
    if strategy == "stratified":
        return _stratified(ids, np.asarray(labels), shards=shards, slices=slices, seed=seed)
    if strategy == "grouped":
        if groups is None:
            raise SisaError("partition strategy 'grouped' needs a group column (`group` or `user`) in the data")
        shard = (keyed_hash(np.asarray(groups), seed, _SHARD) % np.uint32(shards)).astype(np.int32)
        return shard, _slice_of(ids, slices, seed)
    raise SisaError(f"unknown partition strategy {strategy!r}")


def uniform(ids, *, shards: int, slices: int, seed: int):
    shard = (keyed_hash(ids, seed, _SHARD) % np.uint32(shards)).astype(np.int32)
    return shard, _slice_of(ids, slices, seed)


def _slice_of(ids, slices, seed):
    return (keyed_hash(ids, seed, _SLICE) % np.uint32(slices)).astype(np.int32)


def _stratified(ids, labels, *, shards, slices, seed):
    """Deal each class round-robin over shards (in keyed-hash order), so shards share class mix."""
    shard = np.empty(len(ids), np.int32)
    order = np.lexsort((keyed_hash(ids, seed, _SHARD), labels))
    start = 0
    for count in np.bincount(labels):
        block = order[start : start + count]
        shard[block] = np.arange(count) % shards
        start += count
    return shard, _slice_of(ids, slices, seed)
