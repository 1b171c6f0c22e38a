"""Checkpoints: one orbax save per stage, holding every shard trained in it; per-shard records.

    W/checkpoints/saves/p<P>-<N>/        one orbax checkpoint (Checkpointer, composite): one stage
                                         of the shards that process P trained together (its N-th save)
        state/shard_NNNN/                item "state" (PyTreeCheckpointHandler, no OCDBT, so one
                                         folder per leaf): one leaf per shard, its whole train
                                         state's bytes (leaves in tree order; restored onto the
                                         trainer's abstract state)
        lineage_NNNN.json                the shard's lineage (written beside orbax's item, see below)
    W/checkpoints/shard_NNNN.files/<stage>.json
                                         {"save": "p<P>-<N>", "files": {path in the save: sha256}}

Orbax's cost is per save and per item (threads, folders, metadata files), hardly per byte: a
save per shard and stage cost 30-40 ms, and the S x R of them dominated training; an item per
shard in one save costs nearly as much. So one save per stage holds one item with a leaf per
shard, and each shard's lineage is a plain JSON file beside it (a JSON item per shard cost as
much again as all the leaves). Each shard's part stays separately deletable: its own leaf
folder (no OCDBT, whose shared data files could not lose one shard's bytes) and lineage file.

Each checkpoint holds the full train state (params, optimizer state, step) and, beside it,
its lineage: the ids it has seen (and their digest), the config digest and the state's
digest; nothing computed over examples it did not see. A deletion uses the lineage to prove
that no served checkpoint saw a removed id.

Once orbax has written a save, the lineage files go beside it and each shard's record beside
its place: the save's name and the sha256 of each of the shard's files in it (its leaf, its
lineage file, the save's shared metadata). All of that is made durable (one syncfs of the file
system, or an fsync of each file and folder), then each record is renamed into place, then
the records' folders are synced. A shard's stage is finished when its record names a save
that holds its leaf; anything else is unfinished (never served, dropped by the next writer). The record is what tells damage from everything else: a restore that fails
while every file still matches its digest is an environment problem (an I/O error, a
library that reads the format differently) and is reported, never repaired; only a file
that no longer matches its digest is damage, which a writer repairs.

A deletion removes the record first (the stage is then unfinished), then the shard's lineage
file and leaf; the save itself goes with its last shard.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import orjson

from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.fsutil import file_identity

SAVES = "saves"
_SEEN: collections.OrderedDict = collections.OrderedDict()  # (lineage path, identity) -> ShardCheckpoints.seen
_SEEN_LOCK, _SEEN_MAX = threading.Lock(), 4096
_TMP = ".orbax-checkpoint-tmp"  # orbax writes a save as `<name>.orbax-checkpoint-tmp-<n>`, then renames it


def lineage_digest(ids) -> str:
    return hashlib.sha256(np.sort(np.asarray(ids, np.int64)).tobytes()).hexdigest()


def state_digest(state) -> str:
    """sha256 over every leaf's dtype, shape and bytes, in tree order."""
    import jax

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))  # the bytes, not a copy of them
    return h.hexdigest()


class CheckpointCorrupted(SisaError):
    """A checkpoint's files (or the state read from them) do not match the digests saved with it."""


class CheckpointUnreadable(SisaError):
    """A checkpoint whose files are intact could not be read: an environment problem, not damage."""


def state_bytes(state) -> np.ndarray:
    """A train state as one uint8 array: every leaf's bytes, in tree order."""
    import jax

    return np.concatenate([np.ascontiguousarray(leaf).reshape(-1).view(np.uint8) for leaf in jax.tree.leaves(state)]
                          or [np.zeros(0, np.uint8)])


def state_from_bytes(data: np.ndarray, abstract):
    """The inverse of `state_bytes` onto `abstract`'s structure, shapes and dtypes (fresh arrays)."""
    import jax

    leaves, treedef = jax.tree.flatten(abstract)
    data = np.asarray(data).reshape(-1)
    out, at = [], 0
    for leaf in leaves:
        leaf = np.asarray(leaf)
        piece = data[at : at + leaf.nbytes]
        if piece.size != leaf.nbytes:
            break
        out.append(piece.view(leaf.dtype).reshape(leaf.shape).copy())
        at += leaf.nbytes
    if at != data.size or len(out) != len(leaves):
        raise ValueError(f"the saved state holds {data.size} bytes, this config's state {sum(np.asarray(a).nbytes for a in leaves)}")
    return jax.tree.unflatten(treedef, out)


