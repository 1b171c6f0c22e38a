"""Bitwise comparison of two runs' served constituents."""

from __future__ import annotations

from sisa.checkpoint import CheckpointCorrupted, state_digest


def final_digests(wd) -> dict[int, str | None]:
    """Digest of each shard's final train state (params, optimizer state, step).

    None for a pending shard (no final checkpoint), "corrupted" for one that fails its digest.
    """
    last = wd.config.partition.slices - 1

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
    import shutil
    import tempfile

    from sisa import environment, reconcile
    from sisa.deletion_ledger import Ledger
    from sisa.training.loop import complete
    from sisa.workdir import Workdir

    cfg = wd.config
    chosen = sorted(range(cfg.partition.shards) if shards is None else set(shards))
    problems = []
    ledger = Ledger(wd.ledger_path)
    head = ledger.head()  # raises on a broken chain
    forgotten = set(ledger.forgotten())
    # Uncommitted requests, forgotten ids still in the store, stale or unfinished checkpoints.
    todo = reconcile.plan(reconcile.snapshot(wd, environment=False)[0])
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
    served = final_digests(wd)
    with tempfile.TemporaryDirectory(prefix="sisa-verify-") as tmp:
        scratch = Workdir(tmp)
        shutil.copy(wd.manifest_path, scratch.manifest_path)
        shutil.copy(wd.config_path, scratch.config_path)
        shutil.copytree(wd.root / "data", scratch.root / "data")
        complete(scratch, only=chosen, progress=progress, spread=False)  # a local scratch copy
        rebuilt = final_digests(scratch)
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
        "shards": per_shard,
        "environment": {"now": now, "at_training": then, "same": not differs, "accepted_changes": accepted,
                        "note": None if not differs and not accepted else
                        f"differs from training ({'; '.join(differs) or 'now as training'}); changes accepted by "
                        f"the user and recorded in the ledger: {len(accepted)}"},
    }
