"""The stage schedule: bring every shard's checkpoints up to the last stage.

`complete` is the one training loop. A fresh run has no checkpoints, so it trains every
shard from stage 0; after a deletion has removed the checkpoints that saw deleted data, it
retrains exactly the affected shards from their earliest affected stage; after a crash it
resumes from the last checkpoint saved. All lanes train together in one program (sisa.training.ensemble).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import sys
import threading
import time
import warnings

import numpy as np
from tqdm.auto import tqdm

from sisa.checkpoint import CheckpointCorrupted, ShardCheckpoints
from sisa.faults import crash_point
from sisa import cluster, runtime
from sisa.training import aot
from sisa.training.ensemble import ensemble_for, seed_arg, stack, unstack

BACKLOG = 2  # stages whose saves may wait behind the training


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


def lane_row(store) -> dict:
    """One row of `lane_data` (zeros): its fields' shapes and dtypes."""
    return {k: np.zeros(v.shape[2:], v.dtype) for k, v in lane_data(store, [], 1).items()}


def compile_ahead(ens, store, shards: int, batch_size: int, *, skip=(), stop=None) -> collections.Counter:
    """Have every program a later forget or predict on this run can call ready in the program
    cache (sisa.training.aot), without running any: `epoch` at each lane width that training
    1..S shards takes on `ens`'s devices, at the current store's capacity and at the bucket
    below (a forget that takes the largest shard under half the padding), and the serving
    program. (`init` has one width, `Ensemble.init_width`: every training compiles it.)
    `skip`: the (width, capacity) the caller compiles itself. Between programs, stops once
    `stop` (a threading.Event) is set. Counts Program.precompile's outcomes."""
    from sisa.training.ensemble import serving_lanes

    capacity, row = store.capacity(shards, batch_size), lane_row(store)
    widths = sorted({ens.width(w, shards) for w in range(1, shards + 1)}, reverse=True)
    # Store.capacity pads to a power of two of whole batches: the bucket below is half.
    tasks = [functools.partial(ens.precompile, w, capacity, row) for w in widths if (w, capacity) != skip]
    # What serve.shard_probabilities runs: one device, serving_lanes(S), fixed chunks.
    tasks.append(functools.partial(ensemble_for(ens.trainer).precompile_probabilities, serving_lanes(shards)))
    if capacity > batch_size:
        tasks += [functools.partial(ens.precompile, w, capacity // 2, row) for w in widths]
    done = collections.Counter()
    for task in tasks:
        if stop is not None and stop.is_set():
            break
        done[task()] += 1
    return done


class _CompilingAhead:
    """`compile_ahead` in a background thread, overlapping the training; `finish` joins it."""

    def __init__(self, *args, **kwargs):
        self._stop, self._error = threading.Event(), None
        self._thread = threading.Thread(target=self._run, args=args, kwargs=kwargs, name="sisa-compile-ahead",
                                        daemon=True)
        self._thread.start()

    def _run(self, *args, **kwargs):
        try:
            compile_ahead(*args, stop=self._stop, **kwargs)
        except Exception as e:  # the training stands; a later command compiles what it needs
            self._error = e

    def finish(self, failed: bool = False) -> None:
        if failed:
            self._stop.set()  # the training's error goes out after the program in hand
        self._thread.join()
        if self._error is not None and not failed:
            warnings.warn(f"compiling programs ahead failed ({type(self._error).__name__}: {self._error}); later "
                          "commands compile what they need", aot.ProgramCacheWarning, stacklevel=3)


def train_shards(wd, todo: list[int], *, progress: bool = True, gate=None) -> dict:
    """Bring shards `todo` to the last stage in this process, all in one program. When this is
    a train, not a deletion (no request pending in the ledger), a background thread meanwhile
    compiles ahead what later commands can need (`compile_ahead`, with `aot.precompiling()`): it
    runs nothing, and is joined before this returns. A deletion compiles only what it runs.
    `gate`: a function giving a context manager held around each epoch (sisa.service: so that
    predictions waiting for the device go first); None: none."""
    ahead = None
    if todo and aot.precompiling() and not wd.ledger().pending():
        shards, store = wd.config.partition.shards, wd.store()
        ens = ensemble_for(wd.trainer, runtime.device_count(shards))
        batch_size = wd.config.train.batch_size
        ahead = _CompilingAhead(ens, store, shards, batch_size,
                                skip=(ens.width(len(todo), shards), store.capacity(shards, batch_size)))
    try:
        report = _train_shards(wd, todo, progress=progress, gate=gate)
    except BaseException:
        if ahead is not None:
            ahead.finish(failed=True)
        raise
    if ahead is not None:
        ahead.finish()
    return report


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


def complete(wd, *, only=None, progress: bool = True, spread: bool = True, gate=None) -> dict:
    """Train every shard (of `only`, default all) whose latest checkpoint is before the last
    stage. In a cluster (`spread`), each process trains its own shards; see sisa.cluster."""
    last = wd.stages() - 1
    todo = [c.shard for c in wd.checkpoints if c.latest() < last and (only is None or c.shard in only)]
    if not spread or cluster.count() == 1:
        return train_shards(wd, todo, progress=progress, gate=gate)
    t0 = time.perf_counter()
    reports = cluster.complete_everywhere(wd.root, todo, lambda mine: train_shards(wd, mine, progress=progress))
    wd.reload_checkpoints()  # other processes wrote checkpoints this one's handles have not seen
    return {
        "shards_trained": sorted(s for r in reports for s in r["shards_trained"]),
        "stages_trained": {int(s): st for r in reports for s, st in r["stages_trained"].items()},
        "examples_epochs": sum(r["examples_epochs"] for r in reports),
        "seconds": time.perf_counter() - t0,
    }


def _train_shards(wd, todo: list[int], *, progress: bool = True, gate=None) -> dict:
    t0 = time.perf_counter()
    cfg = wd.config
    shards, slices = cfg.partition.shards, wd.stages()  # every stage: one per slice and per arrival
    ckpts = wd.checkpoints
    for s in todo:
        # An interrupted save's leftovers: never restored, never kept. Only this process's
        # temporaries: in a cluster the others are saving theirs.
        ckpts[s].remove_temporaries(process=cluster.index())
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

    states = ens.initial_states(lanes, shards, cfg.train.seed)
    for lane, s in enumerate(todo):
        good = restore_latest_good(ckpts[s]) if latest[s] >= 0 else None
        if good is not None:
            states[lane] = good
    start = np.array([ckpts[s].latest() + 1 for s in lanes])
    report["stages_trained"] = {s: list(range(ckpts[s].latest() + 1, slices)) for s in todo}
    states = ens.place(stack(states))
    data = ens.place(lane_data(store, lanes, store.capacity(shards, cfg.train.batch_size)))
    shard_ids, seed = ens.place(np.asarray(lanes, np.int32)), seed_arg(cfg.train.seed)
    per_slice = store.counts(shards, slices)
    counts = per_slice.cumsum(axis=1)  # examples in slices 0..r per shard
    added = np.arange(slices) >= cfg.partition.slices  # the stages of `sisa add`'s slices

    # One background thread saves each stage (every shard trained in it, one orbax save) while
    # the next stage trains; at most BACKLOG stages wait, so host copies do not pile up.
    saver, saves = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sisa-saver"), []
    process = cluster.index()

    def save(stage, shards_states):
        items = [(ckpts[s], state, {**wd.lineage(s, stage, store), "process": process}) for s, state in shards_states]
        ShardCheckpoints.save_stage(stage, items)

    try:
        for stage in range(int(start[real].min()), slices):
            due = real & (start <= stage)  # the lanes whose stage this is
            # An added slice that holds nothing of a shard trains nothing there: that shard's
            # checkpoint of the stage is its state of the stage before (the same from scratch).
            active = due & ~(added[stage] & (per_slice[lanes, stage] == 0))
            epochs = cfg.epochs_for_stage(stage) if active.any() else 0
            sizes = [int(counts[lanes[i], stage]) for i in np.flatnonzero(active)]
            visits = sum(cfg.stage_examples(n) for n in sizes)  # examples x epochs, a cut last epoch in part
            report["examples_epochs"] += visits
            bar = tqdm(
                total=visits, desc=f"stage {stage} of 0..{slices - 1}", unit="ex", unit_scale=True,
                disable=not progress, file=sys.stderr, leave=False,
            )
            for epoch in range(epochs):
                with gate() if gate is not None else contextlib.nullcontext():
                    states, loss = ens.epoch(states, data, shard_ids, seed, stage, epoch, ens.place(active))
                    loss = np.asarray(loss)  # waits for the epoch: the bar shows real progress
                bar.update(sum(cfg.stage_examples(n, epoch) for n in sizes))
                crash_point("after-epoch")
                bar.set_postfix(loss=f"{loss[active].mean():.3f}")
            bar.close()
            if not cfg.keeps_checkpoint(stage, slices):
                continue
            host = unstack(states, width)  # copies: the device buffers go to the next epoch
            while len(saves) >= BACKLOG and not saves[-BACKLOG].done():
                saves[-BACKLOG].result()  # the saver is behind: wait (and raise its error) here
            for done in saves:
                if done.done():
                    done.result()  # a failed save stops the training now, not at its end
            saves.append(saver.submit(save, stage, [(lanes[lane], host[lane]) for lane in np.flatnonzero(due)]))
    except BaseException:
        # Let the saves already submitted finish before the error leaves: once it reaches the
        # caller (and the workdir lock is released) nothing of this call writes any more.
        saver.shutdown(wait=True)
        raise
    saver.shutdown(wait=True)
    for done in saves:
        done.result()  # re-raise a failed save here
    for s in todo:
        ckpts[s].wait()
    report["seconds"] = time.perf_counter() - t0
    return report