def _alone():
    """In a cluster each process writes its own shards' checkpoints on its own: orbax must
    neither wait for the other processes nor leave the writing to process 0."""
    import jax
    import orbax.checkpoint as ocp

    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


class _NoMergeNotice:
    """Drops orbax's notice, on every save without OCDBT, that it found no OCDBT files to merge."""

    def filter(self, record) -> bool:
        return "Skipping merge of OCDBT checkpoints" not in str(record.msg)


_NO_MERGE_NOTICE = _NoMergeNotice()


def _checkpointer():
    """An orbax Checkpointer for a save's one item, "state". Synchronous:
    the saves run in the training's background thread (sisa.training.loop), and orbax's own
    asynchronous saves signal through the cluster's key-value store under keys numbered per
    process, which collide between processes that save independently."""
    import orbax.checkpoint as ocp

    logging.getLogger("absl").addFilter(_NO_MERGE_NOTICE)  # once: a logger holds a filter once
    alone = _alone()
    handlers = {"state": ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_compression=False,
                                                     multiprocessing_options=alone)}
    # Folders made before writing, not by a thread that signals through that key-value store.
    composite = ocp.CompositeCheckpointHandler(
        composite_options=ocp.CompositeOptions(
            multiprocessing_options=alone, async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False)),
        **handlers)
    return ocp.Checkpointer(composite, multiprocessing_options=alone)


