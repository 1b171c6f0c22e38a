"""Wall-clock timing that also reports how much of it JAX spent tracing and compiling.

On a CPU a first call can spend longer compiling than computing, so every measurement in the
benchmark is reported both ways: `seconds` (all of it) and `compile_seconds` (the part inside
JAX's trace / lower / compile events, overlaps merged).
"""

from __future__ import annotations

import functools
import time

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_active: list[Stopwatch] = []


@functools.cache
def _listen() -> None:
    import jax

    def on_span(event, start, end, **_):
        if event in _COMPILE_EVENTS:
            for watch in _active:
                watch._spans.append((start, end))

    jax.monitoring.register_event_time_span_listener(on_span)


class Stopwatch:
    """`with Stopwatch() as sw: ...` then `sw.seconds`, `sw.compile_seconds`, `sw.compute_seconds`."""

    def __init__(self):
        self.seconds = self.compile_seconds = 0.0
        self._spans: list[tuple[float, float]] = []

    def __enter__(self) -> Stopwatch:
        _listen()
        _active.append(self)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        _active.remove(self)
        self.compile_seconds = min(_union(self._spans), self.seconds)

    @property
    def compute_seconds(self) -> float:
        """Wall time minus compilation: what the same call costs with its programs compiled."""
        return max(self.seconds - self.compile_seconds, 0.0)


def _union(spans) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total
