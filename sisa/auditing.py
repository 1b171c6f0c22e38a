"""Look for anything of forgotten examples left in a workdir.

Scans every file for the feature bytes of each forgotten example (taken from the original
data set, which lives outside the workdir) and every checkpoint's lineage for forgotten ids.
A forgotten row whose bytes equal a retained row's is reported as such, not as a leak.
It also checks that the manifest and lineages hold only the fields sisa writes, none of
them computed over the data as a whole, and that each lineage's digest is over its own ids.
"""

from __future__ import annotations


import numpy as np

from sisa.checkpoint import CheckpointCorrupted, lineage_digest
from sisa.deletion_ledger import Ledger

# Everything sisa writes into a manifest and a lineage; anything else is unexplained.
MANIFEST_FIELDS = {"format", "config_digest", "dataset", "environment", "created"}
DATASET_FIELDS = {"name", "num_classes", "input_shape", "scale"}
LINEAGE_FIELDS = {"shard", "stage", "ids", "ids_digest", "config_digest", "state_digest", "process"}


def audit(wd) -> dict:
    forgotten = sorted(Ledger(wd.ledger_path).forgotten())
    findings, notes = [], []
    store = wd.store()
    unpurged = store.contains(forgotten) if forgotten else []
    if any(unpurged):
        pending = [i for i, u in zip(forgotten, unpurged) if u]
        findings.append(f"the data store still holds {len(pending)} forgotten id(s) (first: {pending[0]})")
    extra = (set(wd.manifest) - MANIFEST_FIELDS) | {f"dataset.{k}" for k in set(wd.manifest["dataset"]) - DATASET_FIELDS}
    if extra:
        findings.append(f"manifest holds fields sisa does not write (possibly computed over forgotten data): {sorted(extra)}")
    for ckpt in wd.checkpoints:
        for stage in ckpt.stages():
            try:
                lineage = ckpt.lineage(stage)
            except CheckpointCorrupted as e:
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
    rows = _forgotten_rows(wd, store, forgotten, notes)
    if rows:
        files = [p for p in sorted(wd.root.rglob("*")) if p.is_file() and p.name != ".lock"]
        for path in files:
            data = path.read_bytes()
            for i, row in rows.items():
                if row in data:
                    findings.append(f"{path.relative_to(wd.root)} holds the feature bytes of forgotten id {i}")
    return {"clean": not findings, "findings": findings, "notes": notes,
            "forgotten": len(forgotten), "rows_scanned_for": len(rows)}


def _forgotten_rows(wd, store, forgotten: list[int], notes: list[str]) -> dict[int, bytes]:
    """Feature bytes of forgotten examples that no retained example shares."""
    from sisa.data import datasets
    from sisa.errors import SisaError

    if not forgotten:
        return {}
    name = wd.manifest["dataset"]["name"]
    try:
        ds = datasets.load(name)
    except SisaError as e:
        notes.append(f"original data set {name!r} unavailable, feature bytes not scanned: {e}")
        return {}
    try:
        store.check_source(ds, forgotten, str(wd.root))
    except SisaError:
        notes.append(f"data set {name!r} changed since training; feature bytes not scanned")
        return {}
    pos = {int(i): k for k, i in enumerate(ds.ids)}
    gone = set(forgotten)
    retained = {ds.x[k].tobytes() for i, k in pos.items() if i not in gone}
    out = {}
    for i in forgotten:
        row = np.ascontiguousarray(ds.x[pos[i]]).tobytes()
        if row in retained:
            notes.append(f"forgotten id {i} has the same features as a retained example")
        else:
            out[i] = row
    return out
