"""Exact deletion by SISA.

`forget` records the request in the ledger (fsync'ed) and then carries it out; carrying out
is idempotent, so recovery after a crash simply carries out every unfinished request again:

1. purge: rewrite the data store without the ids;
2. drop every checkpoint that saw them: for each affected shard, its stages from the
   earliest slice holding a forgotten id onward;
3. retrain: `complete` brings the affected shards back to the last stage, all in one program,
   from the checkpoint before the earliest affected stage (or from initialisation);
4. check that no served checkpoint's lineage holds a forgotten id, then commit.
"""

from __future__ import annotations

import numbers
import time

import numpy as np

from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.deletion_ledger import Ledger
from sisa.checkpoint import CheckpointCorrupted
from sisa.training.loop import complete, repair


def parse_ids(ids) -> list[int]:
    """Integers only (no bools, no floats), each once, at least one."""
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise SisaError(f"ids must be integers, got {i!r}")
        out.append(int(i))
    if not out:
        raise SisaError("no ids given: nothing to forget")
    seen = set()
    for i in out:
        if i in seen:
            raise SisaError(f"id {i} is given twice")
        seen.add(i)
    return out


def forget(wd, ids, *, request: str | None = None, reason: str | None = None, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    ids = parse_ids(ids)
    ledger = Ledger(wd.ledger_path)
    recover(wd, check_all=False, progress=progress)
    done = ledger.forgotten()
    again = [i for i in ids if i in done]
    if again:
        raise SisaError(f"id(s) already forgotten: {_few(again)} (ledger entry #{done[again[0]]})")
    store = wd.store()
    known = store.contains(ids)
    if not known.all():
        raise SisaError(f"unknown id(s): {_few(np.asarray(ids)[~known].tolist())} (not in the training data of {wd.root})")
    if len(ids) == len(store):
        raise SisaError(f"forgetting all {len(store)} remaining examples would leave no model; refused")
    rows = np.searchsorted(store.ids, ids)
    affected: dict[int, int] = {}
    for s, r in zip(store.shard[rows].tolist(), store.slice[rows].tolist()):
        affected[s] = min(r, affected.get(s, r))
    entry = ledger.request(ids, affected, request=request, reason=reason)
    crash_point("after-request")
    try:
        report = carry_out(wd, entry, progress=progress)
    except OSError as e:
        raise SisaError(
            f"could not finish request #{entry['seq']}: {e.strerror or e} ({e.filename or 'write failed'}); it is "
            "recorded in the ledger, its shards are not served, and the next sisa command on this workdir finishes it"
        ) from None
    return {**report, "entry": entry["seq"], "hash": ledger.head(), "forgotten": len(ids),
            "seconds": time.perf_counter() - t0}


def carry_out(wd, entry: dict, *, progress: bool = True) -> dict:
    """Bring one ledger entry to `committed`. Every step is safe to repeat."""
    ledger = Ledger(wd.ledger_path)
    fresh = entry["state"] == "requested"  # nothing retrained yet: no checkpoint can be this request's
    store = wd.store()
    if store.contains(entry["ids"]).any():
        store = store.without(entry["ids"])
        store.save(wd.store_path)
        crash_point("after-purge")
    ledger.advance(entry, "purged")
    affected = {int(s): r for s, r in entry["affected"].items()}
    for s, stage in affected.items():
        ckpt = wd.checkpoints[s]
        # Stale stages are deleted newest first, so if the first stage kept from `stage` on is
        # clean, all later ones are this request's retraining, already done: keep them.
        first = next((k for k in ckpt.stages() if k >= stage), None)
        if first is not None and not fresh and _clean(ckpt, first, entry["ids"]):
            continue
        ckpt.delete_from(stage)
    trained = complete(wd, progress=progress)
    ledger.advance(entry, "retrained")
    crash_point("after-retrained")
    check_lineage(wd, affected, entry["ids"])
    crash_point("before-commit")
    ledger.advance(entry, "committed")
    return {
        "affected_shards": sorted(affected),
        "stages_retrained": {s: trained["stages_trained"].get(s, []) for s in sorted(affected)},
        "examples_epochs_retrained": trained["examples_epochs"],
        "examples_epochs_full_retrain": full_cost(wd, store),
    }


def _clean(ckpt, stage: int, ids) -> bool:
    try:
        return set(ids).isdisjoint(ckpt.lineage(stage)["ids"])
    except CheckpointCorrupted:
        return False


def recover(wd, *, check_all: bool = True, progress: bool = True) -> dict:
    """What every command does first: carry unfinished requests to committed, delete final
    checkpoints that fail their digest (`check_all`; a forget checks only what it restores),
    and finish any shard whose training stopped."""
    for tmp in (wd.root / "data").glob(".*.tmp"):  # an interrupted atomic write's half
        tmp.unlink()
    pending = Ledger(wd.ledger_path).pending()
    for entry in pending:
        carry_out(wd, entry, progress=progress)
    repaired = repair(wd) if check_all else []
    trained = complete(wd, progress=progress)
    return {"entries": [e["seq"] for e in pending], "repaired_shards": repaired, "trained": trained}


def check_lineage(wd, shards, ids) -> None:
    ids = set(ids)
    for s in shards:
        for stage in wd.checkpoints[s].stages():
            seen = ids.intersection(wd.checkpoints[s].lineage(stage)["ids"])
            if seen:
                raise SisaError(f"checkpoint shard {s} stage {stage} still holds forgotten ids {_few(sorted(seen))}")


def full_cost(wd, store) -> int:
    """examples x epochs of training every shard from scratch on the current store."""
    cfg = wd.config
    per_stage = store.counts(cfg.partition.shards, cfg.partition.slices).sum(axis=0).cumsum()
    return int(sum(cfg.epochs_for_stage(r) * n for r, n in enumerate(per_stage)))


def _few(ids: list[int], n: int = 10) -> str:
    return ", ".join(map(str, ids[:n])) + (f" and {len(ids) - n} more" if len(ids) > n else "")
