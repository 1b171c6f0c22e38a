"""The deletion ledger: an append-only, hash-chained, fsync'ed log of forget requests.

Each line is one record: a `request` (seq, ids, where they sat, reference, reason), a
`state` change of an earlier request (requested -> purged -> retrained -> committed), an
`environment` change the user accepted (library versions, backend: see sisa.environment), or an
`add` of new examples (their ids and arrival number: sisa.adding).
Every record holds the previous record's hash and its own, so an edited or reordered line
breaks the chain and is detected. A request is on disk before any work for it starts.

A chain cannot tell a cut (lines removed from its end, the file emptied or deleted) from a
shorter history, so its head, an anchor {"records": n, "hash": h}, is also kept elsewhere: in
the workdir's manifest after every append, in every checkpoint's lineage, and by the user
(`sisa ledger --head`, given back to `sisa verify --expect-head`). An anchor holds when the
ledger's n-th record has hash h; the ledger only grows, so every anchor ever taken must hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.fsutil import fsync_dir

STATES = ("requested", "purged", "retrained", "committed")
GENESIS = "0" * 64


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_anchor(text: str) -> dict:
    """`N:HASH`, as `sisa ledger --head` prints it, to an anchor."""
    n, _, h = text.strip().partition(":")
    if not (n.isascii() and n.isdigit() and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
        raise SisaError(f"not a ledger head: {text!r}; give it as `sisa ledger --head` prints it, N:HASH "
                        "(records, then the 64 hex digits of the last record's hash)")
    return {"records": int(n), "hash": h}


def format_anchor(anchor: dict) -> str:
    return f"{anchor['records']}:{anchor['hash']}"


class Ledger:
    def __init__(self, path: str | Path, *, anchor: dict | None = None, on_append=None):
        """`anchor`: a head recorded elsewhere that this ledger must still hold (see above);
        `on_append(anchor)`: called with the new head after every durable append."""
        self.path = Path(path)
        self._anchor, self._on_append = anchor, on_append
        self._cache: tuple | None = None  # ((size, mtime_ns), records): a command reads it often
        # One append at a time per process (sisa serve: request handlers and the retraining worker):
        # each record chains on the head the previous append left.
        self._lock = threading.RLock()

    def records(self) -> list[dict]:
        """All records, chain and anchor checked. A torn last line (crash mid-append) is ignored."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        key = None if st is None else (st.st_size, st.st_mtime_ns)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._read() if st is not None else [])
        out = self._cache[1]
        if self._anchor is not None:
            self._check(out, self._anchor, "the workdir's manifest")
        return out

    def check_anchor(self, anchor, where: str) -> None:
        """Refuse unless this ledger holds `anchor` (a head taken earlier, kept in `where`)."""
        if not (isinstance(anchor, dict) and type(anchor.get("records")) is int and anchor["records"] >= 0
                and isinstance(anchor.get("hash"), str)):
            raise SisaError(f"{where} holds no valid ledger head (edited, or written by an older sisa); refusing to go on",
                            kind="corrupted")
        self._check(self.records(), anchor, where)

    def anchor(self) -> dict:
        recs = self.records()
        return {"records": len(recs), "hash": recs[-1]["hash"] if recs else GENESIS}

    def _check(self, recs: list[dict], anchor: dict, where: str) -> None:
        n, h = anchor["records"], anchor["hash"]
        if (recs[n - 1]["hash"] if 0 < n <= len(recs) else GENESIS if n == 0 else None) == h:
            return
        torn = self.path.exists() and not self.path.read_bytes().endswith(b"\n") and self.path.stat().st_size > 0
        raise SisaError(
            f"ledger {self.path} does not hold the head kept in {where} (record {n}, hash {h[:16]}...): it holds "
            f"{len(recs)} complete record(s){' and its last line has no newline' if torn else ''}; the ledger was cut "
            f"or replaced, so deletions may be missing from it. Restore it from a backup; refusing to go on",
            kind="corrupted")

    def _read(self) -> list[dict]:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        del torn  # never acknowledged: its request had not started any work
        out, prev = [], GENESIS
        for n, line in enumerate(complete, 1):
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise SisaError(f"ledger {self.path} is corrupted: line {n} is not valid JSON", kind="corrupted") from None
            if not isinstance(rec, dict):
                raise SisaError(f"ledger {self.path} is corrupted: line {n} is not a ledger record", kind="corrupted")
            if rec.get("prev") != prev or rec.get("hash") != _digest(rec):
                raise SisaError(
                    f"ledger {self.path} is corrupted: line {n} was altered or reordered (hash chain broken); "
                    "refusing to go on", kind="corrupted"
                )
            out.append(rec)
            prev = rec["hash"]
        return out

    def head(self) -> str:
        return self.anchor()["hash"]

    def entries(self) -> list[dict]:
        """One dict per request, with its current state and the time of each state."""
        by_seq: dict[int, dict] = {}
        for rec in self.records():
            if rec["kind"] == "request":
                by_seq[rec["seq"]] = {**{k: rec[k] for k in ("seq", "ids", "affected", "request", "reason", "hash")},
                                      "state": "requested", "times": {"requested": rec["time"]}}
            elif rec["kind"] == "state":
                entry = by_seq[rec["seq"]]
                entry["state"] = rec["state"]
                entry["times"][rec["state"]] = rec["time"]
        return list(by_seq.values())

    def additions(self) -> list[dict]:
        """`sisa add` records, oldest first: {"arrival", "ids", "time", "hash"}. A record is written
        before its examples enter the data store; one whose examples never did (a crash between)
        added nothing, and its arrival number is not used again."""
        return [{k: rec[k] for k in ("arrival", "ids", "time", "hash")} for rec in self.records() if rec["kind"] == "add"]

    def add(self, ids: list[int], arrival: int) -> None:
        self._append({"kind": "add", "arrival": arrival, "ids": sorted(ids)})

    def forgotten(self) -> dict[int, int]:
        """id -> seq of the request that forgot it."""
        return {i: e["seq"] for e in self.entries() for i in e["ids"]}

    def environments(self) -> list[dict]:
        """Environment changes the user accepted, oldest first: {"from", "to", "time"}."""
        return [{k: rec[k] for k in ("from", "to", "time")} for rec in self.records() if rec["kind"] == "environment"]

    def accept_environment(self, old: dict, new: dict) -> None:
        self._append({"kind": "environment", "from": old, "to": new})

    def pending(self) -> list[dict]:
        return [e for e in self.entries() if e["state"] != "committed"]

    def request(self, ids: list[int], affected: dict[int, int], *, request: str | None, reason: str | None) -> dict:
        with self._lock:
            seq = max((e["seq"] for e in self.entries()), default=0) + 1
            self._append({"kind": "request", "seq": seq, "ids": sorted(ids),
                          "affected": {str(k): v for k, v in sorted(affected.items())},
                          "request": request, "reason": reason})
            return next(e for e in self.entries() if e["seq"] == seq)

    def advance(self, entry: dict, state: str) -> None:
        """Record that `entry` reached `state` (no-op if it already has)."""
        current = next(e for e in self.entries() if e["seq"] == entry["seq"])["state"]
        if STATES.index(state) > STATES.index(current):
            self._append({"kind": "state", "seq": entry["seq"], "state": state})

    def _append(self, record: dict) -> None:
        with self._lock:
            self._append_locked(record)

    def _append_locked(self, record: dict) -> None:
        prev = self.head()  # checks the anchor first: a cut must not be written over
        self._drop_torn_tail()
        record = {**record, "time": _now(), "prev": prev}
        record["hash"] = _digest(record)
        new = not self.path.exists()
        line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        with open(self.path, "ab") as f:
            f.write(line[: len(line) // 2])
            f.flush()
            crash_point("mid-ledger-append")  # a torn line, as a crash mid-write leaves
            f.write(line[len(line) // 2 :])
            f.flush()
            os.fsync(f.fileno())
        if new:
            fsync_dir(self.path.parent)
        self._cache = None
        if self._on_append is not None:
            crash_point("before-ledger-anchor")
            self._on_append(self.anchor())

    def _drop_torn_tail(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(raw.rfind(b"\n") + 1)
                os.fsync(f.fileno())