def _libc_syncfs():
    """libc's syncfs(2) (Linux), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


_SYNCFS = _libc_syncfs()


def _tree(directory: Path) -> list[Path]:
    """Every file and folder under `directory`, the folders last, `directory` itself and its parent at the end."""
    files, dirs = [], []
    for top, _, names in os.walk(directory):
        files += [Path(top) / n for n in names]
        dirs.append(Path(top))
    return files + dirs[::-1] + [directory.parent]


def _durable(paths: list[Path]) -> None:
    """Make `paths` (files and folders, all on one file system) durable: one syncfs of that file
    system where there is one (Linux: a save's ~4 files per shard and its records then cost one
    call, not an fsync each), else an fsync of each."""
    if not paths:
        return
    if _SYNCFS is not None:
        fd = os.open(paths[0], os.O_RDONLY)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(paths[0]))
        finally:
            os.close(fd)
        return
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_dir(path: Path) -> None:
    """Rename `path` out of every listing (atomic), then remove it; a crash in between leaves a
    temporary that `remove_temporaries` clears. Quiet if it is gone (a concurrent remover)."""
    doomed = path.with_name(f"{path.name}{_TMP}-deleted")
    shutil.rmtree(doomed, ignore_errors=True)
    try:
        path.rename(doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


class ShardCheckpoints:
    def __init__(self, root: str | Path, shard: int, abstract_state):
        """`abstract_state`: a function giving the restore target (called on first restore)."""
        self.shard = shard
        self.name = f"shard_{shard:04d}"
        self.lineage_file = f"lineage_{shard:04d}.json"
        self.directory = Path(root) / SAVES  # shared by every shard: the saves
        self.records = Path(root) / f"{self.name}.files"  # a finished stage's save and file digests
        self._abstract_state = abstract_state
        # Checkpoints this object restored and checked, so recovery's integrity check and the
        # serving that follows it in one command read each file once. Saves and deletes drop them.
        self._verified: dict[int, tuple] = {}
        self._saves: dict[int, tuple] = {}  # stage -> (record's inode, mtime, save): records are written once

    # ------------------------------------------------------------------ listing

    def _recorded(self) -> dict[int, str | None]:
        """stage -> the save its record names (None: the record is unreadable)."""
        out = {}
        try:
            entries = list(os.scandir(self.records))
        except FileNotFoundError:
            return out
        for e in entries:
            stem, _, ext = e.name.partition(".")
            if ext != "json" or not stem.isdigit():
                continue
            stage = int(stem)
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            key = (st.st_ino, st.st_mtime_ns)
            cached = self._saves.get(stage)
            if cached is not None and cached[:2] == key:
                out[stage] = cached[2]
                continue
            try:
                save = json.loads(Path(e.path).read_text())["save"]
                save = save if isinstance(save, str) and save and "/" not in save else None
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                save = None
            self._saves[stage] = (*key, save)
            out[stage] = save
        return out

    def _leaf(self, save: str) -> Path:
        return self.directory / save / "state" / self.name

    def _save_of(self, stage: int) -> str:
        save = self._recorded().get(stage)
        if save is None or not self._leaf(save).is_dir():
            raise CheckpointCorrupted(f"checkpoint of shard {self.shard} stage {stage} is not there (or its record "
                                      "is unreadable)")
        return save

    def stages(self) -> list[int]:
        """Finished stages: recorded, and the save their record names holds this shard's leaf."""
        return sorted(stage for stage, save in self._recorded().items() if save is not None and self._leaf(save).is_dir())

    def written(self) -> list[int]:
        """Stages whose record is there (finished, or their save is gone: see `unfinished`)."""
        return sorted(self._recorded())

    def _saves_listed(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.directory) if e.is_dir() and _TMP not in e.name)
        except FileNotFoundError:
            return []

    def _holds_mine(self, save: str) -> bool:
        d = self.directory / save
        return (d / "state" / self.name).exists() or (d / self.lineage_file).exists()

    def unfinished(self) -> list[str]:
        """Leftovers of interrupted saves and deletions that concern this shard: saves holding a
        part of it no record names, records naming no such part, saves left with no shard."""
        recorded = self._recorded()
        named = {save for save in recorded.values() if save is not None}
        out = [f"record {stage}" for stage, save in recorded.items() if save is None or not self._leaf(save).is_dir()]
        for save in self._saves_listed():
            if save not in named and (self._holds_mine(save) or _empty_save(self.directory / save)):
                out.append(save)
        return out

    def stage_path(self, stage: int) -> Path | None:
        """The folder of this shard's state in `stage`'s save (None if the stage is not recorded)."""
        save = self._recorded().get(stage)
        return None if save is None else self._leaf(save)

    def files(self, stage: int) -> dict[str, str]:
        """sha256 of each file of this shard's `stage`, by path in its save: its leaf and lineage
        file, and the save's shared metadata (not the other shards' parts)."""
        return self._digests(self._save_of(stage))

    def _digests(self, save: str) -> dict[str, str]:
        return _file_digests(self.directory / save, self)

    def _mine(self, folder: str, name: str) -> bool:
        """Whether `name` in `folder` (a path in a save) is part of this shard's checkpoint: its
        own or the save's shared files, not another shard's (`_owner`)."""
        return _owner(name if folder == "." else f"{folder}/{name}") in (None, self.name)

    def files_intact(self, stage: int) -> bool:
        """Whether every file of `stage` still matches the digest recorded when it was saved."""
        try:
            record = json.loads((self.records / f"{stage}.json").read_text())
            save, recorded = record["save"], record["files"]
            return bool(recorded) and self._leaf(save).is_dir() and self._digests(save) == recorded
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def latest(self) -> int:
        """Latest saved stage, or -1."""
        stages = self.stages()
        return stages[-1] if stages else -1

    # ------------------------------------------------------------------ writing

    def save(self, stage: int, state, lineage: dict) -> None:
        """Save this shard's `stage` alone (`save_stage` saves several shards at once)."""
        ShardCheckpoints.save_stage(stage, [(self, state, lineage)])

    @staticmethod
    def save_stage(stage: int, items: list) -> None:
        """Save `stage` of several shards in one orbax save: `items` is [(ShardCheckpoints, state,
        lineage)], all under one checkpoint root. Returns once the save's files are synced and
        every shard's record is written (each shard's stage is finished only then)."""
        if not items:
            return
        import jax

        directory = items[0][0].directory
        assert all(c.directory == directory for c, _, _ in items), "one save holds shards of one workdir"
        for ckpt, _, _ in items:
            ckpt._verified.pop(stage, None)
            if stage in ckpt.written():
                ckpt.delete(stage)  # never two records for one stage
        directory.mkdir(parents=True, exist_ok=True)
        name = _next_save(directory, jax.process_index())
        state_item, lineages = {}, {}
        for ckpt, state, lineage in items:
            state_item[ckpt.name] = state_bytes(state)
            lineages[ckpt.lineage_file] = {**lineage, "state_digest": state_digest(state)}
        import orbax.checkpoint as ocp

        _checkpointer().save(directory / name, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state_item)))
        for file, lineage in lineages.items():  # orjson: ids straight from numpy, ~10x json's speed
            (directory / name / file).write_bytes(orjson.dumps(lineage, option=orjson.OPT_SERIALIZE_NUMPY))
        crash_point("after-save-started")  # written, not yet synced nor recorded
        # The records, written beside their place; made durable with the save's files, then
        # renamed into place (each shard's stage is finished there), then their folders synced.
        tmps, every = [], _file_digests(directory / name)  # each file read once, shared ones too
        owned: dict[str | None, dict[str, str]] = {}
        for path, d in every.items():
            owned.setdefault(_owner(path), {})[path] = d
        for ckpt, _, _ in items:
            ckpt.records.mkdir(exist_ok=True)
            tmp = ckpt.records / f".{stage}.json.tmp"
            files = {**owned.get(None, {}), **owned.get(ckpt.name, {})}  # sorted by json.dumps
            tmp.write_text(json.dumps({"save": name, "files": files}, indent=1, sort_keys=True) + "\n")
            tmps.append(tmp)
        _durable(_tree(directory / name) + tmps)
        for (ckpt, _, _), tmp in zip(items, tmps):
            os.replace(tmp, ckpt.records / f"{stage}.json")
            crash_point("after-record")
        _durable([ckpt.records for ckpt, _, _ in items])

    def restore(self, stage: int):
        """(state, lineage) of a finished stage. Raises CheckpointCorrupted when its files or
        state do not match their digests, CheckpointUnreadable when intact files cannot be read."""
        if stage in self._verified:
            return self._verified[stage]
        save = self._save_of(stage)
        try:
            state, lineage = self._read(save)
        except Exception as e:  # orbax raises many kinds; the file digests tell damage from the rest
            if not self.files_intact(stage):
                raise CheckpointCorrupted(
                    f"checkpoint of shard {self.shard} stage {stage} is damaged (its files no longer match "
                    "their recorded digests)") from None
            raise CheckpointUnreadable(
                f"checkpoint of shard {self.shard} stage {stage} cannot be read although its files are intact "
                f"(an I/O error, or a library version that reads it differently?): {type(e).__name__}: {e}") from None
        if lineage.get("state_digest") != state_digest(state):
            raise CheckpointCorrupted(f"checkpoint of shard {self.shard} stage {stage} does not match its digest")
        self._verified[stage] = (state, lineage)
        return state, lineage

    def _read(self, save: str):
        """(state, lineage) from `save`: this shard's leaf (read by orbax) and lineage file."""
        import jax
        import orbax.checkpoint as ocp

        abstract = self._abstract_state()
        size = sum(np.asarray(a).nbytes for a in jax.tree.leaves(abstract))
        target = {self.name: np.zeros(size, np.uint8)}
        out = _checkpointer().restore(
            self.directory / save,
            args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=target, restore_args={self.name: ocp.RestoreArgs(restore_type=np.ndarray)}, partial_restore=True)))
        lineage = orjson.loads((self.directory / save / self.lineage_file).read_bytes())
        return state_from_bytes(out["state"][self.name], abstract), lineage

    def lineage(self, stage: int) -> dict:
        """The lineage saved with a finished stage, read as the file orbax's JSON handler wrote
        (`<save>/lineage_NNNN.json`): a deletion reads every affected stage's, and going
        through orbax costs ~10x more."""
        save = self._save_of(stage)
        path = self.directory / save / self.lineage_file
        try:
            return orjson.loads(path.read_bytes())
        except (OSError, ValueError) as e:  # orjson.JSONDecodeError is a ValueError
            raise CheckpointCorrupted(f"lineage of shard {self.shard} stage {stage} is unreadable: {e}") from None

    def seen(self, stage: int) -> tuple[np.ndarray, dict | None]:
        """The ids a finished stage's lineage says it saw (sorted int64) and the ledger head it
        anchors. A lineage file is written once, so the process keeps what it parsed, by the
        file's identity: a deletion's bookkeeping reads only the lineages written since its last
        (a file replaced or rewritten has another identity and is read afresh)."""
        path = self.directory / self._save_of(stage) / self.lineage_file
        key = (str(path), file_identity(path))
        with _SEEN_LOCK:
            hit = _SEEN.get(key)
            if hit is not None:
                _SEEN.move_to_end(key)
                return hit
        lineage = self.lineage(stage)
        hit = (np.sort(np.asarray(lineage["ids"], np.int64)), lineage.get("ledger_head"))
        if key[1] is not None:
            with _SEEN_LOCK:
                _SEEN[key] = hit
                while len(_SEEN) > _SEEN_MAX:
                    _SEEN.popitem(last=False)
        return hit

    def delete(self, stage: int) -> None:
        """Remove the stage's record (the stage is then unfinished), then this shard's parts of
        its save, then the save if no shard is left in it. A crash on the way leaves leftovers
        that `remove_temporaries` clears."""
        self._verified.pop(stage, None)
        save = self._recorded().get(stage)
        (self.records / f"{stage}.json").unlink(missing_ok=True)
        self._saves.pop(stage, None)
        if save is not None and save not in self._recorded().values():
            self._remove_parts(save)

    def _remove_parts(self, save: str) -> None:
        d = self.directory / save
        with _SEEN_LOCK:  # what a removed stage saw leaves this process's memory with it
            for key in [k for k in _SEEN if k[0] == str(d / self.lineage_file)]:
                del _SEEN[key]
        (d / self.lineage_file).unlink(missing_ok=True)
        shutil.rmtree(d / "state" / self.name, ignore_errors=True)
        if _empty_save(d):
            _remove_dir(d)

    def delete_from(self, stage: int) -> list[int]:
        """Delete every checkpoint at `stage` or later, newest first; returns the stages deleted."""
        gone = [s for s in reversed(self.written()) if s >= stage]
        for s in gone:
            self.delete(s)
            crash_point("after-delete-stage")
        self.remove_temporaries()
        return gone

    def remove_temporaries(self, *, process: int | None = None) -> None:
        """Clear what interrupted saves and deletions left: orbax's temporaries (`*.orbax-checkpoint-tmp*`;
        with `process`, only that process's: the others may be writing theirs), this shard's
        parts no record names, records naming no part, saves left with no shard."""
        if self.directory.exists():
            for tmp in self.directory.glob(f"*{_TMP}*"):
                if process is None or tmp.name.startswith(f"p{process}-"):
                    shutil.rmtree(tmp, ignore_errors=True)
        recorded = self._recorded()
        for stage, save in recorded.items():
            if save is None or not self._leaf(save).is_dir():
                (self.records / f"{stage}.json").unlink(missing_ok=True)
                self._saves.pop(stage, None)
        named = {save for save in self._recorded().values()}
        for save in self._saves_listed():
            if save not in named and (self._holds_mine(save) or _empty_save(self.directory / save)):
                self._remove_parts(save)
        if self.records.exists():
            for tmp in self.records.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def wait(self) -> None:
        """Saves are synchronous (the caller runs them in its own thread): nothing to wait for."""

    def close(self) -> None:
        self._verified.clear()
        self._saves.clear()


