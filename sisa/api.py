"""The Python API: the same operations, under the same names, as the CLI."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from sisa import config as config_lib
from sisa.cluster import collective
from sisa.config import Config
from sisa.errors import SisaError
from sisa.workdir import MANIFEST, Workdir


def _open(workdir) -> Workdir:
    from sisa import runtime

    runtime.setup()
    return Workdir.open(workdir)


@collective
def train(workdir, config: Config | None = None, *, dataset=None, model=None, progress: bool = True,
          allow_environment_change: bool = False) -> dict:
    """Train (or finish training) the run in `workdir`.

    A new workdir is created for `config` (default: `Config()`) on `dataset` (a `Dataset`;
    default: the one the config names). An existing one is resumed if `config` matches it:
    unfinished requests are carried out, damaged final checkpoints rebuilt, missing stages trained.
    `model`: your own model class or factory (sisa.models has the contract), in place of
    `config.model.name`; it must be importable by name, for later commands to build it again.

    Whether the workdir is new is decided under the writer lock, so two trains of one new
    workdir never both create it: the second gets WorkdirBusy, or resumes once the first is done.
    A first train that fails removes what it created (an interrupted one stays, to be resumed).
    """
    from sisa import reconcile, runtime
    from sisa.workdir import WorkdirBusy, check_new, discard, make_root

    runtime.setup()
    if model is not None:
        from sisa import models

        config = (config or Config()).replace(model={"name": models.name_of(model)})
    root = Path(workdir)
    new_run = None
    if not (root / MANIFEST).exists():  # check all that is cheap before the first byte is written
        check_new(root)
        new_run = _new_run(config, dataset)
    made, created, wd = make_root(root), False, None
    try:
        with Workdir(root).lock():
            try:
                if (root / MANIFEST).exists():  # another train may have created it since
                    wd = Workdir.open(root)
                    if config is not None:
                        wd.check_config(config)
                    if dataset is not None:
                        wd.store().check_source(dataset, wd.ledger().forgotten(), str(root))
                else:
                    new_run = new_run or _new_run(config, dataset)
                    check_new(root)  # before `created`: a refusal here must not discard anything
                    created = True  # from here on, what sisa writes into root is this call's
                    wd = Workdir.create(root, *new_run)
                done = reconcile.reconcile(wd, check_final_files=True,
                                           allow_environment_change=allow_environment_change, progress=progress)
            except Exception:
                if created:
                    if wd is not None:  # orbax may still be writing in the background: let it finish first
                        with contextlib.suppress(Exception):
                            wd.reload_checkpoints()
                    discard(root, made, own=True)  # under the lock: no other train sees it half removed
                raise
    except Exception as e:
        if not created and not isinstance(e, WorkdirBusy):
            discard(root, made, own=False)  # only folders this call made, still empty
        raise
    return {"workdir": str(root), "recovered_entries": done["committed"], "dropped_stages": done["dropped"],
            "plan": done["plan"], **done["trained"]}


def _new_run(config: Config | None, dataset) -> tuple:
    """(config, data set, data store) of a new run, each checked, SISA_DEVICES too; writes nothing."""
    from sisa import runtime
    from sisa.data import datasets
    from sisa.data.store import Store

    config = config or Config()
    if (why := config.schedule_warning()) is not None:
        warnings.warn(why, config_lib.ScheduleWarning, stacklevel=3)
    if dataset is None:
        dataset = datasets.load(config.data.dataset, num_classes=config.data.num_classes, data=config.data)
    elif config.data.num_classes is not None and config.data.num_classes != dataset.num_classes:
        raise SisaError(f"config says {config.data.num_classes} classes, the data set has {dataset.num_classes}")
    p = config.partition
    runtime.device_count(p.shards)
    _check_model(config, dataset)
    return config, dataset, Store.create(dataset, shards=p.shards, slices=p.slices, strategy=p.strategy, seed=p.seed)


def _check_model(config: Config, dataset) -> None:
    """Build the model abstractly (and read its base) before anything is written: a model that
    breaks the contract or a base that does not fit is refused here (sisa.models)."""
    from sisa.training.step import trainer_for

    trainer = trainer_for(config, tuple(dataset.x.shape[1:]), dataset.num_classes, dataset.scale, dataset.vocab_size,
                          dataset.task)
    trainer.abstract_state  # noqa: B018  shapes the model, its adapters and its base


@collective
def forget(workdir, ids=None, *, group=None, request: str | None = None, reason: str | None = None,
           progress: bool = True, allow_environment_change: bool = False) -> dict:
    """Forget examples by id, or every example of a `group` (the data's group/user value):
    afterwards the served ensemble equals training without them."""
    from sisa.unlearn import exact

    if (ids is None) == (group is None):
        raise SisaError("give either ids or a group to forget", kind="usage")
    wd = _open(workdir)
    with wd.lock():
        if group is not None:
            ids = exact.group_ids(wd, group)
        return exact.forget(wd, ids, request=request, reason=reason, progress=progress,
                            allow_environment_change=allow_environment_change)


@collective
def add(workdir, dataset, *, progress: bool = True, allow_environment_change: bool = False) -> dict:
    """Add new examples (a Dataset, or a data set name or path, every row of it) with new ids: they
    form the run's next slice and only the shards they join train (sisa.adding)."""
    from sisa import adding

    wd = _open(workdir)
    with wd.lock():
        return adding.add(wd, dataset, progress=progress, allow_environment_change=allow_environment_change)


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
    """Shards, slices, examples per shard and slice, deletions, disk use, pending work. Reads no model.
    Takes no lock: read again until one read saw no writer's change (sisa.serve.read_consistently)."""
    from sisa.serve import read_consistently

    wd = Workdir.open(workdir)
    # A fresh Workdir per read: it caches the data store and the checkpoint handles.
    return read_consistently(wd, lambda: _status(Workdir.open(wd.root)), stages=True)


def _status(wd: Workdir) -> dict:
    from sisa import reconcile
    from sisa.fsutil import disk_usage

    cfg, store = wd.config, wd.store()
    counts = store.counts(cfg.partition.shards, wd.stages())
    entries = wd.ledger().entries()
    return {
        "workdir": str(wd.root),
        "dataset": wd.manifest["dataset"]["name"],
        "shards": cfg.partition.shards,
        "slices": cfg.partition.slices,
        "stages": wd.stages(),  # the slices, then one per `sisa add`
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


def demo(workdir=None, *, progress: bool = True, text: bool = False) -> dict:
    from sisa.demos import run, run_text

    return (run_text if text else run)(workdir, progress=progress)


def ledger(workdir) -> dict:
    """The deletion ledger's entries (chain and anchors checked) and its head: the hash of its last
    record, and `anchor`, "N:HASH", the line to keep outside the machine for `verify(expect_head=)`."""
    from sisa.deletion_ledger import format_anchor

    wd = Workdir.open(workdir)
    lg = wd.ledger()
    anchor = lg.anchor()
    return {"head": anchor["hash"], "records": anchor["records"], "anchor": format_anchor(anchor),
            "entries": lg.entries()}


@collective
def verify(workdir, shards=None, *, expect_head: str | None = None, progress: bool = True) -> dict:
    """Ledger chain, lineage of every checkpoint, and a bitwise retrain of `shards` from scratch.
    `expect_head`: a head printed earlier by `ledger` ("N:HASH"); refuses unless the ledger holds it."""
    from sisa.deletion_ledger import parse_anchor
    from sisa.verification import certificate

    kept = parse_anchor(expect_head) if expect_head is not None else None
    wd = _open(workdir)
    if kept is not None:
        wd.ledger().check_anchor(kept, "the head you kept (--expect-head)")
    return certificate(wd, shards, progress=progress)


def audit(workdir, source: str | None = None) -> dict:
    """Scan the workdir (and sisa's caches) for feature bytes of forgotten examples, taken from the
    original data (`source`, default the path or name recorded at training), and checkpoints that
    saw them. Clean only when nothing was found and nothing was left unchecked. Writes nothing."""
    from sisa.auditing import audit as run_audit

    return run_audit(_open(workdir), source)


def compare(config, out_dir, *, progress: bool = True, overwrite: bool = False, quick: bool = False) -> dict:
    """Exact (SISA) vs approximate unlearning on the same data, model and compute accounting.
    `out_dir` must be new or empty unless `overwrite`; `quick`: a short budget (one seed, ...)."""
    from sisa.eval import compare as benchmark

    return benchmark.run(config, out_dir, progress=progress, overwrite=overwrite, short=quick)
