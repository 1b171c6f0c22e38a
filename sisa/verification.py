"""Bitwise comparison of two runs' served constituents."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket

from sisa.checkpoint import CheckpointCorrupted, state_digest
from sisa.errors import SisaError


def final_digests(wd) -> dict[int, str | None]:
    """Digest of each shard's final train state (params, optimizer state, step).

    None for a pending shard (no final checkpoint), "corrupted" for one that fails its digest.
    """
    last = wd.stages() - 1

    def digest(ckpt):
        if ckpt.latest() != last:
            return None
        try:
            return state_digest(ckpt.restore(last)[0])
        except CheckpointCorrupted:
            return "corrupted"

    return {c.shard: digest(c) for c in wd.checkpoints}


def compare(wd_a, wd_b) -> dict:
    """Per-shard bitwise equality of the final train states of two runs."""
    a, b = final_digests(wd_a), final_digests(wd_b)
    per_shard = {s: a[s] is not None and a[s] == b.get(s) for s in a}
    return {"identical": all(per_shard.values()) and a.keys() == b.keys(), "per_shard": per_shard}


def certificate(wd, shards=None, *, progress: bool = True) -> dict:
    """Check the ledger chain and every checkpoint's lineage, retrain `shards` (default all)
    from scratch on the current data store, and compare bit for bit."""
    from sisa import environment, reconcile

    cfg = wd.config
    chosen = sorted(range(cfg.partition.shards) if shards is None else set(shards))
    problems = []
    ledger = wd.ledger()
    head = ledger.head()  # raises on a broken chain
    forgotten = set(ledger.forgotten())
    # Uncommitted requests, forgotten ids still in the store, stale or unfinished checkpoints.
    todo = reconcile.plan(reconcile.snapshot(wd, environment=False)[0])
    _remove_stale_scratch(wd)
    # Refused, not reported: retraining now would train on rows whose forgetting is unfinished.
    if todo.finish:
        raise SisaError(f"request #{todo.finish[0]} is pending: run `sisa train --workdir {wd.root}` to finish it, "
                        f"then verify")
    if todo.purge:
        raise SisaError(f"ids of request #{todo.purge[0]} are in the data store again: run `sisa train --workdir "
                        f"{wd.root}` to purge them, then verify")
    if not todo.empty:
        problems.append(f"work pending (run `sisa train --workdir {wd.root}` to finish it): {'; '.join(todo.describe())}")
    store = wd.store()
    p = cfg.partition
    moved = store.check_partition(shards=p.shards, slices=p.slices, strategy=p.strategy, seed=p.seed)
    if moved:
        problems.append(f"{len(moved)} example(s) sit in another (shard, slice) than partitioning the data store "
                        f"afresh gives (first: id {moved[0]}): training from scratch would place them elsewhere")
    for ckpt in wd.checkpoints:
        for stage in ckpt.stages():
            try:
                lineage = ckpt.lineage(stage)
            except CheckpointCorrupted as e:
                problems.append(str(e))
                continue
            expected = wd.lineage(ckpt.shard, stage, store)
            if forgotten.intersection(lineage["ids"]):
                problems.append(f"shard {ckpt.shard} stage {stage}: lineage holds forgotten ids")
            elif lineage["ids_digest"] != expected["ids_digest"]:
                problems.append(f"shard {ckpt.shard} stage {stage}: lineage differs from the data store")
    try:
        served = final_digests(wd)
        rebuilt = _retrain(wd, chosen, progress)
    except Exception as e:
        if wd.ledger().head() != head:
            raise SisaError("a forget ran during verify; run verify again") from e
        raise
    if wd.ledger().head() != head:  # what was read and retrained may predate it
        raise SisaError("a forget ran during verify; run verify again")
    per_shard = {s: {"served": served[s], "retrained": rebuilt[s],
                     "identical": served[s] not in (None, "corrupted") and served[s] == rebuilt[s]} for s in chosen}
    problems += [f"shard {s}: served state differs from retraining from scratch" for s, r in per_shard.items()
                 if not r["identical"]]
    now, then = environment.current(cfg.partition.shards), wd.manifest["environment"]
    accepted = ledger.environments()
    differs = environment.differences(then, now)
    return {
        "verdict": "verified" if not problems else "FAILED",
        "problems": problems,
        "ledger_head": head,
        "forgotten": len(forgotten),
        "model": {"name": cfg.model.name, "code_digest": wd.manifest.get("model_code"),
                  "base": wd.manifest.get("base")},  # what the constituents are (sisa.models)
        "shards": per_shard,
        "environment": {"now": now, "at_training": then, "same": not differs, "accepted_changes": accepted,
                        "note": None if not differs and not accepted else
                        f"differs from training ({'; '.join(differs) or 'now as training'}); changes accepted by "
                        f"the user and recorded in the ledger: {len(accepted)}"},
    }


def _retrain(wd, shards, progress: bool) -> dict:
    """Final digests of `shards` retrained from scratch in W/.scratch/verify-<host>-<pid>/.
    The scratch run is handed the store, manifest and config in memory, so only its checkpoints
    land there (no copy of the data); they are removed on any exit, and by a writer's purge."""
    from sisa.training import aot
    from sisa.training.loop import complete
    from sisa.workdir import Workdir

    scratch = Workdir(wd.scratch_root / f"verify-{socket.gethostname()}-{os.getpid()}")
    from sisa.deletion_ledger import Ledger

    # From scratch: the live store (every forgotten id purged: verify refuses while a request is
    # pending) and no ledger of its own.
    scratch.__dict__.update(manifest=wd.manifest, config=wd.config, _store=wd.store(),
                            _ledger=Ledger(scratch.root / "ledger.jsonl"))
    shutil.rmtree(scratch.root, ignore_errors=True)
    try:
        with aot.fresh_programs():  # a certificate never trusts the program cache: it compiles afresh
            complete(scratch, only=shards, progress=progress, spread=False)
        return final_digests(scratch)
    finally:
        with contextlib.suppress(Exception):  # the error in flight, if any, is the one to report
            scratch.reload_checkpoints()  # close orbax's managers before their files go
        shutil.rmtree(scratch.root, ignore_errors=True)
        _remove_stale_scratch(wd)


def _remove_stale_scratch(wd) -> None:
    """Remove scratch dirs of this host's verifies that died without cleaning up (killed)."""
    host = socket.gethostname()
    for d in wd.scratch_root.glob(f"verify-{host}-*"):
        pid = d.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        wd.scratch_root.rmdir()  # only when empty: another verify may be using it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
