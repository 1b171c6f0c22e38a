"""Exact deletion by SISA.

`forget` checks the request (known ids, not forgotten before, the environment), records it in
the ledger (fsync'ed) and hands the rest to the reconciler (sisa.reconcile), whose plan
purges the ids from the data store, drops every checkpoint that saw them, retrains the
affected shards from the stage before the earliest one that held an id, checks the lineage
of what is left and commits. After a crash the next writer's plan finishes the same work.
"""

from __future__ import annotations

import numbers
import time

import numpy as np

from sisa.data.datasets import MAX_ID
from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa import reconcile


def parse_ids(ids) -> list[int]:
    """Integers only (no bools, no floats) in [0, MAX_ID], each once, at least one."""
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise SisaError(f"ids must be integers, got {i!r}")
        if not 0 <= i <= MAX_ID:
            raise SisaError(f"id {i} is out of range: ids are integers from 0 to {MAX_ID}")
        out.append(int(i))
    if not out:
        raise SisaError("no ids given: nothing to forget")
    seen = set()
    for i in out:
        if i in seen:
            raise SisaError(f"id {i} is given twice")
        seen.add(i)
    return out


def group_ids(wd, group) -> list[int]:
    """The ids of every example of `group` (a `group`/`user` value of the data: an integer, or
    any other value, matched as the data set numbered it) not forgotten yet."""
    from sisa.data.datasets import group_number

    numbers = {group_number(str(group))}
    if isinstance(group, int) or (isinstance(group, str) and group.isascii() and group.isdigit()):
        numbers.add(int(group))
    store, done = wd.store(), wd.ledger().forgotten()
    ids = [i for i in store.ids[np.isin(store.group, sorted(numbers))].tolist() if i not in done]
    if not ids:
        raise SisaError(f"group {group!r} has no example left in the training data of {wd.root}")
    return ids


def forget(wd, ids, *, request: str | None = None, reason: str | None = None, progress: bool = True,
           allow_environment_change: bool = False) -> dict:
    t0 = time.perf_counter()
    ids = parse_ids(ids)
    ledger = wd.ledger()
    # Everything that can refuse runs before anything is written: the environment, then the ids
    # (an unfinished earlier request's ids count as forgotten already, and leave the store).
    snap, new_env = reconcile.snapshot(wd, allow_environment_change=allow_environment_change)
    earlier = reconcile.plan(snap)
    if earlier.refused:
        raise SisaError(earlier.refused)
    check_forgettable(wd, ids)
    reconcile.apply(wd, earlier, new_environment=new_env, progress=progress)  # finish earlier work first
    shards = affected(wd.store(), ids)
    entry = ledger.request(ids, shards, request=request, reason=reason)
    crash_point("after-request")
    try:
        done = reconcile.reconcile(wd, allow_environment_change=allow_environment_change, progress=progress)
    except OSError as e:
        raise SisaError(
            f"could not finish request #{entry['seq']}: {e.strerror or e} ({e.filename or 'write failed'}); it is "
            "recorded in the ledger, its shards are not served, and the next writing sisa command on this workdir "
            "(`sisa train --workdir ...`) finishes it"
        ) from None
    trained = done["trained"]
    return {
        "affected_shards": sorted(shards),
        "stages_retrained": {s: trained["stages_trained"].get(s, []) for s in sorted(shards)},
        "examples_epochs_retrained": trained["examples_epochs"],
        "examples_epochs_full_retrain": full_cost(wd, wd.store()),
        "entry": entry["seq"], "hash": ledger.head(), "forgotten": len(ids), "seconds": time.perf_counter() - t0,
    }


def check_forgettable(wd, ids: list[int]) -> None:
    """Refuse ids forgotten before (an unfinished request's count: they are leaving the store),
    ids not in the training data, and a request that would leave no example."""
    done = wd.ledger().forgotten()
    again = [i for i in ids if i in done]
    if again:
        raise SisaError(f"id(s) already forgotten: {_few(again)} (ledger entry #{done[again[0]]})")
    store = wd.store()
    known = store.contains(ids)
    if not known.all():
        raise SisaError(f"unknown id(s): {_few(np.asarray(ids)[~known].tolist())} (not in the training data of {wd.root})")
    remaining = len(store) - (int(store.contains(sorted(done)).sum()) if done else 0)
    if len(ids) == remaining:
        raise SisaError(f"forgetting all {remaining} remaining examples would leave no model; refused")


def affected(store, ids: list[int]) -> dict[int, int]:
    """shard -> the earliest slice holding one of `ids` (all in `store`)."""
    rows = np.searchsorted(store.ids, ids)
    out: dict[int, int] = {}
    for s, r in zip(store.shard[rows].tolist(), store.slice[rows].tolist()):
        out[s] = min(r, out.get(s, r))
    return out


def full_cost(wd, store) -> int:
    """examples x epochs of training every shard from scratch on the current store."""
    cfg = wd.config
    per_stage = store.counts(cfg.partition.shards, store.stages(cfg.partition.slices)).cumsum(axis=1)
    return int(sum(cfg.stage_examples(int(n)) for n in per_stage.reshape(-1)))


def _few(ids: list[int], n: int = 10) -> str:
    return ", ".join(map(str, ids[:n])) + (f" and {len(ids) - n} more" if len(ids) > n else "")
