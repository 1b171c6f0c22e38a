"""Per-shard checkpoints: one orbax CheckpointManager per shard, step = stage.

Each checkpoint holds the full train state (params, optimizer state, step) and, beside it,
its lineage: the ids it has seen (and their digest) and the config digest; nothing computed
over examples it did not see. A deletion uses the lineage to prove that no served
checkpoint saw a removed id.

Once orbax has finished writing a stage, the sha256 of each of its files is written to
`shard_NNNN.files/<stage>.json`. A stage without that record is unfinished (never served,
dropped by the next writer). The record is what tells damage from everything else: a
restore that fails while every file still matches its digest is an environment problem (an
I/O error, a library that reads the format differently) and is reported, never repaired;
only a file that no longer matches its digest is damage, which a writer repairs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.fsutil import atomic_write_json


def lineage_digest(ids) -> str:
    return hashlib.sha256(np.sort(np.asarray(ids, np.int64)).tobytes()).hexdigest()


def state_digest(state) -> str:
    """sha256 over every leaf's dtype, shape and bytes, in tree order."""
    import jax

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class CheckpointCorrupted(SisaError):
    """A checkpoint's files (or the state read from them) do not match the digests saved with it."""


class CheckpointUnreadable(SisaError):
    """A checkpoint whose files are intact could not be read: an environment problem, not damage."""


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


