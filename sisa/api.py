"""The Python API: the same operations, under the same names, as the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sisa.cluster import collective
from sisa.config import Config
from sisa.errors import SisaError
from sisa.workdir import MANIFEST, Workdir


def _open(workdir) -> Workdir:
    from sisa import runtime

    runtime.setup()
    return Workdir.open(workdir)


@collective
def train(workdir, config: Config | None = None, *, dataset=None, progress: bool = True,
          allow_environment_change: bool = False) -> dict:
    """Train (or finish training) the run in `workdir`.

    A new workdir is created for `config` (default: `Config()`) on `dataset` (a `Dataset`;
    default: the one the config names). An existing one is resumed if `config` matches it:
    unfinished requests are carried out, damaged final checkpoints rebuilt, missing stages trained.
    """
    from sisa import reconcile, runtime
    from sisa.data import datasets

    runtime.setup()
    root = Path(workdir)
    if (root / MANIFEST).exists():
        wd = Workdir.open(root)
        if config is not None:
            wd.check_config(config)
        if dataset is not None:
            from sisa.deletion_ledger import Ledger

            wd.store().check_source(dataset, Ledger(wd.ledger_path).forgotten(), str(root))
    else:
        config = config or Config()
        if dataset is None:
            dataset = datasets.load(config.data.dataset, num_classes=config.data.num_classes)
        elif config.data.num_classes is not None and config.data.num_classes != dataset.num_classes:
            raise SisaError(f"config says {config.data.num_classes} classes, the data set has {dataset.num_classes}")
        wd = Workdir.create(root, config, dataset)
    with wd.lock():
        done = reconcile.reconcile(wd, check_final_files=True, allow_environment_change=allow_environment_change,
                                   progress=progress)
    return {"workdir": str(root), "recovered_entries": done["committed"], "dropped_stages": done["dropped"],
            "plan": done["plan"], **done["trained"]}


@collective
def forget(workdir, ids, *, request: str | None = None, reason: str | None = None, progress: bool = True,
           allow_environment_change: bool = False) -> dict:
    """Forget examples by id: afterwards the served ensemble equals training without them."""
    from sisa.unlearn import exact

    wd = _open(workdir)
    with wd.lock():
        return exact.forget(wd, ids, request=request, reason=reason, progress=progress,
                            allow_environment_change=allow_environment_change)


@collective
def predict(workdir, x: np.ndarray, aggregation: str | None = None) -> dict:
    """Per-class probabilities and labels for inputs `x` ([N, ...], in the units of the training
    data). Reads only: shards with pending work are left out and named."""
    from sisa import serve

    return serve.predict(_open(workdir), x, aggregation)


@collective
def evaluate(workdir, aggregation: str | None = None) -> dict:
    """Test accuracy per shard and aggregated. Reads only, as `predict`."""
    from sisa import serve

    return serve.evaluate(_open(workdir), aggregation)


def status(workdir) -> dict:
    """Shards, slices, examples per shard and slice, deletions, disk use, pending work. Reads no model."""
    from sisa import reconcile
    from sisa.fsutil import disk_usage
    from sisa.deletion_ledger import Ledger

    wd = Workdir.open(workdir)
    cfg, store = wd.config, wd.store()
    counts = store.counts(cfg.partition.shards, cfg.partition.slices)
    entries = Ledger(wd.ledger_path).entries()
    return {
        "workdir": str(wd.root),
        "dataset": wd.manifest["dataset"]["name"],
        "shards": cfg.partition.shards,
        "slices": cfg.partition.slices,
        "examples": len(store),
        "examples_per_shard": counts.sum(axis=1).tolist(),
        "examples_per_shard_slice": counts.tolist(),
        "deleted": sum(len(e["ids"]) for e in entries),
        "requests": len(entries),
        "pending_requests": [e["seq"] for e in entries if e["state"] != "committed"],
        "disk_bytes": {
            "total": disk_usage(wd.root),
            "checkpoints": disk_usage(wd.checkpoint_root) if wd.checkpoint_root.exists() else 0,
            "data": disk_usage(wd.root / "data"),
        },
        "config_digest": wd.manifest["config_digest"],
        "environment": wd.manifest["environment"],
        "pending_plan": reconcile.plan(reconcile.snapshot(wd, environment=False)[0]).describe(),
    }


def demo(workdir=None, *, progress: bool = True) -> dict:
    from sisa.demo import run

    return run(workdir, progress=progress)


def ledger(workdir) -> dict:
    """The deletion ledger's entries (chain checked) and its head hash."""
    from sisa.deletion_ledger import Ledger

    wd = Workdir.open(workdir)
    lg = Ledger(wd.ledger_path)
    return {"head": lg.head(), "entries": lg.entries()}


@collective
def verify(workdir, shards=None, *, progress: bool = True) -> dict:
    """Ledger chain, lineage of every checkpoint, and a bitwise retrain of `shards` from scratch."""
    from sisa.verification import certificate

    return certificate(_open(workdir), shards, progress=progress)


def audit(workdir) -> dict:
    """Scan the workdir for feature bytes of forgotten examples and checkpoints that saw them."""
    from sisa.auditing import audit as run_audit

    return run_audit(_open(workdir))


def compare(config, out_dir, *, progress: bool = True) -> dict:
    """Exact (SISA) vs approximate unlearning on the same data, model and compute accounting."""
    from sisa.eval import compare as benchmark

    return benchmark.run(config, out_dir, progress=progress)
