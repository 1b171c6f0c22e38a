"""The stage schedule: bring every shard's checkpoints up to the last stage.

`complete` is the one training loop. A fresh run has no checkpoints, so it trains every
shard from stage 0; after a deletion has removed the checkpoints that saw deleted data, it
retrains exactly the affected shards from their earliest affected stage; after a crash it
resumes from the last checkpoint saved. All lanes train together in one program (sisa.training.ensemble).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from sisa.checkpoint import CheckpointCorrupted
from sisa.faults import crash_point
from sisa import cluster, runtime
from sisa.training.ensemble import ensemble_for, stack, unstack


def lane_data(store, lanes, capacity: int) -> dict:
    """Each lane's shard rows (sorted by id, padded): x, y, ids, slice, valid -> [lanes, capacity, ...]."""
    rows = store.shard_layout(lanes, capacity)
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    x = store.x[safe]
    x[~valid] = 0
    return {
        "x": x,
        "y": np.where(valid, store.y[safe], 0).astype(np.int32),
        "ids": np.where(valid, store.ids[safe], 0).astype(np.int32),
        "slice": np.where(valid, store.slice[safe], 0).astype(np.int32),
        "valid": valid,
    }


def restore_latest_good(ckpt):
    """The newest checkpoint that passes its digests. A damaged one (files no longer match
    their digests) is deleted on the way; one that cannot be read although intact stops the
    command (CheckpointUnreadable): that is the environment, not the checkpoint."""
    while (stage := ckpt.latest()) >= 0:
        try:
            return ckpt.restore(stage)[0]
        except CheckpointCorrupted:
            ckpt.delete_from(stage)
    return None


def complete(wd, *, only=None, progress: bool = True, spread: bool = True) -> dict:
    """Train every shard (of `only`, default all) whose latest checkpoint is before the last
    stage. In a cluster (`spread`), each process trains its own shards; see sisa.cluster."""
    last = wd.config.partition.slices - 1
    todo = [c.shard for c in wd.checkpoints if c.latest() < last and (only is None or c.shard in only)]
    if not spread or cluster.count() == 1:
        return train_shards(wd, todo, progress=progress)
    t0 = time.perf_counter()
    reports = cluster.complete_everywhere(wd.root, todo, lambda mine: train_shards(wd, mine, progress=progress))
    wd.reload_checkpoints()  # other processes wrote checkpoints this one's handles have not seen
    return {
        "shards_trained": sorted(s for r in reports for s in r["shards_trained"]),
        "stages_trained": {int(s): st for r in reports for s, st in r["stages_trained"].items()},
        "examples_epochs": sum(r["examples_epochs"] for r in reports),
        "seconds": time.perf_counter() - t0,
    }


def train_shards(wd, todo: list[int], *, progress: bool = True) -> dict:
    """Bring shards `todo` to the last stage in this process, all in one program."""
    t0 = time.perf_counter()
    cfg = wd.config
    shards, slices = cfg.partition.shards, cfg.partition.slices
    ckpts = wd.checkpoints
    for s in todo:
        ckpts[s].remove_temporaries()  # an interrupted save's leftovers: never restored, never kept
    latest = {s: ckpts[s].latest() for s in todo}  # the caller chose `todo`: list only those
    report = {
        "shards_trained": todo,
        "stages_trained": {},
        "examples_epochs": 0,
        "seconds": 0.0,
    }
    if not todo:
        return report
    store = wd.store()
    ens = ensemble_for(wd.trainer, runtime.device_count(shards))
    width = ens.width(len(todo), shards)
    lanes = todo + [todo[0]] * (width - len(todo))  # spare lanes repeat a shard, never active
    real = np.arange(width) < len(todo)

    states = unstack(ens.init(ens.place(np.asarray(lanes, np.int32))), width)
    for lane, s in enumerate(todo):
        good = restore_latest_good(ckpts[s]) if latest[s] >= 0 else None
        if good is not None:
            states[lane] = good
    start = np.array([ckpts[s].latest() + 1 for s in lanes])
    report["stages_trained"] = {s: list(range(ckpts[s].latest() + 1, slices)) for s in todo}
    states = ens.place(stack(states))
    data = ens.place(lane_data(store, lanes, store.capacity(shards, cfg.train.batch_size)))
    shard_ids = ens.place(np.asarray(lanes, np.int32))
    counts = store.counts(shards, slices).cumsum(axis=1)  # examples in slices 0..r per shard

    saver, saves = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sisa-saver"), []
    try:
        for stage in range(int(start[real].min()), slices):
            active = real & (start <= stage)
            epochs = cfg.epochs_for_stage(stage)
            n = int(sum(counts[lanes[i], stage] for i in np.flatnonzero(active)))
            report["examples_epochs"] += n * epochs
            bar = tqdm(
                total=n * epochs, desc=f"stage {stage + 1}/{slices}", unit="ex", unit_scale=True,
                disable=not progress, file=sys.stderr, leave=False,
            )
            for epoch in range(epochs):
                states, loss = ens.epoch(states, data, shard_ids, stage, epoch, ens.place(active))
                loss = np.asarray(loss)  # waits for the epoch: the bar shows real progress
                bar.update(n)
                crash_point("after-epoch")
                bar.set_postfix(loss=f"{loss[active].mean():.3f}")
            bar.close()
            if not cfg.keeps_checkpoint(stage):
                continue
            host = unstack(states, width)
            for lane in np.flatnonzero(active):
                s = lanes[lane]
                # Saved by one background thread, in order, while the next stage trains.
                lineage = {**wd.lineage(s, stage, store), "process": cluster.index()}
                saves.append(saver.submit(ckpts[s].save, stage, host[lane], lineage))
    except BaseException:
        # Let the saves already submitted finish before the error leaves: once it reaches the
        # caller (and the workdir lock is released) nothing of this call writes any more.
        saver.shutdown(wait=True)
        for s in todo:
            with contextlib.suppress(Exception):  # the error in flight is the one to report
                ckpts[s].wait()
        raise
    saver.shutdown(wait=True)
    for done in saves:
        done.result()  # re-raise a failed save here
    for s in todo:
        ckpts[s].wait()
    report["seconds"] = time.perf_counter() - t0
    return report