class ShardCheckpoints:
    def __init__(self, root: str | Path, shard: int, abstract_state):
        """`abstract_state`: a function giving the restore target (called on first restore)."""
        self.shard = shard
        self.directory = Path(root) / f"shard_{shard:04d}"
        self.records = Path(root) / f"shard_{shard:04d}.files"  # file digests of finished stages
        self._abstract_state = abstract_state
        # Checkpoints this object restored and checked, so recovery's integrity check and the
        # serving that follows it in one command read each file once. Saves and deletes drop them.
        self._verified: dict[int, tuple] = {}

    @functools.cached_property
    def manager(self):
        """Made on first use: listing stages needs no manager, and making one costs ~50 ms."""
        import jax
        import orbax.checkpoint as ocp

        # In a cluster each process writes its own shards' checkpoints on its own: orbax must
        # neither wait for the other processes nor leave the writing to process 0. Nor save
        # asynchronously there: orbax's async saves signal through the cluster's key-value
        # store under keys numbered per process, which collide between processes that save
        # independently (a save then waits forever). Saves run in a background thread anyway.
        me = jax.process_index()
        alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        self.directory.mkdir(parents=True, exist_ok=True)
        return ocp.CheckpointManager(
            self.directory.absolute(),
            options=ocp.CheckpointManagerOptions(
                create=False, enable_async_checkpointing=jax.process_count() == 1, multiprocessing_options=alone),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(multiprocessing_options=alone),
                "lineage": ocp.JsonCheckpointHandler(multiprocessing_options=alone),
            },
        )

    def written(self) -> list[int]:
        """Stages orbax finished writing (a finished step is `<n>`; unfinished ones carry a tmp suffix)."""
        if "manager" in self.__dict__:
            return sorted(self.manager.all_steps())
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def stages(self) -> list[int]:
        """Finished stages: written by orbax and their file digests recorded."""
        return [s for s in self.written() if (self.records / f"{s}.json").is_file()]

    def unfinished(self) -> list[int]:
        """Stages orbax wrote whose file digests were never recorded (interrupted saves)."""
        return [s for s in self.written() if not (self.records / f"{s}.json").is_file()]

    def files_intact(self, stage: int) -> bool:
        """Whether every file of `stage` still matches the digest recorded when it was saved."""
        try:
            recorded = json.loads((self.records / f"{stage}.json").read_text())["files"]
        except (OSError, ValueError, KeyError):
            return False
        return file_digests(self.directory / str(stage)) == recorded

    def latest(self) -> int:
        """Latest saved stage, or -1."""
        stages = self.stages()
        return stages[-1] if stages else -1

    def save(self, stage: int, state, lineage: dict) -> None:
        import orbax.checkpoint as ocp

        if stage in self.manager.all_steps():
            self.delete(stage)  # save() on an existing step silently does nothing
        self._verified.pop(stage, None)
        lineage = {**lineage, "state_digest": state_digest(state)}
        self.manager.save(
            stage, args=ocp.args.Composite(state=ocp.args.StandardSave(state), lineage=ocp.args.JsonSave(lineage))
        )
        crash_point("after-save-started")  # the async write may still be in flight
        self.manager.wait_until_finished()
        self.records.mkdir(exist_ok=True)
        atomic_write_json(self.records / f"{stage}.json", {"files": file_digests(self.directory / str(stage))})

    def restore(self, stage: int):
        """(state, lineage) of a finished stage. Raises CheckpointCorrupted when its files or
        state do not match their digests, CheckpointUnreadable when intact files cannot be read."""
        if stage in self._verified:
            return self._verified[stage]
        import orbax.checkpoint as ocp

        self.manager.wait_until_finished()
        try:
            out = self.manager.restore(
                stage,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(self._abstract_state()), lineage=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # orbax raises many kinds; the file digests tell damage from the rest
            if not self.files_intact(stage):
                raise CheckpointCorrupted(
                    f"checkpoint of shard {self.shard} stage {stage} is damaged (its files no longer match "
                    "their recorded digests)") from None
            raise CheckpointUnreadable(
                f"checkpoint of shard {self.shard} stage {stage} cannot be read although its files are intact "
                f"(an I/O error, or a library version that reads it differently?): {type(e).__name__}: {e}") from None
        if out.lineage.get("state_digest") != state_digest(out.state):
            raise CheckpointCorrupted(f"checkpoint of shard {self.shard} stage {stage} does not match its digest")
        self._verified[stage] = (out.state, out.lineage)
        return out.state, out.lineage

    def lineage(self, stage: int) -> dict:
        """The lineage saved with a finished stage, read as the file orbax's JSON handler wrote
        (`<stage>/lineage/metadata`): a deletion reads every affected stage's, and going
        through a manager costs ~10x more."""
        if "manager" in self.__dict__:
            self.manager.wait_until_finished()
        path = self.directory / str(stage) / "lineage" / "metadata"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointCorrupted(f"lineage of shard {self.shard} stage {stage} is unreadable: {e}") from None

    def delete(self, stage: int) -> None:
        """Rename the stage's directory out of the listing (atomic), then remove it. Cheaper
        than orbax's delete, which lists and reads the checkpoint first; a crash in between
        leaves a temporary that `remove_temporaries` clears."""
        self._verified.pop(stage, None)
        if "manager" in self.__dict__:
            self.manager.wait_until_finished()
        step = self.directory / str(stage)
        if step.is_dir():
            doomed = step.with_name(f"{stage}.orbax-checkpoint-tmp-deleted")
            shutil.rmtree(doomed, ignore_errors=True)
            step.rename(doomed)
            shutil.rmtree(doomed)
        (self.records / f"{stage}.json").unlink(missing_ok=True)  # after the stage: a record never outlives it wrongly
        if "manager" in self.__dict__:
            self.manager.reload()  # it caches the step list

    def delete_from(self, stage: int) -> list[int]:
        """Delete every checkpoint at `stage` or later, newest first; returns the stages deleted."""
        gone = [s for s in reversed(self.written()) if s >= stage]
        for s in gone:
            self.delete(s)
            crash_point("after-delete-stage")
        self.remove_temporaries()
        return gone

    def remove_temporaries(self) -> None:
        """Orbax writes to `*.orbax-checkpoint-tmp*` first; an interrupted save leaves them, and
        stages whose file digests were never recorded."""
        if self.directory.exists():
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
        for stage in self.unfinished():
            self.delete(stage)
        if self.records.exists():
            for tmp in self.records.glob(".*.tmp"):
                tmp.unlink()
            for orphan in self.records.glob("*.json"):  # a record whose stage is gone (crash mid-delete)
                if not (self.directory / orphan.stem).is_dir():
                    orphan.unlink()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
