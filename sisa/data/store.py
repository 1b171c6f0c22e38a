"""The run's data store: the only copy of the training data a run keeps.

    W/data/train.npz             the index: every example's id (sorted), label, shard, slice,
                                 group and arrival (each in the smallest integer type that holds
                                 it; group and arrival left out while all 0), and the features
                                 file of each shard
    W/data/x/shard_NNNN.G.npy    one shard's features, its rows in id order (G: its generation)

Uncompressed, so the bytes on disk are the bytes of the data (`audit` scans for them).
Forgetting writes new generations of the features files of the shards that held a removed
example, then replaces the index, then removes the old generations: a deletion rewrites the
small index and the affected shards' features, never every example's features, and no
removed row's bytes stay in the store (no tombstones). Each file is replaced atomically. A
crash before the index is replaced leaves the old store whole (the new files referenced by
nothing); after it, the old generations are leftovers, referenced by nothing, that the next
writer removes (`leftovers`) and that `audit` reports while they hold forgotten bytes.

A store written by sisa 0.1 (one file, the features inside) is read as it is; its next save
writes this layout.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from sisa.data import partition
from sisa.data.datasets import Dataset
from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.fsutil import atomic_save_npy, atomic_save_npz, file_identity, fsync_dir

_PART = re.compile(r"shard_(\d+)\.(\d+)\.npy")
_INDEX_COLUMNS = ("ids", "y", "shard", "slice", "group", "arrival")
_IN_MEMORY = {"ids": np.int64, "y": np.int32, "shard": np.int32, "slice": np.int32, "group": np.int64,
              "arrival": np.int32}  # each index column's dtype once loaded, whatever it was stored as


def _compact(column: np.ndarray) -> np.ndarray:
    """`column` in the smallest signed integer type that holds its values: every forget rewrites
    the index, and at 2M rows int8 labels, shards and slices and int32 ids are 14 bytes a row, not 40."""
    low, high = (int(column.min()), int(column.max())) if len(column) else (0, 0)
    for dtype in (np.int8, np.int16, np.int32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return column.astype(dtype)
    return column


def features_dir(index: str | Path) -> Path:
    return Path(index).parent / "x"


def _part_name(shard: int, generation: int) -> str:
    return f"shard_{shard:04d}.{generation}.npy"


@dataclasses.dataclass
class _Part:
    """One shard's features: rows `select` (None: all) of a features file or an array."""

    source: Path | np.ndarray
    select: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if isinstance(self.source, Path):
            if "_mapped" not in self.__dict__:
                self._mapped = _open_part(self.source)
            a = self._mapped
        else:
            a = self.source
        return a if self.select is None else a[self.select]

    def file(self) -> Path | None:
        """The features file holding exactly these rows, or None (they must be written)."""
        return self.source if isinstance(self.source, Path) and self.select is None else None

    def subset(self, keep: np.ndarray) -> _Part | None:
        """These rows where `keep` (a mask over them) holds; None when none does."""
        if keep.all():
            return self
        if not keep.any():
            return None
        rows = np.flatnonzero(keep) if self.select is None else self.select[keep]
        part = _Part(self.source, rows)
        if "_mapped" in self.__dict__:
            part._mapped = self._mapped
        return part


def _open_part(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise SisaError(f"data store features file missing: {path}; restore the workdir from a backup") from None
    except (OSError, ValueError) as e:
        raise SisaError(f"data store features file {path} is unreadable or malformed ({type(e).__name__}: {e}); "
                        "restore the workdir from a backup") from None


class Features:
    """A store's features, [N, ...] in id order, kept per shard and read only where rows are
    asked for: a forget or a training reads the shards it trains, not the whole store. Indexing
    with a boolean mask gives the subset without reading anything; with row numbers, those rows
    (an array); `np.asarray` gives all of them."""

    def __init__(self, shard: np.ndarray, parts: dict[int, _Part], empty: np.ndarray):
        self.shard = shard  # [N] the store's shard of each row
        self.parts = parts  # shard -> its rows' features, in id order
        self.empty = empty  # [0, ...]: the row shape and dtype
        self.dtype, self.shape, self.ndim = empty.dtype, (len(shard), *empty.shape[1:]), empty.ndim

    @classmethod
    def split(cls, x: np.ndarray, shard: np.ndarray) -> Features:
        """`x` (rows in id order) kept per shard."""
        x = np.asarray(x)
        return cls(shard, {int(s): _Part(x[shard == s]) for s in np.unique(shard)}, x[:0])

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, key):
        key = np.asarray(key) if isinstance(key, (list, np.ndarray)) else key
        if isinstance(key, np.ndarray) and key.dtype == bool and key.shape == self.shard.shape:
            parts, dropped = {}, set(np.unique(self.shard[~key]).tolist())  # only their parts change
            for s, part in self.parts.items():
                kept = part.subset(key[shard_rows(self, s)]) if s in dropped else part
                if kept is not None:
                    parts[s] = kept
            return Features(self.shard[key], parts, self.empty)
        if isinstance(key, np.ndarray) and key.dtype.kind in "iu":
            rows = key.reshape(-1)
            out = np.empty((len(rows), *self.shape[1:]), self.dtype)
            shard = self.shard[rows]
            for s in np.unique(shard):
                here = shard == s
                out[here] = self.parts[int(s)].array()[np.searchsorted(shard_rows(self, int(s)), rows[here])]
            return out.reshape(*key.shape, *self.shape[1:])
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, self.dtype)
        for s, part in self.parts.items():
            out[shard_rows(self, s)] = part.array()
        return out if dtype is None else out.astype(dtype)

    def reshape(self, *shape):
        return np.asarray(self).reshape(*shape)


