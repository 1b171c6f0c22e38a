"""A run's directory: manifest, config, data store, checkpoints, ledger.

    W/sisa.json          manifest: config digest, data set facts, environment (written last),
                         the ledger's head (rewritten after every ledger append)
    W/config.toml        the run's config
    W/data/train.npz     the data store's index, W/data/x/ its features per shard (sisa.data.store;
                         a deletion rewrites the index and the affected shards' features)
    W/data/test.npz      the test split
    W/checkpoints/saves/p<P>-<N>/       orbax, one save per stage holding every shard trained in it
    W/checkpoints/shard_NNNN.files/     each finished stage's save and file digests (sisa.checkpoint)
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
from sisa.deletion_ledger import GENESIS, Ledger
from sisa.errors import SisaError
from sisa.fsutil import atomic_save_npz, atomic_write_bytes, atomic_write_json

FORMAT = 4  # 2: no data set digest or counts in the manifest; checkpoint file digests. 3: ledger anchors.
#             4: one checkpoint save per stage for all its shards (checkpoints/saves/)


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
    scratch_root = property(lambda self: self.root / ".scratch")  # verify's retrains; a purge removes it

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
    def create(cls, root: str | Path, cfg: Config, ds, store: Store | None = None) -> Workdir:
        """Write a new workdir for `cfg` on data set `ds` (no training yet), under the caller's
        writer lock (`root/.lock`, which stays). `store`: the data store, if the caller made it."""
        wd = cls(root)
        p = cfg.partition
        # Everything that can refuse runs before the first byte is written.
        if store is None:
            store = Store.create(ds, shards=p.shards, slices=p.slices, strategy=p.strategy, seed=p.seed)
        check_new(wd.root)
        if (wd.root / _CREATING).exists():  # an earlier create was interrupted: start over
            _remove_own_files(wd.root, keep=(".lock",))  # the lock is held: removing it would let a second writer in
            if set(os.listdir(wd.root)) - {".lock"}:
                raise SisaError(f"{wd.root} holds an interrupted sisa workdir and other files; move them and train again")
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
                    **ds.text_facts(),
                },
                **model_facts(cfg),
                "environment": environment.current(cfg.partition.shards),
                "ledger_head": {"records": 0, "hash": GENESIS},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        (wd.root / _CREATING).unlink()
        return wd

    @contextlib.contextmanager
    def lock(self):
        """Exclusive writer lock. The OS drops it when the holder dies, so it never goes stale."""
        path = self.root / ".lock"
        try:
            f = open(path, "a+")  # noqa: SIM115  closed by `with f` below; only opening is reported here
        except OSError as e:
            raise SisaError(f"cannot lock workdir {self.root}: {e.strerror} ({path}); sisa must be able to write there") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise WorkdirBusy(f"workdir {self.root} is in use by another sisa process (pid {holder}); try again when it ends") from None
            if not _same_file(f, path):  # a failed first train removed it after we opened it: this lock guards nothing
                raise WorkdirBusy(f"workdir {self.root} is in use by another sisa process (its lock file was just "
                                  "removed); try again")
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
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
            raise SisaError(f"manifest {self.manifest_path} is unreadable: {e}", kind="corrupted") from None
        if not isinstance(m, dict):
            raise SisaError(f"manifest {self.manifest_path} is damaged: not a JSON object", kind="corrupted")
        if m.get("format") != FORMAT:
            raise SisaError(f"{self.root}: unsupported workdir format {m.get('format')!r} (expected {FORMAT})")
        head = m.get("ledger_head")
        if not (isinstance(head, dict) and type(head.get("records")) is int and head["records"] >= 0
                and isinstance(head.get("hash"), str)):
            raise SisaError(f"manifest {self.manifest_path} lacks a valid ledger head (edited?); refusing to go on",
                            kind="corrupted")
        return m

    def ledger(self) -> Ledger:
        """The deletion ledger, held to the heads the manifest and each shard's newest lineage
        recorded (checked on first use). The manifest is read first: the ledger only grows, so
        a head read earlier must still be in it."""
        if "_ledger" not in self.__dict__:
            ledger = Ledger(self.ledger_path, anchor=self.manifest["ledger_head"], on_append=self._record_ledger_head)
            self.check_lineage_anchors(ledger)
            self._ledger = ledger
        return self._ledger

    def check_lineage_anchors(self, ledger: Ledger) -> None:
        """Each shard's newest lineage anchors the ledger's head when it was trained: the ledger
        must still hold it. (A lineage that cannot be read is the reconciler's business.)"""
        for ckpt in self.checkpoints:
            stages = ckpt.stages()
            if not stages:
                continue
            try:
                head = ckpt.seen(stages[-1])[1]
            except SisaError:
                continue
            ledger.check_anchor(head, f"the lineage of shard {ckpt.shard} stage {stages[-1]}")

    def _record_ledger_head(self, anchor: dict) -> None:
        """Keep the ledger's new head in the manifest (a crash just before leaves it one behind,
        which still holds: an anchor only has to be in the ledger)."""
        m = {**self.manifest, "ledger_head": anchor}
        try:
            atomic_write_json(self.manifest_path, m)
        except OSError:
            return  # e.g. a full disk: the record is durable, and the next append anchors it
        self.__dict__["manifest"] = m

    @functools.cached_property
    def config(self) -> Config:
        cfg = config_lib.load(self.config_path)
        if cfg.digest() != self.manifest["config_digest"]:
            raise SisaError(f"{self.config_path} does not match the manifest (edited after training, or written by another sisa version)",
                            kind="corrupted")
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

    def stages(self) -> int:
        """The run's stages: one per slice, then one per `sisa add` up to the last one with an example
        not forgotten (what training from scratch without the forgotten examples has)."""
        store, slices = self.store(), self.config.partition.slices
        if not store.arrivals:
            return slices
        forgotten = self.ledger().forgotten()
        live = store.arrival[~np.isin(store.ids, np.fromiter(forgotten, np.int64, len(forgotten)))]
        return slices + int(live.max(initial=0))

    def save_store(self, store: Store) -> None:
        self._store = store.save(self.store_path)

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        from sisa.data.store import read_arrays

        a = read_arrays(self.test_path, ["x", "y"], "test split")
        return a["x"], a["y"]

    def check_model(self) -> None:
        """`check_model` of this run, once per Workdir (one command): hashing a base reads it whole."""
        if not self.__dict__.get("_model_checked"):
            check_model(self.config, self.manifest)
            self._model_checked = True

    @functools.cached_property
    def trainer(self):
        from sisa.training.step import trainer_for

        d = self.manifest["dataset"]
        self.check_model()
        return trainer_for(self.config, tuple(d["input_shape"]), d["num_classes"], d["scale"], d.get("vocab_size"),
                           d.get("task", "classify"))

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

        ids = store.shard_ids(shard, stage)
        return {
            "shard": shard,
            "stage": stage,
            "ids": ids,  # numpy: written as a JSON list (sisa.checkpoint)
            "ids_digest": lineage_digest(ids),
            "config_digest": self.manifest["config_digest"],
            "ledger_head": self.manifest["ledger_head"],  # the ledger must hold it for good (cut detection)
        }


# What sisa writes into a workdir, in the order it is removed: the manifest first (without it,
# it is no workdir), then the rest; the creation marker next to last (while it is there, the
# folder is a workdir being created or removed, not a foreign one); the lock file last (until
# then, no other writer can start).
_OWN = (MANIFEST, "config.toml", "data", "checkpoints", "ledger.jsonl", ".scratch", f".{MANIFEST}.tmp",
        ".config.toml.tmp", _CREATING, ".lock")  # the .tmp: atomic writes a crash interrupted


def _remove_own_files(root: Path, keep=()) -> None:
    """Remove what sisa writes into a workdir (but `keep`); anything else in the directory stays."""
    for name in _OWN:
        path = root / name
        if name in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _same_file(f, path: Path) -> bool:
    try:
        a, b = os.fstat(f.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_new(root: Path) -> None:
    """Refuse to create a workdir in `root` unless it does not exist, is empty (but for a lock
    file), or holds a sisa workdir (one being created, or whose creation was interrupted)."""
    if root.is_file():
        raise SisaError(f"workdir {root} is not a directory but a file; give a folder that is empty or does not exist yet")
    try:
        names = set(os.listdir(root)) - {".lock"}
    except (FileNotFoundError, NotADirectoryError):
        return  # missing; a file on its path is reported by make_root
    except OSError as e:
        raise SisaError(f"cannot read workdir {root}: {e.strerror}") from None
    if names and not names & {_CREATING, MANIFEST}:
        raise SisaError(f"{root} exists, is not empty and is not a sisa workdir; refusing to write into it")


def make_root(root: Path) -> list[Path]:
    """Create the folder `root` (and its parents); returns the folders this made, outermost first."""
    made, p = [], root
    while not p.exists() and p.parent != p:
        made.append(p)
        p = p.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = " (a folder on its path is a file)" if isinstance(e, (NotADirectoryError, FileExistsError)) else ""
        raise SisaError(f"cannot create workdir {root}: {e.strerror}{where}") from None
    return made[::-1]


def discard(root: Path, made: list[Path], *, own: bool) -> None:
    """Undo a first train that failed: sisa's own files in `root` if `own` (this call created
    them; its lock file too, which `lock` then refuses to anyone who waited on it), then the
    folders `made`, innermost first, each only if empty. Nothing else is ever removed."""
    if own:
        (root / _CREATING).touch()  # a train that looks meanwhile sees sisa's, not foreign files
        _remove_own_files(root)
    elif not made or (root.is_dir() and set(os.listdir(root)) - {".lock"}):
        return
    else:
        (root / ".lock").unlink(missing_ok=True)
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            break


def model_facts(cfg: Config) -> dict:
    """What the manifest records of the model beyond the config: your own model's source digest,
    and the frozen base's (sisa.models.adapters)."""
    from sisa import models

    out = {}
    if models.is_user_model(cfg.model.name):
        out["model_code"] = models.code_digest(cfg.model.name)
    if cfg.model.base:
        from sisa.models import adapters

        out["base"] = adapters.describe_base(cfg.model.base)
    return out


def check_model(cfg: Config, manifest: dict) -> None:
    """Refuse to run a model whose code (your own model's module) or frozen base differs from the
    one the run was trained with: its retraining would not be exact, nor its predictions the model's."""
    from sisa import models

    if "model_code" in manifest and models.code_digest(cfg.model.name) != manifest["model_code"]:
        raise SisaError(f"the source of model {cfg.model.name!r} changed since this run was trained (digest "
                        f"{manifest['model_code']} then, {models.code_digest(cfg.model.name)} now): retraining or "
                        "serving with it would not be the trained model; restore the module as it was",
                        kind="bad_input")
    if "base" in manifest:
        from sisa.models import adapters

        adapters.check_base(cfg.model.base, manifest["base"])


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
