"""Durable file writes: write beside, fsync, rename, fsync the directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from sisa.faults import crash_point


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write, *, sync_dir: bool = True) -> None:
    """Replace `path` with what `write(file)` writes, all at once: readers see the old file or
    the new, never half (written beside, synced, renamed). With `sync_dir=False` the caller
    syncs the folder once after several."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    crash_point("before-rename")
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Uncompressed, so the bytes on disk are the bytes of the data (audits can scan for them);
    written straight to the file (an index of 2M rows is 64 MB: no copy in memory first)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def file_identity(path) -> tuple | None:
    """(inode, size, mtime) of the file at `path`, or None when it is not there: a replaced or
    rewritten file has another."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def disk_usage(path: str | Path) -> int:
    """Bytes in the files under `path`. A writer may remove files and folders while this walks
    (readers take no lock): what vanishes is not counted."""
    total = 0
    for top, _, files in os.walk(path):  # a folder that vanishes is skipped (no onerror)
        for name in files:
            try:
                st = os.stat(os.path.join(top, name))
            except FileNotFoundError:
                continue
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def atomic_save_npy(path: str | Path, array: np.ndarray, *, sync_dir: bool = True) -> None:
    """One array as an .npy file, replaced all at once (`atomic_write`)."""
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False), sync_dir=sync_dir)
