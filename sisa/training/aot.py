"""Compiled programs kept across processes, so a fresh process neither traces, lowers nor
compiles them.

A fresh process would otherwise trace the model, lower and compile it: ~1 s on CPU, and
still ~0.3 s with JAX's persistent compilation cache (which saves the compile only), as
much as a whole small deletion. Here each program is kept as a serialized executable
(`jax.experimental.serialize_executable`) in `runtime.cache_dir()`, keyed by everything it
is built from: the function, the trainer (config digest and data shape), the argument
shapes, dtypes and shardings, the devices and host CPU, XLA_FLAGS, the JAX version and
sisa's own source. Programs hold no training data. The files are pickles and executables: trust the
cache directory as you would trust JAX's own.

An executable that JAX itself loaded from its persistent cache (if a user turns that on)
serializes without its code on CPU (JAX 0.10: "Function ... not found" when run), so only
programs really compiled in this process are stored.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pickle
from pathlib import Path

import jax

from sisa import runtime

_CACHE_HITS = [0]  # JAX persistent-cache hits in this process


def _count_hits(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _CACHE_HITS[0] += 1


jax.monitoring.register_event_listener(_count_hits)


@functools.cache
def _code_digest() -> str:
    """sisa's source: a changed line anywhere may change a program."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def _host() -> str:
    """The machine a CPU executable is compiled for: a shared cache directory may be read from
    hosts with other instruction sets."""
    import platform

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return f"{platform.machine()}|{hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def _describe(x) -> str:
    if isinstance(x, jax.Array):
        return f"{x.dtype}{x.shape}{x.sharding}"
    return f"{type(x).__name__}:{getattr(x, 'dtype', '')}{getattr(x, 'shape', '')}"


class Program:
    """A jitted function, run on `devices`, whose compiled executables are loaded from /
    stored to disk."""

    def __init__(self, name: str, jitted, key: str, devices):
        self.name, self.jitted, self.key, self.devices = name, jitted, key, list(devices)
        self._compiled: dict[str, object] = {}

    def __call__(self, *args):
        leaves, tree = jax.tree.flatten(args)
        signature = f"{tree}|{'|'.join(map(_describe, leaves))}"
        compiled = self._compiled.get(signature)
        if compiled is None:
            compiled = self._compiled[signature] = self._load_or_compile(signature, args)
        return compiled(*args)

    def programs(self) -> int:
        """Executables this process holds (one per argument signature)."""
        return len(self._compiled)

    def _load_or_compile(self, signature: str, args):
        from jax.experimental import serialize_executable

        directory = runtime.cache_dir()
        if directory is None:
            return self.jitted.lower(*args).compile()
        digest = hashlib.sha256("\n".join([
            self.name, self.key, signature, jax.__version__, importlib.metadata.version("jaxlib"),
            str([(d.platform, d.device_kind, d.id) for d in self.devices]), self.devices[0].client.platform_version,
            _host(),
            os.environ.get("XLA_FLAGS", ""), _code_digest(),
        ]).encode()).hexdigest()
        path = directory / f"{self.name}-{digest[:32]}.jaxexe"
        if path.exists():
            try:
                return serialize_executable.deserialize_and_load(
                    *pickle.loads(path.read_bytes()), execution_devices=self.devices)
            except Exception:  # unreadable or from an incompatible runtime: compile afresh
                path.unlink(missing_ok=True)
        hits = _CACHE_HITS[0]
        compiled = self.jitted.lower(*args).compile()
        if _CACHE_HITS[0] != hits:
            return compiled  # loaded by JAX's own cache: not serializable (see above)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(serialize_executable.serialize(compiled)))
            tmp.replace(path)  # atomic: a reader sees the whole file or none
        except OSError:
            pass  # a read-only cache only costs the next process a compile
        return compiled