def _file_digests(root: Path, ckpt: ShardCheckpoints | None = None) -> dict[str, str]:
    """sha256 of each file of the save at `root`, by its path there (sorted): every file, or
    only `ckpt`'s shard's part of it (`ShardCheckpoints._mine`)."""
    out = {}
    for top, dirs, names in os.walk(root):
        folder = Path(top).relative_to(root).as_posix()
        if ckpt is not None:
            dirs[:] = [d for d in dirs if ckpt._mine(folder, d)]
            names = [n for n in names if ckpt._mine(folder, n)]
        for name in names:
            p = Path(top) / name
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return dict(sorted(out.items()))


def _owner(path: str) -> str | None:
    """Whose part of a save the file or folder at `path` is: a shard's name (`shard_NNNN`: its
    leaf folder and lineage file), or None for the save's shared files and folders."""
    top, _, rest = path.partition("/")
    if not rest and top.startswith("lineage_"):
        return f"shard_{top[len('lineage_'):].removesuffix('.json')}"
    if top == "state" and rest.startswith("shard_"):
        return rest.split("/", 1)[0]
    return None


def saw_any(seen_ids: np.ndarray, ids) -> np.ndarray:
    """The ids of `ids` in `seen_ids` (sorted, from `ShardCheckpoints.seen`), sorted."""
    ids = np.unique(np.asarray(list(ids), np.int64))
    if not len(ids) or not len(seen_ids):
        return ids[:0]
    at = np.minimum(np.searchsorted(seen_ids, ids), len(seen_ids) - 1)
    return ids[seen_ids[at] == ids]


def _empty_save(d: Path) -> bool:
    """Whether a finished save holds no shard's part any more."""
    try:
        top = [e.name for e in os.scandir(d)]
        leaves = [e.name for e in os.scandir(d / "state")] if "state" in top else []
    except FileNotFoundError:
        return False  # gone (or never there): nothing to remove
    return not any(n.startswith("lineage_") for n in top) and not any(n.startswith("shard_") for n in leaves)


def _next_save(directory: Path, process: int) -> str:
    """`p<process>-<n>`, n one more than any save (or temporary) of this process there now: a
    save never meets a folder of an earlier one."""
    prefix, last = f"p{process}-", 0
    for e in os.scandir(directory):
        if e.name.startswith(prefix):
            n = e.name[len(prefix):].split(".", 1)[0]
            if n.isdigit():
                last = max(last, int(n))
    return f"{prefix}{last + 1}"
