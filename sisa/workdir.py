"""A run's directory: manifest, config, data store, checkpoints, ledger.

    W/sisa.json          manifest: config digest, data set facts, environment (written last)
    W/config.toml        the run's config
    W/data/train.npz     the data store (deletions rewrite it)
    W/data/test.npz      the test split
    W/checkpoints/shard_NNNN/<stage>/   orbax, one manager per shard
    W/checkpoints/shard_NNNN.files/     file digests of each finished stage
    W/ledger.jsonl       the deletion ledger

Nothing here is computed over the training data as a whole: the manifest holds the config,
the data set's shape facts and the environment; counts, sizes and digests of the data are
computed from the data store when needed, so a forget leaves none computed over what it removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from sisa import config as config_lib, environment
from sisa.config import Config
from sisa.data.store import Store
from sisa.errors import SisaError
from sisa.fsutil import atomic_save_npz, atomic_write_bytes, atomic_write_json

FORMAT = 2  # 2: no data set digest or counts in the manifest; checkpoint file digests


class WorkdirBusy(SisaError):
    """Another sisa process holds the workdir's writer lock."""

MANIFEST = "sisa.json"
_CREATING = ".sisa-creating"


class Workdir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # paths
    manifest_path = property(lambda self: self.root / MANIFEST)
    config_path = property(lambda self: self.root / "config.toml")
    store_path = property(lambda self: self.root / "data" / "train.npz")
    test_path = property(lambda self: self.root / "data" / "test.npz")
    checkpoint_root = property(lambda self: self.root / "checkpoints")
    ledger_path = property(lambda self: self.root / "ledger.jsonl")

    @classmethod
    def open(cls, root: str | Path) -> Workdir:
        wd = cls(root)
        if not wd.root.is_dir():
            raise SisaError(f"workdir {wd.root} does not exist (train one with `sisa train --workdir {wd.root}`)")
        if not wd.manifest_path.exists():
            raise SisaError(f"{wd.root} is not a sisa workdir (no {MANIFEST})")
        wd.manifest  # parse now: a broken manifest is reported before any work
        return wd

    @classmethod
    def create(cls, root: str | Path, cfg: Config, ds) -> Workdir:
        """Write a new workdir for `cfg` on data set `ds` (no training yet)."""
        wd = cls(root)
        p = cfg.partition
        # Everything that can refuse runs before the first byte is written.
        store = Store.create(ds, shards=p.shards, slices=p.slices, strategy=p.strategy, seed=p.seed)
        if wd.root.exists() and any(wd.root.iterdir()):
            if not (wd.root / _CREATING).exists():
                raise SisaError(f"{wd.root} exists, is not empty and is not a sisa workdir; refusing to write into it")
            _remove_own_files(wd.root)  # an earlier create was interrupted: start over
        wd.root.mkdir(parents=True, exist_ok=True)
        (wd.root / _CREATING).touch()
        (wd.root / "data").mkdir(exist_ok=True)
        store.save(wd.store_path)
        atomic_save_npz(wd.test_path, x=ds.x_test, y=ds.y_test.astype(np.int32))
        atomic_write_bytes(wd.config_path, config_lib.dumps(cfg).encode())
        atomic_write_json(
            wd.manifest_path,
            {
                "format": FORMAT,
                "config_digest": cfg.digest(),
                "dataset": {
                    "name": ds.name,
                    "num_classes": ds.num_classes,
                    "input_shape": list(ds.x.shape[1:]),
                    "scale": ds.scale,
                },
                "environment": environment.current(cfg.partition.shards),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        (wd.root / _CREATING).unlink()
        return wd

    @contextlib.contextmanager
    def lock(self):
        """Exclusive writer lock. The OS drops it when the holder dies, so it never goes stale."""
        path = self.root / ".lock"
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise WorkdirBusy(f"workdir {self.root} is in use by another sisa process (pid {holder}); try again when it ends") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @functools.cached_property
    def manifest(self) -> dict:
        try:
            m = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SisaError(f"manifest {self.manifest_path} is unreadable: {e}") from None
        if m.get("format") != FORMAT:
            raise SisaError(f"{self.root}: unsupported workdir format {m.get('format')!r} (expected {FORMAT})")
        return m

    @functools.cached_property
    def config(self) -> Config:
        cfg = config_lib.load(self.config_path)
        if cfg.digest() != self.manifest["config_digest"]:
            raise SisaError(f"{self.config_path} does not match the manifest (edited after training, or written by another sisa version)")
        return cfg

    def check_config(self, cfg: Config) -> None:
        """Refuse to continue a run under a different config."""
        if cfg.digest() == self.config.digest():
            return
        old, new = _flatten(self.config.to_dict()), _flatten(cfg.to_dict())
        diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old) if old.get(k) != new.get(k) and k != "aggregation"]
        raise SisaError(f"workdir {self.root} was trained with a different config ({'; '.join(diffs)})")

    def store(self) -> Store:
        """The data store, read once per Workdir (one command): a forget uses it at several steps,
        and a large store costs a second per read. `save_store` is the one way sisa changes it."""
        if "_store" not in self.__dict__:
            self._store = Store.load(self.store_path)
        return self._store

    def save_store(self, store: Store) -> None:
        store.save(self.store_path)
        self._store = store

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.test_path) as f:
            return f["x"], f["y"]

    @functools.cached_property
    def trainer(self):
        from sisa.training.step import trainer_for

        d = self.manifest["dataset"]
        return trainer_for(self.config, tuple(d["input_shape"]), d["num_classes"], d["scale"])

    @functools.cached_property
    def checkpoints(self) -> list:
        """One ShardCheckpoints per shard."""

        from sisa.checkpoint import ShardCheckpoints

        abstract = lambda: self.trainer.abstract_state  # noqa: E731  listing stages needs no JAX
        return [ShardCheckpoints(self.checkpoint_root, s, abstract) for s in range(self.config.partition.shards)]

    def reload_checkpoints(self) -> None:
        """Drop the checkpoint handles (their orbax managers cache the step list), so that
        checkpoints written by other processes are seen."""
        for ckpt in self.__dict__.pop("checkpoints", []):
            if "manager" in ckpt.__dict__:
                ckpt.close()

    def lineage(self, shard: int, stage: int, store: Store) -> dict:
        from sisa.checkpoint import lineage_digest

        ids = store.ids[(store.shard == shard) & (store.slice <= stage)]
        return {
            "shard": shard,
            "stage": stage,
            "ids": ids.tolist(),
            "ids_digest": lineage_digest(ids),
            "config_digest": self.manifest["config_digest"],
        }


_OWN = (MANIFEST, "config.toml", "data", "checkpoints", "ledger.jsonl", ".lock", _CREATING)


def _remove_own_files(root: Path) -> None:
    """Remove what an interrupted create wrote; anything else in the directory stays (and is reported)."""
    for name in _OWN:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if any(root.iterdir()):
        raise SisaError(f"{root} holds an interrupted sisa workdir and other files; move them and train again")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
