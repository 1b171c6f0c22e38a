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
        scan = RowScanner(rows)
        for path, shown in _files(wd, unchecked):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # removed while the scan ran (a concurrent forget): its bytes are gone
                continue
            except OSError as e:
                unchecked.append(f"{shown} could not be read ({e.strerror or e}): not scanned")
                continue
            findings += [f"{shown} holds the feature bytes of forgotten id {i}" for i in scan.found(data)]
    return {"clean": not findings and not unchecked, "findings": findings, "unchecked": unchecked, "notes": notes,
            "source": name, "forgotten": len(forgotten), "rows_scanned_for": len(rows)}


class RowScanner:
    """Which of several byte strings (forgotten rows) occur anywhere in a file, in about one pass.

    A search per row costs K passes over every file. Instead, for rows of L bytes, take blocks
    of B = (L + 1) // 2 bytes at the file's offsets 0, B, 2B, ...: any occurrence of a row, at any
    offset, holds one of those blocks whole, at some offset j of the row. So every block of every
    row (all L - B + 1 offsets) is indexed by its hash; a file's blocks are looked up, and each hit
    (row i, offset j at file offset p) is confirmed by comparing the file at p - j with row i.
    Exact: nothing found this way is missed by a plain search, nor the other way round.

    Rows too short for blocks to pay (L < 2 * MIN_BLOCK), rows holding a block shared by many
    offsets (a long run of zeros, which would turn every zero region of a file into candidates)
    and rows past MAX_ENTRIES indexed offsets are searched for one by one instead. B is at most
    MAX_BLOCK (any B <= (L + 1) // 2 will do).
    """

    MIN_BLOCK, MAX_BLOCK, MAX_POSTINGS, MAX_ENTRIES = 64, 1024, 8, 4_000_000

    def __init__(self, rows: dict[int, bytes]):
        self.rows = rows
        self.searched: list[int] = []  # ids searched for one by one
        self.blocks: dict[int, dict[int, list[tuple[int, int]]]] = {}  # B -> hash(block) -> [(id, offset)]
        by_length: dict[int, list[int]] = {}
        for i, row in rows.items():
            by_length.setdefault(len(row), []).append(i)
        entries = 0
        for length, ids in by_length.items():
            b = min((length + 1) // 2, self.MAX_BLOCK)
            fit = max(0, (self.MAX_ENTRIES - entries) // (length - b + 1))  # the index's memory stays bounded
            if b < self.MIN_BLOCK or not fit:
                self.searched += ids
                continue
            self.searched += ids[fit:]
            ids, entries = ids[:fit], entries + fit * (length - b + 1)
            index: dict[int, list[tuple[int, int]]] = {}
            for i in ids:
                row = rows[i]
                for j in range(length - b + 1):
                    index.setdefault(hash(row[j : j + b]), []).append((i, j))
            crowded = {i for postings in index.values() if len(postings) > self.MAX_POSTINGS for i, _ in postings}
            self.searched += sorted(crowded)
            self.blocks[b] = {h: [(i, j) for i, j in postings if i not in crowded] for h, postings in index.items()}

    def found(self, data: bytes) -> list[int]:
        """The ids whose row occurs in `data`, sorted."""
        hits = {i for i in self.searched if self.rows[i] in data}
        for b, index in self.blocks.items():
            for p in range(0, len(data) - b + 1, b):
                for i, j in index.get(hash(data[p : p + b]), ()):
                    row = self.rows[i]
                    if i not in hits and p >= j and data[p - j : p - j + len(row)] == row:
                        hits.add(i)
        return sorted(hits)


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
