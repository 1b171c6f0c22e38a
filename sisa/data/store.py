"""The run's data store: the only copy of the training data a run keeps.

One uncompressed `.npz` per split. Forgetting rewrites the train file atomically without the
removed rows, so their bytes leave the store (no tombstones).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from sisa.data import partition
from sisa.data.datasets import Dataset
from sisa.errors import SisaError
from sisa.fsutil import atomic_save_npz


@dataclasses.dataclass(frozen=True)
class Store:
    ids: np.ndarray  # [N] int64, sorted
    x: np.ndarray
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
        keep = ~np.isin(self.ids, np.asarray(ids, np.int64))
        return Store(**{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)})

    def counts(self, shards: int, slices: int) -> np.ndarray:
        """[shards, slices] number of examples."""
        out = np.zeros((shards, slices), np.int64)
        np.add.at(out, (self.shard, self.slice), 1)
        return out

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
            rows = np.flatnonzero(self.shard == s)
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

    def save(self, path: str | Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not self.arrivals:
            del arrays["arrival"]  # a run nothing was added to keeps the file as before
        atomic_save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Store:
        a = read_arrays(path, [fd.name for fd in dataclasses.fields(cls)], "data store", optional=("arrival",))
        n, ids = len(a["ids"]), a["ids"]
        a.setdefault("arrival", np.zeros(n, np.int32))
        wrong = [k for k in ("ids", "y", "shard", "slice", "group", "arrival")
                 if a[k].shape != (n,) or a[k].dtype.kind not in "iu"]
        if wrong or a["x"].shape[:1] != (n,) or not (ids[1:] > ids[:-1]).all():
            raise SisaError(f"data store {path} is malformed ({', '.join(wrong) or 'x or the id order'} damaged); "
                            "restore the workdir from a backup")
        return cls(**a)


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
