"""The deletion ledger: an append-only, hash-chained, fsync'ed log of forget requests.

Each line is one record: a `request` (seq, ids, where they sat, reference, reason), a
`state` change of an earlier request (requested -> purged -> retrained -> committed), or an
`environment` change the user accepted (library versions, backend: see sisa.environment).
Every record holds the previous record's hash and its own, so an edited or reordered line
breaks the chain and is detected. A request is on disk before any work for it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
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


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        """All records, chain checked. A torn last line (crash mid-append) is ignored."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        del torn  # never acknowledged: its request had not started any work
        out, prev = [], GENESIS
        for n, line in enumerate(complete, 1):
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise SisaError(f"ledger {self.path} is corrupted: line {n} is not valid JSON") from None
            if not isinstance(rec, dict):
                raise SisaError(f"ledger {self.path} is corrupted: line {n} is not a ledger record")
            if rec.get("prev") != prev or rec.get("hash") != _digest(rec):
                raise SisaError(
                    f"ledger {self.path} is corrupted: line {n} was altered or reordered (hash chain broken); "
                    "refusing to go on"
                )
            out.append(rec)
            prev = rec["hash"]
        return out

    def head(self) -> str:
        recs = self.records()
        return recs[-1]["hash"] if recs else GENESIS

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
        self._drop_torn_tail()
        record = {**record, "time": _now(), "prev": self.head()}
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

    def _drop_torn_tail(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(raw.rfind(b"\n") + 1)
                os.fsync(f.fileno())
