"""Compiled programs kept across processes, so a fresh process neither traces, lowers nor
compiles them.

A fresh process would otherwise trace the model, lower and compile it: ~1 s on CPU, and
still ~0.3 s with JAX's persistent compilation cache (which saves the compile only), as
much as a whole small deletion. Here each program is kept as a serialized executable
(`jax.experimental.serialize_executable`, a pickle) in `runtime.cache_dir()`, keyed by
everything it is built from: the function, the trainer (config digest, data shape, classes,
scale), the argument shapes, dtypes and shardings, the devices and host CPU, XLA_FLAGS, JAX's
config, the versions of jax, jaxlib, flax, optax and numpy, and sisa's own source. Programs
hold no training data.

Unpickling runs code, and an executable is code, so nothing is loaded that a process other
than this user's could have written or that sisa did not store under that very key:
- the directory (opened once, without following a symlink, and checked on that handle) must
  be owned by this user and not writable by group or others; sisa creates it and any missing
  parents with mode 0o700;
- `index.json` in it, under the same checks, records for each file the sha256 of its bytes
  and the digest of its full key, written when the file is stored;
- a file is unpickled only if it is a plain file (no symlink) owned by this user, not writable
  by group or others, and the bytes read (once) match the index's digest for that name and key.
Anything else is compiled afresh with a `ProgramCacheWarning` (once per directory per
process); a refused file is replaced by a genuine one, a refused directory is left alone (no
reads, no writes). Stored files are written whole (atomic replace) with mode 0o600, a file and
its index entry under one lock on the directory.

`Program.precompile` compiles for abstract arguments (jax.ShapeDtypeStruct) under the key a
call with such arrays computes, and stores without running anything; training uses it to
compile ahead every program later commands can need (sisa.training.loop.compile_ahead; with
the cache on, unless SISA_PRECOMPILE=off), so that no deletion or prediction compiles.

`fresh_programs()`: under it no Program reads or writes the cache, nor runs an executable an
earlier call of this process loaded from it; each is compiled in this process. What certifies
a result (`sisa verify`) runs under it, so a tampered cache cannot vouch for itself.

An executable that JAX itself loaded from its persistent cache (if a user turns that on)
serializes without its code on CPU (JAX 0.10: "Function ... not found" when run), so only
programs really compiled in this process are stored. JAX's own cache, off by default, is
outside these checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import secrets
import stat
import warnings
from pathlib import Path

import jax

from sisa import runtime

_CACHE_HITS = [0]  # JAX persistent-cache hits in this process
_INDEX = "index.json"
_FRESH = [0]  # depth of fresh_programs() blocks
_WARNED: set[str] = set()  # directories already warned about
counts = {"loaded": 0, "compiled": 0}  # executables this process loaded from the cache / compiled


class ProgramCacheWarning(UserWarning):
    """The program cache was refused (or part of it): programs are compiled afresh."""


class _Untrusted(Exception):
    """Why something in the cache must not be read."""


def _count_hits(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _CACHE_HITS[0] += 1


jax.monitoring.register_event_listener(_count_hits)


def precompiling() -> bool:
    """Whether training compiles ahead the programs later commands can need (sisa.training.loop):
    with the cache on, outside fresh_programs(), unless SISA_PRECOMPILE=off."""
    return not _FRESH[0] and runtime.cache_dir() is not None and os.environ.get("SISA_PRECOMPILE", "on") != "off"


@contextlib.contextmanager
def fresh_programs():
    """Every Program called inside compiles in this process: no cache reads or writes, and no
    executable loaded from the cache earlier in this process is used."""
    _FRESH[0] += 1
    try:
        yield
    finally:
        _FRESH[0] -= 1


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
def _versions() -> str:
    """The libraries that trace the programs (flax builds the model, optax the optimizer)."""
    return "|".join(f"{p}={importlib.metadata.version(p)}" for p in ("jax", "jaxlib", "flax", "optax", "numpy"))


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
    if isinstance(x, jax.ShapeDtypeStruct):  # an abstract argument (Program.precompile), described as
        # the call's will be: with a sharding, a jax.Array laid out so; without, a host numpy array
        return f"{x.dtype}{x.shape}{x.sharding}" if x.sharding is not None else f"ndarray:{x.dtype}{x.shape}"
    if isinstance(x, jax.Array):
        return f"{x.dtype}{x.shape}{x.sharding}"
    return f"{type(x).__name__}:{getattr(x, 'dtype', '')}{getattr(x, 'shape', '')}"


def _warn(directory: Path, why: str) -> None:
    if str(directory) not in _WARNED:
        _WARNED.add(str(directory))
        warnings.warn(f"program cache {directory}: {why}; not loading it, programs are compiled afresh",
                      ProgramCacheWarning, stacklevel=4)


def _private(st: os.stat_result, is_kind) -> str | None:
    """Why a file or directory could hold someone else's bytes (None: it cannot)."""
    if not is_kind(st.st_mode):
        return "is not a plain file or directory"
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not this user ({os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _open_dir(directory: Path, create: bool) -> int | None:
    """A handle on the cache directory, checked (None: absent and not `create`d). Files are then
    opened through it, so the checks hold for what is read even if the path is swapped."""
    if create:
        for p in reversed([directory, *directory.parents]):
            if not os.path.lexists(p):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(p, 0o700)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:  # ELOOP / ENOTDIR: a symlink or not a directory
        raise _Untrusted(f"cannot be opened as a directory ({e.strerror})") from None
    why = _private(os.fstat(fd), stat.S_ISDIR)
    if why:
        os.close(fd)
        raise _Untrusted(f"the directory {why} (fix that, or point SISA_CACHE_DIR elsewhere or to off)")
    # Writers (exclusive) store a file and its index entry together; readers (shared) see
    # both or neither. Released on close. Best effort: a file system without locks still works.
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX if create else fcntl.LOCK_SH)
    return fd


def _read(dfd: int, name: str) -> bytes | None:
    """The bytes of `name` if it is a plain file only this user can change; None if absent."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as e:  # ELOOP: a symlink
        raise _Untrusted(f"{name} cannot be opened as a plain file ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        why = _private(os.fstat(fd), stat.S_ISREG)
        if why:
            raise _Untrusted(f"{name} {why}")
        return f.read()


def _read_index(dfd: int) -> dict:
    """file name -> {"sha256", "key"}; empty when absent or unreadable."""
    blob = _read(dfd, _INDEX)
    try:
        programs = json.loads(blob).get("programs") if blob else None
    except (ValueError, AttributeError):
        programs = None
    return programs if isinstance(programs, dict) else {}


def _write(dfd: int, name: str, data: bytes) -> None:
    """Whole or not at all (atomic replace), mode 0o600, never through a symlink."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


def _load(directory: Path, name: str, key: str) -> bytes | None:
    """The stored bytes of program `name` under `key`, verified; None if nothing is stored."""
    dfd = _open_dir(directory, create=False)
    if dfd is None:
        return None
    try:
        blob = _read(dfd, name)
        if blob is None:
            return None
        entry = _read_index(dfd).get(name)
    finally:
        os.close(dfd)
    if not isinstance(entry, dict):
        raise _Untrusted(f"{name} is not recorded in {_INDEX}")
    if entry.get("key") != key:
        raise _Untrusted(f"{name} was stored for another program")
    if entry.get("sha256") != hashlib.sha256(blob).hexdigest():
        raise _Untrusted(f"{name} does not match its digest in {_INDEX}")
    return blob


def _store(directory: Path, name: str, key: str, blob: bytes) -> None:
    dfd = _open_dir(directory, create=True)
    try:
        _write(dfd, name, blob)
        try:  # re-read just before writing, to keep entries other processes added
            index = _read_index(dfd)
        except _Untrusted:
            index = {}  # replaced by our own: its entries cannot be trusted
        index[name] = {"sha256": hashlib.sha256(blob).hexdigest(), "key": key}
        _write(dfd, _INDEX, json.dumps({"programs": index}, sort_keys=True).encode())
    finally:
        os.close(dfd)


def _signature(args) -> str:
    leaves, tree = jax.tree.flatten(args)
    return f"{tree}|{'|'.join(map(_describe, leaves))}"


class Program:
    """A jitted function, run on `devices`, whose compiled executables are loaded from /
    stored to disk."""

    def __init__(self, name: str, jitted, key: str, devices):
        self.name, self.jitted, self.key, self.devices = name, jitted, key, list(devices)
        # Kept apart so that fresh_programs() can pass over what came from disk.
        self._compiled: dict[str, object] = {}
        self._loaded: dict[str, object] = {}

    def __call__(self, *args):
        signature = _signature(args)
        compiled = self._compiled.get(signature)
        if compiled is None and not _FRESH[0]:
            compiled = self._loaded.get(signature)
        if compiled is None:
            compiled, loaded = self._load_or_compile(signature, args)
            (self._loaded if loaded else self._compiled)[signature] = compiled
        return compiled(*args)

    def precompile(self, *args) -> str:
        """Make a later call with arguments like `args` find its executable, without running
        anything: `args` may hold jax.ShapeDtypeStructs in place of arrays (with the sharding the
        call's jax.Array will have; none for a host numpy array). One already held, or stored in
        the cache and intact, is left for the call to load ("held", "stored"); any other is
        compiled now, kept and stored ("compiled"). Safe to run beside calls in another thread."""
        signature = _signature(args)
        if signature in self._compiled or (not _FRESH[0] and signature in self._loaded):
            return "held"
        directory = None if _FRESH[0] else runtime.cache_dir()
        if directory is not None:
            key = hashlib.sha256(self._key(signature).encode()).hexdigest()
            try:  # read and checked as a call would, but not unpickled: nothing stored is run here
                if _load(directory, f"{self.name}-{key[:32]}.jaxexe", key) is not None:
                    return "stored"
            except (_Untrusted, OSError):
                pass  # compiled below, where the call's own path warns and replaces it
        compiled, loaded = self._load_or_compile(signature, args)
        (self._loaded if loaded else self._compiled)[signature] = compiled
        return "stored" if loaded else "compiled"

    def programs(self) -> int:
        """Executables this process holds (one per argument signature)."""
        return len(self._compiled.keys() | self._loaded.keys())

    def _key(self, signature: str) -> str:
        """Everything that shapes the executable."""
        return "\n".join([
            self.name, self.key, signature, _versions(),
            str([(d.platform, d.device_kind, d.id) for d in self.devices]), self.devices[0].client.platform_version,
            _host(), os.environ.get("XLA_FLAGS", ""),
            repr(sorted((k, repr(v)) for k, v in jax.config.values.items())), _code_digest(),
        ])

    def _load_or_compile(self, signature: str, args) -> tuple[object, bool]:
        """(executable, whether it was loaded from the cache)."""
        from jax.experimental import serialize_executable

        directory = None if _FRESH[0] else runtime.cache_dir()
        if directory is None:
            return self._compile(args), False
        key = hashlib.sha256(self._key(signature).encode()).hexdigest()
        name = f"{self.name}-{key[:32]}.jaxexe"
        try:
            blob = _load(directory, name, key)
        except _Untrusted as e:
            _warn(directory, str(e))
            blob = None
        except OSError:
            blob = None
        if blob is not None:
            try:
                loaded = serialize_executable.deserialize_and_load(*pickle.loads(blob), execution_devices=self.devices)
            except Exception:  # sisa's own file, from an incompatible runtime: compile afresh
                loaded = None
            if loaded is not None:
                counts["loaded"] += 1
                return loaded, True
        hits = _CACHE_HITS[0]
        compiled = self._compile(args)
        if _CACHE_HITS[0] != hits:
            return compiled, False  # loaded by JAX's own cache: not serializable (see above)
        try:
            _store(directory, name, key, pickle.dumps(serialize_executable.serialize(compiled)))
        except _Untrusted as e:
            _warn(directory, str(e))
        except OSError:
            pass  # a read-only cache only costs the next process a compile
        return compiled, False

    def _compile(self, args):
        counts["compiled"] += 1
        return self.jitted.lower(*args).compile()
