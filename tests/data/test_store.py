"""The data store on disk: an index and one features file per shard.

A deletion rewrites the index and the affected shards' features only, leaves no removed row's
bytes in any file, and reads back exactly what was saved; a store of the old one-file layout
still loads and is rewritten in the new one.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from sisa.data.store import Features, Store, features_dir, leftovers
from sisa.errors import SisaError
from sisa.fsutil import atomic_save_npz


def random_store(rng, n: int, shards: int, row=(5,), dtype=np.float32) -> Store:
    ids = np.sort(rng.choice(10 * n + 10, n, replace=False)).astype(np.int64)
    x = (rng.normal(size=(n, *row)) * 100).astype(dtype)
    return Store(ids=ids, x=x, y=rng.integers(0, 3, n).astype(np.int32),
                 shard=rng.integers(0, shards, n).astype(np.int32), slice=rng.integers(0, 3, n).astype(np.int32),
                 group=rng.integers(0, 5, n).astype(np.int64), arrival=np.zeros(n, np.int32))


def same(a: Store, b: Store) -> bool:
    return all(np.array_equal(np.asarray(getattr(a, f.name)), np.asarray(getattr(b, f.name)))
               for f in dataclasses.fields(Store)) and np.asarray(a.x).dtype == np.asarray(b.x).dtype


def bytes_under(directory) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


@pytest.mark.parametrize("seed", range(8))
def test_save_load_and_forget_over_random_stores(tmp_path, seed):
    rng = np.random.default_rng(seed)
    shards = int(rng.integers(1, 6))
    dtype, row = [(np.float32, (5,)), (np.int32, (7,)), (np.float64, (2, 3))][seed % 3]
    store = random_store(rng, int(rng.integers(shards, 200)), shards, row, dtype)
    index = tmp_path / "data" / "train.npz"
    saved = store.save(index)
    loaded = Store.load(index)
    assert same(store, saved) and same(store, loaded) and isinstance(loaded.x, Features)
    rows = rng.integers(0, len(store), (3, 4))
    assert np.array_equal(loaded.x[rows], store.x[rows])  # gathering rows reads their shards only

    gone = rng.choice(store.ids, int(rng.integers(1, max(2, len(store) // 4))), replace=False)
    hit = set(store.shard[np.isin(store.ids, gone)].tolist())
    before = {p.name: os.stat(p).st_ino for p in features_dir(index).iterdir()}
    after_forget = loaded.without(gone).save(index)
    assert same(after_forget, store.without(gone)) and same(Store.load(index), store.without(gone))
    now = {p.name: os.stat(p).st_ino for p in features_dir(index).iterdir()}
    for name, inode in before.items():  # untouched shards keep their file; affected ones get new ones
        shard = int(name.split("_")[1].split(".")[0])
        assert (now.get(name) == inode) == (shard not in hit), (name, hit)
    kept_rows = {r.tobytes() for r in np.asarray(store.without(gone).x)}
    disk = bytes_under(tmp_path / "data")
    for r in np.asarray(store.x)[np.isin(store.ids, gone)]:
        assert r.tobytes() in kept_rows or r.tobytes() not in disk
    assert leftovers(index) == []


def test_a_shard_emptied_by_a_forget_leaves_no_file(tmp_path):
    store = random_store(np.random.default_rng(0), 60, 3)
    index = tmp_path / "train.npz"
    store.save(index)
    emptied = store.without(store.ids[store.shard == 1]).save(index)
    assert sorted(emptied.x.parts) == [0, 2] and len(list(features_dir(index).glob("shard_0001.*"))) == 0
    assert same(Store.load(index), emptied)


def test_one_file_store_of_sisa_0_1_loads_and_is_rewritten(tmp_path):
    store = random_store(np.random.default_rng(1), 50, 4)
    index = tmp_path / "train.npz"
    atomic_save_npz(index, **{f.name: getattr(store, f.name) for f in dataclasses.fields(Store) if f.name != "arrival"})
    old = Store.load(index)
    assert isinstance(old.x, np.ndarray) and same(old, store)
    gone = store.ids[:5]
    old.without(gone).save(index)
    with np.load(index) as f:
        assert "x" not in f.files
    assert same(Store.load(index), store.without(gone))
    assert all(r.tobytes() not in bytes_under(tmp_path) for r in np.asarray(store.x)[:5])


def test_leftovers_are_temporaries_and_unnamed_features_files(tmp_path):
    store = random_store(np.random.default_rng(2), 40, 2)
    index = tmp_path / "train.npz"
    store.save(index)
    xdir = features_dir(index)
    stray = xdir / "shard_0000.7.npy"
    np.save(stray, np.zeros(3))
    tmp = xdir / ".shard_0001.3.npy.tmp"
    tmp.write_bytes(b"half")
    assert leftovers(index) == [tmp, stray]
    index.write_bytes(b"PK\x03\x04garbage")  # a damaged index names nothing: nothing of it is removed
    assert leftovers(index) == [tmp]
    with pytest.raises(SisaError, match="unreadable or malformed"):
        Store.load(index)


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong rows"])
def test_a_damaged_features_file_is_refused_by_name(tmp_path, damage):
    store = random_store(np.random.default_rng(3), 40, 2)
    index = tmp_path / "train.npz"
    store.save(index)
    [part] = features_dir(index).glob("shard_0001.*.npy")
    if damage == "missing":
        part.unlink()
    elif damage == "truncated":
        part.write_bytes(part.read_bytes()[:20])
    else:
        np.save(part, np.zeros((1, 5), np.float32))
    with pytest.raises(SisaError, match="features file"):
        Store.load(index)


@pytest.mark.parametrize("seed", range(6))
def test_shard_ids_are_each_stages_lineage_ids(seed):
    """`shard_ids(s, r)`: the ids of shard s's slices 0..r, sorted; also for a shard with no
    rows, past the last shard, on an empty store and after a deletion."""
    rng = np.random.default_rng(seed)
    store = random_store(rng, int(rng.integers(0, 300)), shards=int(rng.integers(1, 6)))
    for st in (store, store.without(rng.choice(store.ids, min(len(store), 7), replace=False) if len(store) else [])):
        for s in range(8):
            for r in range(4):
                want = st.ids[(st.shard == s) & (st.slice <= r)]
                got = st.shard_ids(s, r)
                assert np.array_equal(got, want) and np.all(np.diff(got) > 0)


@pytest.mark.parametrize("seed", range(4))
def test_index_columns_are_stored_compact_and_load_in_their_types(tmp_path, seed):
    """Labels, shards and slices stored in the smallest integer type that holds them (ids too),
    read back as int32 / int64, equal; a column whose values need a wider type keeps it."""
    rng = np.random.default_rng(seed)
    store = random_store(rng, 500, shards=7)
    if seed % 2:
        store = dataclasses.replace(store, ids=store.ids + 2**40, y=store.y + 40_000)  # int64 ids, int32 labels
    saved = store.save(tmp_path / "train.npz")
    with np.load(tmp_path / "train.npz") as z:
        stored = {k: z[k].dtype for k in ("ids", "y", "shard", "slice")}
    assert stored["shard"] == stored["slice"] == np.int8
    assert stored["ids"] == (np.int64 if seed % 2 else np.int16) and stored["y"] == (np.int32 if seed % 2 else np.int8)
    loaded = Store.load(tmp_path / "train.npz")
    assert same(loaded, store) and same(saved, store)
    assert (loaded.ids.dtype, loaded.y.dtype, loaded.shard.dtype, loaded.slice.dtype, loaded.group.dtype) == (
        np.int64, np.int32, np.int32, np.int32, np.int64)