@dataclasses.dataclass(frozen=True)
class Store:
    ids: np.ndarray  # [N] int64, sorted
    x: np.ndarray | Features  # [N, ...]: an array, or (read from disk) kept per shard
    y: np.ndarray  # [N] int32
    shard: np.ndarray  # [N] int32
    slice: np.ndarray  # [N] int32
    group: np.ndarray  # [N] int64 group/user value (0 without a group column): `verify` re-partitions
    arrival: np.ndarray  # [N] int32: 0 for the data trained first, a for the a-th `sisa add`

    @classmethod
    def create(cls, ds: Dataset, *, shards: int, slices: int, strategy: str, seed: int) -> Store:
        if shards > len(ds.ids):
            raise SisaError(f"{shards} shards but only {len(ds.ids)} training examples: use at most {len(ds.ids)} shards")
        arrival = np.zeros(len(ds.ids), np.int32) if ds.arrival is None else np.asarray(ds.arrival, np.int32)
        shard, slc = partition.assign(
            ds.ids, ds.y, ds.groups, shards=shards, slices=slices, strategy=strategy, seed=seed, arrival=arrival
        )
        order = np.argsort(ds.ids, kind="stable")
        return cls(
            ids=ds.ids[order].astype(np.int64),
            x=ds.x[order],
            y=ds.y[order].astype(np.int32),
            shard=shard[order],
            slice=slc[order],
            group=(np.zeros(len(ds.ids), np.int64) if ds.groups is None else ds.groups.astype(np.int64))[order],
            arrival=arrival[order],
        )

    @property
    def arrivals(self) -> int:
        """How many `sisa add`s brought examples that are still here (their slices follow the rest)."""
        return int(self.arrival.max(initial=0))

    def stages(self, slices: int) -> int:
        """Stages of a run of `slices` slices on this store: one per slice and per arrival."""
        return slices + self.arrivals

    def check_partition(self, *, shards: int, slices: int, strategy: str, seed: int) -> list[int]:
        """Ids whose stored (shard, slice) differs from partitioning the store's examples afresh
        (empty for a deletion-stable partition: training on the store from scratch agrees)."""
        shard, slc = partition.assign(self.ids, self.y, self.group, shards=shards, slices=slices, strategy=strategy,
                                      seed=seed, arrival=self.arrival)
        return self.ids[(shard != self.shard) | (slc != self.slice)].tolist()

    def __len__(self) -> int:
        return len(self.ids)

    def contains(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        pos = np.clip(np.searchsorted(self.ids, ids), 0, max(len(self.ids) - 1, 0))
        return (len(self.ids) > 0) & (self.ids[pos] == ids)

    def without(self, ids) -> Store:
        gone = np.searchsorted(self.ids, np.asarray(ids, np.int64))[self.contains(ids)]
        keep = np.ones(len(self.ids), bool)
        keep[gone] = False  # the features take the mask (they subset per shard, reading nothing)
        return Store(**{f.name: self.x[keep] if f.name == "x" else np.delete(getattr(self, f.name), gone)
                        for f in dataclasses.fields(self)})

    def shard_ids(self, shard: int, last_slice: int) -> np.ndarray:
        """Ids of `shard`'s slices 0..`last_slice` (sorted): what its checkpoint of that stage saw."""
        rows = shard_rows(self, shard)
        return self.ids[rows[self.slice[rows] <= last_slice]]

    def counts(self, shards: int, slices: int) -> np.ndarray:
        """[shards, slices] number of examples (kept per store: a forget asks several times)."""
        cached = self.__dict__.setdefault("_counts", {})
        if (shards, slices) not in cached:
            cells = self.shard.astype(np.int64) * slices + self.slice
            cached[shards, slices] = np.bincount(cells, minlength=shards * slices).reshape(shards, slices)
            cached[shards, slices].flags.writeable = False
        return cached[shards, slices]

    def capacity(self, shards: int, batch_size: int) -> int:
        """Rows per shard lane: the largest shard rounded up to whole batches, and their number up
        to a power of two. So coarse that deletions almost never change it (and with it the
        programs' shapes) until the largest shard halves; padded rows are masked, and cost no
        training step. Computed from the store each time (never kept), so after a forget it is
        what training without the forgotten examples would use."""
        largest = int(np.bincount(self.shard, minlength=shards).max(initial=0))
        batches = max(1, -(-largest // batch_size))
        return (1 << (batches - 1).bit_length()) * batch_size

    def shard_layout(self, shards, capacity: int):
        """Row indices per shard, sorted by id, padded with -1 to `capacity`: [len(shards), capacity]."""
        out = np.full((len(shards), capacity), -1, np.int64)
        for lane, s in enumerate(shards):
            rows = shard_rows(self, s)
            out[lane, : len(rows)] = rows
        return out

    def check_source(self, ds: Dataset, forgotten, where: str) -> None:
        """Refuse unless `ds` and this store hold the same examples (ids, features, labels) once
        the forgotten ids are left out of both. Compared row by row: the run keeps no digest of
        its source, since a digest over data that included forgotten examples would outlive
        their forgetting."""
        rest, mine = ds.without(sorted(forgotten)), self.without(sorted(forgotten))
        order = np.argsort(rest.ids, kind="stable")
        same = (np.array_equal(rest.ids[order], mine.ids) and rest.x.shape[1:] == mine.x.shape[1:]
                and np.array_equal(rest.x[order], mine.x) and np.array_equal(rest.y[order], mine.y))
        if not same:
            raise SisaError(f"workdir {where} was trained on a different data set (ids, features or labels differ "
                            "from its data store)")

    def save(self, path: str | Path) -> Store:
        """Write this store with its index at `path` and its features beside it (module doc).
        Returns it as saved: its features read from the files now there. A shard whose rows are
        all still in the file they were read from keeps that file."""
        path = Path(path)
        xdir = features_dir(path)
        xdir.mkdir(parents=True, exist_ok=True)
        x = self.x
        if not (isinstance(x, Features) and np.array_equal(x.shard, self.shard)):
            x = Features.split(np.asarray(x), self.shard)
        on_disk = _parts_in(xdir)
        files, wrote = {}, False
        for s, part in sorted(x.parts.items()):
            kept = part.file()
            if kept is not None and kept.parent == xdir and kept.name in on_disk.values():
                files[s] = kept
                continue
            generation = 1 + max((g for (shard, g) in on_disk if shard == s), default=-1)
            files[s] = xdir / _part_name(s, generation)
            atomic_save_npy(files[s], part.array(), sync_dir=False)
            wrote = True
        if wrote:
            fsync_dir(xdir)
        crash_point("after-features")  # new features files written, the index not yet replaced
        arrays = {name: _compact(getattr(self, name)) for name in _INDEX_COLUMNS}
        if not self.arrivals:
            del arrays["arrival"]  # a run nothing was added to keeps the file as before
        if not self.group.any():
            del arrays["group"]  # no group column (all 0): 8 bytes a row less to rewrite at every forget
        shards = sorted(files)
        arrays |= {"x_shards": np.asarray(shards, np.int64),
                   "x_generations": np.asarray([int(_PART.fullmatch(files[s].name)[2]) for s in shards], np.int64),
                   "x_empty": x.empty}
        atomic_save_npz(path, **arrays)
        crash_point("after-index")  # the new store in place, the old features files not yet removed
        for stale in set(xdir.glob("shard_*.npy")) - set(files.values()):
            stale.unlink()  # the rows they held are gone from the store (or moved to a newer file)
        fsync_dir(xdir)
        saved = Features(self.shard, {s: _Part(files[s]) for s in shards}, x.empty)
        return dataclasses.replace(self, x=saved)

    @classmethod
    def load(cls, path: str | Path) -> Store:
        """The store whose index is at `path`. A features file that vanishes while it is opened
        (a writer replaced the store meanwhile: readers take no lock) means reading it afresh."""
        for attempt in range(3):
            before = file_identity(path)
            try:
                return cls._load(path)
            except _PartMissing:
                if attempt == 2 or file_identity(path) == before:
                    raise SisaError(f"data store features file missing beside {path}; restore the workdir from a "
                                    "backup") from None
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, path: str | Path) -> Store:
        extra = ("arrival", "group", "x", "x_shards", "x_generations", "x_empty")
        a = read_arrays(path, [*_INDEX_COLUMNS, *extra], "data store", optional=extra)
        n, ids = len(a["ids"]), a["ids"]
        a.setdefault("arrival", np.zeros(n, np.int32))
        a.setdefault("group", np.zeros(n, np.int64))
        wrong = [k for k in _INDEX_COLUMNS if a[k].shape != (n,) or a[k].dtype.kind not in "iu"]
        if "x" in a:  # one file, the features inside (sisa 0.1)
            wrong += [] if a["x"].shape[:1] == (n,) else ["x"]
        elif not all(k in a for k in ("x_shards", "x_generations", "x_empty")):
            wrong.append("the features index")
        a |= {k: a[k].astype(_IN_MEMORY[k], copy=False) for k in _INDEX_COLUMNS if k not in wrong}  # widened back
        ids = a["ids"]
        if wrong or not (ids[1:] > ids[:-1]).all():
            raise SisaError(f"data store {path} is malformed ({', '.join(wrong) or 'the id order'} damaged); "
                            "restore the workdir from a backup")
        if "x" not in a:
            a["x"] = _features(Path(path), a["shard"], a.pop("x_shards"), a.pop("x_generations"), a.pop("x_empty"))
        return cls(**{f.name: a[f.name] for f in dataclasses.fields(cls)})


def shard_rows(owner: Store | Features, shard: int) -> np.ndarray:
    """The rows of `owner.shard` that are `shard`'s, in order (for features: a row's place among
    them is its place in the shard's file); kept on `owner` (a store and its
    features never change: a forget makes new ones). One pass over the rows per shard asked
    for: a forget asks for one or a few, and sorting the column costs ~70 of them."""
    cached = owner.__dict__.setdefault("_shard_rows", {})
    if shard not in cached:
        cached[shard] = np.flatnonzero(owner.shard == shard)
        cached[shard].flags.writeable = False
    return cached[shard]


class _PartMissing(Exception):
    pass


def _features(index: Path, shard: np.ndarray, shards: np.ndarray, generations: np.ndarray, empty: np.ndarray) -> Features:
    """The features the index names, each file opened (mapped) and checked against the index."""
    xdir = features_dir(index)
    negative = len(shard) and shard.min() < 0
    counts = np.bincount(np.maximum(shard, 0))  # rows per shard: one pass over the rows, not one per shard
    if negative or shards.shape != generations.shape or not np.array_equal(np.sort(shards), np.flatnonzero(counts)):
        raise SisaError(f"data store {index} is malformed (its features files do not match its shards); restore "
                        "the workdir from a backup")
    parts = {}
    for s, g in zip(shards.tolist(), generations.tolist()):
        part = _Part(xdir / _part_name(s, g))
        if not part.source.exists():
            raise _PartMissing
        rows, want = part.array(), int(counts[s])
        if rows.shape != (want, *empty.shape[1:]) or rows.dtype != empty.dtype:
            raise SisaError(f"data store features file {part.source} is malformed (shape {rows.shape}, dtype "
                            f"{rows.dtype}; the index wants {want} rows of {empty.shape[1:]}, "
                            f"{empty.dtype}); restore the workdir from a backup")
        parts[s] = part
    return Features(shard, parts, empty)


def _parts_in(xdir: Path) -> dict[tuple[int, int], str]:
    """(shard, generation) -> name of each features file in `xdir`."""
    out = {}
    for p in xdir.glob("shard_*.npy"):
        if m := _PART.fullmatch(p.name):
            out[int(m[1]), int(m[2])] = p.name
    return out


def leftovers(index: str | Path) -> list[Path]:
    """Files of interrupted or superseded store writes: temporaries beside the index and its
    features, and features files the index does not name. An index that cannot be read names
    nothing to remove (loading it reports the damage)."""
    index, xdir = Path(index), features_dir(index)
    out = sorted(index.parent.glob(".*.tmp"))
    if not xdir.is_dir():
        return out
    out += sorted(xdir.glob(".*.tmp"))
    try:
        with np.load(index, allow_pickle=False) as f:
            named = ({_part_name(s, g) for s, g in zip(f["x_shards"].tolist(), f["x_generations"].tolist())}
                     if "x_shards" in f.files else set())
    except Exception:  # noqa: BLE001  missing, damaged: not this function's to judge
        return out
    return out + sorted(xdir / name for name in _parts_in(xdir).values() if name not in named)


def read_arrays(path: str | Path, names: list[str], what: str, optional=()) -> dict[str, np.ndarray]:
    """The named arrays of the .npz at `path` (those in `optional` only if there); a SisaError
    naming `what` if it is missing, unreadable or lacks one."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in names if k not in optional or k in f.files}
    except FileNotFoundError:
        raise SisaError(f"{what} missing: {path}") from None
    except OSError as e:
        raise SisaError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except Exception as e:  # a truncated or damaged file: numpy and zipfile raise many kinds
        raise SisaError(f"{what} {path} is unreadable or malformed ({type(e).__name__}: {e}); restore the workdir "
                        "from a backup") from None
