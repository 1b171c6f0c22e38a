"""Retrain from scratch on the retain set: the gold standard, "retrained with the same code".

Runs the engine itself (`sisa.train`) with one shard and one slice, the trained model's
config and seed, on the retain set: the result is bit for bit the model `sisa.train` gives on
`dataset.without(forget_ids)`, provided `retain_ids` are the retain examples' ids (the
training order is a keyed hash of the ids; without them rows are numbered 0..n-1).
The budget and key are not used: the recipe is the trained model's own config.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from sisa.unlearn.baselines.common import Budget, baseline


@baseline(Budget(), retain_ids=None, workdir=None)
def unlearn(trainer, params, forget, retain, budget, key, *, retain_ids, workdir):
    import sisa
    from sisa.data.datasets import Dataset
    from sisa.workdir import Workdir

    x, y = retain
    ids = np.arange(len(x), dtype=np.int64) if retain_ids is None else np.asarray(retain_ids, np.int64)
    empty = np.zeros((0, *x.shape[1:]), x.dtype)
    ds = Dataset("retain", x, y, ids, empty, np.zeros(0, np.int32), trainer.num_classes, scale=trainer.scale)
    cfg = trainer.cfg.replace(partition={"shards": 1, "slices": 1})
    with tempfile.TemporaryDirectory(prefix="sisa-retrain-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp) / "run"
        report = sisa.train(root, cfg, dataset=ds, progress=False)
        state, _ = Workdir.open(root).checkpoints[0].restore(0)
    return state["params"], report["examples_epochs"]
