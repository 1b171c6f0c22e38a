"""`sisa add`: data that grows, without retraining what was trained before.

The a-th add puts its examples in a new slice, `partition.slices + a - 1`, after every slice
trained before, each in the shard the partition rule gives it (sisa.data.partition), so the run
gains one stage: each shard trains it from its last checkpoint on its slices so far plus the
new one, and a shard the add brought nothing to keeps its state (its checkpoint of the new
stage is its previous state). Training from scratch on the same examples with the same arrival
order (each example's arrival: 0 for the data trained first, a for the a-th add; a `Dataset`'s
`arrival`) gives the same bits, and `sisa verify` retrains from scratch exactly so. Forgetting
an added example works like any other.

The add is recorded in the ledger (ids, arrival) before its examples enter the data store,
which is replaced whole: a crash leaves the add done or not done, and the next writer trains
the new stage.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from sisa import reconcile
from sisa.data import partition
from sisa.data.store import Store
from sisa.errors import SisaError
from sisa.faults import crash_point


def load(wd, source):
    """The examples to add: `source` a Dataset, or a data set name or path read as the run reads
    its data (its text settings and label names), every row of it (none held out)."""
    from sisa.data import datasets

    if not isinstance(source, str):
        return source
    cfg, names = wd.config, wd.manifest["dataset"].get("label_names")
    data = dataclasses.replace(cfg.data, dataset=source, labels=tuple(names) if names else cfg.data.labels)
    return datasets.load(source, data=data, hold_out=False)


def check(wd, store: Store, ds) -> None:
    """Refuse examples that do not fit the run (naming what differs) or reuse an id."""
    m = wd.manifest["dataset"]
    if tuple(ds.x.shape[1:]) != tuple(m["input_shape"]) or ds.x.dtype != store.x.dtype:
        raise SisaError(f"the examples to add have features of shape {tuple(ds.x.shape[1:])} and dtype {ds.x.dtype}; "
                        f"this run's are {tuple(m['input_shape'])} and {store.x.dtype}", kind="bad_input")
    if ds.scale != m["scale"] or ds.text_facts().get("tokenizer") != m.get("tokenizer"):
        raise SisaError("the examples to add are in other units than the run's data (feature scale or tokenizer "
                        "differ)", kind="bad_input")
    if len(ds.y) and int(ds.y.max()) >= m["num_classes"]:
        raise SisaError(f"the examples to add have labels up to {int(ds.y.max())}; this run has "
                        f"{m['num_classes']} classes (0..{m['num_classes'] - 1})", kind="bad_input")
    if ds.groups is None and wd.config.partition.strategy == "grouped":
        raise SisaError("this run is partitioned by group: the examples to add need a group column", kind="bad_input")
    there = store.contains(ds.ids)
    if there.any():
        raise SisaError(f"id(s) already in the run: {ds.ids[there][:10].tolist()}; new examples need new ids",
                        kind="bad_input")
    gone = set(wd.ledger().forgotten()).intersection(ds.ids.tolist())
    if gone:
        raise SisaError(f"id(s) {sorted(gone)[:10]} were forgotten: an id is never used again", kind="bad_input")


def add(wd, source, *, progress: bool = True, allow_environment_change: bool = False, gate=None) -> dict:
    """Add examples (a Dataset, or a name or path) as the run's next arrival and train the new
    stage. Under the caller's writer lock. `gate`: see sisa.training.loop.train_shards."""
    t0 = time.perf_counter()
    snap, new_env = reconcile.snapshot(wd, allow_environment_change=allow_environment_change)
    earlier = reconcile.plan(snap)
    if earlier.refused:
        raise SisaError(earlier.refused)
    ds = load(wd, source)
    store = wd.store()
    check(wd, store, ds)
    reconcile.apply(wd, earlier, new_environment=new_env, progress=progress, gate=gate)  # finish earlier work first
    store = wd.store()
    ledger = wd.ledger()
    arrival = max([store.arrivals, *(a["arrival"] for a in ledger.additions())]) + 1
    p = wd.config.partition
    arrivals = np.full(len(ds.ids), arrival, np.int32)
    shard, slc = partition.assign(ds.ids, ds.y, ds.groups, shards=p.shards, slices=p.slices, strategy=p.strategy,
                                  seed=p.seed, arrival=arrivals)
    new = Store(ids=ds.ids.astype(np.int64), x=ds.x.astype(store.x.dtype), y=ds.y.astype(np.int32), shard=shard,
                slice=slc, group=(np.zeros(len(ds.ids), np.int64) if ds.groups is None else ds.groups.astype(np.int64)),
                arrival=arrivals)
    merged = Store(**{f.name: np.concatenate([getattr(store, f.name), getattr(new, f.name)])
                      for f in dataclasses.fields(Store)})
    order = np.argsort(merged.ids, kind="stable")
    ledger.add(ds.ids.tolist(), arrival)  # before the examples enter: a crash leaves an add that added nothing
    crash_point("after-add-record")
    wd.save_store(Store(**{f.name: getattr(merged, f.name)[order] for f in dataclasses.fields(Store)}))
    done = reconcile.reconcile(wd, allow_environment_change=allow_environment_change, progress=progress, gate=gate)
    trained = done["trained"]
    return {"added": len(ds.ids), "arrival": arrival, "stage": wd.stages() - 1,
            "shards": sorted(set(shard.tolist())), "examples_epochs": trained["examples_epochs"],
            "seconds": time.perf_counter() - t0}
