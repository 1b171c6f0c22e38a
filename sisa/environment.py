"""The environment a run's models were computed in, which is part of the exactness proof.

Bits are only reproducible under the same library versions, backend and device kind, so
every writer compares the current environment with the one recorded at training (and any
change the user accepted since, which the ledger records). The device layout (devices,
processes) is recorded too. On CPU it is not compared: the tests show bit-identical states
for 1, 2, 4 and 8 host devices. On other backends it is compared, since nothing here has
shown that their kernels give the same bits for every lane count per device.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import platform

from sisa.errors import SisaError

PACKAGES = ("sisa", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def versions() -> dict:
    """The versions of what computes the models, as this process imported them."""
    return dict(_versions())


@functools.cache
def _versions() -> dict:
    # Read once: the package metadata costs ~10 ms a read, and a process keeps the modules it imported.
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def current(shards: int) -> dict:
    """Versions, backend, device kind and the layout this process would train `shards` on."""
    import jax

    from sisa import cluster, runtime

    return {
        "versions": versions(),
        "backend": jax.default_backend(),
        "device_kind": jax.local_devices()[0].device_kind,
        "layout": {"devices": runtime.device_count(shards), "processes": cluster.count()},
    }


def differences(recorded: dict, now: dict) -> list[str]:
    """What differs between two environments in a way that can change bits ("field: a -> b")."""
    out = [f"{pkg} {recorded['versions'].get(pkg)} -> {now['versions'].get(pkg)}"
           for pkg in PACKAGES if recorded["versions"].get(pkg) != now["versions"].get(pkg)]
    for key in ("backend", "device_kind"):
        if recorded.get(key) != now.get(key):
            out.append(f"{key} {recorded.get(key)} -> {now.get(key)}")
    if now["backend"] != "cpu" and recorded.get("layout") != now.get("layout"):
        out.append(f"layout {recorded.get('layout')} -> {now.get('layout')}")
    return out


def check(recorded: dict, accepted: list[dict], now: dict, *, allow: bool, root) -> bool:
    """Whether `now` is a new environment the user allowed (True: the caller records it in the
    ledger). Refuses with both environments named when it differs from every accepted one."""
    for env in [recorded, *accepted]:
        if not differences(env, now):
            return False
    if allow:
        return True
    raise SisaError(
        f"workdir {root} was trained in another environment ({'; '.join(differences(recorded, now))}): models "
        "computed here would not be bit-identical to the ones it serves. Reinstall the versions it was trained "
        "with, or pass --allow-environment-change (recorded in the ledger and shown by `sisa verify`)",
        kind="environment")
