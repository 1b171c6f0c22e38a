"""Named crash points for fault-injection tests.

`SISA_CRASH_AT=name:n` kills the process with SIGKILL the n-th time it reaches `name`
(no clean-up, no flushing: as a power cut would). Unset, a crash point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("SISA_CRASH_AT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
