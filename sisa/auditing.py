"""Look for anything of forgotten examples left in a workdir.

Scans every file sisa could have written (the workdir, verify's scratch area in it, sisa's
program cache) for the feature bytes of each forgotten example and every checkpoint's lineage
for forgotten ids. The bytes come from the original data the user keeps (the manifest's name
or absolute path, or `source`): sisa itself keeps no recogniser of forgotten rows, since a
digest of a row is a membership oracle. What cannot be checked (the source missing, changed
or unreadable, a forgotten id absent from it, an unreadable file) is listed as `unchecked`,
and the audit is clean only when nothing was found and everything was checked.
A forgotten row whose bytes equal a retained row's is reported as such, not as a leak.
It also checks that the manifest and lineages hold only the fields sisa writes, none of
them computed over the data as a whole, and that each lineage's digest is over its own ids.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sisa.checkpoint import CheckpointCorrupted, lineage_digest

# Everything sisa writes into a manifest and a lineage; anything else is unexplained.
MANIFEST_FIELDS = {"format", "config_digest", "dataset", "environment", "created", "ledger_head", "model_code", "base"}
DATASET_FIELDS = {"name", "num_classes", "input_shape", "scale", "vocab_size", "task", "tokenizer", "label_names"}
LINEAGE_FIELDS = {"shard", "stage", "ids", "ids_digest", "config_digest", "state_digest", "process",
                  "ledger_head"}


def audit(wd, source: str | None = None) -> dict:
    """What of forgotten examples is left, and what could not be checked. Writes nothing.

    `source`: the original data (default: the manifest's data set name or absolute path)."""
    forgotten = sorted(wd.ledger().forgotten())
    findings, notes, unchecked = [], [], []
    store = wd.store()
    unpurged = store.contains(forgotten) if forgotten else []
    if any(unpurged):
        pending = [i for i, u in zip(forgotten, unpurged) if u]
        findings.append(f"the data store still holds {len(pending)} forgotten id(s) (first: {pending[0]})")
    extra = (set(wd.manifest) - MANIFEST_FIELDS) | {f"dataset.{k}" for k in set(wd.manifest["dataset"]) - DATASET_FIELDS}
    if extra:
        findings.append(f"manifest holds fields sisa does not write (possibly computed over forgotten data): {sorted(extra)}")
    names = wd.manifest["dataset"].get("label_names")
    if names and not wd.config.data.labels:  # found in the data at training, not declared in the config
        _, y_test = wd.test_split()
        orphans = sorted(set(range(len(names))) - set(store.y.tolist()) - set(y_test.tolist()))
        if orphans:
            findings.append(f"label name(s) {[names[k] for k in orphans]} in the manifest now belong to no example: "
                            "they came from forgotten data; declare the label set with data.labels to make it schema")
    for ckpt in wd.checkpoints:
        try:
            stages = ckpt.stages()
        except FileNotFoundError:  # deleted by a concurrent writer while listed
            stages = []
        for stage in stages:
            try:
                lineage = ckpt.lineage(stage)
            except CheckpointCorrupted as e:
                path = ckpt.stage_path(stage)
                if path is not None and path.is_dir():  # else a concurrent writer deleted it: nothing left
                    findings.append(f"{e}: cannot tell what it saw")
                continue
            where = f"checkpoint shard {ckpt.shard} stage {stage}"
            if set(forgotten).intersection(lineage["ids"]):
                findings.append(f"{where} saw forgotten ids")
            if set(lineage) - LINEAGE_FIELDS:
                findings.append(f"{where}: lineage holds fields sisa does not write: {sorted(set(lineage) - LINEAGE_FIELDS)}")
            if lineage.get("ids_digest") != lineage_digest(lineage["ids"]):
                findings.append(f"{where}: lineage digest is not over its own ids")
        if ckpt.directory.exists() and list(ckpt.directory.glob("*.orbax-checkpoint-tmp*")):
            findings.append(f"unfinished checkpoint writes left in {ckpt.directory}")
    name = str(Path(source).resolve()) if source is not None else wd.manifest["dataset"]["name"]
    rows = _forgotten_rows(wd, store, forgotten, name, notes, unchecked)
    if rows:
        for path, shown in _files(wd, unchecked):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # removed while the scan ran (a concurrent forget): its bytes are gone
                continue
            except OSError as e:
                unchecked.append(f"{shown} could not be read ({e.strerror or e}): not scanned")
                continue
            findings += [f"{shown} holds the feature bytes of forgotten id {i}" for i, row in rows.items() if row in data]
    return {"clean": not findings and not unchecked, "findings": findings, "unchecked": unchecked, "notes": notes,
            "source": name, "forgotten": len(forgotten), "rows_scanned_for": len(rows)}


def _files(wd, unchecked: list[str]):
    """(path, how to name it) of every file sisa could have written: the workdir (with verify's
    scratch area) and sisa's program cache. Links are not followed: what they point to is elsewhere."""
    from sisa import runtime

    places = [(wd.root, True)]
    cache = runtime.cache_dir()
    if cache is not None and cache.is_dir():
        places.append((cache, False))

    def failed(e: OSError) -> None:
        if not isinstance(e, FileNotFoundError):
            unchecked.append(f"{e.filename} could not be listed ({e.strerror or e}): not scanned")

    for root, relative in places:
        for d, _, names in sorted(os.walk(root, onerror=failed)):
            for n in sorted(names):
                path = Path(d) / n
                if not path.is_symlink():
                    yield path, (path.relative_to(root) if relative else path)


def _forgotten_rows(wd, store, forgotten: list[int], name: str, notes: list[str], unchecked: list[str]) -> dict[int, bytes]:
    """Feature bytes of forgotten examples that no retained example shares, read from the
    original data `name` (a registry name or a path). What cannot be read goes to `unchecked`."""
    from sisa.data import datasets
    from sisa.errors import SisaError

    if not forgotten:
        return {}
    what = f"the feature bytes of {len(forgotten)} forgotten id(s) were not scanned"
    if name not in datasets.REGISTRY and name not in datasets.TEXT_REGISTRY and not Path(name).exists():
        unchecked.append(f"original data {name} is missing (moved or deleted?): {what}; pass it with --source PATH")
        return {}
    try:
        ds = datasets.load(name, data=wd.config.data)
    except Exception as e:  # whatever keeps the source from being read
        unchecked.append(f"original data {name} could not be read ({e}): {what}")
        return {}
    try:
        store.check_source(ds, forgotten, str(wd.root))
    except SisaError:
        unchecked.append(f"original data {name} differs from the data trained on (a kept example's id, features "
                         f"or label changed): {what}; pass the original with --source PATH")
        return {}
    pos = {int(i): k for k, i in enumerate(ds.ids)}
    absent = [i for i in forgotten if i not in pos]
    if absent:
        unchecked.append(f"{len(absent)} forgotten id(s) are not in {name} (first: {absent[0]}): their feature "
                         f"bytes were not scanned")
    gone = set(forgotten)
    retained = {ds.x[k].tobytes() for i, k in pos.items() if i not in gone}
    out = {}
    for i in forgotten:
        if i not in pos:
            continue
        row = np.ascontiguousarray(ds.x[pos[i]]).tobytes()
        if row in retained:
            notes.append(f"forgotten id {i} has the same features as a retained example")
        else:
            out[i] = row
    return out
